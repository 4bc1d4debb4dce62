"""A1111's image embeddings: an embedding carried inside a PNG (or lossless WebP) picture, twice.

1. A text chunk `sd-ti-embedding`: base64 of a JSON dump of the embedding's dict, each tensor written as
   `{"TORCHTENSOR": nested lists}`.
2. A pixel copy that survives losing the text chunk: the JSON, zlib-compressed (level 9), is split into
   low and high nibbles; each nibble stream is repeated cyclically to fill a block as tall as the picture
   and 3 channels deep, its low nibbles XORed with an LCG stream (a = 1664525, c = 1013904223, m = 2³²,
   seed 0, each value taken mod 255) and its high nibbles painted with a dot pattern shaded from the first
   vector (decoration only). The low-nibble block goes left of the picture, the high one right, each
   separated from it by a one-pixel black column.
Reading tries the text chunk first, then the pixels.
"""

from __future__ import annotations

import base64
import json
import zlib

import numpy as np
import torch
from PIL import Image, ImageDraw, PngImagePlugin

CHUNK = "sd-ti-embedding"
TENSOR_KEY = "TORCHTENSOR"


# ------------------------------------------------------------------------------------------------ JSON


def _to_jsonable(obj):
    if isinstance(obj, torch.Tensor):
        return {TENSOR_KEY: obj.detach().cpu().float().numpy().tolist()}
    if isinstance(obj, dict):
        return {k: _to_jsonable(v) for k, v in obj.items()}
    return obj


def _from_json_object(d: dict):
    if TENSOR_KEY in d:
        return torch.tensor(np.array(d[TENSOR_KEY], dtype=np.float32))
    return d


def dumps(data: dict) -> bytes:
    return json.dumps(_to_jsonable(data)).encode()


def loads(raw: bytes | str) -> dict:
    return json.loads(raw, object_hook=_from_json_object)


# ------------------------------------------------------------------------------------------------ pixels


def _lcg_stream(n: int) -> np.ndarray:
    out = np.empty(n, dtype=np.uint8)
    state = 0
    for i in range(n):
        state = (1664525 * state + 1013904223) % 2**32
        out[i] = state % 255
    return out


def _scramble(block: np.ndarray) -> np.ndarray:
    """XOR the low nibbles with the LCG stream; applying it twice restores the block."""
    return block.astype(np.uint8) ^ (_lcg_stream(block.size).reshape(block.shape) & 0x0F)


def _dots(shape: tuple[int, int, int], shades: np.ndarray) -> np.ndarray:
    """The decorative high-nibble pattern: a staggered grid of dots shaded by `shades`."""
    h, w, _ = shape
    im = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(im)
    i = 0
    for x in range(-6, w, 8):
        for row, y in enumerate(range(-6, h, 8)):
            shift = 4 if row % 2 == 0 else 0
            shade = int(shades[i % len(shades)])
            i += 1
            draw.ellipse((x + shift, y, x + 6 + shift, y + 6), fill=(shade, shade, shade))
    return np.asarray(im, dtype=np.uint8) & 0xF0


def _block(nibbles: np.ndarray, height: int) -> np.ndarray:
    n = nibbles.shape[0]
    size = n + (height - n % height)
    size += (height * 3) - size % (height * 3)
    return np.resize(nibbles, size).reshape(height, -1, 3)


def embed_pixels(picture: Image.Image, data: dict) -> Image.Image:
    """The picture with the pixel copy of `data` on both sides."""
    payload = np.frombuffer(zlib.compress(dumps(data), level=9), np.uint8)
    first = next(v for v in data.get("string_to_param", data).values() if isinstance(v, torch.Tensor))
    shades = np.abs(first.detach().float().cpu().numpy().reshape(-1)[: first.shape[-1]][:1024])
    shades = (shades / max(float(shades.max()), 1e-12) * 255).astype(np.uint8)
    h = picture.height
    low, high = _block(payload & 0x0F, h), _block(payload >> 4, h)
    low = _scramble(low ^ _dots(low.shape, shades))
    high = _scramble(high ^ _dots(high.shape, shades[::-1]))
    out = Image.new("RGB", (picture.width + low.shape[1] + high.shape[1] + 2, h), (0, 0, 0))
    out.paste(Image.fromarray(low, "RGB"), (0, 0))
    out.paste(picture.convert("RGB"), (low.shape[1] + 1, 0))
    out.paste(Image.fromarray(high, "RGB"), (low.shape[1] + 1 + picture.width + 1, 0))
    return out


def _crop_black(arr: np.ndarray) -> np.ndarray:
    lit = (arr > 0).all(2)
    cols, rows = lit.any(0), lit.any(1)
    if not cols.any():
        return arr[:0, :0]
    c0, c1 = cols.argmax(), len(cols) - cols[::-1].argmax()
    r0, r1 = rows.argmax(), len(rows) - rows[::-1].argmax()
    return arr[r0:r1, c0:c1]


def extract_pixels(image: Image.Image) -> dict | None:
    """The embedding dict from the pixel copy, or None if the picture carries none."""
    arr = _crop_black(np.asarray(image.convert("RGB"), dtype=np.uint8)) & 0x0F
    if arr.size == 0:
        return None
    black = np.where(arr.sum(axis=(0, 2)) == 0)[0]
    if black.shape[0] < 2:
        return None
    low, high = _scramble(arr[:, : black.min(), :]), _scramble(arr[:, black.max() + 1 :, :])
    if low.shape != high.shape:
        return None
    try:
        return loads(zlib.decompress(((high << 4) | low).reshape(-1).tobytes()))
    except (zlib.error, ValueError, UnicodeDecodeError):
        return None


# ------------------------------------------------------------------------------------------------ files


def read_image_embedding(image: Image.Image) -> dict | None:
    text = getattr(image, "text", None) or image.info
    if CHUNK in text:
        return loads(base64.b64decode(text[CHUNK]))
    return extract_pixels(image)


def save_image_embedding(picture: Image.Image, data: dict, path, pixels: bool = True) -> None:
    """Save `picture` as PNG with `data` in its text chunk and, with `pixels`, as a pixel copy too."""
    info = PngImagePlugin.PngInfo()
    info.add_text(CHUNK, base64.b64encode(dumps(data)).decode())
    out = embed_pixels(picture, data) if pixels else picture.convert("RGB")
    out.save(path, format="PNG", pnginfo=info)
