"""Other embeddings a prompt may name (a style beside the person): a folder of files loaded frozen.

As A1111's embeddings folder (`modules/textual_inversion/textual_inversion.py`, `EmbeddingDatabase`): every
embedding file in the folder and its sub-folders is read, named by its file stem (an image embedding by its
stored name), and found in a prompt by that name's token ids (`sd_hijack_clip.tokenize_line`). A file that
cannot be read or does not fit the loaded model is skipped with one warning line, as A1111 skips it. Their
vectors are never trained: they sit in each encoder's frozen block (`SplicedEmbedding.frozen`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import TitkError
from .fit import vectors_for
from .formats import IMAGE_SUFFIXES, PICKLE_SUFFIXES, read_embedding_file
from .placeholder import MAX_VECTORS

SUFFIXES = PICKLE_SUFFIXES | IMAGE_SUFFIXES | {".safetensors"}


@dataclass(frozen=True)
class FrozenEmbedding:
    name: str  # the word a prompt uses for it
    vectors: dict[str, torch.Tensor]  # per encoder key, [N, width]
    path: Path

    @property
    def n_vectors(self) -> int:
        return len(next(iter(self.vectors.values())))


def warn_line(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def read_library(folder: str | Path, bundle, warn: Callable[[str], None] = warn_line) -> list[FrozenEmbedding]:
    """The folder's embeddings that fit `bundle`, in path order; the first of two with one name is kept."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise TitkError(f"model.embeddings_dir: {folder} is not a folder")
    found: dict[str, FrozenEmbedding] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES):
        # A1111 shows <name>.preview.png beside an embedding as its picture; it is no embedding itself.
        if path.stem.lower().endswith(".preview") or path.stat().st_size == 0:
            continue
        try:
            file = read_embedding_file(path)
            vectors = vectors_for(file.embedding, bundle, where=str(path))
        except TitkError as exc:
            warn(f"{exc}; skipped")
            continue
        n = len(next(iter(vectors.values())))
        if n > MAX_VECTORS:
            warn(f"{path}: {n} vectors do not fit one 75-token prompt chunk; skipped")
        elif file.token in found:
            warn(f"{path}: the name {file.token!r} is already taken by {found[file.token].path}; skipped")
        else:
            found[file.token] = FrozenEmbedding(file.token, {k: v.detach().float().cpu() for k, v in vectors.items()}, path)
    return list(found.values())
