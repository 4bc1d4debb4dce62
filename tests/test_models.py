"""Model loading: every fixture by every route, family detection, shipped configs, the LDM layout."""

import json

import pytest
import torch

from titk.models import Family, load_model
from titk.models.fixtures import build_tiny_pipeline
from titk.models.loading import shipped_config
from titk.models.single_file import probe_v_prediction, read_checkpoint_index, sd2_prediction_type
from titk.models.tokenizer import clip_tokenizer

EXPECTED = {
    "tiny-sd1": (Family.SD1, "epsilon", (32,)),
    "tiny-sd2": (Family.SD2, "epsilon", (32,)),
    "tiny-sd2-v": (Family.SD2, "v_prediction", (32,)),
    "tiny-sdxl": (Family.SDXL, "epsilon", (32, 64)),
}


def test_tokenizer_reproduces_published_sd_ids():
    tok = clip_tokenizer()
    assert len(tok) == 49408
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok("Hello, world!").input_ids == [49406, 3306, 267, 1002, 256, 49407]
    assert tok("A PHOTO of  a Cat!").input_ids == [49406, 320, 1125, 539, 320, 2368, 256, 49407]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.model_max_length) == (49406, 49407, 49407, 77)
    assert clip_tokenizer("!").pad_token_id == 0  # OpenCLIP encoders pad with "!"


def _state(module):
    return {k: v.float() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("route", ["folder", "safetensors", "ckpt"])
def test_every_fixture_loads_by_every_route_with_the_same_weights(fixtures, name, route):
    files = fixtures[name]
    family, prediction, widths = EXPECTED[name]
    reference = load_model(files.folder, dtype="fp32")
    if route == "folder":
        bundle = reference
    else:
        bundle = load_model(getattr(files, route), dtype="fp32", config_dir=files.folder)
    assert bundle.family is family
    assert bundle.prediction_type == prediction
    assert bundle.noise_scheduler.config.prediction_type == prediction
    assert bundle.widths == widths
    assert bundle.short_hash and len(bundle.short_hash) == 10
    for part in ("unet", "vae"):
        ref, got = _state(getattr(reference, part)), _state(getattr(bundle, part))
        assert ref.keys() == got.keys()
        assert all(torch.equal(ref[k], got[k]) for k in ref), f"{part} differs after the {route} route"
    for ref_enc, enc in zip(reference.encoders, bundle.encoders):
        ref, got = _state(ref_enc.model), _state(enc.model)
        assert all(torch.equal(ref[k], got[k]) for k in ref)
    # frozen: nothing in the bundle asks for gradients
    assert not any(p.requires_grad for p in bundle.unet.parameters())
    cond = bundle.encode_prompts(["a photo of a cat", "a dog"])
    assert cond.hidden.shape == (2, 77, sum(widths) if family is Family.SDXL else widths[0])
    assert (cond.pooled is not None) == (family is Family.SDXL)


def test_loaded_weights_equal_the_built_pipeline(fixtures):
    built = build_tiny_pipeline(Family.SD1, seed=0)
    loaded = load_model(fixtures["tiny-sd1"].safetensors, dtype="fp32", config_dir=fixtures["tiny-sd1"].folder)
    ref = built.unet.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in loaded.unet.state_dict().items())


def test_fixtures_are_deterministic():
    a, b = build_tiny_pipeline("sdxl", seed=3), build_tiny_pipeline("sdxl", seed=3)
    for x, y in zip(a.unet.parameters(), b.unet.parameters()):
        assert torch.equal(x, y)
    c = build_tiny_pipeline("sdxl", seed=4)
    assert not torch.equal(next(a.unet.parameters()), next(c.unet.parameters()))


def test_bundle_generates_an_image(fixtures):
    bundle = load_model(fixtures["tiny-sd1"].folder, dtype="fp32")
    image = bundle.pipeline("a cat", num_inference_steps=2, height=64, width=64, output_type="np").images[0]
    assert image.shape == (64, 64, 3)


