"""SD3 on a tiny random-weight pipeline: its conditioning is its pipeline's, training follows flow matching
with its own timestep density, the T5 vectors are frozen unless asked, and sampling, files and planning work.
(That a TI learns on SD3 is proven on the toy world's SD3 model: test_toyworld_sd3.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import make_images, save_tiny_pipeline
from test_train import cfg
from titk.config import SamplingSettings
from titk.errors import TitkError
from titk.models import load_model
from titk.models.objectives import FlowMatchObjective
from titk.train.loop import train


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    return save_tiny_pipeline("sd3", tmp_path_factory.mktemp("sd3") / "tiny-sd3")


@pytest.fixture(scope="module")
def sd3(sd3_folder):
    return load_model(sd3_folder, dtype="fp32")


def test_a_folder_loads_as_sd3_with_three_encoders_and_flow_matching(sd3):
    assert sd3.family.value == "sd3" and sd3.prediction_type == "flow"
    assert [e.key for e in sd3.encoders] == ["clip_l", "clip_g", "t5"] and sd3.widths == (32, 64, 128)
    assert sd3.latent_shift == pytest.approx(0.0609) and sd3.default_size == 64
    assert isinstance(sd3.objective, FlowMatchObjective) and sd3.objective.weighting == "logit_normal"


def test_conditioning_equals_the_sd3_pipelines_own_encoding(sd3):
    """Without a TI in the prompt, titk's SD3 conditioning is what StableDiffusion3Pipeline.encode_prompt gives
    (T5 over its tokenizer's length, 96 here, at most SD3's 256): the CLIP penultimate states side by side,
    padded to T5's width, T5's after them; the pooled input both CLIP projections."""
    prompts = ["a photo of a person", "an old man with grey hair and a beard, outdoors"]
    cond = sd3.encode_prompts(prompts)
    embeds, _, pooled, _ = sd3.pipeline.encode_prompt(prompts, prompts, prompts, do_classifier_free_guidance=False, max_sequence_length=96)
    assert cond.hidden.shape == (2, 77 + 96, 128) and cond.pooled.shape == (2, 64)
    torch.testing.assert_close(cond.hidden, embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cond.pooled, pooled, atol=1e-5, rtol=1e-5)


def test_the_name_becomes_placeholders_in_every_encoder_t5_included(sd3):
    tokens = sd3.tokenize(["a photo of ohwx"], "ohwx", 3)
    for enc, ids in zip(sd3.encoders, tokens.ids):
        vocab = enc.spliced.vocab_size
        assert (ids[0] >= vocab).sum() == 3, enc.key
        assert ids.shape == (1, 96 if enc.key == "t5" else 77)
    t5 = tokens.ids[2][0].tolist()
    tokenizer = sd3.encoders[2].tokenizer
    assert t5[0] == tokenizer("a", add_special_tokens=False).input_ids[0]  # T5 has no start token: the prompt's first
    assert t5.index(tokenizer.eos_token_id) == t5.index(0) - 1  # its end token, then padding


def test_flow_matching_noises_towards_the_noise_and_targets_the_flow():
    """x_σ = (1 − σ)·x₀ + σ·ε with t = 1000·σ and the target ε − x₀; logit-normal timesteps bunch in the
    middle of the schedule (shift 1), uniform ones do not."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = FlowMatchEulerDiscreteScheduler(shift=1.0).config
    objective = FlowMatchObjective(config, "logit_normal")
    x, eps = torch.full((1, 4, 2, 2), 2.0), torch.full((1, 4, 2, 2), -1.0)
    t = torch.tensor([250.0])
    torch.testing.assert_close(objective.noisy(x, eps, t), torch.full_like(x, 0.75 * 2 - 0.25))
    torch.testing.assert_close(objective.target(x, eps, t), eps - x)
    draws = objective.draw(4000, torch.Generator().manual_seed(0))
    middle = ((draws > 250) & (draws < 750)).float().mean()
    uniform = FlowMatchObjective(config, "none").draw(4000, torch.Generator().manual_seed(0))
    assert middle > 0.6 and 0.45 < ((uniform > 250) & (uniform < 750)).float().mean() < 0.55
    # the model's shift moves σ up: SD3's 3.0 gives more noise than the toy's 1.0 at the same draws
    shifted = FlowMatchObjective(FlowMatchEulerDiscreteScheduler(shift=3.0).config, "logit_normal")
    assert shifted.draw(4000, torch.Generator().manual_seed(0)).mean() > draws.mean() + 100
    assert objective.fixed(4).tolist() == pytest.approx([875.0, 625.0, 375.0, 125.0], abs=1.0)


