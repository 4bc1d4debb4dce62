"""Placeholder vectors: how an embedding's N vectors enter a prompt, for training and for sampling.

As in A1111, nothing is added to the tokenizer. A prompt is tokenized as usual; wherever the token ids
of the embedding's name appear they are replaced by N placeholder ids just above the vocabulary
(49408, 49409, ...). Each text encoder's token-embedding table is wrapped by a `SplicedEmbedding` that
looks up ordinary ids in the frozen table and placeholder ids in the N extra rows. Only those rows are
ever trainable; the vocabulary matrix never goes through the optimizer. Because matching is by token ids,
any name works, including one that already is a vocabulary word.

Other embeddings a prompt names (`titk/embeddings/library.py`) take ids from `FROZEN_BASE` on, above any
active embedding's range, and their rows form a second block that is never trained.

Under kohya semantics the name is found as kohya finds it (`kohya_ids`): as text, not token ids.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..config import CONTEXT_TOKENS
from ..errors import TitkError

MAX_VECTORS = CONTEXT_TOKENS - 2  # one prompt chunk holds 75 tokens besides start and end
FROZEN_BASE = MAX_VECTORS  # offset above the vocabulary of the first frozen row: no active range reaches it


class SplicedEmbedding(nn.Module):
    """A frozen token-embedding table with extra rows (the TI vectors) for ids at and above its size."""

    def __init__(self, base: nn.Embedding):
        super().__init__()
        # The very same frozen Parameter under the same name: state dicts and key names do not change.
        self.weight = base.weight
        self.padding_idx = base.padding_idx
        self.vocab_size = base.num_embeddings
        self.set_rows(None)
        self.set_frozen(None)
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

    @property
    def frozen(self) -> torch.Tensor | None:
        """Other embeddings' rows [M, width], behind ids from vocab + FROZEN_BASE on; never trained."""
        return self.__dict__["_frozen"]

    def set_frozen(self, rows: torch.Tensor | None) -> None:
        self.__dict__["_frozen"] = None if rows is None else rows.detach()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        is_extra = ids >= self.vocab_size
        out = nn.functional.embedding(ids.masked_fill(is_extra, 0), self.weight, self.padding_idx)
        if self.capture is not None:
            out = out.detach().requires_grad_(True)
            self.capture.append((ids, out))
        if bool(is_extra.any()):
            offset = ids - self.vocab_size
            active = is_extra & (offset < FROZEN_BASE)
            for used, block, local in ((active, self.extra, offset), (offset >= FROZEN_BASE, self.frozen, offset - FROZEN_BASE)):
                if not bool(used.any()):
                    continue
                if block is None or int(local[used].max()) >= len(block):
                    raise RuntimeError("placeholder ids in a prompt but no matching embedding vectors are set")
                rows = block[local.masked_fill(~used, 0)].to(out.device, out.dtype)
                out = torch.where(used[..., None], rows, out)
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
def init_vectors(tokenizer, table: torch.Tensor, text: str, n: int, mode: str, truncate: bool, positions: bool = False) -> torch.Tensor:
    """N initial vectors from the init text's token rows, without start/end tokens (`positions`: `table`
    holds one row per token of the text, in order, such as the encoder's outputs, instead of the vocabulary).

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
    index = list(range(len(ids))) if positions else ids
    rows = table[torch.tensor(index, device=table.device)].float().cpu()
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


def kohya_token_strings(name: str, n_vectors: int) -> list[str]:
    """The strings kohya adds to its tokenizer for N vectors: name, name1, …, name{N-1}."""
    return [name] + [f"{name}{i}" for i in range(1, n_vectors)]


def kohya_ids(tokenizer, text: str, name: str, n_vectors: int, vocab_size: int) -> list[int]:
    """The caption's token ids as kohya's train_textual_inversion.py gets them, placeholders in place.

    kohya replaces the name in the caption text by "name name1 … name{N-1}" (for N > 1), then its
    tokenizer, holding those strings as added tokens, cuts them out of the text before BPE: anywhere,
    inside a longer word too ("ohwxman" holds "ohwx"), longest first, case-sensitive (the slow
    CLIPTokenizer of kohya's pinned transformers does not lowercase before matching added tokens). Each
    piece between them is tokenized on its own, so "myohwx" gives "my</w>", not the BPE pieces of a word.
    """
    strings = kohya_token_strings(name, n_vectors)
    if n_vectors > 1:
        text = text.replace(name, " ".join(strings))
    found = re.compile("|".join(re.escape(s) for s in sorted(strings, key=len, reverse=True)))
    ids, pos = [], 0
    for m in found.finditer(text):
        ids += _plain_ids(tokenizer, text[pos : m.start()]) + [vocab_size + strings.index(m.group())]
        pos = m.end()
    return ids + _plain_ids(tokenizer, text[pos:])


def _plain_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, verbose=False).input_ids if text.strip() else []


def tokenize_with_placeholders(tokenizer, prompts: list[str], name: str | None, n_vectors: int, vocab_size: int) -> torch.Tensor:
    """kohya's plain-text prompts: [B, 77] ids with the name found as kohya finds it (`kohya_ids`); start,
    end and padding as the tokenizer defines them; text beyond 75 tokens is cut, as kohya's single chunk."""
    max_len = tokenizer.model_max_length
    rows = []
    for prompt in prompts:
        ids = kohya_ids(tokenizer, prompt, name, n_vectors, vocab_size) if name else _plain_ids(tokenizer, prompt)
        start = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]  # T5 has none
        ids = start + ids[: max_len - 1 - len(start)] + [tokenizer.eos_token_id]
        rows.append(ids + [tokenizer.pad_token_id] * (max_len - len(ids)))
    return torch.tensor(rows, dtype=torch.long)


def prompt_has_name(tokenizer, prompt: str, name: str, semantics: str = "a1111") -> bool:
    """Whether the name reaches the encoder in this prompt's first chunk, as the semantics find it."""
    if semantics == "kohya":
        vocab = len(tokenizer)
        return any(i >= vocab for i in kohya_ids(tokenizer, prompt, name, 1, vocab)[: tokenizer.model_max_length - 2])
    ids = tokenizer(prompt, add_special_tokens=False, verbose=False).input_ids
    return bool(find_name(ids[: tokenizer.model_max_length - 2], name_token_ids(tokenizer, name)))
