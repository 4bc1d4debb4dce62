"""titk's training loop held step by step against minimal, independent restatements of A1111's and kohya's
update rules, on the tiny SD1 fixture.

Each reference below is plain PyTorch written from the trainers' sources, not from titk:
- A1111 (`modules/textual_inversion/textual_inversion.py::train_embedding`, `dataset.py`): batch size and GA
  clamped to the dataset, n // bs full batches a pass, the pass cut at the last whole GA group, the schedule
  applied before every micro-batch (training ends when it runs out), loss ÷ GA, clipping of `embedding.vec`
  by value or norm with its own schedule, AdamW(weight_decay=0) over the vectors alone; the vectors spliced
  into the prompt's token embeddings.
- kohya (`train_textual_inversion.py`, accelerate's `accumulate`/`backward`): the vectors are rows appended
  to the token-embedding matrix and the whole matrix is the parameter; ceil(n·repeats / bs) batches a pass,
  an update every GA micro-batches and at the end of each pass, loss = batch mean of per-image means ÷ GA,
  `clip_grad_norm_` over the whole matrix, AdamW with torch's defaults (weight decay 0.01), then every
  original row put back.

Shared with titk, as the real trainers would share them with each other: the frozen model, the dataset's
cached latents (and alpha weights), the per-micro-batch noise and timesteps (drawn from titk's seeded
generator, noise first), and a fixed order for each pass's shuffles (A1111 and kohya shuffle with torch's
and Python's global generators, which no other program can replay).
"""

import numpy as np
import pytest
import torch
from helpers import make_images, plain_ids
from PIL import Image

from titk.config import TrainConfig, parse
from titk.data.latents import LatentCache
from titk.train import batching as batching_module
from titk.train.examples import step_generator
from titk.train.loop import train

NAME, SEED = "ohwx", 7


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------ shared inputs


def permute(items: list, pass_index: int) -> list:
    """The fixed stand-in for a pass's random shuffle: rotate, then reverse."""
    k = (2 * pass_index + 1) % len(items)
    return list(reversed(items[k:] + items[:k]))


class _FixedShuffle:
    def __init__(self, pass_index: int):
        self.pass_index = pass_index

    def shuffle(self, items: list) -> None:
        items[:] = permute(items, self.pass_index)

    def choices(self, *args, **kwargs):
        raise AssertionError("one image size: A1111 draws no filler batches")


@pytest.fixture
def fixed_order(monkeypatch):
    monkeypatch.setattr(batching_module, "pass_rng", lambda seed, pass_index: _FixedShuffle(pass_index))


@pytest.fixture
def cached(monkeypatch):
    """What titk read from its latent cache: {"dataset": ..., "latents": [CachedLatent, ...]}."""
    seen = {}
    real = LatentCache.load_or_encode

    def spy(self, dataset, *args, **kwargs):
        seen["dataset"], seen["latents"] = dataset, real(self, dataset, *args, **kwargs)
        return seen["latents"]

    monkeypatch.setattr(LatentCache, "load_or_encode", spy)
    return seen


def record_updates(monkeypatch):
    """The trained vectors after every optimizer update, as titk's AdamW leaves them."""
    snapshots = []
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        snapshots.append(self.param_groups[0]["params"][0].detach().clone())
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return snapshots


def config(tmp_path, images, template, **train_settings):
    return parse(TrainConfig, {
        "model": {"source": "unused", "dtype": "fp32"},
        "embedding": {"name": NAME, "vectors": 3, "init_text": "a person"},
        "data": {
            "path": str(images), "template": str(template), "caption_extension": ".txt", "resize": "stretch",
            "latent_sampling": "deterministic", "use_alpha": train_settings.pop("use_alpha", False),
        },
        "train": {"seed": SEED, **train_settings},
        "output": {"dir": str(tmp_path / "run"), "save_every": 0, "preview": {"every": 0}},
    }, "test")


# ------------------------------------------------------------------------------ the reference pieces


class _Rows(torch.nn.Module):
    """A token-embedding lookup over an explicit matrix (kohya) or the frozen table with vectors spliced in at
    the ids past its end (A1111's EmbeddingsWithFixes)."""

    def __init__(self, table: torch.Tensor, extra: torch.Tensor | None = None):
        super().__init__()
        self.table, self.extra = table, extra

    def forward(self, ids):
        vocab = self.table.shape[0]
        out = self.table[ids.clamp(max=vocab - 1)]
        if self.extra is None:
            return out
        return torch.where((ids >= vocab)[..., None], self.extra[(ids - vocab).clamp(min=0)], out)


