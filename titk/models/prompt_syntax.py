"""A1111's prompt syntax and its 75-token chunks, for training prompts and for sampling alike.

Behaviour of A1111 v1.10.1 (`prompt_parser.parse_prompt_attention`, `sd_hijack_clip.tokenize_line` and
`process_tokens`, `sd_emphasis.EmphasisOriginal`):

- `(text)` multiplies the weight of its tokens by 1.1, `[text]` by 1/1.1, `(text:w)` by w; brackets nest
  (multiplying), an unclosed bracket acts to the end of the prompt, a closing one with no opener is text.
  `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are the characters themselves; a lone backslash vanishes.
- `BREAK` (a word, in capitals, at weight 1) closes the current chunk.
- Every run of text of one weight is tokenized on its own; tokens fill chunks of 75, each framed by start
  and end tokens and padded to 77. At a full chunk whose last comma lies at most 20 tokens back, the tokens
  after that comma move to the next chunk. An embedding's vectors never straddle two chunks.
- After the encoder, each chunk's hidden states are multiplied by their tokens' weights and rescaled so that
  their mean is what it was before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..config import COMMA_BACKTRACK, CONTEXT_TOKENS
from ..errors import TitkError

CHUNK = CONTEXT_TOKENS - 2  # prompt tokens in one chunk, besides its start and end tokens
ROUND, SQUARE = 1.1, 1 / 1.1
BREAK = "BREAK"
_BREAK_WEIGHT = -1.0  # A1111 marks a BREAK by this weight; brackets around it multiply it like any other
_SPLIT_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_WEIGHT_CLOSE = re.compile(r":([+-]?[.\d]+)\)")
_PLAIN = re.compile(r"[^\\()\[\]:]+")
_ESCAPED = "()[]\\"


def parse(prompt: str) -> list[tuple[str, float]]:
    """The prompt as (text, weight) runs, adjacent runs of equal weight merged; a BREAK is (BREAK, -1)."""
    runs: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    def text(s: str) -> None:
        for i, part in enumerate(_SPLIT_BREAK.split(s)):
            if i:
                runs.append([BREAK, _BREAK_WEIGHT])
            runs.append([part, 1.0])

    i = 0
    while i < len(prompt):
        c = prompt[i]
        if c == "\\":
            escaped = prompt[i + 1 : i + 2]
            literal = escaped if escaped and escaped in _ESCAPED else ""
            runs.append([literal, 1.0])
            i += 1 + len(literal)
        elif c == "(":
            round_open.append(len(runs))
            i += 1
        elif c == "[":
            square_open.append(len(runs))
            i += 1
        elif c == ":" and (m := _WEIGHT_CLOSE.match(prompt, i)):
            if round_open:
                scale(round_open.pop(), _weight(m.group(1), prompt))
            else:
                text(m.group(0))
            i = m.end()
        elif c == ")" and round_open:
            scale(round_open.pop(), ROUND)
            i += 1
        elif c == "]" and square_open:
            scale(square_open.pop(), SQUARE)
            i += 1
        elif c in ":)]":
            text(c)
            i += 1
        else:
            m = _PLAIN.match(prompt, i)
            text(m.group(0))
            i = m.end()
    for start in round_open:
        scale(start, ROUND)
    for start in square_open:
        scale(start, SQUARE)
    if not runs:
        runs = [["", 1.0]]
    merged = [runs[0]]
    for run in runs[1:]:
        if run[1] == merged[-1][1]:
            merged[-1][0] += run[0]
        else:
            merged.append(run)
    return [(t, w) for t, w in merged]


def _weight(value: str, prompt: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise TitkError(f"prompt {prompt!r}: the emphasis weight {value!r} is not a number") from None


@dataclass(frozen=True)
class Name:
    """An embedding's name as token ids and the placeholder ids its vectors take in a prompt."""

    ids: tuple[int, ...]
    placeholders: tuple[int, ...]


def chunk_tokens(
    runs: list[tuple[list[int] | None, float]], names: list[Name] = (), backtrack: int = COMMA_BACKTRACK, comma: int | None = None,
    size: int = CHUNK,
) -> list[tuple[list[int], list[float]]]:
    """Token runs (ids, weight; None ids for a BREAK) → chunk bodies of at most `size` (ids, weights), unframed."""
    by_first: dict[int, list[Name]] = {}
    for name in sorted(names, key=lambda n: -len(n.ids)):  # the longest name wins where several start alike
        by_first.setdefault(name.ids[0], []).append(name)
    chunks: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal ids, weights, last_comma
        chunks.append((ids, weights))
        ids, weights, last_comma = [], [], -1

    for tokens, weight in runs:
        if tokens is None:
            close()
            continue
        pos = 0
        while pos < len(tokens):
            token = tokens[pos]
            if token == comma:
                last_comma = len(ids)
            elif backtrack and len(ids) == size and last_comma != -1 and len(ids) - last_comma <= backtrack:
                # Text after the chunk's last comma moves on whole rather than being cut mid-phrase.
                cut = last_comma + 1
                moved_ids, moved_weights = ids[cut:], weights[cut:]
                ids, weights = ids[:cut], weights[:cut]
                close()
                ids, weights = moved_ids, moved_weights
            if len(ids) == size:
                close()
            name = next((n for n in by_first.get(token, ()) if tuple(tokens[pos : pos + len(n.ids)]) == n.ids), None)
            if name is None:
                ids.append(token)
                weights.append(weight)
                pos += 1
                continue
            if len(ids) + len(name.placeholders) > size:
                close()
            ids += name.placeholders
            weights += [weight] * len(name.placeholders)
            pos += len(name.ids)
    if ids or not chunks:
        close()
    return chunks


