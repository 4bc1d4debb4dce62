"""Where training starts: new vectors from the init text, or an existing embedding file trained further.

`embedding.init_from` is A1111's "train an existing embedding" and kohya's `--weights`. The vector count
comes from the file (kohya asserts that `--num_vectors_per_token` equals it; titk refuses a different
`embedding.vectors` the same way). Under A1111 semantics the update count continues from the step stored
in the file (`train_embedding`: `initial_step = embedding.step or 0`), so `max_steps` and the schedule's
steps are absolute: entries at or before the file's step are dropped, and a file already at max steps
trains nothing. kohya's `global_step` starts at 0 whatever the file holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import DEFAULT_VECTORS, TrainConfig
from ..embeddings import Embedding
from ..embeddings.formats import read_embedding_file
from ..embeddings.placeholder import MAX_VECTORS, check_vector_count
from ..errors import TitkError


@dataclass(frozen=True)
class Start:
    n_vectors: int
    step: int = 0  # the update count this run continues from
    path: Path | None = None
    format: str | None = None
    embedding: Embedding | None = None

    def describe(self, config: TrainConfig) -> str:
        if self.path is None:
            e = config.embedding
            return f"{self.n_vectors} new vector(s) from init text {e.init_text!r} ({config.init_mode})"
        stored = self.embedding.step
        at = f"continues at step {self.step}" if self.step else "starts at step 0" + (
            f" (kohya's counter; the file says {stored})" if stored else "")
        return f"{self.path} ({self.format}, {self.n_vectors} vector(s), stored step {stored}); {at}"


def read_start(config: TrainConfig, arch=None) -> Start:
    """The run's starting point; with `arch` (from read_architecture), a file for another family is refused."""
    e = config.embedding
    if e.init_from is None:
        return Start(check_vector_count(DEFAULT_VECTORS if e.vectors is None else e.vectors))
    found = read_embedding_file(e.init_from)
    emb, path = found.embedding, found.path
    n = emb.n_vectors
    if not 1 <= n <= MAX_VECTORS:
        raise TitkError(f"{path}: holds {n} vectors; training takes 1..{MAX_VECTORS}")
    if e.vectors is not None and e.vectors != n:
        raise TitkError(f"embedding.vectors: {e.vectors} conflicts with {path}, which holds {n} vectors; leave vectors unset to take the file's")
    if arch is not None:
        check_fits(emb, path, arch)
    step = emb.step if config.train.semantics == "a1111" else 0
    return Start(n, step, path, found.format, emb)


def check_fits(emb: Embedding, path: Path, arch) -> None:
    """The file's tensors against the model's text encoders, read from the UNet's cross-attention width
    (the encoders' widths side by side): no weights are needed to refuse an SD1 file on SD2 or SDXL."""
    spec, width = arch.family.spec, int(arch.unet.get("cross_attention_dim") or 0)
    widths = emb.widths
    required = set(spec.encoder_keys) - set(spec.optional_encoders)  # an SD3 TI of a model without T5 has no t5
    keys_fit = len(widths) == 1 == len(spec.encoders) or set(spec.encoder_keys) >= set(widths) >= required
    if keys_fit and (not width or sum(widths.values()) == width):
        return
    have = " + ".join(f"{k} {w}" for k, w in widths.items())
    made = f", made for {emb.family}" if emb.family else ""
    encoders = " + ".join(spec.encoder_keys)
    raise TitkError(
        f"{path}: this embedding ({have}{made}) does not fit the model ({arch.family.value}: {encoders}, "
        f"width {width}{' together' if len(spec.encoders) > 1 else ''})"
    )