def denoising_errors(bundle, rows: _Rows, ids, latents, step, micro):
    """Element-wise squared error of one micro-batch, [B, 4, h, w]: noise then timesteps from the
    micro-batch's generator, the DDPM forward process, the eps target."""
    gen = step_generator(SEED, step, micro)
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(0, 1000, (len(latents),), generator=gen)
    acp = bundle.noise_scheduler.alphas_cumprod.float()[t].reshape(-1, 1, 1, 1)
    noisy = acp.sqrt() * latents + (1 - acp).sqrt() * noise
    encoder = bundle.encoders[0].model
    spliced = encoder.get_input_embeddings()
    encoder.set_input_embeddings(rows)
    try:
        hidden = encoder(ids).last_hidden_state
    finally:
        encoder.set_input_embeddings(spliced)
    pred = bundle.unet(noisy, t, encoder_hidden_states=hidden).sample
    return (pred.float() - noise) ** 2


def token_rows(bundle, text: str) -> torch.Tensor:
    enc = bundle.encoders[0]
    return enc.table.detach().float()[enc.tokenizer(text, add_special_tokens=False).input_ids]


class A1111Schedule:
    """LearnRateScheduler as in modules/textual_inversion/learn_schedule.py, for plain `rate:step` lists."""

    def __init__(self, text: str, max_steps: int):
        pairs = [piece.split(":") for piece in text.split(",")]
        self.pairs = [(float(r), min(int(s[0]), max_steps) if s else max_steps) for r, *s in pairs]
        (self.rate, self.end), self.rest, self.finished = self.pairs[0], self.pairs[1:], False

    def step(self, step: int) -> None:
        if step >= self.end:
            if self.rest:
                (self.rate, self.end), self.rest = self.rest[0], self.rest[1:]
            else:
                self.finished = True