def test_training_calls_the_transformer_with_flow_inputs_and_trains_clip_vectors_only(tmp_path, sd3, monkeypatch):
    """A TI on SD3 trains its CLIP-L and CLIP-G vectors; the T5 vectors keep init_text's rows (train_t5 off).
    The transformer is given the joint sequence, the pooled projections and t = 1000·σ (not DDPM's integers);
    the file holds all three tensors."""
    images = make_images(tmp_path / "img", 4, captions="ohwx, photo {i}")
    seen, forward = [], sd3.unet.forward

    def spy(hidden_states, timestep=None, encoder_hidden_states=None, pooled_projections=None, **kw):
        seen.append((timestep.clone(), encoder_hidden_states.shape, pooled_projections.shape))
        return forward(hidden_states, timestep=timestep, encoder_hidden_states=encoder_hidden_states, pooled_projections=pooled_projections, **kw)

    monkeypatch.setattr(sd3.unet, "forward", spy)
    config = cfg(tmp_path, images, train__max_steps=6, train__grad_accum=1, output__formats=["safetensors"])
    result = train(config, bundle=sd3, show_progress=False, latent_cache=tmp_path / "cache")
    monkeypatch.undo()
    assert len(seen) == 6 and all(shape == (2, 77 + 96, 128) and pooled == (2, 64) for _, shape, pooled in seen)  # 77 CLIP, 96 T5 tokens
    timesteps = torch.cat([t for t, _, _ in seen])
    assert timesteps.dtype == torch.float32 and not torch.equal(timesteps, timesteps.round())  # σ·1000, not DDPM's integers
    from titk.embeddings.placeholder import init_vectors

    t5 = sd3.encoders[2]
    torch.testing.assert_close(result.embedding.vectors["t5"], init_vectors(t5.tokenizer, t5.table, "person", 2, "stretch", False))
    for key in ("clip_l", "clip_g"):
        enc = next(e for e in sd3.encoders if e.key == key)
        assert not torch.allclose(result.embedding.vectors[key], init_vectors(enc.tokenizer, enc.table, "person", 2, "stretch", enc.truncates_init_text))
    from titk.embeddings.formats import read_embedding

    saved = read_embedding(tmp_path / "run" / "ohwx.safetensors")
    assert set(saved.vectors) == {"clip_l", "clip_g", "t5"} and saved.vectors["t5"].shape == (2, 128)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "run" / "ohwx.safetensors"), "pt") as f:  # T5 under OneTrainer's key and ComfyUI's
        assert set(f.keys()) == {"clip_l", "clip_g", "t5", "t5xxl"}


def test_train_t5_trains_the_t5_vectors_too(tmp_path, sd3):
    images = make_images(tmp_path / "img", 2, captions="ohwx")
    config = cfg(tmp_path, images, train__max_steps=3, train__grad_accum=1, embedding__train_t5=True)
    result = train(config, bundle=sd3, show_progress=False, latent_cache=tmp_path / "cache")
    from titk.embeddings.placeholder import init_vectors

    t5 = sd3.encoders[2]
    assert not torch.allclose(result.embedding.vectors["t5"], init_vectors(t5.tokenizer, t5.table, "person", 2, "stretch", False))


