"""Personality: what a TI tends to generate when the prompt leaves it open (clothing, background, shot
type, expression), as label histograms of the generated images against the same for the dataset.

Each image gets one label per set from a zero-shot classifier (CLIP by default: the softmax of 100 × cosine
to one text per label); the histograms are compared by entropy and Jensen–Shannon divergence. Histograms
are taken over the personality probes when the suite has any, else over all images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from ...errors import TitkError
from ..metrics import entropy, js_divergence
from . import References, Sample, ScoreResult, Scorer


def load_label_sets(path: str | Path) -> dict[str, dict]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TitkError(f"{path}: cannot read the label sets ({exc})") from None
    sets = {}
    for name, spec in (data or {}).items():
        if not isinstance(spec, dict) or not spec.get("labels") or "{}" not in spec.get("template", "{}"):
            raise TitkError(f"{path}: label set {name!r} needs `labels` and a `template` containing {{}}")
        sets[name] = {"template": spec.get("template", "{}"), "labels": [str(x) for x in spec["labels"]]}
    if not sets:
        raise TitkError(f"{path}: no label sets")
    return sets


class AttributeClassifier:
    """Gives, per label set, a probability vector for each image; the toy world supplies its own."""

    label_sets: dict[str, list[str]]

    def probabilities(self, images, ctx, key: str) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def protocol(self) -> dict:
        return {}


class ClipZeroShot(AttributeClassifier):
    def __init__(self, clip, sets: dict[str, dict]):
        self.clip = clip
        self.sets = sets
        self.label_sets = {name: spec["labels"] for name, spec in sets.items()}
        self.text = {name: clip.text_features([spec["template"].format(label) for label in spec["labels"]]) for name, spec in sets.items()}

    def probabilities(self, images, ctx, key):
        feats = ctx.features(self.clip, key, images)
        out = {}
        for name, text in self.text.items():
            logits = 100.0 * feats @ text.T
            logits -= logits.max(1, keepdims=True)
            p = np.exp(logits)
            out[name] = p / p.sum(1, keepdims=True)
        return out

    def protocol(self):
        return {"classifier": f"zero-shot CLIP {self.clip.key}, softmax of 100·cos", "label_sets": self.sets}


def shift(name: str, dataset: np.ndarray, untrained: np.ndarray, generated: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """How far a TI moved toward its dataset on the dataset's most common label, net of where the untrained
    start already was: `net_shift` = TI share − untrained share with its `level` interval (`net_shift_low`,
    `net_shift_high`: Newcombe's, over the images counted), `dataset_shift` = dataset share − untrained share,
    and `uptake` = their ratio (1: the TI took on all of the dataset's skew; 0: none), NaN unless the
    dataset's share and the untrained start's have intervals apart (a ratio of differences within sampling
    noise is noise)."""
    from ...stats import share_interval, shift_interval

    top = int(np.argmax(dataset))
    counts = {key: (int(h[top]), int(h.sum())) for key, h in (("dataset", dataset), ("untrained", untrained), ("generated", generated))}
    share = {key: c / n if n else float("nan") for key, (c, n) in counts.items()}
    net, skew = share["generated"] - share["untrained"], share["dataset"] - share["untrained"]
    low, high = shift_interval(*counts["generated"], *counts["untrained"], level)
    (d_low, d_high), (u_low, u_high) = (share_interval(*counts[key], level) for key in ("dataset", "untrained"))
    apart = d_low > u_high or d_high < u_low
    return {f"personality.{name}.net_shift": net, f"personality.{name}.net_shift_low": low, f"personality.{name}.net_shift_high": high,
            f"personality.{name}.dataset_shift": skew, f"personality.{name}.uptake": net / skew if apart else float("nan")}


class PersonalityScorer(Scorer):
    name = "personality"

    def __init__(self, classifier: AttributeClassifier):
        self.classifier = classifier

    def prepare(self, refs: References, ctx) -> None:
        self.dataset_probs = self.classifier.probabilities(refs.dataset, ctx, "references")  # the looks the embedding learned from
        paths = refs.training_paths if refs.training else refs.paths
        self.dataset_files = [Path(p).name for p in paths] or [f"{i:03d}" for i in range(len(refs.dataset))]
        self.dataset_hist = {name: self._hist(p, name) for name, p in self.dataset_probs.items()}
        # Per image of the dataset, the label it carries in each set and the classifier's probability for it:
        # with the images each trial trained on, what relates a dataset's composition to its TI's personality.
        self.attributes = [{"file": name} for name in self.dataset_files]
        for name, p in self.dataset_probs.items():
            labels = self.classifier.label_sets[name]
            for row, probs in zip(self.attributes, p):
                row |= {name: labels[int(probs.argmax())], f"{name}_p": float(probs.max())}

    def _dataset(self, name: str, trained_on: list[str] | None) -> np.ndarray:
        """The histogram of the images trained on (a trial's subset), or of the whole dataset."""
        if trained_on is None:
            return self.dataset_hist[name]
        keep = np.isin(self.dataset_files, list(trained_on))
        return self._hist(self.dataset_probs[name][keep], name)

    def _hist(self, probs: np.ndarray, name: str) -> np.ndarray:
        counts = np.zeros(len(self.classifier.label_sets[name]))
        for i in probs.argmax(1):
            counts[i] += 1
        return counts

    def score(self, samples: list[Sample], ctx) -> ScoreResult:
        probs = self.classifier.probabilities([s.image for s in samples], ctx, "samples")
        probes = [i for i, s in enumerate(samples) if s.kind == "personality"] or list(range(len(samples)))
        rows = [{} for _ in samples]
        summary, hists = {}, {}
        for name, p in probs.items():
            labels = self.classifier.label_sets[name]
            for i, row in enumerate(rows):
                row[f"{name}"] = labels[int(p[i].argmax())]
                row[f"{name}_p"] = float(p[i].max())
            generated, dataset = self._hist(p[probes], name), self._dataset(name, ctx.trained_on)
            summary[f"personality.{name}.entropy"] = entropy(generated)
            summary[f"personality.{name}.dataset_entropy"] = entropy(dataset)
            summary[f"personality.{name}.js"] = js_divergence(generated, dataset)
            hists[name] = {"labels": labels, "generated": generated.astype(int).tolist(), "dataset": dataset.astype(int).tolist()}
            untrained = (ctx.untrained or {}).get(name)
            if untrained is not None:
                hists[name]["untrained"] = [int(c) for c in untrained]
                summary.update(shift(name, dataset, np.asarray(untrained, float), generated))
        return ScoreResult(rows, summary, extras={"personality": hists, "personality_dataset": self.attributes})

    def protocol(self) -> dict:
        return {"personality": {**self.classifier.protocol(), "histogram": "argmax label counts over personality probes",
                                "shift": "on the dataset's most common label, net of the untrained start's share (sweeps)"}}
