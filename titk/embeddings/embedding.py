"""The one Embedding value every file format reads into and writes from."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import TitkError
from ..families import KEY_BY_WIDTH, family_by_encoders
ALLOWED_NAME_EXTRA = "._- "


def check_name(name: str, where: str = "embedding.name") -> str:
    """A1111 keeps only letters, digits and `._- ` in names; titk refuses the others instead of dropping them."""
    bad = sorted({c for c in name if not (c.isalnum() or c in ALLOWED_NAME_EXTRA)})
    if not name.strip() or bad:
        shown = "".join(bad) if bad else "(empty)"
        raise TitkError(f"{where}: {name!r} is not a usable name ({shown!r} not allowed; use letters, digits and ._- )")
    return name


@dataclass
class Embedding:
    """A name and, per text encoder, a float32 tensor [n_vectors, width], plus what it was trained on."""

    name: str
    vectors: dict[str, torch.Tensor]
    step: int = 0
    base_model_hash: str | None = None
    base_model_name: str | None = None
    family: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    # OneTrainer's "output embeddings" (`*_out` keys), which live in the encoder's output space; kept so
    # that OneTrainer files round-trip, and dropped by formats that have no place for them.
    output_vectors: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        if not self.vectors:
            raise TitkError(f"embedding {self.name!r} has no vectors")
        self.vectors = {k: self._matrix(k, t) for k, t in self.vectors.items()}
        self.output_vectors = {k: self._matrix(k, t) for k, t in self.output_vectors.items()}
        counts = {t.shape[0] for t in self.vectors.values()}
        if len(counts) != 1:
            raise TitkError(f"embedding {self.name!r}: encoders disagree on the number of vectors ({sorted(counts)})")
        if self.family is None:
            self.family = family_by_encoders(self.widths)

    def _matrix(self, key: str, t) -> torch.Tensor:
        t = torch.as_tensor(t).detach().to("cpu", torch.float32)
        if t.ndim == 1:
            t = t[None]
        if t.ndim != 2:
            raise TitkError(f"embedding {self.name!r}: {key} has shape {tuple(t.shape)}, expected [vectors, width]")
        return t.contiguous()

    @property
    def n_vectors(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    @property
    def widths(self) -> dict[str, int]:
        return {k: t.shape[1] for k, t in self.vectors.items()}

    @property
    def single(self) -> torch.Tensor:
        """The tensor of a one-encoder embedding (SD1, SD2)."""
        if len(self.vectors) != 1:
            raise TitkError(f"embedding {self.name!r} has {len(self.vectors)} encoders ({', '.join(self.vectors)}); this format holds one")
        return next(iter(self.vectors.values()))

    @classmethod
    def from_single(cls, name: str, tensor: torch.Tensor, output_vectors: dict | None = None, **meta) -> Embedding:
        """A one-encoder embedding; the encoder key follows from the width (768 clip_l, 1024 clip_h, ...)."""
        tensor = torch.as_tensor(tensor)
        key = KEY_BY_WIDTH.get(tensor.shape[-1], "clip_l" if tensor.shape[-1] < 1024 else f"w{tensor.shape[-1]}")
        outputs = {key: v for v in (output_vectors or {}).values()}
        return cls(name, {key: tensor}, output_vectors=outputs, **meta)
