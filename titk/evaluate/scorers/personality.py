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


def shift(name: str, dataset: np.ndarray, untrained: np.ndarray, generated: np.ndarray) -> dict[str, float]:
    """How far a TI moved toward its dataset on the dataset's most common label, net of where the untrained
    start already was: `net_shift` = TI share − untrained share, `dataset_shift` = dataset share − untrained
    share, and `uptake` = their ratio (1: the TI took on all of the dataset's skew; 0: none), NaN when the
    dataset is within 0.05 of the untrained start (no skew to take on)."""

    def share(h):
        return float(h[top] / h.sum()) if h.sum() else float("nan")

    top = int(np.argmax(dataset))
    net, skew = share(generated) - share(untrained), share(dataset) - share(untrained)
    return {f"personality.{name}.net_shift": net, f"personality.{name}.dataset_shift": skew,
            f"personality.{name}.uptake": net / skew if abs(skew) >= 0.05 else float("nan")}


class PersonalityScorer(Scorer):
    name = "personality"

    def __init__(self, classifier: AttributeClassifier):
        self.classifier = classifier

    def prepare(self, refs: References, ctx) -> None:
        probs = self.classifier.probabilities(refs.dataset, ctx, "references")  # the looks the embedding learned from
        self.dataset_hist = {name: self._hist(p, name) for name, p in probs.items()}

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
            generated = self._hist(p[probes], name)
            summary[f"personality.{name}.entropy"] = entropy(generated)
            summary[f"personality.{name}.dataset_entropy"] = entropy(self.dataset_hist[name])
            summary[f"personality.{name}.js"] = js_divergence(generated, self.dataset_hist[name])
            hists[name] = {
                "labels": labels, "generated": generated.astype(int).tolist(), "dataset": self.dataset_hist[name].astype(int).tolist(),
            }
            untrained = (getattr(ctx, "untrained", None) or {}).get(name)
            if untrained is not None:
                hists[name]["untrained"] = [int(c) for c in untrained]
                summary.update(shift(name, self.dataset_hist[name], np.asarray(untrained, float), generated))
        return ScoreResult(rows, summary, extras={"personality": hists})

    def protocol(self) -> dict:
        return {"personality": {**self.classifier.protocol(), "histogram": "argmax label counts over personality probes",
                                "shift": "on the dataset's most common label, net of the untrained start's share (sweeps)"}}
