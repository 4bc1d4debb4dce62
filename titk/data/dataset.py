"""A training dataset: a folder of images with captions, every file validated before any model work."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import TitkError
from ..hashing import sha256_bytes
from .images import BadImage, is_image_path, open_image
from .prompts import filename_caption, read_caption

RESIZE_MODES = ("stretch", "native", "crop", "buckets")


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    sha256: str
    width: int  # upright size, after EXIF rotation
    height: int
    caption: str
    caption_from_file: bool
    has_alpha: bool


@dataclass
class Dataset:
    root: Path
    records: list[ImageRecord]
    skipped: list[str] = field(default_factory=list)  # "path: reason" for files left out

    def __len__(self) -> int:
        return len(self.records)

    def subset(self, indices: list[int]) -> Dataset:
        return replace(self, records=[self.records[i] for i in indices])


def scan_dataset(
    root: str | Path,
    *,
    recursive: bool = False,
    caption_extension: str = ".txt",
    filename_regex: str = "",
    filename_join: str = " ",
    min_side: int = 32,
    on_bad_image: str = "error",
) -> Dataset:
    """Find, fully decode and describe every image under `root` (flat unless `recursive`).

    A file with an image suffix that cannot be used (corrupt, truncated, too small, a decompression bomb)
    is an error naming it, or with `on_bad_image="skip"` is left out and listed in `skipped`.
    """
    root = Path(root)
    if not root.is_dir():
        raise TitkError(f"{root}: dataset folder not found")
    candidates = sorted(p for p in (root.rglob("*") if recursive else root.iterdir()) if p.is_file() and is_image_path(p))
    if not candidates:
        raise TitkError(f"{root}: no images found (looked for {', '.join(sorted({'.png', '.jpg', '.jpeg', '.webp'}))} and similar)")
    records, skipped = [], []
    for path in candidates:
        try:
            try:
                data = path.read_bytes()
            except OSError as exc:  # permissions, a vanished file, an I/O error: the image, not the output, is at fault
                raise BadImage(f"{path}: cannot read it ({exc.strerror or exc})") from None
            img = open_image(path, min_side=min_side)
        except BadImage as exc:
            if on_bad_image == "skip":
                skipped.append(str(exc))
                continue
            raise
        caption = read_caption(path, caption_extension)
        records.append(
            ImageRecord(
                path=path, sha256=sha256_bytes(data), width=img.rgb.width, height=img.rgb.height,
                caption=caption if caption is not None else filename_caption(path, filename_regex, filename_join),
                caption_from_file=caption is not None, has_alpha=img.alpha is not None,
            )
        )
    if not records:
        raise TitkError(f"{root}: none of the {len(candidates)} images could be used; first problem: {skipped[0]}")
    return Dataset(root, records, skipped)


# ------------------------------------------------------------------------------------------------ sizes


def bucket_sizes(base: int, step: int) -> list[tuple[int, int]]:
    """Aspect-ratio buckets of about base² pixels with sides multiple of `step`, from base/2 to 2·base."""
    sizes = set()
    side = base // 2 // step * step
    while side <= 2 * base:
        other = (base * base // side) // step * step
        if base // 2 <= other <= 2 * base:
            sizes.add((side, other))
            sizes.add((other, side))
        side += step
    return sorted(sizes)


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def target_size(record: ImageRecord, mode: str, width: int, height: int, buckets: list[tuple[int, int]] | None) -> tuple[int, int]:
    """The (width, height) the image is trained at under a resize mode (`buckets` from bucket_sizes when bucketing)."""
    if mode in ("stretch", "crop"):
        return width, height
    if mode == "native":
        return record.width, record.height
    if not buckets:
        raise ValueError("bucketing needs the bucket sizes")
    return nearest_bucket(record.width, record.height, buckets)


def prepare_pixels(record: ImageRecord, size: tuple[int, int], mode: str) -> tuple[torch.Tensor, Image.Image | None]:
    """The image as a [3, H, W] tensor in [-1, 1] at `size`, and its alpha at that size (or None)."""
    img = open_image(record.path)
    rgb, alpha = img.rgb, img.alpha
    if (rgb.width, rgb.height) != size:
        if mode in ("crop", "buckets"):
            rgb, alpha = _cover_crop(rgb, size), _cover_crop(alpha, size) if alpha is not None else None
        else:  # A1111 stretches with bicubic, ignoring the aspect ratio
            rgb = rgb.resize(size, Image.BICUBIC)
            alpha = alpha.resize(size, Image.BICUBIC) if alpha is not None else None
    pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()
    return pixels, alpha


def _cover(width: int, height: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(resized width, resized height, crop left, crop top) that cover `size` from a width × height image."""
    w, h = size
    scale = max(w / width, h / height)
    rw, rh = max(w, int(width * scale + 0.5)), max(h, int(height * scale + 0.5))
    return rw, rh, (rw - w) // 2, (rh - h) // 2


