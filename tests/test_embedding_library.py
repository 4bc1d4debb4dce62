"""Other embeddings named in a prompt: loaded frozen from a folder, spliced in, never trained."""

import pytest
import torch
from helpers import make_images

from titk.config import TrainConfig, parse
from titk.embeddings.embedding import Embedding
from titk.embeddings.formats import write_a1111
from titk.embeddings.library import read_library
from titk.errors import TitkError
from titk.models import load_model
from titk.train.loop import train

VOCAB = 49408
FROZEN = VOCAB + 75  # the library's first id, above any active embedding's range


@pytest.fixture(scope="module")
def sd1(fixtures):
    return load_model(fixtures["tiny-sd1"].folder, dtype="fp32")


@pytest.fixture()
def library(tmp_path, sd1):
    width = sd1.encoders[0].width
    gen = torch.Generator().manual_seed(0)
    style = torch.randn(2, width, generator=gen)
    folder = tmp_path / "embeddings"
    folder.mkdir()
    write_a1111(Embedding("anything", {"clip_l": style}), folder / "artstyle.pt")  # named by its file stem
    (folder / "sub").mkdir()
    write_a1111(Embedding("wide", {"clip_l": torch.zeros(1, width + 8)}), folder / "sub" / "wide.pt")
    (folder / "broken.pt").write_bytes(b"not a pickle")
    (folder / "notes.txt").write_text("ignored, as A1111 ignores it")
    warnings: list[str] = []
    entries = read_library(folder, sd1, warn=warnings.append)
    yield style, entries, warnings
    sd1.use_library([])


def test_a_misfit_or_unreadable_file_is_one_warning_and_skipped(library):
    _, entries, warnings = library
    assert [e.name for e in entries] == ["artstyle"]
    assert len(warnings) == 2
    assert any("broken.pt" in w and "skipped" in w for w in warnings)
    assert any("wide.pt" in w and "does not fit" in w and "skipped" in w for w in warnings)


def test_a_missing_folder_is_an_error_naming_the_setting(sd1, tmp_path):
    with pytest.raises(TitkError, match="model.embeddings_dir"):
        read_library(tmp_path / "nowhere", sd1)


def test_a_named_embedding_gives_its_vectors_at_its_positions(library, sd1):
    style, entries, _ = library
    sd1.use_library(entries)
    active = torch.randn(1, style.shape[1])
    sd1.set_vectors({"clip_l": active})
    try:
        tokens = sd1.tokenize(["a ohwx in artstyle"], "ohwx", 1)
        tok = sd1.encoders[0].tokenizer

        def plain(text):
            return tok(text, add_special_tokens=False).input_ids

        expected = [tok.bos_token_id, *plain("a"), VOCAB, *plain("in"), FROZEN, FROZEN + 1, tok.eos_token_id]
        assert tokens.ids[0][0, : len(expected)].tolist() == expected
        rows = sd1.encoders[0].spliced(tokens.ids[0])[0]
        assert torch.equal(rows[2], active[0]) and torch.equal(rows[4:6], style)
        with_library = sd1.encode_ids(tokens).hidden
        # Hand-built: the same prompt with the style as the active embedding gives the same conditioning.
        sd1.set_vectors({"clip_l": torch.cat([active, style])})
        by_hand = sd1.tokenize(["a ohwx in artstyle"], "ohwx", 1)
        by_hand.ids[0][0, 4:6] = torch.tensor([VOCAB + 1, VOCAB + 2])
        assert torch.allclose(with_library, sd1.encode_ids(by_hand).hidden, atol=1e-6)
    finally:
        sd1.set_vectors(None)
        sd1.use_library([])
    assert sd1.tokenize(["a ohwx in artstyle"], "ohwx", 1).ids[0].max() < FROZEN  # without it, plain text


def test_training_uses_the_named_embedding_and_never_trains_it(library, sd1, tmp_path, monkeypatch):
    style, entries, _ = library
    images = make_images(tmp_path / "faces", 4, captions="ohwx in artstyle, photo {i}")
    config = parse(TrainConfig, {
        "model": {"source": "m"},
        "embedding": {"name": "ohwx", "vectors": 1, "init_text": "person"},
        "data": {"path": str(images), "template": "titk-subject-filewords"},
        "train": {"batch_size": 2, "max_steps": 2, "learning_rate": "0.05"},
        "output": {"dir": str(tmp_path / "run"), "save_every": 0, "preview": {"every": 0}},
    }, "test")
    sd1.use_library(entries)
    seen = []
    tokenize = sd1.tokenize
    monkeypatch.setattr(sd1, "tokenize", lambda *a, **k: seen.append(out := tokenize(*a, **k)) or out)
    train(config, bundle=sd1, show_progress=False, latent_cache=tmp_path / "cache")
    frozen = sd1.encoders[0].spliced.frozen
    assert any(int(t.ids[0].max()) >= FROZEN for t in seen)  # the captions' style reached the encoder
    assert torch.equal(frozen, style) and not frozen.requires_grad and frozen.grad is None


def test_the_default_warning_is_one_line_on_stderr(library, sd1, capsys):
    read_library(library[1][0].path.parent, sd1)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("warning: ") for line in lines)