def a1111_reference(bundle, latents, prompts, *, lr, max_steps, batch_size, grad_accum, clip=None, clip_value="0"):
    n, scale = len(latents), bundle.latent_scaling
    bs = min(batch_size, n)
    ga = min(grad_accum, n // bs)
    per_pass = n // bs - (n // bs) % ga  # "works as a drop_last=True for gradient accumulation"
    start = token_rows(bundle, "a person")  # stretched over 3 vectors: a, a, person
    vec = torch.nn.Parameter(start[[i * len(start) // 3 for i in range(3)]].clone())
    table = bundle.encoders[0].table.detach().float()
    ids = plain_ids(bundle.encoders[0].tokenizer, prompts, NAME, table.shape[0], 3)
    lr_sched, clip_sched = A1111Schedule(lr, max_steps), A1111Schedule(clip_value, max_steps)
    optimizer = torch.optim.AdamW([vec], lr=lr_sched.rate, weight_decay=0.0)
    step, out, pass_index = 0, [], 0
    while not lr_sched.finished:
        order = permute(list(range(n)), pass_index)
        batches = permute([order[i * bs : (i + 1) * bs] for i in range(n // bs)], pass_index)
        for j, batch in enumerate(batches):
            if j == per_pass:
                break
            lr_sched.step(step)
            if lr_sched.finished:
                break
            for group in optimizer.param_groups:
                group["lr"] = lr_sched.rate
            clip_sched.step(step)
            x = torch.stack([latents[i].mean * scale for i in batch])
            errors = denoising_errors(bundle, _Rows(table, vec), ids[batch], x, step, j % ga)
            if latents[batch[0]].weight is not None:  # use_weight: the error times the alpha map, then the mean
                errors = errors * torch.stack([latents[i].weight for i in batch])[:, None]
            (errors.mean() / ga).backward()
            if (j + 1) % ga != 0:
                continue
            if clip == "value":
                torch.nn.utils.clip_grad_value_([vec], clip_sched.rate)
            elif clip == "norm":
                torch.nn.utils.clip_grad_norm_([vec], clip_sched.rate)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            out.append(vec.detach().clone())
        pass_index += 1
    return out


def kohya_reference(bundle, latents, prompts, *, lr, max_steps, batch_size, grad_accum, max_grad_norm, repeats=1):
    n, scale = len(latents), bundle.latent_scaling
    table = bundle.encoders[0].table.detach().float()
    vocab = table.shape[0]
    start = token_rows(bundle, "a person")  # cycled over 3 vectors: a, person, a
    matrix = torch.nn.Parameter(torch.cat([table, start[[i % len(start) for i in range(3)]]]))
    original = matrix.detach().clone()
    ids = plain_ids(bundle.encoders[0].tokenizer, prompts, NAME, vocab, 3)
    optimizer = torch.optim.AdamW([matrix], lr=lr)  # get_optimizer: no optimizer_args, so torch's weight decay
    step, out, epoch = 0, [], 0
    while step < max_steps:
        bucket = permute([i for i in range(n) for _ in range(repeats)], epoch)
        batches = permute([bucket[i : i + batch_size] for i in range(0, len(bucket), batch_size)], epoch)
        for j, batch in enumerate(batches):
            x = torch.stack([latents[i].mean * scale for i in batch])
            errors = denoising_errors(bundle, _Rows(matrix), ids[batch], x, step, j % grad_accum)
            loss = errors.mean(dim=[1, 2, 3]).mean()  # per-image means × loss_weights (1), batch mean
            (loss / grad_accum).backward()  # accelerator.backward
            if (j + 1) % grad_accum and j != len(batches) - 1:
                continue  # no sync: accelerate skips step and zero_grad
            torch.nn.utils.clip_grad_norm_([matrix], max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                matrix[:vocab] = original[:vocab]  # index_no_updates
            step += 1
            out.append(matrix.detach()[vocab:].clone())
            if step == max_steps:
                break
        epoch += 1
    return out


# ------------------------------------------------------------------------------ the tests


def assert_same_steps(titk_steps, reference_steps, expected_updates):
    assert len(reference_steps) == expected_updates
    assert len(titk_steps) == expected_updates
    for k, (ours, theirs) in enumerate(zip(titk_steps, reference_steps)):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0, msg=lambda m, k=k: f"update {k + 1}: {m}")
    assert not torch.allclose(reference_steps[0], reference_steps[-1])  # the vectors did move


def _rgba_images(folder, n):
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(n):
        alpha = np.zeros((64, 64), np.uint8)
        alpha[:, 32 - 8 * (i % 3) :] = 255  # a different opaque share per image
        rgba = np.dstack([rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), alpha])
        Image.fromarray(rgba, "RGBA").save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(f"smiling, photo {i}")
    return folder


A1111_CASES = {
    # 5 images, bs 2, GA 3 → GA 2 (clamped to 5 // 2), one image left out each pass; the LR schedule repeats
    # an end step, so the two micro-batches of update 3 see different rates (the second one's is used).
    "clamped-ga, clip-norm": dict(
        n=5, grad_accum=3, learning_rate="0.01:2, 0.03:2, 0.02:4, 0.005:6", clip_mode="norm", clip_threshold="0.05:2, 0.02",
    ),
    # 7 images, bs 2, GA 2: 3 batches a pass, the third skipped (no update crosses a pass), alpha weights.
    "skipped-batch, clip-value, alpha": dict(
        n=7, grad_accum=2, learning_rate="0.01:3, 0.005:6", clip_mode="value", clip_threshold="0.002:3, 0.0005", use_alpha=True,
    ),
}


@pytest.mark.parametrize("case", list(A1111_CASES))
def test_a1111_updates_equal_the_reference(tmp_path, sd1, fixed_order, cached, monkeypatch, case):
    """Six updates under each case; the schedule ends at step 6, before max steps 8, and training stops there."""
    settings = dict(A1111_CASES[case])
    n = settings.pop("n")
    if settings.get("use_alpha"):
        images = _rgba_images(tmp_path / "data", n)
    else:
        images = make_images(tmp_path / "data", n, captions="smiling, photo {i}")
    template = tmp_path / "template.txt"
    template.write_text("a photo of [name], [filewords]\n")
    snapshots = record_updates(monkeypatch)
    c = config(tmp_path, images, template, semantics="a1111", batch_size=2, max_steps=8, **settings)
    result = train(c, bundle=sd1, show_progress=False, latent_cache=tmp_path / "cache")
    assert result.steps_done == 6
    ours = list(snapshots)

    dataset, latents = cached["dataset"], cached["latents"]
    assert all((lat.weight is not None) == c.data.use_alpha for lat in latents)
    prompts = [f"a photo of {NAME}, " + r.path.with_suffix(".txt").read_text() for r in dataset.records]
    reference = a1111_reference(
        sd1, latents, prompts, lr=c.train.learning_rate, max_steps=8, batch_size=2, grad_accum=c.train.grad_accum,
        clip=c.train.clip_mode, clip_value=c.train.clip_threshold,
    )
    assert_same_steps(ours, reference, 6)
    torch.testing.assert_close(result.embedding.vectors["clip_l"], reference[-1], atol=1e-6, rtol=0)


def test_kohya_updates_equal_the_reference(tmp_path, sd1, fixed_order, cached, monkeypatch):
    """5 images × 2 repeats, bs 3, GA 3: 4 micro-batches a pass (3, 3, 3, 1 images) → an update of 3
    micro-batches and a forced, short one at the end of each pass; gradient norm clipped over the matrix."""
    images = make_images(tmp_path / "data", 5, captions=f"{NAME}, smiling, photo {{i}}")
    template = tmp_path / "template.txt"
    template.write_text("[filewords]\n")
    snapshots = record_updates(monkeypatch)
    c = config(
        tmp_path, images, template, semantics="kohya", batch_size=3, grad_accum=3, max_steps=6, learning_rate="0.01",
        weight_decay=0.01, clip_mode="norm", clip_threshold="0.05",
    )
    c.data.repeats = 2
    result = train(c, bundle=sd1, show_progress=False, latent_cache=tmp_path / "cache")
    assert result.steps_done == 6
    ours = list(snapshots)

    prompts = [r.path.with_suffix(".txt").read_text().splitlines()[0].strip() for r in cached["dataset"].records]
    reference = kohya_reference(
        sd1, cached["latents"], prompts, lr=0.01, max_steps=6, batch_size=3, grad_accum=3, max_grad_norm=0.05, repeats=2,
    )
    assert_same_steps(ours, reference, 6)
