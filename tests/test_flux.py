"""Flux on a tiny random-weight pipeline: its conditioning and its sampling are its pipeline's, training follows
flow matching on the unshifted schedule with uniform timesteps and the transformer reads packed latents, the T5
vectors are frozen unless asked, and files, diffusers' loader, planning and FLUX.1 single files (a transformer of
FLUX.1's width) work. That a TI learns on Flux is proven in the toy world (test_toyworld_flux.py)."""

from __future__ import annotations

import re
from pathlib import Path

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

PROMPTS = ["a photo of a person", "an old man with grey hair and a beard, outdoors"]


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    return save_tiny_pipeline("flux", tmp_path_factory.mktemp("flux") / "tiny-flux")


@pytest.fixture(scope="module")
def flux(flux_folder):
    return load_model(flux_folder, dtype="fp32")


def test_a_folder_loads_as_flux_with_clip_l_and_t5_and_uniform_flow_matching(flux):
    assert flux.family.value == "flux" and flux.prediction_type == "flow"
    assert [e.key for e in flux.encoders] == ["clip_l", "t5"] and flux.widths == (32, 128)
    assert flux.latent_shift == pytest.approx(0.1159) and flux.latent_channels == 4 and flux.default_size == 64
    assert isinstance(flux.objective, FlowMatchObjective) and flux.objective.weighting == "none"


def test_conditioning_equals_the_flux_pipelines_own_encoding(flux):
    """Without a TI in the prompt, titk's Flux conditioning is what FluxPipeline.encode_prompt gives: T5's last
    hidden state over the T5 tokenizer's length (96 here, 512 for Flux dev) and CLIP-L's pooled output, for a
    prompt longer than CLIP's 75 tokens too (CLIP cut there, T5 reading on)."""
    prompts = [*PROMPTS, ", ".join(f"word{i} red hair" for i in range(30))]
    assert len(flux.encoders[1].tokenizer(prompts[-1]).input_ids) > 96
    cond = flux.encode_prompts(prompts)
    embeds, pooled, _ = flux.pipeline.encode_prompt(prompts, prompts, max_sequence_length=96)
    assert cond.hidden.shape == (3, 96, 128) and cond.pooled.shape == (3, 32)
    torch.testing.assert_close(cond.hidden, embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cond.pooled, pooled, atol=1e-5, rtol=1e-5)


def test_the_name_becomes_placeholders_in_both_encoders_and_the_pooled_output_sees_them(flux):
    tokens = flux.tokenize(["a photo of ohwx"], "ohwx", 3)
    for enc, ids in zip(flux.encoders, tokens.ids):
        assert (ids[0] >= enc.spliced.vocab_size).sum() == 3, enc.key
    # CLIP's pooled output is read at the end token, not at the highest id (a placeholder): a TI moves it
    from titk.models.sampling import embedding_active

    def encoded(clip_l, t5):
        with embedding_active(flux, {"clip_l": clip_l, "t5": t5}):
            return flux.encode_prompts(["a photo of ohwx"], "ohwx", 3)

    clip_l, t5 = torch.randn(3, 32), torch.randn(3, 128)
    plain, moved = encoded(clip_l, t5), encoded(clip_l + 1, t5 + 1)
    assert not torch.allclose(plain.pooled, moved.pooled) and not torch.allclose(plain.hidden, moved.hidden)


def test_flux_timesteps_are_uniform_on_the_unshifted_schedule():
    """Flux's scheduler config shifts per resolution when sampling (use_dynamic_shifting); training draws from
    the unshifted schedule, as diffusers' Flux scripts do, where SD3's static shift moves σ up."""
    import json

    from diffusers import FlowMatchEulerDiscreteScheduler

    from titk.models.loading import shipped_config

    config = json.loads((shipped_config("flux") / "scheduler" / "scheduler_config.json").read_text())
    flux = FlowMatchObjective(FlowMatchEulerDiscreteScheduler.from_config(config).config, "none")
    draws = flux.draw(4000, torch.Generator().manual_seed(0))
    assert 480 < draws.mean() < 520 and 0.45 < ((draws > 250) & (draws < 750)).float().mean() < 0.55
    static = FlowMatchObjective(FlowMatchEulerDiscreteScheduler(shift=3.0).config, "none")
    assert static.draw(4000, torch.Generator().manual_seed(0)).mean() > draws.mean() + 100


