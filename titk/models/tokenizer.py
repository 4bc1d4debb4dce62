"""The CLIP BPE tokenizer of Stable Diffusion, built offline from the vocabulary open_clip ships.

open_clip carries `bpe_simple_vocab_16e6.txt.gz`, the same byte-pair vocabulary as OpenAI's CLIP
tokenizer used by SD1 (CLIP ViT-L/14), SD2 (OpenCLIP ViT-H/14) and both SDXL encoders. The id order is
fixed by CLIP: 256 byte symbols, the same with `</w>`, the first 48,894 merges, then the two special
tokens, 49,408 in all. Building it needs no download.
"""

from __future__ import annotations

import gzip
import importlib.resources
from functools import lru_cache

from ..config import CONTEXT_TOKENS
from ..families import PAD_END

VOCAB_SIZE = 49408
BOS, EOS = "<|startoftext|>", PAD_END
N_MERGES = VOCAB_SIZE - 2 * 256 - 2



def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes, in CLIP's order (printable bytes first)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in printable] + [symbols[b] for b in range(256) if b not in printable]


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    bpe = importlib.resources.files("open_clip").joinpath("bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.decompress(bpe.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + N_MERGES]]
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(f"open_clip's BPE file gave {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return vocab, merges


def clip_tokenizer(pad_token: str = PAD_END):
    """A transformers CLIPTokenizer equal to SD's (`openai/clip-vit-large-patch14`), built offline."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=pad_token,
        model_max_length=CONTEXT_TOKENS,
    )


def t5_tokenizer(captions: list[str], vocab_size: int, max_length: int = CONTEXT_TOKENS):
    """A T5-style tokenizer (the toy world's, the tiny SD3 fixture's) trained on `captions` with the `tokenizers` library: SentencePiece's "▁" word marker,
    no start token, </s> at the end, <pad> as id 0; deterministic for the same captions. `max_length` is its
    model_max_length (how many tokens Flux's T5 reads).

    Subwords by BPE: the library's Unigram trainer (T5's own model) keeps little more than single characters
    on a corpus this repetitive, which would make every word a dozen tokens."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], show_progress=False,
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation + "▁"),
    )
    tok.train_from_iterator(captions, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", model_max_length=max_length
    )
