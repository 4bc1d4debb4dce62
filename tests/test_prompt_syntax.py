"""A1111's prompt syntax: emphasis runs, escapes, BREAK, 75-token chunks, comma backtrack, whole embeddings,
the mean-restoring emphasis, and the chunked encoding used by training and sampling."""

import pytest
import torch

from titk.errors import TitkError
from titk.models.prompt_syntax import Name, emphasize, parse, prompt_chunks
from titk.models.tokenizer import clip_tokenizer

TOK = clip_tokenizer()
BOS, EOS, COMMA, A, RED, DRESS, WORD, CAT, OHWX, BREAK_WORD = 49406, 49407, 267, 320, 736, 2595, 2653, 2368, 47993, 2568


def chunks(prompt, names=(), tokenizer=TOK):
    return prompt_chunks(tokenizer, prompt, list(names))


def body(chunk):
    """The ids between the start token and the first end token."""
    ids = chunk[0]
    return ids[1 : ids.index(EOS)]


def test_emphasis_weights():
    assert parse("a (red:1.5) dress") == [("a ", 1.0), ("red", 1.5), (" dress", 1.0)]
    assert parse("((a))") == [("a", 1.1 * 1.1)]
    assert parse("[a]") == [("a", 1 / 1.1)]
    assert parse("[[a]]") == [("a", 1 / 1.1 / 1.1)]
    assert parse("(a:0.5) b") == [("a", 0.5), (" b", 1.0)]
    # nesting multiplies, innermost first (A1111's own docstring example)
    assert parse("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).") == [
        ("a ", 1.0), ("house", 1.3 * 1.1 * 1.1), (" ", 1.1), ("on", 1.1 / 1.1), (" a ", 1.1), ("hill", 0.5 * 1.1),
        (", sun, ", 1.1), ("sky", 1.1 * 1.1 * 1.1 * 1.1), (".", 1.1),
    ]


def test_escapes_unbalanced_and_stray_brackets():
    assert parse(r"\(literal\] and \\ too") == [("(literal] and \\ too", 1.0)]
    assert parse(r"a\b") == [("ab", 1.0)]  # a lone backslash vanishes
    assert parse("(unbalanced") == [("unbalanced", 1.1)]
    assert parse("[open (both") == [("open ", 1 / 1.1), ("both", 1.1 / 1.1)]
    assert parse("a:1.2) b] c)") == [("a:1.2) b] c)", 1.0)]  # closers with no opener are text
    assert parse("[a:1.2]") == [("a:1.2", 1 / 1.1)]  # a weight only closes a round bracket
    assert parse("(unnecessary)(parens)") == [("unnecessaryparens", 1.1)]
    assert parse("") == [("", 1.0)]
    with pytest.raises(TitkError, match="'1.2.3' is not a number"):
        parse("(a:1.2.3)")


def test_break_markers():
    assert parse("a BREAK b") == [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]
    assert parse("aBREAK b") == [("aBREAK b", 1.0)]  # a word of its own only
    # inside brackets its marker weight is scaled, so A1111 reads it as the word BREAK
    assert parse("(a BREAK b)") == [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]


def test_a_weighted_prompt_in_token_ids():
    (ids, weights), = chunks("a (red:1.5) dress")
    assert ids == [BOS, A, RED, DRESS, EOS] + [EOS] * 72
    assert weights == [1.0, 1.0, 1.5, 1.0] + [1.0] * 73
    (ids, weights), = chunks("((a)) [cat]")
    assert ids[:5] == [BOS, A, CAT, EOS, EOS]
    assert weights[1:3] == [1.1 * 1.1, 1 / 1.1]
    (ids, _), = chunks(r"\(a\)")
    assert ids[:5] == [BOS, 263, A, 264, EOS]  # the parentheses are tokens: "(", "a", ")"


def test_openclip_chunks_pad_with_id_zero_after_the_end_token():
    (ids, _), = chunks("a cat", tokenizer=clip_tokenizer("!"))
    assert ids[:4] == [BOS, A, CAT, EOS] and ids[4:] == [0] * 73


