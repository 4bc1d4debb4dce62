"""The TrainPlan: what a training config will really do with a dataset, computed before any model work.

Effective batch size and gradient accumulation, optimizer steps, epochs, image views, the learning rate of
each schedule segment and the step where training stops, FLOPs, and warnings for settings that do not mean
what they seem to. `titk plan` prints it; the trainer follows it and logs it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from fractions import Fraction

from ..config import RESOLUTION, TrainConfig
from ..data.dataset import Dataset, bucket_sizes, target_size
from ..data.prompts import NAME, read_template
from ..embeddings.embedding import check_name
from ..embeddings.placeholder import check_vector_count
from ..errors import TitkError
from .schedule import Schedule, parse_schedule, segments
from .batching import Batching, make_batching


@dataclass
class TrainPlan:
    semantics: str
    n_images: int
    repeats: int
    batch_size: int
    batch_size_eff: int
    grad_accum: int
    grad_accum_eff: int
    micro_per_pass: int
    micro_used_per_pass: int
    updates_per_pass: int
    views_per_update: int
    max_steps: int
    max_steps_from: str  # "max_steps" or "epochs"
    stop_step: int
    epochs: float
    image_views: int
    loss_divisor: int
    learning_rate: str
    lr_pairs: list[tuple[float, int]]
    lr_segments: list[tuple[float, int, int]]
    weight_decay: float
    clip_mode: str
    clip_threshold: str
    sizes: dict[str, int]
    tflops_per_view: dict[str, float] = field(default_factory=dict)
    total_tflops: float | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # What the trainer follows: each image's training size and the batching rule (not part of the printed plan).
    image_sizes: list[tuple[int, int]] = field(default_factory=list, repr=False)
    batching: Batching | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("image_sizes", "batching")}

    def epoch_of(self, step: int) -> float:
        return step / self.updates_per_pass


def image_sizes(config: TrainConfig, dataset: Dataset, default_size: int) -> list[tuple[int, int]]:
    """The (width, height) each image trains at under the resize mode."""
    d = config.data
    width, height = d.width or default_size, d.height or default_size
    buckets = bucket_sizes(max(width, height), d.bucket_step) if d.resize == "buckets" else None
    return [target_size(r, d.resize, width, height, buckets) for r in dataset.records]


def size_groups(sizes: list[tuple[int, int]]) -> list[list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(size, []).append(i)
    return [groups[s] for s in sorted(groups)]


def resolve_max_steps(config: TrainConfig, batching: Batching) -> tuple[int, str]:
    t = config.train
    if t.max_steps is not None and t.epochs is not None:
        raise TitkError("train: give max_steps or epochs, not both")
    if t.max_steps is not None:
        return t.max_steps, "max_steps"
    if t.epochs is not None:
        return t.epochs * batching.updates_per_pass, "epochs"
    raise TitkError("train: set max_steps (optimizer updates) or epochs (passes over the dataset)")


def simulate(batching: Batching, pairs, max_steps: int, semantics: str) -> tuple[int, int]:
    """(the step training stops at, image views) by running the schedule exactly as the loop will.

    A1111 consults the schedule before every micro-batch and stops the moment it is finished; kohya's
    schedules never stop early, so training runs to max_steps.
    """
    if semantics != "a1111":
        views = sum(batching.update(s).views for s in range(max_steps))
        return max_steps, views
    schedule, step, views = Schedule(list(pairs)), 0, 0
    while True:
        update = batching.update(step)
        for batch in update.batches:
            schedule.apply(step)
            if schedule.finished:
                return step, views
            views += len(batch)
        step += 1


def make_plan(config: TrainConfig, dataset: Dataset, arch=None) -> TrainPlan:
    """The plan for `config` on `dataset`; `arch` (from read_architecture) adds sizes' defaults and FLOPs."""
    t = config.train
    check_name(config.embedding.name)
    check_vector_count(config.embedding.vectors)
    default_size = arch.default_size if arch else RESOLUTION
    sizes = image_sizes(config, dataset, default_size)
    batching = make_batching(t.semantics, size_groups(sizes), t.batch_size, t.grad_accum, t.seed, config.data.repeats)
    if batching.updates_per_pass < 1:
        raise TitkError(
            f"train: with {len(dataset)} images, batch size {t.batch_size} and GA {t.grad_accum} no update fits in a pass"
        )
    max_steps, steps_from = resolve_max_steps(config, batching)
    pairs = parse_schedule(t.learning_rate, max_steps)
    if not pairs:
        raise TitkError(f"train.learning_rate: {t.learning_rate!r} holds no rate")
    clip_mode = t.resolved("clip_mode")
    clip_threshold = t.resolved("clip_threshold")
    if clip_mode != "none":
        parse_schedule(clip_threshold, max_steps, what="train.clip_threshold")
    stop_step, views = simulate(batching, pairs, max_steps, t.semantics)
    size_counts = Counter(f"{w}x{h}" for w, h in sizes)
    plan = TrainPlan(
        semantics=t.semantics, n_images=len(dataset), repeats=config.data.repeats,
        batch_size=t.batch_size, batch_size_eff=batching.batch_size, grad_accum=t.grad_accum,
        grad_accum_eff=batching.grad_accum, micro_per_pass=batching.micro_per_pass,
        micro_used_per_pass=batching.micro_used_per_pass, updates_per_pass=batching.updates_per_pass,
        views_per_update=batching.batch_size * batching.grad_accum, max_steps=max_steps, max_steps_from=steps_from,
        stop_step=stop_step, epochs=stop_step / batching.updates_per_pass, image_views=views,
        loss_divisor=batching.divisor, learning_rate=t.learning_rate, lr_pairs=pairs,
        lr_segments=_segments(pairs, max_steps, t.semantics), weight_decay=float(t.resolved("weight_decay")), clip_mode=clip_mode,
        clip_threshold=clip_threshold, sizes=dict(sorted(size_counts.items())), image_sizes=sizes, batching=batching,
    )
    if arch is not None:
        from .flops import unet_flops_per_view

        per_size = {s: unet_flops_per_view(arch.unet, *map(int, s.split("x")), vae_scale=arch.vae_scale) for s in size_counts}
        plan.tflops_per_view = {s: round(f / 1e12, 4) for s, f in per_size.items()}
        mean = sum(per_size[s] * c for s, c in size_counts.items()) / len(sizes)
        plan.total_tflops = round(mean * views / 1e12, 1)
    _explain(plan, config, batching)
    _doubtful_inputs(plan, dataset)
    return plan


