"""What a training run writes: embedding checkpoints, the log, preview grids and resumable states.

Layout of a run folder:
    config.yaml, plan.json          the resolved config and the plan it followed
    train_log.csv                   step, epoch, epoch_step, loss, learn_rate, images_seen, seconds
    embeddings/<name>-<N>.pt|.safetensors|.png   checkpoints every `save_every` updates (.png: output.formats)
    previews/<name>-<N>.png         preview grids (prompts × seeds)
    state/state-<step>.pt           optimizer, vectors and step, to resume
    <name>.pt, <name>.safetensors   the final embedding
Numbering `a1111` copies A1111's off-by-one (`train_embedding`: `steps_done = embedding.step + 1`): `<name>-N`
is written after N-1 updates and stores step N-1 and the name `<name>-N`; `exact` writes `<name>-N` after N
updates. The log's epoch columns are A1111's CSV columns (`write_loss`): after update `step`, epoch =
(step - 1) // updates per pass and epoch_step = (step - 1) % updates per pass, the pass that update came from
and its place in it, both from 0. A1111 writes a row every 500 updates; titk writes one every update.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import torch
import yaml

from ..embeddings import Embedding
from ..embeddings.formats import save_embedding
from ..files import atomic_path
from ..errors import TitkError, first_line

LOG_FIELDS = ["step", "epoch", "epoch_step", "loss", "learn_rate", "images_seen", "seconds"]
# Settings that may change between a run and its resumption; anything else must match.
RESUMABLE_CHANGES = {"train.max_steps", "train.epochs", "output", "model.device"}


def epoch_columns(step: int, updates_per_pass: int) -> tuple[int, int]:
    """The log's (epoch, epoch_step) after update `step` (from 1), as A1111's `write_loss` computes them."""
    return divmod(step - 1, updates_per_pass)


def config_fingerprint(config, dataset) -> dict[str, str]:
    """Per setting, a hash of what the training depends on (plus the images' hashes)."""
    data = config.model_dump(mode="json")
    flat = {}
    for section, values in data.items():
        for key, value in (values.items() if isinstance(values, dict) else [("", values)]):
            flat[f"{section}.{key}".rstrip(".")] = json.dumps(value, sort_keys=True)
    flat["dataset.images"] = hashlib.sha256("".join(r.sha256 for r in dataset.records).encode()).hexdigest()
    return {k: v for k, v in flat.items() if not any(k == c or k.startswith(c + ".") for c in RESUMABLE_CHANGES)}


class RunFolder:
    def __init__(self, config, plan, dataset):
        self.config, self.plan = config, plan
        self.root = Path(config.output_dir)
        self.name = config.embedding.name
        self.numbering = config.numbering
        self.fingerprint = config_fingerprint(config, dataset)

    # -------------------------------------------------------------------------------------- start and resume

    def start(self, resume: bool) -> dict | None:
        """Prepare the folder; with `resume`, return the newest saved state (or None if there is none)."""
        state = self.latest_state() if resume else None
        if state is None and not resume and (self.root / f"{self.name}.pt").exists():
            raise TitkError(f"{self.root}: holds a finished run of {self.name!r}; pass --resume to continue it or choose another output dir")
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.root / "config.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False))
        with atomic_path(self.root / "plan.json") as tmp:
            tmp.write_text(json.dumps(self.plan.to_dict(), indent=2))
        self._trim_log(state["step"] if state else 0)
        return state

    def latest_state(self) -> dict | None:
        states = sorted((self.root / "state").glob("state-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
        if not states:
            return None
        path = states[-1]
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise TitkError(f"{path}: unreadable resume state ({first_line(exc, 200)})") from None
        changed = sorted(k for k in set(state["fingerprint"]) | set(self.fingerprint) if state["fingerprint"].get(k) != self.fingerprint.get(k))
        if changed:
            raise TitkError(f"{path}: cannot resume: the config or dataset changed since ({', '.join(changed[:4])})")
        return state

    def save_state(self, step: int, vectors: dict[str, torch.Tensor], optimizer, scaler) -> None:
        folder = self.root / "state"
        state = {
            "step": step,
            "vectors": {k: v.detach().cpu().clone() for k, v in vectors.items()},
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "fingerprint": self.fingerprint,
        }
        with atomic_path(folder / f"state-{step}.pt") as tmp:
            torch.save(state, tmp)
        old = sorted(folder.glob("state-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
        for path in old[: -self.config.output.keep_states]:
            path.unlink(missing_ok=True)

    # -------------------------------------------------------------------------------------- checkpoints

    def checkpoint_number(self, done: int, every: int) -> int | None:
        """The file number to write after `done` updates, or None if this is not a saving step."""
        if every <= 0:
            return None
        number = done + 1 if self.numbering == "a1111" else done
        return number if number % every == 0 else None

    def save_embedding(self, emb: Embedding, label: str | None) -> list[Path]:
        """Write the embedding in each configured format; `label` None means the final file."""
        stem = self.name if label is None else f"{self.name}-{label}"
        folder = self.root if label is None else self.root / "embeddings"
        emb.name = stem  # the stored name equals the file stem, so A1111 (stem) and diffusers (name) agree
        return [save_embedding(emb, folder / f"{stem}.{fmt}", self.config.layout) for fmt in self.config.output.formats]

    def preview_path(self, label: str) -> Path:
        return self.root / "previews" / f"{self.name}-{label}.png"

    # -------------------------------------------------------------------------------------- log

    @property
    def log_path(self) -> Path:
        return self.root / "train_log.csv"

    def _trim_log(self, step: int) -> None:
        """Keep the log rows up to `step` (a resumed run writes the rest again); start it if absent."""
        rows = []
        if self.log_path.is_file():
            with open(self.log_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        with atomic_path(self.log_path) as tmp:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, LOG_FIELDS)
                writer.writeheader()
                writer.writerows(rows)

    def log(self, row: dict) -> None:
        with open(self.log_path, "a", newline="") as f:
            csv.DictWriter(f, LOG_FIELDS).writerow(row)