def test_break_starts_a_new_chunk():
    first, second = chunks("a BREAK cat")
    assert body(first) == [A] and body(second) == [CAT]
    assert len(first[0]) == len(second[0]) == 77
    assert len(chunks("a BREAK")) == 1  # nothing after it: no empty chunk
    empty, rest = chunks("BREAK a")  # before the first word it closes an empty chunk
    assert empty[0] == [BOS] + [EOS] * 76 and body(rest) == [A]
    assert body(chunks("(a BREAK b)")[0])[1] == BREAK_WORD


def test_a_100_token_prompt_is_two_chunks_of_77():
    first, second = chunks("word " * 100)
    assert first[0] == [BOS] + [WORD] * 75 + [EOS]
    assert second[0] == [BOS] + [WORD] * 25 + [EOS] * 51
    assert len(first[1]) == len(second[1]) == 77
    assert len(chunks("word " * 75)) == 1 and len(chunks("word " * 76)) == 2


def test_comma_backtrack_moves_the_last_phrase_whole():
    # comma at index 60: when the chunk fills, 75 - 60 = 15 <= 20, so everything after the comma moves on
    first, second = chunks("word " * 60 + ", " + "word " * 20)
    assert body(first) == [WORD] * 60 + [COMMA]
    assert body(second) == [WORD] * 20
    # comma at index 50: 25 tokens back is too far, the chunk is cut at 75 tokens
    first, second = chunks("word " * 50 + ", " + "word " * 30)
    assert body(first) == [WORD] * 50 + [COMMA] + [WORD] * 24
    assert body(second) == [WORD] * 6
    # the moved tokens keep their weights
    first, second = chunks("word " * 60 + ", (cat:2) " * 1 + "word " * 19)
    assert second[1][1] == 2.0 and body(second)[0] == CAT


def test_embedding_vectors_are_matched_by_ids_weighted_and_kept_whole():
    name = Name((OHWX,), (49408, 49409, 49410))
    (ids, weights), = chunks("a photo of (ohwx:1.2)", [name])
    assert ids[4:8] == [49408, 49409, 49410, EOS] and weights[4:7] == [1.2] * 3
    # 73 words then three vectors: they do not fit in the 2 places left, so they open the next chunk
    first, second = chunks("word " * 73 + "ohwx", [name])
    assert body(first) == [WORD] * 73 and body(second) == [49408, 49409, 49410]
    # the longest name starting with the same token wins
    long = Name((OHWX, CAT), (49411,))
    (ids, _), = chunks("ohwx cat ohwx", [name, long])
    assert ids[1:6] == [49411, 49408, 49409, 49410, EOS]


def test_emphasis_restores_the_mean_as_a1111():
    z = torch.tensor([[[1.0, 3.0], [2.0, 2.0]]])  # mean 2
    w = torch.tensor([[1.0, 2.0]])
    # times the weights: [[1, 3], [4, 4]], mean 3; rescaled by 2/3
    assert torch.allclose(emphasize(z, w, per_prompt=True), torch.tensor([[[2 / 3, 2.0], [8 / 3, 8 / 3]]]))
    assert emphasize(z, torch.ones(1, 2), per_prompt=True) is z
    # over a batch A1111 restores one mean for the whole batch (training); sampling restores each prompt's
    batch = torch.cat([z, torch.full((1, 2, 2), 4.0)])
    weights = torch.cat([w, torch.ones(1, 2)])
    mean_before = batch.mean()  # 3
    joint = emphasize(batch, weights, per_prompt=False)
    scaled = batch * weights[..., None]  # mean (3·4 + 4·4) / 8 = 3.5
    assert torch.allclose(joint, scaled * mean_before / 3.5)
    own = emphasize(batch, weights, per_prompt=True)
    assert torch.allclose(own[0], emphasize(z, w, per_prompt=True)[0]) and torch.equal(own[1], batch[1])


@pytest.fixture(scope="module")
def sd1(fixtures):
    from titk.models import load_model

    return load_model(fixtures["tiny-sd1"].folder, dtype="fp32")


def test_long_prompts_are_encoded_chunk_by_chunk_and_joined(sd1):
    prompt = "word " * 60 + ", " + "cat " * 20
    cond = sd1.encode_prompts([prompt])
    assert cond.hidden.shape == (1, 154, 32)
    te = sd1.encoders[0].model
    for k, (ids, _) in enumerate(chunks(prompt)):
        alone = te(torch.tensor([ids])).last_hidden_state
        assert torch.allclose(cond.hidden[:, 77 * k : 77 * (k + 1)], alone, atol=1e-6)
    # a batch pads the shorter prompt with empty chunks
    assert sd1.encode_prompts([prompt, "a cat"]).hidden.shape == (2, 154, 32)


