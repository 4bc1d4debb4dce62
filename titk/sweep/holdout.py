"""Held-out photos for a sweep: identity compares samples with photos of the person that no trial trained on.

`references:` photos that are not dataset images are held out by construction. Without them, a few dataset
images are held out (`holdout`): evenly spaced in name order, so that they span the shoots a folder's names
tend to group. Every trial trains on the rest; its subset, its manifest and attribution see only the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import SweepConfig
from ..data.dataset import Dataset, ImageRecord
from ..errors import TitkError
from ..evaluate.scorers import References
from ..hashing import sha256_bytes

STUDY_ATTR = "titk.heldout"  # the held-out images' names, on the study (analysis leaves them out)


@dataclass
class Holdout:
    dataset: Dataset  # the images trials train on
    heldout: list[ImageRecord] = field(default_factory=list)  # dataset images held out as the references
    folder: Path | None = None  # the `references:` folder, when it has photos that are not dataset images
    photos: list[Path] = field(default_factory=list)  # those photos

    @property
    def names(self) -> list[str]:
        return [r.path.name for r in self.heldout]

    def references(self, limit: int) -> References:
        """What the evaluator compares with: held-out photos and the training images, or (no split) the dataset."""
        from ..evaluate.evaluator import read_images

        training, training_paths = read_images([r.path for r in self.dataset.records][:limit], str(self.dataset.root))
        if self.photos:
            images, paths = read_images(self.photos[:limit], str(self.folder))
            return References(images, paths, training, training_paths, f"the photos in {self.folder} (not dataset images)")
        if self.heldout:
            images, paths = read_images([r.path for r in self.heldout][:limit], str(self.dataset.root))
            return References(images, paths, training, training_paths, f"{len(paths)} dataset images held out of training: {', '.join(self.names)}")
        return References(training, training_paths, source=f"the training images in {self.dataset.root} (none held out: no copy index)")


def hold_out(config: SweepConfig, dataset: Dataset) -> Holdout:
    """The split the config asks for, checked against the objective (a copy index needs held-out photos)."""
    if "identity" not in config.evaluation.scorers:  # nothing would look at held-out photos (check_objective names the scorer)
        return Holdout(dataset)
    split = _split(config, dataset)
    o = config.objective
    for where, names in (("objective.metrics", o.metrics), ("objective.pareto", o.pareto or []), ("objective.floors", o.floors)):
        if "identity.copy_index" not in names:
            continue
        if where == "objective.pareto":
            raise TitkError("objective.pareto: identity.copy_index is lower-is-better and Pareto maximises both; "
                            "weigh it negatively in objective.metrics or bound it in objective.floors")
        if not (split.heldout or split.photos):
            raise TitkError(f"{where}: identity.copy_index needs held-out photos of the person: give references: (photos not "
                            f"in the dataset), or keep holdout on (the dataset has {len(dataset)} images; holdout.min_dataset "
                            f"is {config.holdout.min_dataset}, holdout.share {config.holdout.share:g})")
    return split


def _split(config: SweepConfig, dataset: Dataset) -> Holdout:
    if config.references is not None:
        from ..evaluate.evaluator import image_files

        trained = {r.sha256 for r in dataset.records}
        photos = [p for p in image_files(config.references) if sha256_bytes(p.read_bytes()) not in trained]
        if photos:
            return Holdout(dataset, folder=config.references, photos=photos)
        # references that are all dataset images are none: hold out as if none were given
    h, n = config.holdout, len(dataset)
    if h.share <= 0 or n < h.min_dataset:
        return Holdout(dataset)
    k = max(h.min_images, int(h.share * n + 0.5))
    if k >= n:
        raise TitkError(f"holdout: holding out {k} of the dataset's {n} images leaves none to train on; lower holdout.min_images or holdout.share")
    picked = {int((i + 0.5) * n / k) for i in range(k)}
    records = dataset.records
    return Holdout(dataset.subset([i for i in range(n) if i not in picked]), [records[i] for i in sorted(picked)])