def test_predict_packs_the_latents_for_the_transformer_and_unpacks_its_output(flux):
    """The transformer reads 2×2 patches as a sequence with their positions, σ in [0, 1] and the distilled
    guidance; its output comes back in the latents' layout (a transformer returning its input gives x back)."""
    from types import SimpleNamespace

    seen = {}

    def echo(hidden_states, **kw):
        seen.update(kw, shape=hidden_states.shape)
        return SimpleNamespace(sample=hidden_states)

    echo.config = flux.unet.config
    x = torch.randn(2, 4, 8, 6)
    cond = flux.encode_prompts(PROMPTS)
    out = flux.adapter.predict(echo, x, torch.tensor([250.0, 750.0]), cond, 64, 48)
    torch.testing.assert_close(out, x)
    assert seen["shape"] == (2, 12, 16) and seen["img_ids"].shape == (12, 3) and seen["txt_ids"].shape == (96, 3)
    assert seen["timestep"].tolist() == [0.25, 0.75] and seen["guidance"].tolist() == [3.5, 3.5]
    assert seen["img_ids"][:, 1].max() == 3 and seen["img_ids"][:, 2].max() == 2  # rows and columns of patches
    with pytest.raises(TitkError, match="needs sides in multiples of 16 px"):
        flux.adapter.predict(echo, torch.randn(1, 4, 9, 8), torch.tensor([1.0]), flux.encode_prompts(["a"]), 72, 64)


def test_training_trains_clip_l_and_keeps_t5_and_writes_both_keys(tmp_path, flux):
    images = make_images(tmp_path / "img", 4, captions="ohwx, photo {i}")
    config = cfg(tmp_path, images, train__max_steps=4, train__grad_accum=1, output__formats=["safetensors"])
    result = train(config, bundle=flux, show_progress=False, latent_cache=tmp_path / "cache")
    from titk.embeddings.placeholder import init_vectors

    clip_l, t5 = flux.encoders
    torch.testing.assert_close(result.embedding.vectors["t5"], init_vectors(t5.tokenizer, t5.table, "person", 2, "stretch", False))
    assert not torch.allclose(result.embedding.vectors["clip_l"], init_vectors(clip_l.tokenizer, clip_l.table, "person", 2, "stretch", False))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "run" / "ohwx.safetensors"), "pt") as f:  # T5 under OneTrainer's key and ComfyUI's
        assert set(f.keys()) == {"clip_l", "t5", "t5xxl"}
    trained_t5 = train(cfg(tmp_path / "t5", images, train__max_steps=2, train__grad_accum=1, embedding__train_t5=True),
                       bundle=flux, show_progress=False, latent_cache=tmp_path / "cache")
    assert not torch.allclose(trained_t5.embedding.vectors["t5"], result.embedding.vectors["t5"])


def test_sampling_with_a_ti_draws_what_the_flux_pipeline_draws_with_diffusers_loader(tmp_path, flux, flux_folder):
    """titk's image of a prompt with its TI equals FluxPipeline's own, given the same starting latents, when
    the pipeline loads the file's clip_l part with load_textual_inversion and titk's T5 vectors are those of
    the tokens it stands for (the pipeline's T5 knows no TI)."""
    from diffusers import FluxPipeline

    from titk.embeddings import Embedding
    from titk.embeddings.formats import read_embedding, write_embedding
    from titk.embeddings.placeholder import init_vectors
    from titk.models.loading import quiet_libraries
    from titk.models.sampling import embedding_active, generate

    t5 = flux.encoders[1]
    vectors = {"clip_l": torch.randn(1, 32) * 0.02, "t5": init_vectors(t5.tokenizer, t5.table, "photo", 1, "stretch", False)}
    assert t5.tokenizer.tokenize("photo") == ["▁photo"]  # one T5 token, so the pipeline's T5 prompt can spell the vector out
    [path] = write_embedding(Embedding("ohwx", vectors), tmp_path / "ohwx.safetensors")
    settings = SamplingSettings(sampler="euler", steps=6, cfg=3.5, width=64, height=64)
    with embedding_active(flux, read_embedding(path).vectors):
        ours = generate(flux, ["a photo of ohwx"], [7], settings, name="ohwx", n_vectors=1)[0]
    with quiet_libraries():
        pipe = FluxPipeline.from_pretrained(flux_folder)
    state = read_embedding(path).vectors
    pipe.load_textual_inversion(state["clip_l"], token="ohwx", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    latents = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(7))[None]
    theirs = pipe(prompt="a photo of ohwx", prompt_2="a photo of photo", num_inference_steps=6, guidance_scale=3.5,
                  height=64, width=64, latents=FluxPipeline._pack_latents(latents, 1, 4, 8, 8), max_sequence_length=96).images[0]
    assert np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(theirs, dtype=np.int16)).max() <= 1


