"""`titk dataset check`: what is in a folder of photos of a person, before any training.

Per image: size and aspect with the bucket it falls in, whether a caption exists (flagged only when the
training template uses [filewords]), faces found and the size of the largest, sharpness (variance of the
Laplacian on the largest face, or the image), near-duplicates (many matching ORB features under one
homography, or nearly identical faces), and who it shows: the faces are grouped by person and the largest
group is taken as the person the folder is of; every other face is flagged as an intruder.
"""

from __future__ import annotations

import itertools
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from scipy.cluster.hierarchy import fcluster, linkage

from ..config import SEMANTICS_DEFAULTS, DatasetCheckSettings, TrainSettings
from ..data.dataset import bucket_sizes, nearest_bucket, scan_dataset
from ..data.images import open_image
from ..data.prompts import FILEWORDS, read_template
from ..drawing import font, wrap
from ..files import atomic_path
from .metrics import normalise

SHARPNESS_MIN = 30.0  # Laplacian variance at 256 px: sharp photos measured 55–460, blurred copies under 20
SMALL_FACE = 0.10  # largest face shorter than this share of the image height
DUPLICATE_INLIERS = 40  # ORB matches consistent with one homography (a re-crop measured 366; other photos ≤ 8)
DUPLICATE_FACE = 0.95  # face cosine (the same face re-cropped measured 0.98; other photos ≤ 0.80)
# Two groups of faces are one person while their mean pairwise cosine reaches this. The test pack measured
# same person ≥ 0.52 and different people ≤ 0.23; ArcFace-style recognisers put one person above about 0.3.
SAME_PERSON = 0.30
DEFAULT_TEMPLATE = SEMANTICS_DEFAULTS[TrainSettings().semantics]["template"]  # what `titk train` uses unset

OnProgress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class DatasetReport:
    table: pd.DataFrame
    sheet: Image.Image
    summary: dict = field(default_factory=dict)

    def save(self, folder: str | Path) -> dict[str, Path]:
        """The table (CSV and Parquet) and the contact sheet, all or nothing: a failure (a full disk) removes
        what this call wrote, and the folder if it made it."""
        folder = Path(folder)
        paths = {"table": folder / "dataset_check.csv", "parquet": folder / "dataset_check.parquet", "sheet": folder / "contact_sheet.png"}
        writers = {"table": lambda f: self.table.to_csv(f, index=False), "parquet": lambda f: self.table.to_parquet(f, index=False),
                   "sheet": lambda f: self.sheet.save(f, format="PNG")}
        fresh, written = not folder.exists(), []
        try:
            for name, path in paths.items():
                with atomic_path(path) as tmp:
                    writers[name](tmp)
                written.append(path)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            if fresh:
                shutil.rmtree(folder, ignore_errors=True)
            raise
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


@dataclass
class Identity:
    """Who each face shows. `person` marks the faces of the folder's person (the largest group of faces alike
    enough to be one person); `similarity` is each face's cosine to that person's mean face, which leaves the
    face itself out, so the person's own photos score as an outsider would against the rest."""

    person: np.ndarray  # bool per face
    similarity: np.ndarray  # NaN where there is no person
    group: np.ndarray  # a person label per face
    note: str = ""


def find_person(embeddings: np.ndarray) -> Identity:
    e = normalise(embeddings)
    n = len(e)
    if n < 2:
        return Identity(np.ones(n, bool), np.full(n, np.nan), np.ones(n, int))
    # Average linkage: one look-alike face cannot chain two people into one group, as single linkage would.
    group = fcluster(linkage(e, "average", metric="cosine"), 1 - SAME_PERSON, criterion="distance")
    sizes = np.bincount(group)
    if sizes.max() == 1:
        return Identity(np.zeros(n, bool), np.full(n, np.nan), group, f"no two of the {n} faces are the same person")
    tied = np.flatnonzero(sizes == sizes.max())
    sims = e @ e.T
    label = max(tied, key=lambda g: sims[np.ix_(group == g, group == g)].mean())
    person = group == label
    centroids = normalise(e[person].sum(0) - e * person[:, None])
    note = f"{len(tied)} people have {sizes.max()} photos each; the most alike group is taken as the person" if len(tied) > 1 else ""
    return Identity(person, np.einsum("ij,ij->i", centroids, e), group, note)


def template_uses_captions(template: str, template_dir: str | Path | None = None) -> bool:
    return any(FILEWORDS in line for line in read_template(template, template_dir))


