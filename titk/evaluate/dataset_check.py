"""`titk dataset check`: what is in a folder of photos of a person, before any training.

Per image: size and aspect with the bucket it falls in, whether a caption exists, faces found and the size
of the largest, sharpness (variance of the Laplacian on the largest face, or the image), near-duplicates
(many matching ORB features under one homography, or nearly identical faces), and identity outliers (a
face far less like the centroid of the other faces than the rest are, leave-one-out).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from ..config import DatasetCheckSettings
from ..data.dataset import bucket_sizes, nearest_bucket, scan_dataset
from ..data.images import open_image
from ..drawing import font, wrap
from .metrics import normalise

SHARPNESS_MIN = 30.0  # Laplacian variance at 256 px: sharp photos measured 55–460, blurred copies under 20
SMALL_FACE = 0.10  # largest face shorter than this share of the image height
DUPLICATE_INLIERS = 40  # ORB matches consistent with one homography (a re-crop measured 366; other photos ≤ 8)
DUPLICATE_FACE = 0.95  # face cosine (the same face re-cropped measured 0.98; other photos ≤ 0.80)
OUTLIER_MARGIN = 0.25  # leave-one-out similarity this far below the median marks an identity outlier


@dataclass
class DatasetReport:
    table: pd.DataFrame
    sheet: Image.Image
    summary: dict = field(default_factory=dict)

    def save(self, folder: str | Path) -> dict[str, Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"table": folder / "dataset_check.csv", "parquet": folder / "dataset_check.parquet", "sheet": folder / "contact_sheet.png"}
        self.table.to_csv(paths["table"], index=False)
        self.table.to_parquet(paths["parquet"], index=False)
        self.sheet.save(paths["sheet"])
        return paths


def sharpness(image: Image.Image, bbox=None) -> float:
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    if bbox is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in bbox)
        crop = grey[max(0, y0) : max(y1, y0 + 1), max(0, x0) : max(x1, x0 + 1)]
        grey = crop if crop.size >= 64 else grey
    scale = 256 / grey.shape[0]
    grey = cv2.resize(grey, (max(1, round(grey.shape[1] * scale)), 256), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


ORB_SIDE = 512  # near-duplicate matching works on images scaled to this side


def _orb(image: Image.Image, side: int = ORB_SIDE):
    grey = np.asarray(image.convert("L"))
    scale = side / max(grey.shape)
    grey = cv2.resize(grey, (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale))), interpolation=cv2.INTER_AREA)
    return cv2.ORB_create(nfeatures=1500).detectAndCompute(grey, None)


def homography_inliers(a, b) -> int:
    (ka, da), (kb, db) = a, b
    if da is None or db is None or len(ka) < 8 or len(kb) < 8:
        return 0
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(da, db, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < 0.75 * n.distance]
    if len(good) < 8:
        return 0
    src = np.float32([ka[m.queryIdx].pt for m in good])
    dst = np.float32([kb[m.trainIdx].pt for m in good])
    _, mask = cv2.findHomography(src, dst, cv2.RANSAC, 5.0)
    return int(mask.sum()) if mask is not None else 0


def check_dataset(folder: str | Path, settings: DatasetCheckSettings, *, face_embedder=None) -> DatasetReport:
    dataset = scan_dataset(folder, caption_extension=settings.caption_extension, on_bad_image="skip")
    buckets = bucket_sizes(settings.size, settings.bucket_step)
    rows, images, faces, orb = [], [], [], []
    for rec in dataset.records:
        image = open_image(rec.path).rgb
        images.append(image)
        face, n_faces = face_embedder.largest(image) if face_embedder else (None, None)
        faces.append(face)
        orb.append(_orb(image))
        bw, bh = nearest_bucket(rec.width, rec.height, buckets)
        rows.append({
            "file": rec.path.name, "width": rec.width, "height": rec.height, "aspect": round(rec.width / rec.height, 3),
            "bucket": f"{bw}x{bh}", "caption": rec.caption_from_file, "faces": n_faces,
            "face_px": round(face.height) if face else None,
            "face_share": round(face.height / rec.height, 3) if face else None,
            "det_score": round(face.det_score, 3) if face else None,
            "sharpness": round(sharpness(image, face.bbox if face else None), 1),
        })
    duplicates = {i: [] for i in range(len(rows))}
    for i, j in itertools.combinations(range(len(rows)), 2):
        same_face = faces[i] is not None and faces[j] is not None and float(faces[i].embedding @ faces[j].embedding) >= DUPLICATE_FACE
        if same_face or homography_inliers(orb[i], orb[j]) >= DUPLICATE_INLIERS:
            duplicates[i].append(rows[j]["file"])
            duplicates[j].append(rows[i]["file"])
    with_face = [i for i, f in enumerate(faces) if f is not None]
    loo = {}
    if len(with_face) >= 3:
        embs = normalise(np.stack([faces[i].embedding for i in with_face]))
        total = embs.sum(0)
        for k, i in enumerate(with_face):
            loo[i] = float(normalise(total - embs[k]) @ embs[k])
    median = float(np.median(list(loo.values()))) if loo else math.nan
    for i, row in enumerate(rows):
        row["identity_loo"] = round(loo[i], 3) if i in loo else None
        row["near_duplicates"] = ", ".join(duplicates[i])
        flags = []
        if face_embedder is not None and faces[i] is None:
            flags.append("no face")
        if (row["faces"] or 0) > 1:
            flags.append(f"{row['faces']} faces")
        if row["face_share"] is not None and row["face_share"] < SMALL_FACE:
            flags.append("small face")
        if row["sharpness"] < SHARPNESS_MIN:
            flags.append("blurry")
        if duplicates[i]:
            flags.append(f"near-duplicate of {', '.join(duplicates[i])}")
        if i in loo and loo[i] < median - OUTLIER_MARGIN:
            flags.append("identity outlier")
        if not row["caption"]:
            flags.append("no caption")
        row["flags"] = "; ".join(flags)
    table = pd.DataFrame(rows)
    summary = {
        "images": len(rows), "skipped": dataset.skipped, "with_face": len(with_face) if face_embedder else None,
        "median_identity_loo": median, "buckets": table["bucket"].value_counts().to_dict(),
        "flagged": int((table["flags"] != "").sum()),
    }
    return DatasetReport(table, contact_sheet(images, rows), summary)


def contact_sheet(images: list[Image.Image], rows: list[dict], thumb: int = 192) -> Image.Image:
    cols = max(1, min(6, math.ceil(math.sqrt(len(images)))))
    lines = 4
    label_font = font(11)
    cell_h = thumb + 14 * lines
    sheet = Image.new("RGB", (cols * thumb, max(1, math.ceil(len(images) / cols)) * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (image, row) in enumerate(zip(images, rows)):
        x, y = (k % cols) * thumb, (k // cols) * cell_h
        small = image.copy()
        small.thumbnail((thumb - 4, thumb - 4))
        sheet.paste(small, (x + (thumb - small.width) // 2, y + (thumb - small.height) // 2))
        draw.text((x + 3, y + thumb), row["file"][:30], fill="black", font=label_font)
        detail = f"{row['width']}x{row['height']} -> {row['bucket']}" + (f", face {row['face_share']:.0%}" if row["face_share"] else "")
        draw.text((x + 3, y + thumb + 13), detail, fill=(60, 60, 60), font=label_font)
        for n, line in enumerate(wrap(draw, row["flags"], label_font, thumb - 6)[:2]):
            draw.text((x + 3, y + thumb + 26 + 13 * n), line, fill=(190, 0, 0), font=label_font)
    return sheet
