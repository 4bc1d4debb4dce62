"""The toy world's proofs on its SD3 model: an MMDiT trained by flow matching, conditioned on a CLIP-L-like, a
CLIP-G-like and a T5-style encoder (whose tokenizer was trained on the world's captions). A TI trains its
CLIP vectors (SD3's default; T5 stays at the init text), with flow matching and SD3's logit-normal timesteps.
The model, a sweep and the file commands on it, and its pretraining are tested here; the learning proofs are not
yet claimed for SD3."""

import re

import pytest

from test_toyworld import toy_model  # noqa: F401  (the fixture)
from test_toyworld_sdxl import short_demo
# The SD1 proofs (learning, the tank-top shift) are not yet run on this model: on its 1000-step checkpoint a TI
# gained 0.014 in identity similarity (0.038 with T5 trained too), not the 0.2 the proof asks (docs/toyworld.md).


@pytest.fixture(scope="module")
def toy_source():
    return "toyworld-sd3"


def test_the_sd3_toy_model_has_sd3s_layout(toy_model):  # noqa: F811 (the imported fixture)
    """What makes the proofs here SD3's: an MMDiT denoiser trained by flow matching, three encoders, a trained
    T5-style tokenizer."""
    config = toy_model.unet.config
    assert toy_model.family.value == "sd3" and toy_model.prediction_type == "flow"
    assert type(toy_model.unet).__name__ == "SD3Transformer2DModel" and config.joint_attention_dim == 128
    assert [(e.key, e.width) for e in toy_model.encoders] == [("clip_l", 48), ("clip_g", 80), ("t5", 128)]
    t5 = toy_model.pipeline.tokenizer_3
    assert t5.tokenize("a photo of a person in a tank top")[:8] == ["▁a", "▁photo", "▁of", "▁a", "▁person", "▁in", "▁a", "▁tank"]
    assert t5("a").input_ids[-1] == t5.eos_token_id and t5.bos_token_id is None and t5.pad_token_id == 0


def test_a_sweep_and_the_file_commands_work_on_the_sd3_toy_model(tmp_path, run_cli):
    """What a user runs, on SD3: the demo's sweep on the SD3 toy model (two short trials), then the best TI
    inspected, converted to each format titk writes and read back equal, and scored again by `titk eval`."""
    import torch

    from titk.embeddings.formats import read_embedding

    workdir = tmp_path / "demo"
    best = short_demo(run_cli, workdir, "toyworld-sd3")
    code, out, err = run_cli("inspect", best, "--model", "toyworld-sd3")
    assert code == 0, err
    assert re.search(r"clip_l: (\d+) × 48, clip_g: \1 × 80, t5: \1 × 128", out), out
    original = read_embedding(best)
    for to, name in (("a1111", "a.pt"), ("safetensors", "s.safetensors"), ("onetrainer", "o.safetensors"), ("kohya", "k.safetensors")):
        code, out, err = run_cli("convert", best, tmp_path / to / name, "--to", to)
        assert code == 0, err
        back = read_embedding(tmp_path / to / name)
        assert set(back.vectors) == {"clip_l", "clip_g", "t5"}
        for key, vectors in original.vectors.items():
            assert torch.equal(back.vectors[key], vectors), (to, key)

    code, out, err = run_cli("eval", best, "--model", "toyworld-sd3", "--references", workdir / "data", "--suite", "toy-quick",
                             "--scorers", "identity", "--set", "evaluation.world=toyworld", "-o", tmp_path / "eval")
    assert code == 0, err
    assert "identity" in out


def test_sd3_pretraining_trains_its_tokenizer_and_continues(tmp_path):
    """`--family sd3`: an MMDiT, its encoders and a T5 tokenizer trained on the world's captions, saved as a
    StableDiffusion3Pipeline folder that loads; continued from that folder, the saved tokenizer is reused."""
    from titk.config import PretrainSettings
    from titk.models import load_model
    from titk.toyworld.pretrain import pretrain

    tiny = dict(images_per_identity=1, unet_steps=8, stop_at=4, batch_size=4, eval_every=4)
    record = pretrain(tmp_path / "a", PretrainSettings.shipped("sd3", **tiny), log=lambda line: None)
    assert record["shared_from"] is None and [h["step"] for h in record["history"]] == [4]
    bundle = load_model(str(tmp_path / "a" / "model"), dtype="fp32")
    assert bundle.family.value == "sd3" and bundle.unet.config.num_layers == 6
    vocab = bundle.pipeline.tokenizer_3.get_vocab()
    assert "▁photo" in vocab and "▁tank" in vocab
    again = pretrain(tmp_path / "b", PretrainSettings.shipped("sd3", **{**tiny, "stop_at": 2}, continue_from=str(tmp_path / "a" / "model")),
                     log=lambda line: None)
    assert [h["step"] for h in again["history"]] == [4, 2]
    assert load_model(str(tmp_path / "b" / "model"), dtype="fp32").pipeline.tokenizer_3.get_vocab() == vocab