def test_flux_refuses_what_it_cannot_do_in_one_line(tmp_path, flux):
    from titk.embeddings import Embedding
    from titk.embeddings.fit import vectors_for
    from titk.models.sampling import generate

    with pytest.raises(TitkError, match="dpm\\+\\+2m does not sample Flux.*choose euler$"):
        generate(flux, ["a photo"], [1], SamplingSettings(steps=2, sampler="dpm++2m"))
    sd3_file = Embedding("x", {"clip_l": torch.zeros(2, 32), "clip_g": torch.zeros(2, 64), "t5": torch.zeros(2, 128)})
    with pytest.raises(TitkError, match="holds more than tiny-flux has encoders for; it needs clip_l \\(32\\) and t5 \\(128\\)"):
        vectors_for(sd3_file, flux)
    wrong_t5 = Embedding("x", {"clip_l": torch.zeros(2, 32), "t5": torch.zeros(2, 96)})
    with pytest.raises(TitkError, match=r"t5 96\) does not fit .*needs clip_l \(32\) and t5 \(128\)"):
        vectors_for(wrong_t5, flux)
    images = make_images(tmp_path / "img", 2, captions="ohwx")
    for over, message in ((dict(data__width=72), "data.width: 72 px; Flux.1 .* needs multiples of 16 px"),
                          (dict(output__preview={"every": 1, "sampler": "euler", "width": 72}), "output.preview: width 72 px"),
                          (dict(train__semantics="kohya", data__caption_extension=".txt"), "kohya has no textual inversion for Flux")):
        with pytest.raises(TitkError, match=message):
            train(cfg(tmp_path, images, **over), bundle=flux, show_progress=False, latent_cache=tmp_path / "c")
        assert not (tmp_path / "run").exists() and not (tmp_path / "c").exists()


def test_plan_counts_the_flux_dev_transformer():
    """Flux dev's transformer (19 double and 38 single blocks) at 1024 px: 4096 image patches and 512 T5 tokens
    per view, forward and backward to the conditioning."""
    from titk.models.families import Family
    from titk.models.loading import shipped_architecture
    from titk.train.flops import unet_flops_per_view

    arch = shipped_architecture(Family.FLUX)
    assert arch.default_size == 1024
    assert unet_flops_per_view(arch.unet, 1024, 1024, arch.vae_scale) / 1e12 == pytest.approx(163.64, abs=0.01)
    assert unet_flops_per_view(arch.unet, 512, 512, arch.vae_scale) / 1e12 == pytest.approx(44.66, abs=0.01)


SCHNELL_TFLOP_512 = 36.52  # 1024 image patches and 256 T5 tokens, against dev's 44.66


def test_flux_schnell_reads_256_t5_tokens_where_dev_reads_512(flux, monkeypatch):
    """A Flux transformer without a guidance embedding is FLUX.1 schnell, whose model card samples with 256 T5
    tokens: training, sampling and the plan read 256, where dev (guidance-distilled) reads 512."""
    from titk.models.families import Family, adapter_for
    from titk.models.loading import shipped_architecture
    from titk.train.flops import unet_flops_per_view

    t5 = flux.encoders[1]
    monkeypatch.setattr(t5.tokenizer, "model_max_length", 512)  # as T5-XXL's tokenizer says
    ids = flux.tokenize(["a photo of a person"]).ids
    for guidance_embeds, length in ((True, 512), (False, 256)):
        cond = adapter_for(Family.FLUX, {"guidance_embeds": guidance_embeds}).encode(flux.encoders, ids)
        assert cond.hidden.shape[1] == length
    dev = shipped_architecture(Family.FLUX).unet
    schnell = unet_flops_per_view({**dev, "guidance_embeds": False}, 512, 512)
    assert schnell / 1e12 == pytest.approx(SCHNELL_TFLOP_512, abs=0.01) and schnell < unet_flops_per_view(dev, 512, 512)