def check_dataset(
    folder: str | Path, settings: DatasetCheckSettings, *, face_embedder=None, template: str = DEFAULT_TEMPLATE,
    template_dir: str | Path | None = None, on_progress: OnProgress | None = None,
) -> DatasetReport:
    uses_captions = template_uses_captions(template, template_dir)
    dataset = scan_dataset(folder, caption_extension=settings.caption_extension, on_bad_image="skip")
    buckets = bucket_sizes(settings.size, settings.bucket_step)
    report = on_progress or (lambda stage, done, total: None)
    rows, images, faces, orb = [], [], [], []
    for n, rec in enumerate(dataset.records):
        report("scanning", n, len(dataset.records))
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
    report("scanning", len(rows), len(rows))
    pairs = list(itertools.combinations(range(len(rows)), 2))
    duplicates = {i: [] for i in range(len(rows))}
    for n, (i, j) in enumerate(pairs):
        if n % 50 == 0:
            report("comparing", n, len(pairs))
        same_face = faces[i] is not None and faces[j] is not None and float(faces[i].embedding @ faces[j].embedding) >= DUPLICATE_FACE
        if same_face or homography_inliers(orb[i], orb[j]) >= DUPLICATE_INLIERS:
            duplicates[i].append(rows[j]["file"])
            duplicates[j].append(rows[i]["file"])
    report("comparing", len(pairs), len(pairs))
    with_face = [i for i, f in enumerate(faces) if f is not None]
    identity = find_person(np.stack([faces[i].embedding for i in with_face]) if with_face else np.zeros((0, 1)))
    who = {i: k for k, i in enumerate(with_face)}
    for i, row in enumerate(rows):
        k = who.get(i)
        row["person"] = bool(identity.person[k]) if k is not None and identity.person.any() else None
        row["identity_sim"] = round(float(identity.similarity[k]), 3) if k is not None and not np.isnan(identity.similarity[k]) else None
        row["near_duplicates"] = ", ".join(duplicates[i])
        flags = []
        if face_embedder is not None and faces[i] is None:
            flags.append("no face")
        if (row["faces"] or 0) > 1:
            flags.append(f"{row['faces']} faces")
        if row["person"] is None and k is not None and len(with_face) > 1:
            flags.append("matches no other face")
        if row["person"] is False:
            alike = [rows[with_face[m]]["file"] for m in np.flatnonzero(identity.group == identity.group[k]) if m != k]
            flags.append("intruder: another person" + (f" (also in {', '.join(alike)})" if alike else ""))
        if row["face_share"] is not None and row["face_share"] < SMALL_FACE:
            flags.append("small face")
        if row["sharpness"] < SHARPNESS_MIN:
            flags.append("blurry")
        if duplicates[i]:
            flags.append(f"near-duplicate of {', '.join(duplicates[i])}")
        if uses_captions and not row["caption"]:
            flags.append("no caption")
        row["flags"] = "; ".join(flags)
    table = pd.DataFrame(rows)
    summary = {
        "images": len(rows), "skipped": dataset.skipped, "with_face": len(with_face) if face_embedder else None,
        "person": int(identity.person.sum()), "intruders": sum(r["person"] is False for r in rows),
        "identity_note": identity.note,
        "template": template, "template_uses_captions": uses_captions,
        "buckets": table["bucket"].value_counts().to_dict(), "flagged": int((table["flags"] != "").sum()),
    }
    return DatasetReport(table, contact_sheet(images, rows, faces), summary)


PERSON, INTRUDER, OTHER = (0, 170, 60), (230, 0, 0), (255, 200, 0)


def contact_sheet(images: list[Image.Image], rows: list[dict], faces: list | None = None, thumb: int = 192) -> Image.Image:
    """Thumbnails with the largest face boxed and its similarity to the person; intruders framed in red."""
    faces = faces or [None] * len(images)
    cols = max(1, min(6, math.ceil(math.sqrt(len(images)))))
    lines = 4
    label_font = font(11)
    cell_h = thumb + 14 * lines
    sheet = Image.new("RGB", (cols * thumb, max(1, math.ceil(len(images) / cols)) * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (image, row, face) in enumerate(zip(images, rows, faces)):
        x, y = (k % cols) * thumb, (k // cols) * cell_h
        small = image.copy()
        small.thumbnail((thumb - 8, thumb - 8))
        left, top = x + (thumb - small.width) // 2, y + (thumb - small.height) // 2
        sheet.paste(small, (left, top))
        if row.get("person") is False:
            draw.rectangle((x + 1, y + 1, x + thumb - 2, y + thumb - 2), outline=INTRUDER, width=3)
        if face is not None:
            scale = small.width / image.width
            box = [left + face.bbox[0] * scale, top + face.bbox[1] * scale, left + face.bbox[2] * scale, top + face.bbox[3] * scale]
            colour = PERSON if row.get("person") else INTRUDER if row.get("person") is False else OTHER
            draw.rectangle(box, outline=colour, width=2)
            if row.get("identity_sim") is not None:
                text = f"{row['identity_sim']:.2f}"
                tx, ty = max(x + 3, box[0]), max(y + 3, box[1] - 14)
                draw.rectangle(draw.textbbox((tx, ty), text, font=label_font), fill=colour)
                draw.text((tx, ty), text, fill="white" if colour != OTHER else "black", font=label_font)
        draw.text((x + 3, y + thumb), row["file"][:30], fill="black", font=label_font)
        detail = f"{row['width']}x{row['height']} -> {row['bucket']}" + (f", face {row['face_share']:.0%}" if row["face_share"] else "")
        draw.text((x + 3, y + thumb + 13), detail, fill=(60, 60, 60), font=label_font)
        # Warnings in amber, so that red on the sheet means another person and nothing else.
        for n, line in enumerate(wrap(draw, row["flags"], label_font, thumb - 6)[:2]):
            draw.text((x + 3, y + thumb + 26 + 13 * n), line, fill=INTRUDER if row.get("person") is False else (160, 80, 0), font=label_font)
    return sheet
