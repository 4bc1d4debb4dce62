"""Placeholder vectors: stretched and cycled init, token-level name matching, splicing."""

import pytest
import torch

from titk.embeddings.placeholder import (
    find_name,
    init_vectors,
    kohya_ids,
    kohya_token_strings,
    prompt_has_name,
    tokenize_with_placeholders,
)
from titk.errors import TitkError
from titk.models.tokenizer import clip_tokenizer

TOK = clip_tokenizer()
TABLE = torch.arange(49408, dtype=torch.float32)[:, None].repeat(1, 4)  # row r is all r: easy to read back


def rows(vectors):
    return [int(v[0]) for v in vectors]


def ids(text):
    return TOK(text, add_special_tokens=False).input_ids


def test_stretch_and_cycle_follow_a1111_and_kohya():
    a, b, c = ids("cat dog bird")
    assert rows(init_vectors(TOK, TABLE, "cat dog bird", 4, "stretch", truncate=False)) == [a, a, b, c]
    assert rows(init_vectors(TOK, TABLE, "cat dog bird", 4, "cycle", truncate=False)) == [a, b, c, a]
    assert rows(init_vectors(TOK, TABLE, "cat", 4, "stretch", truncate=True)) == [a] * 4
    # A1111's SD1 (OpenAI CLIP) path cuts the text to N tokens first; OpenCLIP's does not
    assert rows(init_vectors(TOK, TABLE, "cat dog bird", 2, "stretch", truncate=True)) == [a, b]
    assert rows(init_vectors(TOK, TABLE, "cat dog bird", 2, "stretch", truncate=False)) == [a, b]  # ⌊i·3/2⌋ = 0, 1
    assert rows(init_vectors(TOK, TABLE, "cat dog bird", 2, "cycle", truncate=False)) == [a, b]
    assert torch.count_nonzero(init_vectors(TOK, TABLE, "", 3, "stretch", truncate=True)) == 0


def test_vector_count_limits():
    with pytest.raises(TitkError, match="1..75"):
        init_vectors(TOK, TABLE, "cat", 76, "stretch", truncate=True)
    with pytest.raises(TitkError, match="1..75"):
        init_vectors(TOK, TABLE, "cat", 0, "stretch", truncate=True)


def test_name_replaced_by_placeholder_ids_even_when_it_is_a_vocabulary_word():
    out = tokenize_with_placeholders(TOK, ["a photo of person, and person again", "no name here"], "person", 3, 49408)
    first = out[0].tolist()
    assert first[0] == 49406 and first.count(49408) == 2 and first.count(49410) == 2
    assert ids("person")[0] not in first  # every occurrence replaced
    assert out.shape == (2, 77) and 49407 in first
    second = out[1].tolist()
    assert max(second) == 49407 and second[: len(ids("no name here")) + 2] == [49406, *ids("no name here"), 49407]


def test_name_inside_a_longer_word_is_not_matched():
    assert find_name(ids("ohwxman ohwx"), ids("ohwx")) == [len(ids("ohwxman"))]


def test_kohya_finds_the_name_as_text_inside_longer_words_case_sensitively():
    # A1111 matches token ids: "ohwxman" is other BPE pieces, "Ohwx" is lowercased to the same ids
    assert not prompt_has_name(TOK, "a photo of ohwxman", "ohwx") and prompt_has_name(TOK, "a photo of Ohwx", "ohwx")
    # kohya's added tokens are cut out of the text anywhere, with its pinned slow tokenizer's case
    assert prompt_has_name(TOK, "a photo of ohwxman", "ohwx", "kohya") and not prompt_has_name(TOK, "a photo of Ohwx", "ohwx", "kohya")
    assert kohya_ids(TOK, "a photo of ohwxman", "ohwx", 1, 49408) == ids("a photo of") + [49408] + ids("man")
    assert kohya_ids(TOK, "myohwx, Ohwx", "ohwx", 1, 49408) == ids("my") + [49408] + ids(", Ohwx")
    # N vectors: the name becomes "ohwx ohwx1 ohwx2" in the text first ("ohwx12" → "… ohwx212"), then
    # the longest string wins: "ohwx2" then "12"
    assert kohya_ids(TOK, "ohwx and ohwx12", "ohwx", 3, 49408) == [49408, 49409, 49410] + ids("and") + [49408, 49409, 49410] + ids("12")


def test_kohya_matching_equals_a_tokenizer_holding_the_added_strings():
    added = clip_tokenizer()
    strings = kohya_token_strings("ohwx", 3)
    added.add_tokens(strings)
    for caption in ["a photo of ohwxman", "myohwx, ohwx1 in snow", "ohwx12 ohwx", "no name"]:
        expected = added(caption.replace("ohwx", " ".join(strings)), add_special_tokens=False).input_ids
        assert kohya_ids(TOK, caption, "ohwx", 3, 49408) == expected, caption


def test_kohya_prompts_use_kohya_matching():
    out = tokenize_with_placeholders(TOK, ["ohwxman"], "ohwx", 2, 49408)[0].tolist()
    assert out[:5] == [49406, 49408, 49409, *ids("man"), 49407]


def test_long_prompts_are_cut_to_one_chunk():
    out = tokenize_with_placeholders(TOK, ["word " * 200], None, 0, 49408)
    assert out.shape == (1, 77) and int(out[0, -1]) == 49407