def _doubtful_inputs(plan: TrainPlan, dataset: Dataset) -> None:
    """Inputs that train, but rarely as meant: said once each, in the plan's warnings."""
    if len(dataset) == 1:
        plan.warnings.append(f"the dataset {dataset.root} has one image: the embedding will learn that picture, not the person")
    top = max(rate for rate, _ in plan.lr_pairs)
    if top > 1:
        plan.warnings.append(f"train.learning_rate: a rate above 1 ({top:g}) usually makes the loss NaN within a few steps; TI rates are about 0.005")
    empty = [r.path.name for r in dataset.records if r.caption_from_file and not r.caption.strip()]
    if empty:
        shown = ", ".join(empty[:3]) + (" …" if len(empty) > 3 else "")
        plan.warnings.append(f"the caption files of {len(empty)} image(s) are empty ({shown}): those images train on the template alone")


def _segments(pairs, max_steps: int, semantics: str):
    segs = segments(pairs)
    if semantics == "kohya" and segs and segs[-1][2] < max_steps:
        rate, begin, _ = segs[-1]
        segs[-1] = (rate, begin, max_steps)  # kohya's schedules never stop early: the last rate holds
    return segs


def _explain(plan: TrainPlan, config: TrainConfig, batching: Batching) -> None:
    n, note, warn = plan.n_images, plan.notes.append, plan.warnings.append
    per_epoch = "1 epoch" if plan.updates_per_pass == 1 else f"1/{plan.updates_per_pass} of an epoch"
    if plan.semantics == "a1111":
        if plan.batch_size_eff < plan.batch_size:
            warn(f"batch size {plan.batch_size} is more than the {n} images: A1111 uses {plan.batch_size_eff}")
        if plan.grad_accum_eff < plan.grad_accum:
            warn(
                f"gradient accumulation {plan.grad_accum} → {plan.grad_accum_eff}: A1111 clamps it to "
                f"images // batch size = {n} // {plan.batch_size_eff}"
            )
        note(
            f"one step = {plan.batch_size_eff} × {plan.grad_accum_eff} = {plan.views_per_update} images = {per_epoch}; "
            f"loss averaged over the {plan.grad_accum_eff} micro-batches (÷ {plan.loss_divisor})"
        )
        left_out = n - plan.micro_per_pass * plan.batch_size_eff
        if left_out:
            warn(f"each pass leaves out {left_out} of the {n} images ({n} % {plan.batch_size_eff}), a different random set each pass")
        skipped = plan.micro_per_pass - plan.micro_used_per_pass
        if skipped:
            warn(f"each pass skips its last {skipped} batch(es): A1111 never lets an update cross a pass")
    else:
        per_pass = n * plan.repeats
        note(
            f"one pass = {per_pass} image views in {plan.micro_per_pass} micro-batches; an update every "
            f"{plan.grad_accum} micro-batches and at the end of each pass; loss ÷ {plan.loss_divisor} always"
        )
        short = plan.micro_per_pass % plan.grad_accum
        if short:
            strength = Fraction(short, plan.grad_accum)
            which = "every update" if plan.micro_per_pass < plan.grad_accum else "the last update of each pass"
            warn(
                f"{which} sums only {short} of {plan.grad_accum} micro-batches and is still divided by "
                f"{plan.grad_accum}: {strength} of the mean gradient"
            )
    if plan.batch_size * plan.grad_accum > n * plan.repeats:
        warn(f"batch size × GA = {plan.batch_size * plan.grad_accum} is more than the dataset ({n} images)")
    note(
        f"{plan.stop_step} steps = {plan.epochs:g} epochs = {plan.image_views} image views"
        + (f" (max steps from {config.train.epochs} epochs)" if plan.max_steps_from == "epochs" else "")
    )
    if plan.semantics == "a1111" and plan.stop_step < plan.max_steps:
        warn(f"the learning-rate schedule ends at step {plan.stop_step}, before max steps {plan.max_steps}: training stops there")
    if plan.semantics == "kohya" and plan.lr_pairs[-1][1] < plan.max_steps:
        warn(
            f"the learning-rate schedule ends at step {plan.lr_pairs[-1][1]}; under kohya semantics training goes on to "
            f"max steps {plan.max_steps} at the last rate (kohya's schedules never stop early)"
        )
    if plan.semantics == "a1111" and plan.stop_step > plan.max_steps:
        warn("this schedule repeats its last end step: A1111 trains past max steps until the repeated entries are used up")
    lines = read_template(config.template)
    if config.train.semantics == "a1111" and not all(NAME in line for line in lines):
        missing = sum(NAME not in line for line in lines)
        warn(f"{missing} of {len(lines)} template lines lack [name]: prompts built from them give no gradient")
