"""The scorecard: one row per generated image, summary values, and the protocol they were measured under."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..files import atomic_path


@dataclass
class Scorecard:
    table: pd.DataFrame
    summary: dict[str, float]
    protocol: dict
    extras: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    images: list[Image.Image] = field(default_factory=list)
    grid: Image.Image | None = None
    probe_grid: Image.Image | None = None  # the personality probe suite's images, when it has its own

    def to_json(self) -> dict:
        return {"summary": _clean(self.summary), "protocol": _clean(self.protocol), "extras": _clean(self.extras)}

    def save(self, folder: str | Path, images: bool = False) -> dict[str, Path]:
        """Write scores.parquet, scores.csv, scorecard.json, grid.png and face embeddings (and the images)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {name: folder / name for name in ("scores.parquet", "scores.csv", "scorecard.json")}
        with atomic_path(paths["scores.parquet"]) as tmp:
            self.table.to_parquet(tmp, index=False)
        with atomic_path(paths["scores.csv"]) as tmp:
            self.table.to_csv(tmp, index=False)
        with atomic_path(paths["scorecard.json"]) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=2))
        if self.grid is not None:
            paths["grid.png"] = folder / "grid.png"
            with atomic_path(paths["grid.png"]) as tmp:
                self.grid.save(tmp, format="PNG")
        if self.probe_grid is not None:
            paths["personality.png"] = folder / "personality.png"
            with atomic_path(paths["personality.png"]) as tmp:
                self.probe_grid.save(tmp, format="PNG")
        if self.arrays:
            paths["arrays.npz"] = folder / "arrays.npz"
            with atomic_path(paths["arrays.npz"]) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **self.arrays)
        if images:
            (folder / "images").mkdir(exist_ok=True)
            for image, row in zip(self.images, self.table.itertuples()):
                image.save(folder / "images" / f"p{row.prompt_index:02d}-s{row.seed}.png")
        return paths


def _clean(obj):
    """JSON-safe: NaN and infinities become null; numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj
