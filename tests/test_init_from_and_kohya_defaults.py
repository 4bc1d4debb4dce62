"""Training further from an embedding file (embedding.init_from), and kohya's own defaults and rules under
`train.semantics: kohya`: values computed by hand on tiny inputs."""

import numpy as np
import pytest
import torch
from helpers import make_images
from PIL import Image

from titk.config import TrainConfig, parse
from titk.data.dataset import ImageRecord, alpha_weight, kohya_alpha_weight, prepare_pixels, scan_dataset
from titk.embeddings import Embedding
from titk.embeddings.formats import read_embedding, save_embedding, write_embedding
from titk.errors import TitkError
from titk.models.families import Family
from titk.models.loading import shipped_architecture
from titk.train.plan import make_plan


@pytest.fixture(scope="module")
def ds15(tmp_path_factory):
    return scan_dataset(make_images(tmp_path_factory.mktemp("ds15"), 15))


def config(init_from=None, vectors=None, data=None, **train) -> TrainConfig:
    embedding = {"name": "ohwx", "init_from": str(init_from) if init_from else None, "vectors": vectors}
    data = {"width": 512, "height": 512, **(data or {})}
    return parse(TrainConfig, {"model": {"source": "m"}, "embedding": embedding, "data": data, "train": train}, "test")


def a1111_file(path, step, width=768, n=2):
    emb = Embedding("old", {"clip_l" if width == 768 else f"w{width}": torch.randn(n, width)}, step=step)
    write_embedding(emb, path, "a1111")
    return path


# ------------------------------------------------------------------------------------------- init_from: plan


def test_a1111_continues_from_the_files_step_with_the_schedule_read_from_there(tmp_path, ds15):
    # textual_inversion.py train_embedding: initial_step = embedding.step; LearnRateScheduler(rate, steps,
    # initial_step) drops the pieces at or before it. 15 images, BS 3, GA 5: one update of 15 views per pass.
    path = a1111_file(tmp_path / "old.pt", step=300)
    cfg = config(path, semantics="a1111", batch_size=3, grad_accum=5, max_steps=500, learning_rate="0.01:200, 0.005:400, 0.001:500")
    plan = make_plan(cfg, ds15, shipped_architecture(Family.SD1))
    assert plan.start_step == 300 and plan.lr_pairs == [(0.005, 400), (0.001, 500)]
    assert plan.lr_segments == [(0.005, 300, 400), (0.001, 400, 500)]
    assert (plan.stop_step, plan.image_views, plan.epochs) == (500, 200 * 15, 200)
    assert "stored step 300" in plan.start and "continues at step 300" in plan.start and str(path) in plan.start


def test_kohya_starts_its_counter_at_zero(tmp_path, ds15):
    path = a1111_file(tmp_path / "old.pt", step=300)
    cfg = config(path, semantics="kohya", batch_size=3, grad_accum=5, max_steps=500, learning_rate="0.01:200, 0.005:400, 0.001:500")
    plan = make_plan(cfg, ds15, shipped_architecture(Family.SD1))
    assert plan.start_step == 0 and plan.lr_segments[0] == (0.01, 0, 200) and plan.image_views == 500 * 15
    assert "starts at step 0" in plan.start


def test_the_vector_count_comes_from_the_file(tmp_path, ds15):
    path = a1111_file(tmp_path / "old.pt", step=0, n=3)
    from titk.train.start import read_start

    assert read_start(config(path, max_steps=10)).n_vectors == 3
    with pytest.raises(TitkError, match=r"embedding.vectors: 2 conflicts with .*old.pt, which holds 3 vectors"):
        make_plan(config(path, vectors=2, max_steps=10), ds15)


def test_a_file_at_or_past_max_steps_trains_nothing_and_says_so(tmp_path, ds15):
    path = a1111_file(tmp_path / "old.pt", step=500)
    with pytest.raises(TitkError, match=r"old.pt is at step 500, not below max steps 500"):
        make_plan(config(path, max_steps=500), ds15)