def test_kohya_semantics_and_ddpm_samplers_are_refused_on_sd3_in_one_line(tmp_path, sd3):
    from titk.models.sampling import generate

    images = make_images(tmp_path / "img", 2, captions="ohwx")
    with pytest.raises(TitkError, match="kohya has no textual inversion for SD3"):
        train(cfg(tmp_path, images, train__semantics="kohya", data__caption_extension=".txt"), bundle=sd3, show_progress=False, latent_cache=tmp_path / "c")
    with pytest.raises(TitkError, match="euler_a does not sample SD3.*choose euler, dpm\\+\\+2m, unipc"):
        generate(sd3, ["a photo"], [1], SamplingSettings(steps=2, sampler="euler_a"))


@pytest.mark.parametrize("sampler", ["euler", "dpm++2m", "unipc"])
def test_flow_samplers_draw_the_same_picture_at_many_steps(sd3, sampler):
    """Each flow sampler solves the same flow: at 40 steps they agree with Euler's image closely."""
    from titk.models.sampling import generate

    def image(name):
        out = generate(sd3, ["a photo of a person"], [7], SamplingSettings(steps=40, cfg=3.0, width=64, height=64, sampler=name))
        return torch.from_numpy(np.asarray(out[0], dtype=np.float32))

    assert (image(sampler) - image("euler")).abs().mean() < 4.0
    from titk.models.sampling import FLOW_SAMPLERS, make_scheduler

    scheduler = make_scheduler(sd3, sampler)  # the solver asked for, not Euler under its name
    assert type(scheduler).__name__ == FLOW_SAMPLERS[sampler]
    assert sampler == "euler" or (scheduler.config.use_flow_sigmas and scheduler.config.flow_shift == 3.0)
    # what 4 levels mean: another seed's picture is far further off
    if sampler == "euler":
        other = generate(sd3, ["a photo of a person"], [8], SamplingSettings(steps=40, cfg=3.0, width=64, height=64, sampler="euler"))
        assert (torch.from_numpy(np.asarray(other[0], dtype=np.float32)) - image("euler")).abs().mean() > 12.0


