"""Helpers shared by tests."""

from pathlib import Path

import numpy as np
from PIL import Image


def make_images(folder: Path, n: int, size=(64, 64), seed: int = 0, captions: str | None = None) -> Path:
    """`n` random RGB images 000.png … in `folder`; with `captions`, a caption file each ({i} is replaced)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
        if captions is not None:
            (folder / f"{i:03d}.txt").write_text(captions.replace("{i}", str(i)))
    return folder


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code != 0, "a user mistake must exit non-zero"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