@pytest.mark.parametrize("family, vectors, needle", [
    (Family.SD1, {"clip_h": 1024}, "clip_h 1024, made for sd2"),
    (Family.SD2, {"clip_l": 768}, "clip_l 768, made for sd1"),
    (Family.SD1, {"clip_l": 768, "clip_g": 1280}, "made for sdxl"),
    (Family.SDXL, {"clip_l": 768}, "sdxl: clip_l + clip_g, width 2048 together"),
])
def test_a_file_of_another_family_is_one_error_naming_it(tmp_path, ds15, family, vectors, needle):
    path = tmp_path / "other.safetensors"
    write_embedding(Embedding("other", {k: torch.zeros(1, w) for k, w in vectors.items()}), path, "safetensors")
    with pytest.raises(TitkError) as err:
        make_plan(config(path, max_steps=10), ds15, shipped_architecture(family))
    assert str(err.value).startswith(f"{path}: ") and needle in str(err.value) and "\n" not in str(err.value)


def test_plan_prints_the_start(tmp_path, run_cli, fixtures):
    import yaml

    data = make_images(tmp_path / "d", 4)
    path = a1111_file(tmp_path / "old.pt", step=3, width=32)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"source": str(fixtures["tiny-sd1"].folder)}, "embedding": {"name": "ohwx", "init_from": str(path)},
                                      "train": {"max_steps": 10}}))
    code, out, err = run_cli("plan", recipe, "-d", data)
    assert code == 0, err
    assert "old.pt (a1111, 2 vector(s), stored step 3); continues at step 3" in " ".join(out.split())


# ------------------------------------------------------------------------------------------- init_from: training


def test_training_continues_from_the_files_vectors_and_step(tmp_path, fixtures):
    from titk.models import load_model
    from titk.train.loop import train

    bundle = load_model(fixtures["tiny-sd1"].folder, dtype="fp32")
    start = torch.randn(2, 32)
    write_embedding(Embedding("old", {"clip_l": start}, step=3), tmp_path / "old.pt", "a1111")
    data = make_images(tmp_path / "d", 4, captions="ohwx")
    cfg = parse(TrainConfig, {
        "model": {"source": "m"}, "embedding": {"name": "ohwx", "init_from": str(tmp_path / "old.pt")},
        "data": {"path": str(data)}, "train": {"batch_size": 2, "max_steps": 5, "learning_rate": "0.01"},
        "output": {"dir": str(tmp_path / "run"), "save_every": 0, "preview": {"every": 0}},
    }, "test")
    seen = []
    result = train(cfg, bundle=bundle, show_progress=False, latent_cache=tmp_path / "cache",
                   callback=lambda e: seen.append((e.step, e.embedding.vectors["clip_l"].clone())))
    assert [s for s, _ in seen] == [4, 5] and result.steps_done == 5
    # AdamW's first step moves each element by at most the rate: the run started from the file's vectors.
    assert (seen[0][1] - start).abs().max() <= 0.01 + 1e-6 and not torch.equal(seen[0][1], start)
    assert read_embedding(tmp_path / "run" / "ohwx.pt").step == 5


# ------------------------------------------------------------------------------------------- kohya's defaults


def test_unset_settings_take_each_semantics_defaults(ds15):
    kohya, a1111 = config(semantics="kohya"), config(semantics="a1111", max_steps=10)
    # sd-scripts: --learning_rate 2e-6, --caption_extension .caption, no --enable_bucket (cover + centre crop),
    # no --cache_latents (the VAE every step), --mixed_precision no, --max_train_steps 1600
    assert (kohya.learning_rate, kohya.caption_extension, kohya.resize, kohya.latent_sampling) == ("2e-06", ".caption", "crop", "random")
    assert kohya.model_settings.dtype == "fp32" and kohya.layout == "kohya"
    assert (a1111.learning_rate, a1111.caption_extension, a1111.resize, a1111.latent_sampling) == ("0.005", ".txt", "stretch", "once")
    assert a1111.model_settings.dtype == "auto" and a1111.layout == "a1111"
    plan = make_plan(kohya, ds15)
    assert (plan.max_steps, plan.max_steps_from, plan.lr_pairs) == (1600, "semantics", [(2e-06, 1600)])
    with pytest.raises(TitkError, match="set max_steps"):
        make_plan(config(semantics="a1111"), ds15)
    given = config(semantics="kohya", learning_rate="0.005", data={"caption_extension": ".txt", "resize": "stretch"})
    assert (given.learning_rate, given.caption_extension, given.resize) == ("0.005", ".txt", "stretch")
    assert any("kohya never stretches" in d for d in make_plan(given, ds15).differences)


def test_kohya_refuses_tag_dropout(ds15):
    with pytest.raises(TitkError, match="data.tag_dropout: kohya's TI trainer has no tag dropout"):
        make_plan(config(semantics="kohya", data={"tag_dropout": 0.1}), ds15)


def test_kohya_alpha_mask_is_raw_alpha_area_averaged():
    # 16×16 alpha: left half 255, right half 0 but the bottom-right quarter a 255/0 checkerboard; latent
    # grid 2×2. kohya: alpha / 255, area average (`apply_masked_loss`), no renormalisation.
    a = np.zeros((16, 16), np.uint8)
    a[:, :8] = 255
    a[8:, 8:] = (np.indices((8, 8)).sum(0) % 2 * 255).astype(np.uint8)
    alpha = Image.fromarray(a, "L")
    torch.testing.assert_close(kohya_alpha_weight(alpha, (2, 2)), torch.tensor([[1.0, 0.0], [1.0, 0.5]]))
    # A1111 shifts to min 0 and divides by the mean (0.625): 1.6, 0, 1.6, 0.8
    torch.testing.assert_close(alpha_weight(alpha.resize((2, 2), Image.BOX), (2, 2)), torch.tensor([[1.6, 0.0], [1.6, 0.8]]), atol=1e-2, rtol=0)


def test_crop_covers_and_takes_the_centre(tmp_path):
    # 64×32 image at 32×32: scale max(32/64, 32/32) = 1, so no resize, and columns 16..47 are kept.
    rgb = np.random.default_rng(0).integers(0, 255, (32, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "wide.png")
    record = ImageRecord(tmp_path / "wide.png", "", 64, 32, "", False, False)
    pixels, _ = prepare_pixels(record, (32, 32), "crop")
    expected = torch.from_numpy(rgb[:, 16:48].astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    torch.testing.assert_close(pixels, expected)


def test_kohya_layout_is_what_save_weights_writes(tmp_path):
    sd1 = Embedding("ohwx", {"clip_l": torch.ones(2, 768)}, step=7, extra={"modelspec.resolution": "512x512"})
    save_embedding(sd1, tmp_path / "a.pt", "kohya")
    assert set(torch.load(tmp_path / "a.pt", weights_only=True)) == {"emb_params"}
    save_embedding(sd1, tmp_path / "a.safetensors", "kohya")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a.safetensors"), "pt") as f:
        assert list(f.keys()) == ["emb_params"]
        meta = f.metadata()
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/textual-inversion" and meta["modelspec.resolution"] == "512x512"
    xl = Embedding("ohwx", {"clip_l": torch.ones(1, 768), "clip_g": torch.ones(1, 1280)})
    save_embedding(xl, tmp_path / "x.pt", "kohya")
    assert set(torch.load(tmp_path / "x.pt", weights_only=True)) == {"clip_l", "clip_g"}


def test_kohya_clips_sdxl_through_clip_g_only(tmp_path, fixtures, monkeypatch):
    # sd-scripts clips `text_encoder.get_input_embeddings()` with `text_encoder` left over from its encoder
    # loop: for SDXL the last one, CLIP-G. CLIP-L's gradient is not clipped and its rows do not count.
    import titk.train.trainee as loop
    from titk.models import load_model
    from titk.train.loop import train

    bundle = load_model(fixtures["tiny-sdxl"].folder, dtype="fp32")
    calls = []
    real = loop._clip

    def spy(vectors, mode, threshold, captured, scaler):
        calls.append((sorted(vectors), {out.shape[-1] for _, out in captured}))
        return real(vectors, mode, threshold, captured, scaler)

    monkeypatch.setattr(loop, "_clip", spy)
    data = make_images(tmp_path / "d", 2, captions="ohwx")
    cfg = parse(TrainConfig, {
        "model": {"source": "m"}, "embedding": {"name": "ohwx"},
        "data": {"path": str(data), "caption_extension": ".txt"},
        "train": {"semantics": "kohya", "batch_size": 2, "max_steps": 1, "learning_rate": "0.01"},
        "output": {"dir": str(tmp_path / "run"), "save_every": 0, "preview": {"every": 0}},
    }, "test")
    train(cfg, bundle=bundle, show_progress=False, latent_cache=tmp_path / "cache")
    widths = {enc.key: enc.width for enc in bundle.encoders}
    assert calls == [(["clip_g"], {widths["clip_g"]})]