def test_emphasis_reaches_the_hidden_states(sd1):
    te = sd1.encoders[0].model
    (ids, weights), = chunks("a (red:1.5) dress")
    plain = te(torch.tensor([ids])).last_hidden_state
    got = sd1.encode_prompts(["a (red:1.5) dress"]).hidden
    expected = plain * torch.tensor(weights)[None, :, None]
    expected = expected * plain.mean() / expected.mean()
    assert torch.allclose(got, expected, atol=1e-6)
    # kohya's path reads the same text literally
    kohya = sd1.tokenize(["a (red:1.5) dress"], syntax=False)
    assert 263 in kohya.ids[0][0].tolist() and bool((kohya.weights[0] == 1).all())


def test_sdxl_emphasis_per_encoder_and_pooled_from_the_first_chunk(fixtures):
    from titk.models import load_model

    xl = load_model(fixtures["tiny-sdxl"].folder, dtype="fp32")
    prompt = "a (red:1.5) dress BREAK cat"
    cond = xl.encode_prompts([prompt])
    tokens = xl.tokenize([prompt])
    assert cond.hidden.shape[1] == 154
    ids0 = [t[:, :77] for t in tokens.ids]
    plain = xl.adapter.encode(xl.encoders, ids0, 1)
    assert torch.equal(cond.pooled, plain.pooled)  # the pooled output ignores emphasis and later chunks
    widths = xl.widths
    w = tokens.weights[0][:, :77]
    for part, lo, hi in ((0, 0, widths[0]), (1, widths[0], sum(widths))):
        z = plain.hidden[..., lo:hi]
        expected = z * w[..., None]
        expected = expected * z.mean() / expected.mean()
        assert torch.allclose(cond.hidden[:, :77, lo:hi], expected, atol=1e-5), f"encoder {part}"


def test_sampling_pads_the_shorter_of_prompt_and_negative(sd1):
    from titk.config import SamplingSettings
    from titk.models.sampling import generate

    s = SamplingSettings(steps=2, width=64, height=64, negative_prompt="blurry", batch_size=2)
    images = generate(sd1, ["word " * 100, "a cat"], [1, 1], s)
    assert len(images) == 2 and images[0].size == (64, 64)


@pytest.mark.parametrize("semantics", ["a1111", "kohya"])
def test_training_reads_the_syntax_under_a1111_only(tmp_path, sd1, semantics, monkeypatch):
    from helpers import make_images

    from titk.config import TrainConfig
    from titk.config import parse as parse_config
    from titk.models.bundle import ModelBundle
    from titk.train.loop import train

    calls = []
    tokenize, encode_ids = ModelBundle.tokenize, ModelBundle.encode_ids

    def spy_tokenize(self, prompts, name=None, n_vectors=0, *, syntax=True):
        calls.append(("syntax", syntax))
        return tokenize(self, prompts, name, n_vectors, syntax=syntax)

    def spy_encode(self, tokens, *, per_prompt=True):
        calls.append(("per_prompt", per_prompt))
        return encode_ids(self, tokens, per_prompt=per_prompt)

    monkeypatch.setattr(ModelBundle, "tokenize", spy_tokenize)
    monkeypatch.setattr(ModelBundle, "encode_ids", spy_encode)
    images = make_images(tmp_path / "data", 2, captions="(ohwx:1.2), photo {i}")
    config = parse_config(TrainConfig, {
        "model": {"source": "m"}, "embedding": {"name": "ohwx", "init_text": "person"},
        "data": {"path": str(images), "caption_extension": ".txt", "template": str(_template(tmp_path))},
        "train": {"semantics": semantics, "batch_size": 2, "max_steps": 1, "learning_rate": "0.01"},
        "output": {"dir": str(tmp_path / "run"), "save_every": 0, "preview": {"every": 0}},
    }, "test")
    train(config, bundle=sd1, show_progress=False, latent_cache=tmp_path / "cache")
    assert calls == [("syntax", semantics == "a1111"), ("per_prompt", False)]


def _template(tmp_path):
    path = tmp_path / "template.txt"
    path.write_text("[filewords]\n")
    return path
