"""The toy world's proofs on its SD3 model: an MMDiT trained by flow matching, conditioned on a CLIP-L-like, a
CLIP-G-like and a T5-style encoder (whose tokenizer was trained on the world's captions). A TI trains its
CLIP vectors (SD3's default; T5 stays at the init text), with flow matching and SD3's logit-normal timesteps,
for 1000 steps where SD1's proofs train 400 (docs/toyworld.md: at 400 the TI fits the images' coarse layout,
which flow matching's loss weighs most, and barely moves the identity). The learning proof (measured: 0.479
before, 0.714 after, 8 of 8 seeds, p = 0.00074; at 400 steps the gain was 0.005) and the framing shift run here; the model, a sweep and the file commands on it, and its pretraining are tested too. The
tank-top shift does not hold on this model (measured, docs/toyworld.md) and is not claimed."""

import re

import pytest

import test_toyworld as sd1
from test_toyworld import (  # noqa: F401  (fixtures, and a test that runs here again on the SD3 model)
    SKEWS, probed, test_ti_learns_an_identity_never_seen_in_pretraining, toy, toy_model, wardrobes,
)
from test_toyworld_sdxl import short_demo


@pytest.fixture(scope="module")
def toy_source():
    return "toyworld-sd3"


@pytest.fixture(scope="module")
def proof_training():
    return {"train": {"max_steps": 1000}}


@pytest.fixture(scope="module")
def skews():
    return {name: SKEWS[name] for name in ("balanced", "biased")}


def test_a_dataset_in_full_body_shots_shifts_its_ti_net_of_the_untrained_start(probed):  # noqa: F811 (the imported fixture)
    """12 of 15 full-body shots: more full-body shots on the neutral probes than the untrained start and than the
    TI of a uniform dataset, each difference's 95 % interval above zero (the SD1 proof's framing half). Measured:
    20 of 48 against 0 untrained and 6 uniform. Its clothing half does not hold on this model: the same TI
    drew 8 tank tops of 48 against 16 untrained, and t-shirts in their place (docs/toyworld.md)."""
    sd1.test_a_skewed_dataset_shifts_its_ti_net_of_the_untrained_start(probed, "framing", "full-body")


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
