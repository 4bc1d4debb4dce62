"""Face identity: does the generated person look like the person, and like them rather than like copies of
the photos trained on?

Protocol (recorded in every scorecard): only samples of photographic prompts are judged (a face recogniser
does not judge an oil painting; the suite's `photo` says which); the largest face of each image (by box
area); insightface's detector at a pinned det_size; images given to it in BGR; L2-normalised recognition
embeddings; the similarity of a generated face is its cosine to the centroid of the reference faces (and,
as a second figure, its mean cosine to each reference face); an image without a face has no similarity
(NaN) and counts against the detection rate instead of as zero. The references' leave-one-out
self-similarity (each reference face against the centroid of the others) is the ceiling a perfect TI could
reach.

The references are best held out: photos of the person that were not trained on (a sweep holds some of the
dataset out when it is given none). Then the copy index compares each sample's similarity to its nearest
training image with the same figure for the held-out photos: a new photo of the person is as close to the
training set as a sample that generalises (index 0), a sample closer than that copies (above 0).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ...config import IdentitySettings
from ...errors import TitkError
from ...hashing import sha256_file
from ...paths import insightface_root
from ..metrics import mean_pairwise_similarity, normalise
from . import References, Sample, ScoreResult, Scorer


@dataclass
class Face:
    bbox: tuple[float, float, float, float]
    det_score: float
    embedding: np.ndarray  # L2-normalised
    copy_embedding: np.ndarray | None = None  # what the copy index compares, where it is not `embedding`

    @property
    def copy_vector(self) -> np.ndarray:
        return self.embedding if self.copy_embedding is None else self.copy_embedding

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.bbox
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)

    @property
    def height(self) -> float:
        return max(0.0, self.bbox[3] - self.bbox[1])


class FaceEmbedder:
    """Finds faces and embeds them; the toy world supplies its own through this interface."""

    name = "faces"

    def faces(self, image: Image.Image) -> list[Face]:
        raise NotImplementedError

    def largest(self, image: Image.Image) -> tuple[Face | None, int]:
        found = self.faces(image)
        return (max(found, key=lambda f: f.area) if found else None), len(found)

    def protocol(self) -> dict:
        return {}

    # A real face's embedding moves with pose, expression and light, so a copied training face stands out.
    copy_space = "the face recognition embedding"


def resolve_pack(pack: str, root: str | Path | None = None) -> Path:
    """A face pack given as a folder, or by name under <root>/models/<name>/ (never downloaded)."""
    as_path = Path(pack).expanduser()
    if as_path.is_dir():
        folder = as_path
    else:
        folder = Path(root or insightface_root()) / "models" / pack
        if not folder.is_dir():
            raise TitkError(
                f"face pack {pack!r} not found: looked in {folder} (titk never downloads face packs; put the pack "
                f"there, set TITK_INSIGHTFACE_ROOT, or give the pack's folder path)"
            )
    if not list(folder.glob("*.onnx")):
        raise TitkError(f"face pack {folder}: no .onnx models in it")
    return folder


class InsightFaceEmbedder(FaceEmbedder):
    """insightface's FaceAnalysis with any pack (a name or a folder); detection and recognition only."""

    name = "insightface"

    def __init__(self, settings: IdentitySettings):
        import onnxruntime
        from insightface.app import FaceAnalysis

        self.pack_dir = resolve_pack(settings.pack, settings.root)
        det_size, det_thresh = self.det_size, self.det_thresh = settings.det_size, settings.det_thresh
        available = onnxruntime.get_available_providers()
        self.providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # insightface prints each model it finds
                self.app = FaceAnalysis(name=str(self.pack_dir), allowed_modules=["detection", "recognition"], providers=self.providers)
                ctx_id = 0 if "CUDAExecutionProvider" in self.providers else -1
                self.app.prepare(ctx_id=ctx_id, det_size=(det_size, det_size), det_thresh=det_thresh)
        except AssertionError:
            raise TitkError(f"face pack {self.pack_dir}: no face detection model in it") from None
        if "recognition" not in self.app.models:
            raise TitkError(f"face pack {self.pack_dir}: no face recognition model in it")
        self.applied_providers = self.app.models["recognition"].session.get_providers()

    def faces(self, image: Image.Image) -> list[Face]:
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # scikit-image deprecation inside insightface's alignment
            found = self.app.get(bgr)
        return [Face(tuple(float(v) for v in f.bbox), float(f.det_score), np.asarray(f.normed_embedding, dtype=np.float32)) for f in found]

    def protocol(self) -> dict:
        return {
            "face_pack": str(self.pack_dir),
            "face_models": {p.name: sha256_file(p)[:16] for p in sorted(self.pack_dir.glob("*.onnx"))},
            "det_size": self.det_size,
            "det_thresh": self.det_thresh,
            "embedding_dim": int(self.app.models["recognition"].output_shape[1]),
            "providers": self.applied_providers,
        }


