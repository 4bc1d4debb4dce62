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
from ..data.prompts import NAME, SHIPPED_PREFIX, Template, find_template
from ..embeddings.embedding import check_name
from ..errors import TitkError
from .schedule import Schedule, overlong_pieces, parse_schedule
from .batching import Batching, make_batching
from .differences import differences
from .start import read_start


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
    max_steps_from: str  # "max_steps", "epochs" or "semantics" (kohya's default)
    stop_step: int
    epochs: float
    image_views: int
    loss_divisor: int
    learning_rate: str
    lr_pairs: list[tuple[float, int]]
    lr_segments: list[tuple[float, int, int]]
    max_passes: int | None  # A1111 stops after this many passes over the data; kohya: no such cap
    start_step: int  # the update count the run continues from (init_from under A1111), else 0
    start: str  # where the vectors come from: the init text, or init_from's file and step
    weight_decay: float
    clip_mode: str
    clip_threshold: str
    sizes: dict[str, int]
    tflops_per_view: dict[str, float] = field(default_factory=dict)
    total_tflops: float | None = None
    memory: dict | None = None  # the GPU memory estimate of one micro-batch at the largest size (estimate_memory)
    template: str = ""  # the template file used (a shipped name or a path), its line count and sha256
    template_lines: int = 0
    template_sha256: str = ""
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)  # what still differs from A1111's or kohya's trainer
    # What the trainer follows: each image's training size and the batching rule (not part of the printed plan).
    image_sizes: list[tuple[int, int]] = field(default_factory=list, repr=False)
    batching: Batching | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("image_sizes", "batching")}

    def epoch_of(self, step: int) -> float:
        return step / self.updates_per_pass


def estimate_memory(plan: TrainPlan, config: TrainConfig, arch) -> None:
    """Adds to `plan` the GPU memory one micro-batch needs at the dataset's largest size, as configured and with the
    other gradient_checkpointing setting, the frozen denoiser in the model's precision (auto: bf16 or fp16, as on a
    GPU); counted on fake tensors (titk.train.memory), so it needs no GPU and no weights."""
    from .memory import step_memory

    width, height = max(plan.image_sizes, key=lambda size: size[0] * size[1])
    dtype = config.model_settings.dtype or "auto"
    dtype = "bf16" if dtype == "auto" else dtype
    checkpointing = config.train.gradient_checkpointing
    size = dict(batch=plan.batch_size_eff, dtype=dtype, vae_scale=arch.vae_scale)
    plan.memory = {
        "size": f"{width}x{height}", "batch": plan.batch_size_eff, "dtype": dtype, "gradient_checkpointing": checkpointing,
        **step_memory(arch.unet, width, height, gradient_checkpointing=checkpointing, **size).to_dict(),
        "other_checkpointing_peak_gib": step_memory(arch.unet, width, height, gradient_checkpointing=not checkpointing, **size).to_dict()["peak_gib"],
    }


def image_sizes(config: TrainConfig, dataset: Dataset, default_size: int) -> list[tuple[int, int]]:
    """The (width, height) each image trains at under the resize mode."""
    d = config.data
    width, height = d.width or default_size, d.height or default_size
    resize = config.resize
    buckets = bucket_sizes(max(width, height), d.bucket_step) if resize == "buckets" else None
    return [target_size(r, resize, width, height, buckets) for r in dataset.records]


