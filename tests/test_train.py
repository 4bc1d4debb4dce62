"""The training loop on the tiny fixtures: outputs, resume, what is trainable, failures, semantics, families."""

import csv
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from helpers import make_images
from PIL import Image

from titk.config import TrainConfig, parse
from titk.errors import TitkError, TrainingDiverged
from titk.models import load_model
from titk.embeddings.formats import read_embedding
from titk.train.loop import train
from titk.train.outputs import epoch_columns


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("faces"), 6, captions="ohwx, photo {i}")


@pytest.fixture(scope="module")
def sd1(fixtures):
    return load_model(fixtures["tiny-sd1"].folder, dtype="fp32")


def cfg(tmp_path, images, model="m", **over):
    data = {
        "model": {"source": str(model)},
        "embedding": {"name": "ohwx", "vectors": 2, "init_text": "person"},
        "data": {"path": str(images)},
        "train": {"batch_size": 2, "grad_accum": 3, "max_steps": 4, "learning_rate": "0.01"},
        "output": {"dir": str(tmp_path / "run"), "save_every": 2, "preview": {"every": 0}},
    }
    for key, value in over.items():
        section, name = key.split("__")
        data.setdefault(section, {})[name] = value
    return parse(TrainConfig, data, "test")


def test_training_writes_checkpoints_log_previews_and_a1111_files(tmp_path, images, sd1):
    c = cfg(tmp_path, images, output__preview={"every": 2, "steps": 2, "seeds": [1]}, output__formats=["pt", "safetensors", "png"])
    result = train(c, bundle=sd1, show_progress=False, latent_cache=tmp_path / "cache")
    run = tmp_path / "run"
    assert result.steps_done == 4
    # A1111 numbering: <name>-N written after N-1 updates, storing step N-1 and name <name>-N
    for number in (2, 4):
        pt = torch.load(run / "embeddings" / f"ohwx-{number}.pt", weights_only=True)
        assert pt["step"] == number - 1 and pt["name"] == f"ohwx-{number}"
        png = read_embedding(run / "embeddings" / f"ohwx-{number}.png")  # A1111's image embedding, when asked
        assert png.step == number - 1 and png.name == f"ohwx-{number}"
        assert torch.equal(png.vectors["clip_l"], pt["string_to_param"]["*"])
    assert (run / "previews" / "ohwx-2.png").is_file() and (run / "previews" / "ohwx-4.png").is_file()
    final = torch.load(run / "ohwx.pt", weights_only=True)
    assert set(final) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
    assert final["string_to_token"] == {"*": 265} and final["name"] == "ohwx" and final["step"] == 4
    vec = final["string_to_param"]["*"]
    assert vec.shape == (2, 32) and vec.dtype == torch.float32 and not vec.requires_grad
    assert final["sd_checkpoint"] == sd1.short_hash
    from safetensors import safe_open

    with safe_open(str(run / "ohwx.safetensors"), "pt") as f:
        assert list(f.keys()) == ["ohwx"] and f.metadata()["step"] == "4"
    with open(run / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    # 6 images, bs 2, GA 3: one update per epoch of 6 images
    assert [int(r["images_seen"]) for r in rows] == [6, 12, 18, 24]
    # A1111's CSV columns: update k came from pass (k-1) // 1, its first update
    assert [(r["epoch"], r["epoch_step"]) for r in rows] == [("0", "0"), ("1", "0"), ("2", "0"), ("3", "0")]
    assert read_embedding(run / "ohwx.png").step == 4
    assert (run / "plan.json").is_file() and (run / "config.yaml").is_file()


def test_log_epoch_columns_are_a1111s():
    # textual_inversion.py write_loss(step=updates done, epoch_len=updates per pass): epoch = (step-1) // len,
    # epoch_step = (step-1) % len. 30 images, BS 3, GA 5: 2 updates per pass.
    assert [epoch_columns(step, 2) for step in (1, 2, 3, 4, 5)] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
    assert epoch_columns(500, 1) == (499, 0)


def test_loop_stops_where_a1111_stops_on_a_repeated_end_step(tmp_path, images, sd1):
    # "0.01:2, 0.005" is (0.01, 2), (0.005, 2). BS 6 on 6 images, GA 1: one update per pass, and A1111 runs
    # 2 × 1 passes at most, so no third step. BS 3: two updates per pass, 4 passes allowed: at step 2 the
    # check moves to (0.005, 2) and that micro-batch is an update, at 0.005; then the schedule is finished.
    for bs, steps, rates in ((6, 2, ["0.01", "0.01"]), (3, 3, ["0.01", "0.01", "0.005"])):
        c = cfg(tmp_path / str(bs), images, train__batch_size=bs, train__grad_accum=1, train__max_steps=2,
                train__learning_rate="0.01:2, 0.005", output__save_every=0)
        result = train(c, bundle=sd1, show_progress=False, latent_cache=tmp_path / "cache")
        assert result.steps_done == result.plan.stop_step == steps
        with open(tmp_path / str(bs) / "run" / "train_log.csv") as f:
            assert [r["learn_rate"] for r in csv.DictReader(f)] == rates


def test_only_the_placeholder_rows_train(tmp_path, images, sd1):
    before = {k: v.detach().clone() for k, v in sd1.unet.state_dict().items()}
    table = sd1.encoders[0].table.detach().clone()
    result = train(cfg(tmp_path, images), bundle=sd1, show_progress=False, latent_cache=tmp_path / "cache")
    assert torch.equal(sd1.encoders[0].table, table)
    assert all(torch.equal(v, before[k]) for k, v in sd1.unet.state_dict().items())
    init = sd1.encoders[0].table[sd1.encoders[0].tokenizer("person", add_special_tokens=False).input_ids[0]]
    assert not torch.allclose(result.embedding.vectors["clip_l"][0], init.float())  # the vectors did move
    assert sd1.encoders[0].spliced.extra is None  # the bundle is left clean for the next user


def test_optimizer_sees_only_the_vectors(tmp_path, images, sd1, monkeypatch):
    seen = []
    real = torch.optim.AdamW

    def spy(params, **kw):
        params = list(params)
        seen.extend(p.shape for p in params)
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    train(cfg(tmp_path, images, train__max_steps=1), bundle=sd1, show_progress=False, latent_cache=tmp_path / "cache")
    assert seen == [torch.Size([2, 32])]


def test_resumed_run_equals_uninterrupted(tmp_path, images, sd1):
    straight = train(cfg(tmp_path / "a", images, train__max_steps=6), bundle=sd1, show_progress=False, latent_cache=tmp_path / "cache")
    part = cfg(tmp_path / "b", images, train__max_steps=3)
    train(part, bundle=sd1, show_progress=False, latent_cache=tmp_path / "cache")
    resumed = train(cfg(tmp_path / "b", images, train__max_steps=6), bundle=sd1, resume=True, show_progress=False, latent_cache=tmp_path / "cache")
    assert resumed.steps_done == 6
    assert torch.equal(resumed.embedding.vectors["clip_l"], straight.embedding.vectors["clip_l"])
    with open(tmp_path / "a" / "run" / "train_log.csv") as fa, open(tmp_path / "b" / "run" / "train_log.csv") as fb:
        a = [(r["step"], r["loss"]) for r in csv.DictReader(fa)]
        b = [(r["step"], r["loss"]) for r in csv.DictReader(fb)]
    assert a == b


def test_resume_refuses_a_changed_config_and_finished_runs_need_resume(tmp_path, images, sd1):
    train(cfg(tmp_path, images, train__max_steps=2), bundle=sd1, show_progress=False, latent_cache=tmp_path / "cache")
    with pytest.raises(TitkError, match="pass --resume"):
        train(cfg(tmp_path, images, train__max_steps=2), bundle=sd1, show_progress=False)
    with pytest.raises(TitkError, match="cannot resume.*train.batch_size"):
        train(cfg(tmp_path, images, train__max_steps=4, train__batch_size=3), bundle=sd1, resume=True, show_progress=False)


def test_reading_the_loss_once_per_update_trains_the_same_vectors(tmp_path, images, sd1):
    """train.host_sync: update (no host synchronisation between an update's micro-batches) gives the vectors
    and the logged losses that reading each micro-batch's loss at once gives, to the bit."""
    runs = {}
    for sync in ("micro_batch", "update"):
        c = cfg(tmp_path / sync, images, train__host_sync=sync, train__grad_accum=3, train__max_steps=3)
        runs[sync] = train(c, bundle=sd1, show_progress=False, latent_cache=tmp_path / "cache"), (tmp_path / sync / "run" / "train_log.csv").read_text()
    (a, log_a), (b, log_b) = runs["micro_batch"], runs["update"]
    assert all(torch.equal(a.embedding.vectors[k], b.embedding.vectors[k]) for k in a.embedding.vectors)
    strip = lambda log: [line.rsplit(",", 1)[0] for line in log.splitlines()]  # noqa: E731  (the seconds column differs)
    assert strip(log_a) == strip(log_b) and len(log_a.splitlines()) == 4


def test_channels_last_trains_the_same_vectors_and_puts_the_unet_back(tmp_path, images, sd1):
    """train.channels_last: the UNet's convolutions run in NHWC while training; the vectors agree with the
    default layout's within float rounding, and the UNet is contiguous again afterwards (sampling, the next trial)."""
    conv = next(m for m in sd1.unet.modules() if isinstance(m, torch.nn.Conv2d))
    runs, during = {}, {}
    for layout in (False, True):
        c = cfg(tmp_path / str(layout), images, train__channels_last=layout, train__max_steps=3)
        seen = during.setdefault(layout, set())
        runs[layout] = train(c, bundle=sd1, show_progress=False, latent_cache=tmp_path / "cache",
                             callback=lambda event, seen=seen: seen.add(conv.weight.is_contiguous(memory_format=torch.channels_last))).embedding
    assert during == {False: {False}, True: {True}}
    assert all(torch.allclose(runs[False].vectors[k], runs[True].vectors[k], rtol=1e-4, atol=1e-6) for k in runs[False].vectors)
    assert conv.weight.is_contiguous()


@pytest.mark.parametrize("sync", ["micro_batch", "update"])
def test_nan_loss_stops_with_the_step_and_keeps_earlier_checkpoints(tmp_path, images, sd1, monkeypatch, sync):
    import titk.train.loop as loop

    real = loop.denoising_losses
    calls = {"n": 0}

    def poisoned(*args, **kw):
        calls["n"] += 1
        losses = real(*args, **kw)
        return [loss * float("nan") for loss in losses] if calls["n"] > 6 else losses  # updates 1–2 fine (3 micro-batches each)

    monkeypatch.setattr(loop, "denoising_losses", poisoned)
    with pytest.raises(TrainingDiverged, match=r"nan at step 3 \(micro-batch 1\)"):
        train(cfg(tmp_path, images, output__save_every=1, train__host_sync=sync), bundle=sd1, show_progress=False, latent_cache=tmp_path / "cache")
    run = tmp_path / "run"
    assert (run / "embeddings" / "ohwx-2.pt").is_file() and not (run / "ohwx.pt").exists()
    assert torch.load(run / "embeddings" / "ohwx-2.pt", weights_only=True)["step"] == 1
    assert sd1.encoders[0].spliced.extra is None


def test_kohya_semantics_trains_and_requires_the_token_in_captions(tmp_path, images, sd1):
    c = cfg(tmp_path, images, train__semantics="kohya", output__numbering=None, data__caption_extension=".txt")
    result = train(c, bundle=sd1, show_progress=False, latent_cache=tmp_path / "cache")
    assert result.plan.weight_decay == 0.01 and result.plan.clip_mode == "norm" and result.plan.loss_divisor == 3
    assert set(torch.load(tmp_path / "run" / "embeddings" / "ohwx-2.pt", weights_only=True)) == {"emb_params"}  # exact numbering, kohya's layout
    bare = tmp_path / "bare"
    shutil.copytree(images, bare)
    (bare / "003.txt").write_text("a photo without the token")
    with pytest.raises(TitkError, match="1 of 6 captions lack the token 'ohwx' \\(003.txt\\)"):
        train(cfg(tmp_path / "x", bare, train__semantics="kohya", data__caption_extension=".txt"), bundle=sd1, show_progress=False)
    assert not (tmp_path / "x" / "run").exists()  # refused before anything was written


def test_kohya_norm_includes_caption_rows(tmp_path, images, sd1, monkeypatch):
    """The clip coefficient under kohya uses a norm at least as large as the vectors' alone."""
    import titk.train.trainee as loop

    norms = []
    real = loop._clip

    def spy(vectors, mode, threshold, captured, scaler):
        own = sum(float(p.grad.pow(2).sum()) for p in vectors.values()) ** 0.5
        norms.append((own, len(captured)))
        return real(vectors, mode, threshold, captured, scaler)

    monkeypatch.setattr(loop, "_clip", spy)
    train(cfg(tmp_path, images, train__semantics="kohya", train__max_steps=1, data__caption_extension=".txt"), bundle=sd1, show_progress=False, latent_cache=tmp_path / "cache")
    assert norms and norms[0][1] > 0  # token-embedding outputs were captured for the matrix norm


@pytest.mark.parametrize("name, dtype", [("tiny-sdxl", "fp32"), ("tiny-sd2-v", "fp32"), ("tiny-sd1", "bf16")])
def test_other_families_and_precisions_train(tmp_path, images, fixtures, name, dtype):
    bundle = load_model(fixtures[name].folder, dtype=dtype)
    result = train(cfg(tmp_path, images, train__max_steps=2), bundle=bundle, show_progress=False, latent_cache=tmp_path / "cache")
    assert result.steps_done == 2 and all(np.isfinite(result.losses))
    assert set(result.embedding.vectors) == {enc.key for enc in bundle.encoders}


@pytest.mark.parametrize("semantics, resize, top, left", [("a1111", "crop", 21, 0), ("a1111", "stretch", 0, 0), ("kohya", "crop", 0, 12)])
def test_sdxl_sees_each_images_original_size_and_crop(tmp_path, fixtures, monkeypatch, semantics, resize, top, left):
    """SDXL's size conditioning in training is each image's own: original height and width, crop top and left,
    the trained size. A 48 × 80 portrait trained at 64 × 64 is covered at 64 × 107 and cropped 21 px from the
    top, which is what the ids say (diffusers' convention); stretched, nothing is cropped. kohya says instead
    where the whole portrait would sit fitted inside the square: 38.4 px wide, 12 px from the left
    (`get_crop_ltrb`). The validation loss of a sweep sees the same ids."""
    bundle = load_model(fixtures["tiny-sdxl"].folder, dtype="fp32")
    data = make_images(tmp_path / "portrait", 1, size=(48, 80), captions="ohwx")
    make_images(tmp_path / "square", 1, seed=3, captions="ohwx")
    for f in (tmp_path / "square").iterdir():
        f.rename(data / f"sq-{f.name}")
    seen, unet = [], bundle.unet.forward

    def forward(*args, added_cond_kwargs=None, **kwargs):
        seen.append(added_cond_kwargs["time_ids"].tolist())
        return unet(*args, added_cond_kwargs=added_cond_kwargs, **kwargs)

    monkeypatch.setattr(bundle.unet, "forward", forward)
    config = cfg(tmp_path, data, train__max_steps=2, train__batch_size=1, train__grad_accum=2, train__semantics=semantics,
                 data__resize=resize, data__width=64, data__height=64, data__caption_extension=".txt")
    # 2 updates of 2 one-image micro-batches, and after the first a validation: 4 timesteps of each image
    train(config, bundle=bundle, show_progress=False, latent_cache=tmp_path / "cache", validate_every=1)
    portrait, square = (80.0, 48.0, top, left, 64.0, 64.0), (64.0, 64.0, 0.0, 0.0, 64.0, 64.0)
    assert Counter(tuple(row) for ids in seen for row in ids) == {portrait: 6, square: 6}


@pytest.mark.parametrize("name", ["tiny-sd1", "tiny-sdxl"])
def test_cross_initialisation_starts_from_the_encoders_output(tmp_path, images, fixtures, name):
    """embedding.cross_init: each vector is the text encoder's output (the conditioning the UNet sees) at an
    init-text token, stretched over the vectors as the token rows are; SDXL's two encoders each get their
    own part of the side-by-side conditioning. Training starts from exactly those vectors."""
    from titk.train.loop import starting_embedding
    from titk.train.trainee import init_text_vectors

    bundle = load_model(fixtures[name].folder, dtype="fp32")
    c = cfg(tmp_path, images, embedding__init_text="a person", embedding__vectors=4, embedding__cross_init=True, train__max_steps=1)
    vectors = init_text_vectors(c, bundle, 4)
    hidden = bundle.encode_prompts(["a person"]).hidden[0].float()  # start token, "a", "person", end ...
    offset = 0
    for enc in bundle.encoders:
        expected = hidden[[1, 1, 2, 2], offset:offset + enc.width]  # stretch: vectors 0-1 from "a", 2-3 from "person"
        assert torch.allclose(vectors[enc.key], expected, atol=1e-5), enc.key
        offset += enc.width
    plain = init_text_vectors(cfg(tmp_path, images, embedding__init_text="a person", embedding__vectors=4), bundle, 4)
    assert not any(torch.allclose(plain[k], vectors[k]) for k in vectors)
    assert all(torch.equal(starting_embedding(c, bundle).vectors[k], vectors[k]) for k in vectors)  # the untrained start a sweep measures
    assert train(c, bundle=bundle, show_progress=False, latent_cache=tmp_path / "cache").steps_done == 1


@pytest.mark.parametrize("switch", ["compile", "gradient_checkpointing"])
def test_compile_and_checkpointing_train_the_same_vectors_and_are_undone(tmp_path, images, sd1, monkeypatch, switch):
    """train.compile (here with torch.compile's aot_eager backend: the same tracing of the forward and the
    backward to the conditioning as inductor, without minutes of C++ compiling on a CPU) and
    train.gradient_checkpointing: the vectors agree with the plain run's, and the UNet is plain afterwards."""
    real = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda module, **kw: real(module, **kw, backend="aot_eager"))
    active = lambda: sd1.unet._compiled_call_impl is not None if switch == "compile" else sd1.unet.is_gradient_checkpointing  # noqa: E731
    runs, during = {}, {}
    for on in (False, True):
        c = cfg(tmp_path / str(on), images, train__max_steps=3, **{f"train__{switch}": on})
        seen = during.setdefault(on, set())
        runs[on] = train(c, bundle=sd1, show_progress=False, latent_cache=tmp_path / "cache",
                         callback=lambda event, seen=seen: seen.add(active())).embedding
    assert during == {False: {False}, True: {True}} and not active()
    torch.testing.assert_close(runs[True].vectors, runs[False].vectors, rtol=1e-4, atol=1e-6)


def test_alpha_weights_and_gradient_checkpointing(tmp_path, sd1):
    folder = tmp_path / "rgba"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        rgba = np.dstack([rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))])
        Image.fromarray(rgba, "RGBA").save(folder / f"{i}.png")
    c = cfg(tmp_path, folder, data__use_alpha=True, train__batch_size=2, train__grad_accum=1, train__max_steps=2,
            train__gradient_checkpointing=True)
    result = train(c, bundle=sd1, show_progress=False, latent_cache=tmp_path / "cache")
    assert result.steps_done == 2 and all(np.isfinite(result.losses))
    assert not sd1.unet.is_gradient_checkpointing