def frame(body: list[int], weights: list[float], bos: int | None, eos: int, pad: int) -> tuple[list[int], list[float]]:
    """One chunk of 77: start, the body, end, then padding (SD1 pads with the end token, OpenCLIP with id 0;
    T5 has no start token, so its chunk ends in one more pad)."""
    rest = CHUNK - len(body)
    start = [] if bos is None else [bos]
    rest += 1 - len(start)
    return [*start, *body, eos] + [pad] * rest, [1.0] * len(start) + [*weights, 1.0] + [1.0] * rest


def _runs(tokenizer, prompt: str) -> list[tuple[list[int] | None, float]]:
    return [
        (None if text == BREAK and weight == _BREAK_WEIGHT else _ids(tokenizer, text), weight)
        for text, weight in parse(prompt)
    ]


def _comma(tokenizer) -> int:
    comma = tokenizer.convert_tokens_to_ids(",</w>")  # CLIP's BPE; a SentencePiece vocabulary (T5) has "," instead
    return tokenizer.convert_tokens_to_ids(",") if comma == tokenizer.unk_token_id else comma


def prompt_chunks(tokenizer, prompt: str, names: list[Name] = (), backtrack: int = COMMA_BACKTRACK) -> list[tuple[list[int], list[float]]]:
    """The framed chunks (77 ids, 77 weights) of one prompt, as A1111 builds them."""
    return [
        frame(ids, weights, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
        for ids, weights in chunk_tokens(_runs(tokenizer, prompt), names, backtrack, _comma(tokenizer))
    ]


def prompt_sequence(tokenizer, prompt: str, names: list[Name], length: int) -> tuple[list[int], list[float]]:
    """One prompt as a single sequence of `length` ids and weights, as SD3's and Flux's pipelines give each
    encoder the prompt: start token (CLIP), as many tokens as fit, end token, padding; what does not fit is cut.
    The syntax, emphasis and names are A1111's as in chunks, with no comma backtrack, and a BREAK ends what is read."""
    start = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]  # T5 has none
    body, weights = chunk_tokens(_runs(tokenizer, prompt), names, 0, _comma(tokenizer), size=length - len(start) - 1)[0]
    rest = length - len(start) - len(body) - 1
    return [*start, *body, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * rest, [1.0] * len(start) + [*weights, 1.0] + [1.0] * rest


def _ids(tokenizer, text: str) -> list[int]:
    # Stripped: CLIP ignores the spaces around a run anyway, and SentencePiece (T5) would make one a "▁" token.
    text = text.strip()
    return tokenizer(text, add_special_tokens=False, verbose=False).input_ids if text else []


@dataclass
class PromptTokens:
    """A batch of prompts for each text encoder: ids and weights [B, chunks × 77], or with `one_sequence` (SD3,
    Flux) [B, the encoder's sequence length], read whole."""

    ids: list[torch.Tensor]
    weights: list[torch.Tensor]
    one_sequence: bool = False

    @property
    def chunks(self) -> int:
        return 1 if self.one_sequence else self.ids[0].shape[1] // CONTEXT_TOKENS

    def chunk(self, k: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if self.one_sequence:
            return self.ids, self.weights
        part = slice(k * CONTEXT_TOKENS, (k + 1) * CONTEXT_TOKENS)
        return [i[:, part] for i in self.ids], [w[:, part] for w in self.weights]


def batch_tensors(tokenizer, per_prompt: list[list[tuple[list[int], list[float]]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, K × 77] ids and weights; prompts with fewer chunks end in empty ones (start, end, padding)."""
    k = max(len(chunks) for chunks in per_prompt)
    empty = frame([], [], tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    ids, weights = [], []
    for chunks in per_prompt:
        chunks = chunks + [empty] * (k - len(chunks))
        ids.append([t for c in chunks for t in c[0]])
        weights.append([w for c in chunks for w in c[1]])
    return torch.tensor(ids, dtype=torch.long), torch.tensor(weights, dtype=torch.float32)


def emphasize(hidden: torch.Tensor, weights: torch.Tensor, per_prompt: bool) -> torch.Tensor:
    """Hidden states [B, 77, C] times their tokens' weights, rescaled to the mean they had.

    A1111 takes the mean over the whole batch it encodes: a training batch is one call, while each sampled
    prompt is encoded alone (`per_prompt`), so an image does not depend on the prompts beside it."""
    if bool((weights == 1).all()):
        return hidden
    dims = (1, 2) if per_prompt else (0, 1, 2)
    before = hidden.mean(dim=dims, keepdim=True)
    hidden = hidden * weights.to(hidden.device, hidden.dtype)[..., None]
    return hidden * (before / hidden.mean(dim=dims, keepdim=True))