def test_plan_of_the_flux_recipe_before_its_model_is_set(tmp_path, run_cli):
    """`titk plan --family flux` on the shipped recipe: Flux dev's transformer at 1024 px, one view per step of
    accumulation, and a 1024 px bucket for square photos."""
    import json
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "experiments/recipes/flux-bs1-ga4-400steps.yaml"
    data = make_images(tmp_path / "photos", 15)
    code, out, err = run_cli("plan", recipe, "-d", data, "--family", "flux", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["image_views"] == 1600 and plan["tflops_per_view"] == {"1024x1024": pytest.approx(163.64, abs=0.01)}
    assert "planned with the flux family's standard architecture" in plan["notes"][0]


def test_a_transformer_in_shards_gets_a_short_hash_of_its_shards(tmp_path, flux_folder):
    """FLUX.1 dev's transformer comes in shards with an index; the model still gets a short hash, from the
    shards' contents: changed by any shard, the same wherever the folder is."""
    import hashlib
    import shutil

    from titk.hashing import sha256_file
    from titk.models.fixtures import build_tiny_pipeline
    from titk.models.loading import _folder_hash, quiet_libraries

    sharded = tmp_path / "sharded"
    shutil.copytree(flux_folder, sharded)
    shutil.rmtree(sharded / "transformer")
    with quiet_libraries():
        build_tiny_pipeline("flux").transformer.save_pretrained(sharded / "transformer", max_shard_size="20KB")
    shards = sorted((sharded / "transformer").glob("diffusion_pytorch_model-*.safetensors"))
    assert len(shards) > 1 and (sharded / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    expected = hashlib.sha256("".join(sha256_file(s) for s in shards).encode()).hexdigest()[:10]
    assert load_model(sharded, dtype="fp32").short_hash == expected
    moved = tmp_path / "moved"
    shutil.move(sharded, moved)
    assert _folder_hash(moved) == expected
    last = sorted((moved / "transformer").glob("diffusion_pytorch_model-*.safetensors"))[-1]
    last.write_bytes(last.read_bytes()[:-1] + b" ")
    assert _folder_hash(moved) != expected


def test_resuming_with_train_t5_switched_is_refused_in_one_line(tmp_path, flux):
    """The saved optimizer holds the trained vectors only: turning train_t5 on (or off) cannot continue it."""
    images = make_images(tmp_path / "img", 2, captions="ohwx")
    train(cfg(tmp_path, images, train__max_steps=2, train__grad_accum=1), bundle=flux, show_progress=False, latent_cache=tmp_path / "c")
    with pytest.raises(TitkError, match=r"state-2.pt: cannot resume: the config or dataset changed since \(embedding.train_t5\)"):
        train(cfg(tmp_path, images, train__max_steps=4, train__grad_accum=1, embedding__train_t5=True), bundle=flux,
              resume=True, show_progress=False, latent_cache=tmp_path / "c")


def test_a_suite_flux_cannot_sample_is_refused_when_the_evaluator_is_built(tmp_path, flux):
    """The person suite samples with DPM++ 2M: on Flux that is one line before any trial trains; the shipped
    person-flux suite (the same prompts and seeds, Euler at guidance 3.5) is what the Flux sweep uses."""
    import yaml

    from titk.config import EvalSettings, parse
    from titk.evaluate.evaluator import build_evaluator, load_references
    from titk.evaluate.suite import find_prompt_file, load_suite

    references = load_references(make_images(tmp_path / "refs", 2), 64)
    with pytest.raises(TitkError, match="^suite person: sampler: dpm\\+\\+2m does not sample Flux.*\\(or set evaluation.sampler\\)$"):
        build_evaluator(flux, parse(EvalSettings, {"suite": "person", "scorers": ["norms"]}, "t"), references)
    evaluator = build_evaluator(flux, parse(EvalSettings, {"suite": "person-flux", "scorers": ["norms"]}, "t"), references)
    assert (evaluator.suite.spec.sampler, evaluator.suite.spec.cfg) == ("euler", 3.5)
    person, flux_suite = (yaml.safe_load(find_prompt_file(n).read_text()) for n in ("person", "person-flux"))
    assert flux_suite["prompts"] == person["prompts"] and flux_suite["seeds"] == person["seeds"]
    assert len(load_suite("person-flux").items) == len(load_suite("person").items)
    # evaluation.sampler runs any suite with a sampler Flux can run (the toy suites, on the toy Flux model)
    given = build_evaluator(flux, parse(EvalSettings, {"suite": "person", "sampler": "euler", "scorers": ["norms"]}, "t"), references)
    assert given.sampling(given.suite).sampler == "euler" and given.suite.spec.sampler == "dpm++2m"
    with pytest.raises(TitkError, match="^suite person with evaluation.sampler: sampler: ddim does not sample Flux"):
        build_evaluator(flux, parse(EvalSettings, {"suite": "person", "sampler": "ddim", "scorers": ["norms"]}, "t"), references)
    # evaluation.true_cfg: every suite with true classifier-free guidance, recorded in the protocol
    given = build_evaluator(flux, parse(EvalSettings, {"suite": "person-flux", "true_cfg": 5, "scorers": ["norms"]}, "t"), references)
    assert given.sampling(given.suite).true_cfg == 5.0 and given.suite.spec.true_cfg is None
    odd = tmp_path / "odd.yaml"
    odd.write_text(yaml.safe_dump({"sampler": "euler", "width": 72, "prompts": [{"text": "a photo of [name]"}]}))
    with pytest.raises(TitkError, match="^suite odd: width 72 px; Flux.1 .* needs multiples of 16 px"):
        build_evaluator(flux, parse(EvalSettings, {"suite": str(odd), "scorers": ["norms"]}, "t"), references)


def test_flux_true_cfg_runs_the_negative_prompt_as_the_pipelines_true_cfg_scale(tmp_path, flux, flux_folder, sd1):
    """true_cfg (a Flux model not guidance-distilled, as the toy one): a negative pass each step at that scale,
    the image FluxPipeline draws with true_cfg_scale and the negative prompt; other families refuse it in one line."""
    from diffusers import FluxPipeline

    from titk.models.loading import quiet_libraries
    from titk.models.sampling import check_sampling, generate

    settings = SamplingSettings(sampler="euler", steps=4, cfg=3.5, true_cfg=4.0, negative_prompt="blurry", width=64, height=64)
    ours = generate(flux, ["a photo of a person"], [7], settings)[0]
    plain = generate(flux, ["a photo of a person"], [7], settings.model_copy(update={"true_cfg": None}))[0]
    with quiet_libraries():
        pipe = FluxPipeline.from_pretrained(flux_folder)
    latents = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(7))[None]
    theirs = pipe(prompt="a photo of a person", negative_prompt="blurry", true_cfg_scale=4.0, num_inference_steps=4, guidance_scale=3.5,
                  height=64, width=64, latents=FluxPipeline._pack_latents(latents, 1, 4, 8, 8), max_sequence_length=96).images[0]
    ours, theirs, plain = (np.asarray(im, dtype=np.int16) for im in (ours, theirs, plain))
    assert np.abs(ours - theirs).max() <= 1 and np.abs(ours - plain).mean() > 1.0
    with pytest.raises(TitkError, match=r"^preview: true_cfg is for Flux, .*; on SD1\.x .* cfg is classifier-free guidance already$"):
        check_sampling(sd1, SamplingSettings(true_cfg=4.0), "preview")
    with pytest.raises(TitkError, match="^true_cfg is for Flux"):  # generate's own callers too, not a pipeline TypeError
        generate(sd1, ["a photo"], [1], SamplingSettings(true_cfg=4.0, steps=1))
    from titk.config import EvalSettings, parse
    from titk.evaluate.evaluator import build_evaluator, load_references

    with pytest.raises(TitkError, match="^evaluation.true_cfg is for Flux"):
        build_evaluator(sd1, parse(EvalSettings, {"suite": "person", "true_cfg": 5, "scorers": ["norms"]}, "t"), load_references(make_images(tmp_path / "r", 2), 64))


def test_flux_sampling_encodes_no_negative_prompt(flux, monkeypatch):
    """FLUX.1 dev's distilled guidance runs no negative prompt: encoding one (a T5-XXL pass a batch) is skipped."""
    from titk.models.sampling import generate

    seen, real = [], flux.encode_prompts
    monkeypatch.setattr(flux, "encode_prompts", lambda prompts, *a, **k: seen.append(list(prompts)) or real(prompts, *a, **k))
    generate(flux, ["a photo"], [1], SamplingSettings(steps=1, sampler="euler", negative_prompt="blurry", width=64, height=64))
    assert seen == [["a photo"]]


# ------------------------------------------------------------------------------------------- single files

FLUX_WIDE = {"attention_head_dim": 128, "num_attention_heads": 24, "axes_dims_rope": [16, 56, 56]}  # FLUX.1's 3072


@pytest.fixture(scope="module")
def flux_single(tmp_path_factory, flux_folder):
    """A FLUX.1-wide transformer (3072: diffusers' converter of Black Forest Labs' files assumes that width), one
    block of each kind deep, written in their layout, and the tiny Flux folder with that transformer's config:
    what a user passes as --model-config. (file, folder, the transformer's weights)."""
    import json
    import shutil

    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    from titk.models.ldm import flux_to_original

    tmp = tmp_path_factory.mktemp("flux-single")
    folder = tmp / "FLUX.1-tiny"
    shutil.copytree(flux_folder, folder, ignore=shutil.ignore_patterns("*.safetensors"))  # only the transformer's config
    for part in ("text_encoder", "text_encoder_2", "vae"):
        shutil.copytree(flux_folder / part, folder / part, dirs_exist_ok=True)
    config = json.loads((folder / "transformer" / "config.json").read_text()) | FLUX_WIDE
    (folder / "transformer" / "config.json").write_text(json.dumps(config))
    with torch.device("meta"):  # 480 M parameters: made in bf16, never in fp32
        model = FluxTransformer2DModel(**{k: v for k, v in config.items() if not k.startswith("_") and k != "sample_size"})
    model = model.to(torch.bfloat16).to_empty(device="cpu")
    # Random values repeating with a prime period: every row differs from its neighbours (a q/k/v split in the
    # wrong place shows), at the cost of a copy rather than of 480 M random draws
    pattern = torch.randn(65521, generator=torch.Generator().manual_seed(0), dtype=torch.bfloat16) * 0.02
    with torch.no_grad():
        for i, param in enumerate(model.parameters()):
            flat = param.view(-1)
            flat.copy_(pattern.roll(i).repeat(flat.numel() // len(pattern) + 1)[: flat.numel()])
    weights = model.state_dict()  # nothing writes to them: the writer's fused rows are copies
    save_file(flux_to_original(model.state_dict()), str(tmp / "flux1-tiny.safetensors"))
    return tmp / "flux1-tiny.safetensors", folder, weights


def test_a_flux_single_file_loads_its_transformer_with_the_folders_encoders(flux_single, flux_folder, run_cli):
    """A FLUX.1 transformer in Black Forest Labs' layout (flux1-dev.safetensors, its fine-tunes) loads through
    diffusers' converter weight for weight, with the text encoders, tokenizers and VAE of --model-config's folder;
    the model is named and hashed by the file."""
    from titk.hashing import short_hash

    path, folder, weights = flux_single
    bundle = load_model(path, config_dir=folder, dtype="bf16")
    assert bundle.family.value == "flux" and bundle.name == "flux1-tiny" and bundle.short_hash == short_hash(path)
    loaded = bundle.pipeline.transformer.state_dict()
    assert set(loaded) == set(weights)
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())
    reference = load_model(flux_folder, dtype="bf16")
    for mine, theirs in zip(bundle.encoders, reference.encoders):
        assert all(torch.equal(a, b) for a, b in zip(mine.model.state_dict().values(), theirs.model.state_dict().values()))
    code, out, err = run_cli("inspect", path, "--model-config", folder, "--dtype", "bf16")
    assert code == 0, err
    assert re.search(r"family\s+flux", out) and re.search(r"text encoders\s+clip_l \(32\), t5 \(128\)", out), out


def _flux_file(tmp_path, name: str, *, width: int = 3072, channels: int = 16, guidance: bool = True, extra=(), prefix: str = "") -> Path:
    """A file with FLUX.1's key names and a few telling shapes (the rest 1 × 1): enough for the checks that run
    before the weights load."""
    from safetensors.torch import save_file

    keys = {"img_in.weight": torch.zeros(width, channels), "time_in.in_layer.weight": torch.zeros(1, 1),
            "double_blocks.0.img_attn.norm.key_norm.scale": torch.zeros(1), "single_blocks.0.linear1.weight": torch.zeros(1, 1)}
    if guidance:
        keys["guidance_in.in_layer.weight"] = torch.zeros(1, 1)
    keys |= {k: torch.zeros(1) for k in extra}
    save_file({prefix + k: v for k, v in keys.items()}, str(tmp_path / name))
    return tmp_path / name


def test_a_flux_single_file_that_cannot_load_says_why_in_one_line(tmp_path, flux_single, run_cli):
    import json
    import shutil

    from helpers import assert_one_line_error

    _, folder, _ = flux_single
    schnell_folder = tmp_path / "FLUX.1-schnell-tiny"
    shutil.copytree(folder, schnell_folder)
    config = json.loads((schnell_folder / "transformer" / "config.json").read_text()) | {"guidance_embeds": False}
    (schnell_folder / "transformer" / "config.json").write_text(json.dumps(config))
    no_config = tmp_path / "no-config"
    shutil.copytree(folder, no_config, ignore=shutil.ignore_patterns("transformer"))
    dev = _flux_file(tmp_path, "flux1-dev.safetensors")
    schnell = _flux_file(tmp_path, "schnell.safetensors", guidance=False)
    cases = [
        ((dev,), "flux1-dev.safetensors: a Flux single file holds the transformer only; pass --model-config DIR"),
        ((schnell, "--model-config", folder), "has no guidance embedding (FLUX.1 schnell's layout", "pass FLUX.1 schnell's folder"),
        ((dev, "--model-config", schnell_folder), "has a guidance embedding (FLUX.1 dev's layout)", "pass FLUX.1 dev's folder"),
        ((_flux_file(tmp_path, "comfy.safetensors", guidance=False, prefix="model.diffusion_model."), "--model-config", folder),
         "pass FLUX.1 schnell's folder"),  # ComfyUI's prefix: the same checks read it
        ((_flux_file(tmp_path, "deeper.safetensors", extra=["double_blocks.1.img_attn.norm.key_norm.scale"]), "--model-config", folder),
         "the file has 2 double-stream blocks", "transformer 1;"),
        ((_flux_file(tmp_path, "narrow.safetensors", width=1024), "--model-config", folder), "a Flux transformer 1024 wide",
         "load the model's diffusers folder instead"),
        ((_flux_file(tmp_path, "fill.safetensors", channels=384), "--model-config", folder), "reads 384 input channels"),
        ((_flux_file(tmp_path, "flux2.safetensors", extra=["single_stream_modulation.lin.weight"]),), "a FLUX.2 single file"),
        ((_flux_file(tmp_path, "chroma.safetensors", extra=["distilled_guidance_layer.in_proj.bias"]),), "a Chroma single file"),
        ((_flux_file(tmp_path, "fp8.safetensors", extra=["scaled_fp8"]), "--model-config", folder), "scaled-fp8"),
        ((dev, "--model-config", tmp_path), "no model_index.json"),
        ((dev, "--model-config", no_config), "no readable transformer/config.json"),
    ]
    for args, *needles in cases:
        code, _, err = run_cli("inspect", *args)
        assert_one_line_error(code, err, *needles)
    from safetensors.torch import save_file

    save_file({"double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(1, 1)}, str(tmp_path / "lora.safetensors"))
    with pytest.raises(TitkError, match="lora.safetensors: Flux-like blocks but no FLUX.1 transformer"):  # `inspect` reads it as an embedding
        load_model(tmp_path / "lora.safetensors", config_dir=folder)


def test_plan_reads_a_flux_files_layout_without_its_folder(tmp_path):
    """`titk plan` needs no folder: the shipped FLUX.1 dev config, with schnell's layout (no guidance embedding,
    256 T5 tokens) for a file that has none."""
    from titk.config import ModelConfig, parse
    from titk.models.loading import read_architecture

    for name, guidance in (("dev.safetensors", True), ("schnell.safetensors", False)):
        architecture = read_architecture(parse(ModelConfig, {"source": str(_flux_file(tmp_path, name, guidance=guidance))}, "model"))
        assert architecture.family.value == "flux" and architecture.unet["guidance_embeds"] is guidance