def size_groups(sizes: list[tuple[int, int]]) -> list[list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(size, []).append(i)
    return [groups[s] for s in sorted(groups)]


def resolve_max_steps(config: TrainConfig, batching: Batching, start: int = 0) -> tuple[int, str]:
    """Max steps count from 0, as A1111's do (a run from a file at step s trains max - s more); epochs are
    passes made by this run, after `start`."""
    t = config.train
    if t.max_steps is not None and t.epochs is not None:
        raise TitkError("train: give max_steps or epochs, not both")
    if t.max_steps is not None:
        return t.max_steps, "max_steps"
    if t.epochs is not None:
        return start + t.epochs * batching.updates_per_pass, "epochs"
    if config.semantic("train", "max_steps") is not None:
        return config.semantic("train", "max_steps"), "semantics"
    raise TitkError("train: set max_steps (optimizer updates) or epochs (passes over the dataset)")


def simulate(batching: Batching, pairs, max_steps: int, semantics: str, max_passes: int | None = None, start: int = 0):
    """(the step training stops at, image views of the updates made, the rate of each update), by running
    the schedule exactly as the loop will.

    A1111 consults the schedule before every micro-batch and stops the moment it is finished: a micro-batch
    already computed in an unfinished update is lost, so its images do not count. It also stops after
    `max_passes` passes over the data. An update's rate is the one set before its last micro-batch (the
    optimizer reads it at the step). kohya's schedules never stop early: training runs to max_steps.
    A run that continues from update `start` begins a fresh pass there, as A1111's new DataLoader does.
    """
    schedule, step, views, rates = Schedule(list(pairs)), start, 0, []
    while semantics == "a1111" or step < max_steps:
        update = batching.update(step - start)
        if max_passes is not None and update.pass_index >= max_passes:
            break
        for _ in update.batches:
            rate = schedule.apply(step)
            if schedule.finished and semantics == "a1111":
                return step, views, rates
        rates.append(rate)
        views += update.views
        step += 1
    return step, views, rates


def rate_segments(rates: list[float], start: int = 0) -> list[tuple[float, int, int]]:
    """(rate, first step, last step + 1) for each run of updates at one rate, the first being update `start`."""
    out: list[tuple[float, int, int]] = []
    for step, rate in enumerate(rates, start):
        if out and out[-1][0] == rate:
            out[-1] = (rate, out[-1][1], step + 1)
        else:
            out.append((rate, step, step + 1))
    return out


def make_plan(config: TrainConfig, dataset: Dataset, arch=None) -> TrainPlan:
    """The plan for `config` on `dataset`; `arch` (from read_architecture) adds sizes' defaults and FLOPs."""
    t = config.train
    check_name(config.embedding.name)
    if t.semantics == "kohya" and config.data.tag_dropout:
        raise TitkError(
            "data.tag_dropout: kohya's TI trainer has no tag dropout (train_textual_inversion.py registers no "
            "caption-dropout options); set it to 0, or use train.semantics: a1111"
        )
    start = read_start(config, arch)
    default_size = arch.default_size if arch else RESOLUTION
    sizes = image_sizes(config, dataset, default_size)
    batching = make_batching(t.semantics, size_groups(sizes), t.batch_size, t.grad_accum, t.seed, config.data.repeats)
    if batching.updates_per_pass < 1:
        raise TitkError(
            f"train: with {len(dataset)} images, batch size {t.batch_size} and GA {t.grad_accum} no update fits in a pass"
        )
    max_steps, steps_from = resolve_max_steps(config, batching, start.step)
    if start.step >= max_steps:
        raise TitkError(
            f"embedding.init_from: {start.path} is at step {start.step}, not below max steps {max_steps}: nothing to "
            "train (A1111 stops at once); max steps count from 0, so raise them"
        )
    learning_rate = config.learning_rate
    pairs = parse_schedule(learning_rate, max_steps, start.step)
    if not pairs:
        raise TitkError(f"train.learning_rate: {learning_rate!r} holds no rate" + (f" after step {start.step}" if start.step else ""))
    clip_mode = t.resolved("clip_mode")
    clip_threshold = t.resolved("clip_threshold")
    if clip_mode != "none":
        parse_schedule(clip_threshold, max_steps, what="train.clip_threshold")
    # A1111's outer loop runs (max steps - starting step) × GA passes at most.
    max_passes = (max_steps - start.step) * batching.grad_accum if t.semantics == "a1111" else None
    stop_step, views, rates = simulate(batching, pairs, max_steps, t.semantics, max_passes, start.step)
    template = find_template(config.template, config.data.template_dir)
    size_counts = Counter(f"{w}x{h}" for w, h in sizes)
    plan = TrainPlan(
        semantics=t.semantics, n_images=len(dataset), repeats=config.data.repeats,
        batch_size=t.batch_size, batch_size_eff=batching.batch_size, grad_accum=t.grad_accum,
        grad_accum_eff=batching.grad_accum, micro_per_pass=batching.micro_per_pass,
        micro_used_per_pass=batching.micro_used_per_pass, updates_per_pass=batching.updates_per_pass,
        views_per_update=batching.batch_size * batching.grad_accum, max_steps=max_steps, max_steps_from=steps_from,
        stop_step=stop_step, epochs=(stop_step - start.step) / batching.updates_per_pass, image_views=views,
        loss_divisor=batching.divisor, learning_rate=learning_rate, lr_pairs=pairs,
        lr_segments=rate_segments(rates, start.step), max_passes=max_passes, start_step=start.step, start=start.describe(config), weight_decay=float(t.resolved("weight_decay")), clip_mode=clip_mode,
        clip_threshold=clip_threshold, sizes=dict(sorted(size_counts.items())), image_sizes=sizes, batching=batching,
        template=template.source, template_lines=len(template.lines), template_sha256=template.sha256,
    )
    if arch is not None:
        from .flops import unet_flops_per_view

        per_size = {s: unet_flops_per_view(arch.unet, *map(int, s.split("x")), vae_scale=arch.vae_scale) for s in size_counts}
        plan.tflops_per_view = {s: round(f / 1e12, 4) for s, f in per_size.items()}
        mean = sum(per_size[s] * c for s, c in size_counts.items()) / len(sizes)
        plan.total_tflops = round(mean * views / 1e12, 1)
    _explain(plan, config, batching)
    _template_notes(plan, template)
    _doubtful_inputs(plan, dataset)
    plan.differences = differences(config)
    return plan


def _doubtful_inputs(plan: TrainPlan, dataset: Dataset) -> None:
    """Inputs that train, but rarely as meant: said once each, in the plan's warnings."""
    if len(dataset) == 1:
        plan.warnings.append(f"the dataset {dataset.root} has one image: the embedding will learn that picture, not the person")
    top = max(rate for rate, _ in plan.lr_pairs)
    if top > 1:
        plan.warnings.append(f"train.learning_rate: a rate above 1 ({top:g}) usually makes the loss NaN within a few steps; TI rates are about 0.005")
    for piece in overlong_pieces(plan.learning_rate):
        rate = piece.split(":")[0].strip()
        plan.warnings.append(
            f"train.learning_rate: {piece!r} has two colons; A1111 reads it as the bare rate {rate} until max steps "
            "and ignores the rest of the schedule (write rate:step pieces separated by commas)"
        )
    empty = [r.path.name for r in dataset.records if r.caption_from_file and not r.caption.strip()]
    if empty:
        shown = ", ".join(empty[:3]) + (" …" if len(empty) > 3 else "")
        plan.warnings.append(f"the caption files of {len(empty)} image(s) are empty ({shown}): those images train on the template alone")


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


def _template_notes(plan: TrainPlan, template: Template) -> None:
    lines = template.lines
    if plan.semantics == "a1111" and not all(NAME in line for line in lines):
        missing = sum(NAME not in line for line in lines)
        plan.warnings.append(f"{missing} of {len(lines)} template lines lack [name]: prompts built from them give no gradient")
    if plan.semantics == "a1111" and template.source.startswith(SHIPPED_PREFIX):
        plan.notes.append(
            f"template {template.source} is titk's own; A1111's UI default is style_filewords.txt: to build A1111's "
            "prompts, set data.template_dir to your A1111 textual_inversion_templates folder and data.template to a name in it"
        )
