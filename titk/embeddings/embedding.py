"""The one Embedding value every file format reads into and writes from."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import TitkError

# Encoder keys by width, and the family a set of widths means.
WIDTH_KEYS = {768: "clip_l", 1024: "clip_h", 1280: "clip_g", 4096: "t5"}
FAMILY_BY_KEYS = {
    ("clip_l",): "sd1",
    ("clip_h",): "sd2",
    ("clip_g", "clip_l"): "sdxl",
    ("clip_g", "clip_l", "t5"): "sd3",
}
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

    def __post_init__(self):
        if not self.vectors:
            raise TitkError(f"embedding {self.name!r} has no vectors")
        fixed = {}
        for key, t in self.vectors.items():
            t = torch.as_tensor(t).detach().to("cpu", torch.float32)
            if t.ndim == 1:
                t = t[None]
            if t.ndim != 2:
                raise TitkError(f"embedding {self.name!r}: {key} has shape {tuple(t.shape)}, expected [vectors, width]")
            fixed[key] = t.contiguous()
        counts = {t.shape[0] for t in fixed.values()}
        if len(counts) != 1:
            raise TitkError(f"embedding {self.name!r}: encoders disagree on the number of vectors ({sorted(counts)})")
        self.vectors = fixed
        if self.family is None:
            self.family = FAMILY_BY_KEYS.get(tuple(sorted(fixed)))

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
    def from_single(cls, name: str, tensor: torch.Tensor, **meta) -> Embedding:
        tensor = torch.as_tensor(tensor)
        key = WIDTH_KEYS.get(tensor.shape[-1], "clip_l" if tensor.shape[-1] < 1024 else f"w{tensor.shape[-1]}")
        return cls(name, {key: tensor}, **meta)
