"""Opening training images: fully decoded, EXIF-rotated, converted to RGB with the alpha kept apart."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import TitkError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".jfif", ".avif"}


class BadImage(TitkError):
    """An image file that cannot be used; the message names it."""


@dataclass
class LoadedImage:
    rgb: Image.Image  # mode RGB, upright
    alpha: Image.Image | None  # mode L, or None when the file has no transparency


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def open_image(path: Path, min_side: int = 1) -> LoadedImage:
    """Decode the whole file (a truncated file fails here, not mid-training) and normalise its mode."""
    try:
        with warnings.catch_warnings():
            # PIL warns between MAX_IMAGE_PIXELS and twice that; a bomb is a bomb either way.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(f"{path}: refused: the image is too large to decode safely (a decompression bomb?)") from None
    except UnidentifiedImageError:
        raise BadImage(f"{path}: not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"{path}: corrupt or truncated image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if min(img.size) < min_side:
        raise BadImage(f"{path}: image is {img.width}×{img.height}, smaller than the minimum side of {min_side} px")
    return _normalise(img)


def _normalise(img: Image.Image) -> LoadedImage:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit or 32-bit integer greyscale: scale to 8 bits rather than clip.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        img = Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("L", "1") and "transparency" in img.info:
        img = img.convert("LA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        return LoadedImage(img.convert("RGB"), img.getchannel("A"))
    return LoadedImage(img.convert("RGB"), None)
