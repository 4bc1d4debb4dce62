"""Placeholder vectors: how an embedding's N vectors enter a prompt, for training and for sampling.

As in A1111, nothing is added to the tokenizer. A prompt is tokenized as usual; wherever the token ids
of the embedding's name appear they are replaced by N placeholder ids just above the vocabulary
(49408, 49409, ...). Each text encoder's token-embedding table is wrapped by a `SplicedEmbedding` that
looks up ordinary ids in the frozen table and placeholder ids in the N extra rows. Only those rows are
ever trainable; the vocabulary matrix never goes through the optimizer. Because matching is by token ids,
any name works, including one that already is a vocabulary word.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import CONTEXT_TOKENS
from ..errors import TitkError

MAX_VECTORS = CONTEXT_TOKENS - 2  # one prompt chunk holds 75 tokens besides start and end


class SplicedEmbedding(nn.Module):
    """A frozen token-embedding table with extra rows (the TI vectors) for ids at and above its size."""

    def __init__(self, base: nn.Embedding):
        super().__init__()
        # The very same frozen Parameter under the same name: state dicts and key names do not change.
        self.weight = base.weight
        self.padding_idx = base.padding_idx
        self.vocab_size = base.num_embeddings
        self.set_rows(None)
        # When a list, every forward appends (ids, output) with the output a leaf that receives gradients:
        # kohya clips the gradient norm of the whole table, caption-token rows included.
        self.capture: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def num_embeddings(self) -> int:
        return self.vocab_size

    @property
    def extra(self) -> torch.Tensor | None:
        """The active embedding's rows [N, width]."""
        return self.__dict__["_rows"]

    def set_rows(self, rows: torch.Tensor | None) -> None:
        # Written straight into the instance dict: nn.Module would register an nn.Parameter as the
        # encoder's own parameter, and the rows must never appear in its state dict or parameter list.
        self.__dict__["_rows"] = rows

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        is_extra = ids >= self.vocab_size
        out = nn.functional.embedding(ids.masked_fill(is_extra, 0), self.weight, self.padding_idx)
        if self.capture is not None:
            out = out.detach().requires_grad_(True)
            self.capture.append((ids, out))
        if bool(is_extra.any()):
            if self.extra is None or int(ids.max()) >= self.vocab_size + len(self.extra):
                raise RuntimeError("placeholder ids in a prompt but no matching embedding vectors are set")
            rows = self.extra[(ids - self.vocab_size).clamp(min=0)].to(out.dtype)
            out = torch.where(is_extra[..., None], rows, out)
        return out


def splice(text_encoder) -> SplicedEmbedding:
    """Wrap the encoder's token embedding once; return the wrapper (idempotent)."""
    current = text_encoder.get_input_embeddings()
    if isinstance(current, SplicedEmbedding):
        return current
    wrapper = SplicedEmbedding(current)
    text_encoder.set_input_embeddings(wrapper)
    return wrapper


def check_vector_count(n: int) -> int:
    if not 1 <= n <= MAX_VECTORS:
        raise TitkError(f"embedding.vectors: {n} vectors per token is outside 1..{MAX_VECTORS} (a prompt holds 75 tokens)")
    return n


def name_token_ids(tokenizer, name: str) -> list[int]:
    ids = tokenizer(name, add_special_tokens=False).input_ids
    if not ids:
        raise TitkError(f"embedding.name: {name!r} gives no tokens")
    return ids


@torch.no_grad()
def init_vectors(tokenizer, table: torch.Tensor, text: str, n: int, mode: str, truncate: bool) -> torch.Tensor:
    """N initial vectors from the init text's token rows, without start/end tokens.

    `stretch` (A1111): vector i takes init token ⌊i·k/N⌋ of the k tokens, so tokens are spread evenly; the
    OpenAI CLIP encoders first cut the text to N tokens (`truncate`), the OpenCLIP ones do not.
    `cycle` (kohya): vector i takes token i mod k. An empty init text gives zeros.
    """
    check_vector_count(n)
    ids = tokenizer(text, add_special_tokens=False).input_ids if text else []
    if truncate:
        ids = ids[:n]
    out = torch.zeros(n, table.shape[1], dtype=torch.float32)
    if not ids:
        return out
    rows = table[torch.tensor(ids, device=table.device)].float().cpu()
    k = len(ids)
    for i in range(n):
        out[i] = rows[i * k // n] if mode == "stretch" else rows[i % k]
    return out


def find_name(ids: list[int], name_ids: list[int]) -> list[int]:
    """Start positions of the name's token sequence in `ids`, left to right, not overlapping."""
    starts, i, m = [], 0, len(name_ids)
    while i <= len(ids) - m:
        if ids[i : i + m] == name_ids:
            starts.append(i)
            i += m
        else:
            i += 1
    return starts


def tokenize_with_placeholders(tokenizer, prompts: list[str], name: str | None, n_vectors: int, vocab_size: int) -> torch.Tensor:
    """[B, 77] ids with each occurrence of `name` replaced by the N placeholder ids; start, end and padding
    as the tokenizer defines them; text beyond 75 tokens is cut as in a single prompt chunk."""
    max_len = tokenizer.model_max_length
    placeholder = list(range(vocab_size, vocab_size + n_vectors))
    name_ids = name_token_ids(tokenizer, name) if name else []
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False, verbose=False).input_ids
        if name_ids:
            out, pos = [], 0
            for start in find_name(ids, name_ids):
                out += ids[pos:start] + placeholder
                pos = start + len(name_ids)
            ids = out + ids[pos:]
        ids = [tokenizer.bos_token_id] + ids[: max_len - 2] + [tokenizer.eos_token_id]
        rows.append(ids + [tokenizer.pad_token_id] * (max_len - len(ids)))
    return torch.tensor(rows, dtype=torch.long)


def prompt_has_name(tokenizer, prompt: str, name: str) -> bool:
    ids = tokenizer(prompt, add_special_tokens=False, verbose=False).input_ids
    return bool(find_name(ids[: tokenizer.model_max_length - 2], name_token_ids(tokenizer, name)))