def test_ldm_layout_uses_the_original_key_names(fixtures):
    sd1, _ = read_checkpoint_index(fixtures["tiny-sd1"].safetensors)
    assert "model.diffusion_model.input_blocks.0.0.weight" in sd1
    assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in sd1
    assert "model.diffusion_model.middle_block.1.proj_in.weight" in sd1
    assert "model.diffusion_model.out.2.weight" in sd1
    assert "first_stage_model.decoder.up.3.upsample.conv.weight" in sd1
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in sd1
    keys, shape = read_checkpoint_index(fixtures["tiny-sd1"].safetensors)
    assert len(shape("first_stage_model.encoder.mid.attn_1.q.weight")) == 4  # 1×1 conv in LDM
    xl, xl_shape = read_checkpoint_index(fixtures["tiny-sdxl"].safetensors)
    assert "model.diffusion_model.label_emb.0.0.weight" in xl
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in xl
    assert xl_shape("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight") == (3 * 64, 64)
    assert xl_shape("conditioner.embedders.1.model.text_projection") == (64, 32)
    sd2, _ = read_checkpoint_index(fixtures["tiny-sd2"].safetensors)
    assert "cond_stage_model.model.positional_embedding" in sd2


@pytest.mark.parametrize(
    "family, unet_m, te_m",
    [("sd1", 859.52, [123.06]), ("sd2", 865.91, [340.39]), ("sd2-v", 865.91, [340.39]), ("sdxl", 2567.46, [123.06, 694.66])],
)
def test_shipped_configs_build_the_published_architectures(family, unet_m, te_m):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = shipped_config(family)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet"))
        encoders = [
            CLIPTextModel(CLIPTextConfig.from_pretrained(root / sub))
            for sub in ("text_encoder", "text_encoder_2") if (root / sub).is_dir()
        ]
    millions = lambda m: round(sum(p.numel() for p in m.parameters()) / 1e6, 2)  # noqa: E731
    assert millions(unet) == unet_m
    # CLIPTextModel without projection: the bigG projection adds 1.64 M on top
    assert [millions(e) for e in encoders] == [m if m < 600 else round(m - 1.64, 2) for m in te_m]
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] in ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


def test_sd2_prediction_type_from_sidecar_yaml(tmp_path):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"")
    (tmp_path / "model.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert sd2_prediction_type(ckpt, pipe=None) == "v_prediction"
    (tmp_path / "model.yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    assert sd2_prediction_type(ckpt, pipe=None) == "epsilon"


class _FakeUNet(torch.nn.Module):
    """Predicts sign × input, like a trained eps (+1) or v (−1) model at t=999."""

    def __init__(self, sign):
        super().__init__()
        self.sign = sign
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.config = type("C", (), {"in_channels": 4, "cross_attention_dim": 8})()
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def forward(self, x, t, encoder_hidden_states):
        return type("O", (), {"sample": self.sign * 3 * x})()


def test_v_prediction_probe_follows_a1111():
    assert probe_v_prediction(_FakeUNet(+1)) == "epsilon"
    assert probe_v_prediction(_FakeUNet(-1)) == "v_prediction"


@pytest.mark.slow
def test_full_size_sd15_single_file_loads_with_the_shipped_config(tmp_path):
    """The route real checkpoints take: no config folder given, titk's shipped SD1 config is used."""
    from safetensors.torch import save_file

    from titk.models.fixtures import build_sd15_full
    from titk.models.ldm import pipeline_to_ldm

    pipe = build_sd15_full(dtype=torch.bfloat16)
    path = tmp_path / "sd15-random.safetensors"
    save_file(pipeline_to_ldm(pipe), str(path))
    bundle = load_model(path, dtype="bf16")
    assert bundle.family is Family.SD1 and bundle.default_size == 512 and bundle.widths == (768,)
    ref = pipe.unet.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in bundle.unet.state_dict().items())
    ref_te = pipe.text_encoder.state_dict()
    assert all(torch.equal(ref_te[k], v) for k, v in bundle.encoders[0].model.state_dict().items())