def test_plan_of_the_sd3_recipe_counts_the_mmdit_of_sd3_medium(tmp_path, run_cli):
    """The SD3 recipe before its model is set: SD3 medium's MMDiT (24 joint blocks) at 1024 px, 4096 image
    tokens and 333 text tokens (77 CLIP, 256 T5) per view, forward and backward to the conditioning; 896 × 1152
    for portraits."""
    import json
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "experiments/recipes/sd3-bs4-400steps.yaml"
    data = make_images(tmp_path / "photos", 5, size=(48, 64))
    code, out, err = run_cli("plan", recipe, "-d", data, "--family", "sd3", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["tflops_per_view"] == {"896x1152": pytest.approx(20.28, abs=0.01)}
    assert "planned with the sd3 family's standard architecture" in plan["notes"][0]
    from titk.models.families import Family
    from titk.models.loading import shipped_architecture
    from titk.train.flops import unet_flops_per_view

    arch = shipped_architecture(Family.SD3)
    assert arch.default_size == 1024
    assert unet_flops_per_view(arch.unet, 1024, 1024, arch.vae_scale) / 1e12 == pytest.approx(20.70, abs=0.01)
    assert unet_flops_per_view(arch.unet, 512, 512, arch.vae_scale) / 1e12 == pytest.approx(4.49, abs=0.01)


def test_an_embedding_of_another_family_or_a_t5_of_the_wrong_width_is_one_line(sd3):
    from titk.embeddings import Embedding
    from titk.embeddings.fit import vectors_for

    sdxl_like = Embedding("x", {"clip_l": torch.zeros(2, 32), "clip_g": torch.zeros(2, 64)})
    with pytest.raises(TitkError, match=r"clip_l 32, clip_g 64\) does not fit .*needs clip_l \(32\) and clip_g \(64\) and t5 \(128\)"):
        vectors_for(sdxl_like, sd3)
    wrong_t5 = Embedding("x", {"clip_l": torch.zeros(2, 32), "clip_g": torch.zeros(2, 64), "t5": torch.zeros(2, 96)})
    with pytest.raises(TitkError, match=r"t5 96\) does not fit"):
        vectors_for(wrong_t5, sd3)


def test_training_subtracts_the_vaes_shift_before_scaling(tmp_path, sd3, monkeypatch):
    """SD3's VAE has a shift factor: the latents a TI trains on are (posterior mean − 0.0609) × scale, as the
    SD3 pipeline decodes latents / scale + shift."""
    from PIL import Image

    images = make_images(tmp_path / "img", 1, captions="ohwx")
    pixels = torch.from_numpy(np.asarray(Image.open(images / "000.png"), dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        mean = sd3.vae.encode(pixels).latent_dist.mean
    expected = (mean - 0.0609) * sd3.vae.config.scaling_factor
    seen, noisy = [], sd3.objective.noisy
    monkeypatch.setattr(sd3.objective, "noisy", lambda latents, noise, t: seen.append(latents) or noisy(latents, noise, t))
    config = cfg(tmp_path, images, train__max_steps=1, train__batch_size=1, train__grad_accum=1, data__latent_sampling="deterministic")
    train(config, bundle=sd3, show_progress=False, latent_cache=tmp_path / "cache")
    torch.testing.assert_close(seen[0], expected, atol=1e-4, rtol=1e-4)


def test_sd3_without_t5_conditions_as_its_pipeline_does_and_reads_sd3_files(sd3_folder):
    """SD3 without T5 is legal: zeros stand in T5's place (256 tokens, the joint width), as encode_prompt gives them;
    a TI has clip_l and clip_g, and a three-tensor SD3 file is read without its t5 part."""
    from diffusers import StableDiffusion3Pipeline

    from titk.embeddings import Embedding
    from titk.embeddings.fit import vectors_for
    from titk.models.loading import bundle_from_pipeline, quiet_libraries

    with quiet_libraries():
        pipe = StableDiffusion3Pipeline.from_pretrained(sd3_folder, text_encoder_3=None, tokenizer_3=None)
    bundle = bundle_from_pipeline(pipe, name="no-t5", source="memory")
    assert [e.key for e in bundle.encoders] == ["clip_l", "clip_g"]
    prompts = ["a photo of a person"]
    cond = bundle.encode_prompts(prompts)
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, do_classifier_free_guidance=False)
    assert cond.hidden.shape == (1, 77 + 256, 128)
    torch.testing.assert_close(cond.hidden, embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cond.pooled, pooled, atol=1e-5, rtol=1e-5)
    three = Embedding("x", {"clip_l": torch.ones(2, 32), "clip_g": torch.ones(2, 64), "t5": torch.ones(2, 128)})
    assert set(vectors_for(three, bundle)) == {"clip_l", "clip_g"}


def test_a_long_sd3_prompt_is_cut_where_each_encoder_stops_reading(sd3):
    """SD3 reads one sequence per encoder, as its pipeline does: CLIP its first 75 tokens, T5 as many as its
    length holds (here 95 and its end token; 255 of SD3's 256), cut there (no comma moves the cut earlier, as
    A1111's chunks would for SD1), with the end token after them; the ids are the pipeline's own."""
    prompt = ", ".join(f"word{i} red hair" for i in range(40))
    tokens = sd3.tokenize([prompt])
    for enc, ids in zip(sd3.encoders, tokens.ids):
        plain = enc.tokenizer(prompt, add_special_tokens=False).input_ids
        body = ids[0].tolist()[1:76] if enc.tokenizer.bos_token_id is not None else ids[0].tolist()[:95]
        assert body == plain[: len(body)] and len(plain) > len(body), enc.key
        assert ids[0, len(body) + (enc.tokenizer.bos_token_id is not None)] == enc.tokenizer.eos_token_id, enc.key
    pipeline_t5 = sd3.pipeline.tokenizer_3(prompt, padding="max_length", max_length=96, truncation=True).input_ids
    assert tokens.ids[2][0].tolist() == pipeline_t5


def test_sd3_and_flux_read_their_pipelines_t5_lengths():
    """T5 reads up to its pipeline's max_sequence_length (SD3 256, Flux dev 512, schnell 256), where the
    tokenizer allows it (a real T5 tokenizer's 512; the toy models' 77)."""
    from types import SimpleNamespace

    from titk.models.families import Family, adapter_for, t5_length

    real, toy = SimpleNamespace(model_max_length=512), SimpleNamespace(model_max_length=77)
    assert [t5_length(real, adapter_for(Family.SD3).t5_tokens), t5_length(toy, adapter_for(Family.SD3).t5_tokens)] == [256, 77]
    assert t5_length(real, adapter_for(Family.FLUX, {"guidance_embeds": True}).t5_tokens) == 512
    assert t5_length(real, adapter_for(Family.FLUX, {"guidance_embeds": False}).t5_tokens) == 256


def test_settings_the_family_cannot_honour_are_refused_before_anything_is_written(tmp_path, sd3, sd1):
    images = make_images(tmp_path / "img", 2, captions="ohwx")
    for model, over, message in (
        (sd3, dict(output__preview={"every": 1, "sampler": "euler_a"}), "euler_a does not sample SD3"),
        (sd3, dict(embedding__cross_init=True), "cross_init: not available for SD3"),
        (sd1, dict(embedding__train_t5=True), "train_t5: .* has no T5 encoder"),
    ):
        with pytest.raises(TitkError, match=message):
            train(cfg(tmp_path, images, **over), bundle=model, show_progress=False, latent_cache=tmp_path / "c")
        assert not (tmp_path / "run").exists() and not (tmp_path / "c").exists()


@pytest.fixture(scope="module")
def sd3_single(tmp_path_factory):
    """A tiny SD3 as a diffusers folder and as Stability's single files: with all three encoders, without T5,
    and the transformer alone. Its CLIP-L projection is the identity: diffusers reads CLIP-L from these
    files with one (SD3's original code does not project CLIP-L's pooled output)."""
    from safetensors.torch import save_file

    from titk.models.fixtures import build_tiny_pipeline
    from titk.models.ldm import pipeline_to_ldm
    from titk.models.loading import quiet_libraries

    root = tmp_path_factory.mktemp("sd3-single")
    pipe = build_tiny_pipeline("sd3", seed=3)
    with torch.no_grad():
        pipe.text_encoder.text_projection.weight.copy_(torch.eye(32))
    with quiet_libraries():
        pipe.save_pretrained(root / "folder", safe_serialization=True)
    state = pipeline_to_ldm(pipe)
    files = {"all": root / "sd3_incl_clips_t5.safetensors", "no-t5": root / "sd3_incl_clips.safetensors",
             "bare": root / "sd3_transformer.safetensors"}
    save_file(state, str(files["all"]))
    save_file({k: v for k, v in state.items() if not k.startswith("text_encoders.t5xxl.")}, str(files["no-t5"]))
    save_file({k: v for k, v in state.items() if k.startswith("model.diffusion_model.")}, str(files["bare"]))
    return root / "folder", files


def test_an_sd3_single_file_loads_as_its_diffusers_folder_does(sd3_single):
    """Stability's layout (`model.diffusion_model.joint_blocks.*`, `text_encoders.{clip_l,clip_g,t5xxl}.*`)
    read offline with diffusers' converter: the same transformer, VAE and encoders, the same conditioning."""
    folder, files = sd3_single
    reference = load_model(folder, dtype="fp32")
    single = load_model(files["all"], dtype="fp32", config_dir=str(folder))
    assert single.family.value == "sd3" and [e.key for e in single.encoders] == ["clip_l", "clip_g", "t5"]
    assert single.short_hash != reference.short_hash and single.name == "sd3_incl_clips_t5"
    for part in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        ours, theirs = getattr(reference.pipeline, part).state_dict(), getattr(single.pipeline, part).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), part
    prompts = ["a photo of a person", "an old man, outdoors"]
    a, b = reference.encode_prompts(prompts), single.encode_prompts(prompts)
    torch.testing.assert_close(a.hidden, b.hidden)
    torch.testing.assert_close(a.pooled, b.pooled)


def test_an_sd3_single_file_without_t5_loads_with_the_shipped_tokenizers_and_no_t5(sd3_single, tmp_path):
    """SD3 without T5 is legal (sd3_medium_incl_clips): two encoders, T5's place left to zeros. The CLIP
    tokenizers are built offline when the config folder has none."""
    import shutil

    folder, files = sd3_single
    configs = tmp_path / "configs"
    shutil.copytree(folder, configs, ignore=shutil.ignore_patterns("*.safetensors", "tokenizer*"))
    bundle = load_model(files["no-t5"], dtype="fp32", config_dir=str(configs))
    assert [e.key for e in bundle.encoders] == ["clip_l", "clip_g"] and bundle.pipeline.text_encoder_3 is None
    reference = load_model(folder, dtype="fp32")
    torch.testing.assert_close(bundle.encode_prompts(["a photo"]).pooled, reference.encode_prompts(["a photo"]).pooled)


def test_an_sd3_single_file_that_cannot_load_says_why_in_one_line(sd3_single, tmp_path, run_cli):
    from helpers import assert_one_line_error

    folder, files = sd3_single
    code, _, err = run_cli("inspect", files["bare"])  # the transformer alone
    assert_one_line_error(code, err, "sd3_transformer.safetensors", "needs its clip_l and clip_g text encoders; it holds none")
    code, _, err = run_cli("inspect", files["all"])  # T5 in the file, and the shipped configs have no T5 tokenizer
    assert_one_line_error(code, err, "holds a T5 encoder, whose tokenizer titk cannot build offline", "--model-config")
    code, _, err = run_cli("inspect", files["no-t5"])  # the shipped configs are SD3 medium's, not this size
    assert_one_line_error(code, err, "sd3_incl_clips.safetensors", "transformer width is 32, SD3 medium (titk's shipped config) has 1536",
                          "--model-config")


def test_an_sd35_medium_file_is_told_from_sd3_medium_and_asks_for_its_configs(tmp_path, run_cli):
    """SD3.5 medium has SD3 medium's width and depth; its dual attention (and larger position table) tell it
    apart before a load that would fail on shapes. Only names and shapes are read: tensors of one row do."""
    from safetensors.torch import save_file

    from helpers import assert_one_line_error

    p = "model.diffusion_model."
    keys = {p + "x_embedder.proj.weight": torch.zeros(1536, 1, 1, 1), p + "pos_embed": torch.zeros(1, 36864, 1),
            "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(1, 1),
            "text_encoders.clip_g.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(1, 1)}
    keys |= {f"{p}joint_blocks.{i}.x_block.attn.qkv.weight": torch.zeros(1, 1) for i in range(24)}
    save_file(keys, str(tmp_path / "sd3_medium.safetensors"))
    save_file(keys | {p + "joint_blocks.0.x_block.attn2.qkv.weight": torch.zeros(1, 1)}, str(tmp_path / "sd3.5_medium.safetensors"))
    code, _, err = run_cli("inspect", tmp_path / "sd3.5_medium.safetensors")
    assert_one_line_error(code, err, "sd3.5_medium.safetensors: has dual attention, which SD3 medium (titk's shipped config) has not",
                          "--model-config")
    code, _, err = run_cli("inspect", tmp_path / "sd3_medium.safetensors")  # past the checks: the load itself says what is wrong
    assert code != 0 and "dual attention" not in err and "Traceback" not in err
