"""The dataset manifest of a trial: every image of the dataset, with its hash, caption and whether it was used."""

from __future__ import annotations

import pandas as pd

from ..data.dataset import Dataset


def manifest(dataset: Dataset, included: list[int]) -> pd.DataFrame:
    used = set(included)
    return pd.DataFrame([
        {
            "file": r.path.name, "path": str(r.path), "sha256": r.sha256, "width": r.width, "height": r.height,
            "caption": r.caption if r.caption_from_file else "", "included": i in used,
        }
        for i, r in enumerate(dataset.records)
    ])