class IdentityScorer(Scorer):
    name = "identity"

    def __init__(self, embedder: FaceEmbedder):
        self.embedder = embedder
        self.ref_embeddings: np.ndarray | None = None
        self.train_vectors: np.ndarray | None = None  # the training faces' copy vectors, when the references are held out
        self.copy_baseline = float("nan")

    def prepare(self, refs: References, ctx) -> None:
        faces = [face for face in self._largest(refs.images) if face is not None]
        if not faces:
            where = refs.paths[0].parent if refs.paths else "the references"
            raise TitkError(f"{where}: no face found in any of the {len(refs.images)} reference images; identity needs photos of the person")
        self.ref_embeddings = normalise(np.stack([f.embedding for f in faces]))
        self.centroid = normalise(self.ref_embeddings.mean(0))
        self.ref_count, self.ref_total = len(faces), len(refs.images)
        self.ceiling = self._leave_one_out(self.ref_embeddings)
        self.heldout, self.source = refs.heldout, refs.source
        self.train_count, self.train_total = 0, len(refs.training)
        train = [face for face in self._largest(refs.training) if face is not None]
        if train:
            self.train_vectors = normalise(np.stack([f.copy_vector for f in train]))
            self.train_count = len(train)
            self.copy_baseline = float(self._nearest(normalise(np.stack([f.copy_vector for f in faces]))).mean())

    def _largest(self, images) -> list[Face | None]:
        return [self.embedder.largest(image)[0] for image in images]

    def _nearest(self, vectors: np.ndarray) -> np.ndarray:
        """Each vector's cosine to its nearest training face."""
        return (vectors @ self.train_vectors.T).max(1)

    @staticmethod
    def _leave_one_out(embs: np.ndarray) -> float:
        if len(embs) < 2:
            return float("nan")
        total = embs.sum(0)
        return float(np.mean([normalise(total - e) @ e for e in embs]))

    def score(self, samples: list[Sample], ctx) -> ScoreResult:
        rows, face_embs = [], []
        copies = self.train_vectors is not None
        for sample in samples:
            face, n_faces = self.embedder.largest(sample.image) if sample.photo else (None, 0)
            row = {"photo": sample.photo, "faces": n_faces if sample.photo else np.nan, "face_found": face is not None if sample.photo else None,
                   "det_score": np.nan, "face_px": np.nan, "id_sim": np.nan, "id_sim_pairwise": np.nan}
            if copies:
                row.update({"nearest_train": np.nan, "copy": np.nan})
            if face is not None:
                row.update({
                    "det_score": face.det_score, "face_px": face.height, "id_sim": float(face.embedding @ self.centroid),
                    "id_sim_pairwise": float((self.ref_embeddings @ face.embedding).mean()),
                })
                if copies:
                    nearest = float(self._nearest(normalise(face.copy_vector)[None])[0])
                    row.update({"nearest_train": nearest, "copy": nearest - self.copy_baseline})
            rows.append(row)
            face_embs.append(face.embedding if face is not None else None)

        def mean(column: str, kind: str | None = None) -> float:
            return _nanmean(np.array([r[column] for r, s in zip(rows, samples) if s.photo and kind in (None, s.kind)], dtype=np.float64))

        photos = [r["face_found"] for r in rows if r["photo"]]
        summary = {
            "identity.detection_rate": float(np.mean(photos)) if photos else float("nan"),
            "identity.similarity": mean("id_sim"),
            "identity.similarity_pairwise": mean("id_sim_pairwise"),
            "identity.stability": self._stability(samples, face_embs),
            "identity.ceiling": self.ceiling,
        }
        if copies:
            summary["identity.copy_index"] = mean("copy")
        for kind in sorted({s.kind for s in samples}):
            summary[f"identity.similarity@{kind}"] = mean("id_sim", kind)
        dim = self.ref_embeddings.shape[1]
        faces = np.stack([e if e is not None else np.full(dim, np.nan, np.float32) for e in face_embs]) if rows else np.zeros((0, dim))
        return ScoreResult(rows, summary, arrays={"face_embeddings": faces})

    @staticmethod
    def _stability(samples: list[Sample], embs: list) -> float:
        """Mean pairwise cosine of one prompt's faces across seeds, averaged over prompts."""
        by_prompt: dict[int, list] = {}
        for sample, emb in zip(samples, embs):
            if emb is not None:
                by_prompt.setdefault(sample.prompt_index, []).append(emb)
        values = [mean_pairwise_similarity(np.stack(v)) for v in by_prompt.values() if len(v) >= 2]
        return float(np.mean(values)) if values else float("nan")

    def protocol(self) -> dict:
        out = {
            **self.embedder.protocol(),
            "prompts": "photographic prompts only (the suite's photo); other samples have no identity values",
            "multi_face_policy": "largest face by box area",
            "no_face_policy": "similarity NaN (excluded from means); reported as the detection rate",
            "reference_policy": "cosine to the centroid of the reference faces; also mean cosine to each reference",
            "references": self.source or ("held-out photos (not trained on)" if self.heldout else "the training images (not held out: no copy index)"),
            "references_held_out": self.heldout,
            "reference_faces": f"{self.ref_count} of {self.ref_total} reference images",
            "ceiling": "mean leave-one-out cosine of reference faces to the centroid of the others",
        }
        if self.train_vectors is not None:
            out.update({
                "copy_index": f"mean over samples of the cosine of {self.embedder.copy_space} to the nearest training image's, "
                              "minus the same mean for the held-out photos (the copy baseline)",
                "copy_baseline": self.copy_baseline,
                "training_faces": f"{self.train_count} of {self.train_total} training images",
            })
        return out


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")