def _cover_crop(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize to cover `size` keeping the aspect ratio, then crop the centre, as kohya's
    `trim_and_resize_if_required` does (sizes rounded half up; area filter to shrink, Lanczos to enlarge;
    PIL's box filter stands in for cv2's INTER_AREA, the same average for whole-number factors)."""
    w, h = size
    rw, rh, left, top = _cover(img.width, img.height, size)
    if (rw, rh) != img.size:
        img = img.resize((rw, rh), Image.BOX if img.width >= rw and img.height >= rh else Image.LANCZOS)
    return img.crop((left, top, left + w, top + h))


def size_ids(record: ImageRecord, size: tuple[int, int], mode: str, semantics: str) -> tuple[int, int, int, int, int, int]:
    """SDXL's micro-conditioning for an image trained at `size`: original height and width, crop top and left,
    target height and width. kohya gives, whatever it did to the pixels, where the whole image would sit if
    fitted inside `size` (`BucketManager.get_crop_ltrb`, "Stability AI's preprocessing"): a portrait in a square
    says left > 0, top 0. Otherwise the crop actually taken (diffusers' SDXL scripts), 0 when stretched."""
    w, h = size
    if semantics == "kohya":
        image_ar = record.width / record.height
        fitted_w, fitted_h = (h * image_ar, h) if w / h > image_ar else (w, w / image_ar)
        left, top = int((w - fitted_w) // 2), int((h - fitted_h) // 2)
    elif (record.width, record.height) != size and mode in ("crop", "buckets"):
        _, _, left, top = _cover(record.width, record.height, size)
    else:
        left = top = 0
    return record.height, record.width, top, left, h, w


def kohya_alpha_weight(alpha: Image.Image | None, latent_size: tuple[int, int]) -> torch.Tensor | None:
    """kohya's alpha mask: alpha / 255 at the training size, area-averaged to the latent grid, not
    renormalised (`apply_masked_loss`): a half-transparent image trains at half strength."""
    if alpha is None:
        return None
    w = torch.from_numpy(np.asarray(alpha, dtype=np.float32) / 255.0)
    size = (latent_size[1], latent_size[0])
    return torch.nn.functional.interpolate(w[None, None], size=size, mode="area")[0, 0]


def alpha_weight(alpha: Image.Image | None, latent_size: tuple[int, int]) -> torch.Tensor | None:
    """A1111's loss weight from PNG alpha at the latent grid: shifted to min 0, scaled to mean 1.

    Unlike A1111, a uniform alpha gives ones rather than NaN, and the map is resized to (w, h), not (h, w).
    """
    if alpha is None:
        return None
    w = torch.from_numpy(np.asarray(alpha.resize(latent_size), dtype=np.float32))
    w = w - w.min()
    mean = w.mean()
    if mean <= 0:
        return torch.ones_like(w)
    return w / mean
