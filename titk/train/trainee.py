"""One embedding's training: its data, plan, vectors, optimizer and schedules, and the steps of one update
(training/loop.py runs them, for one job or a packed group), with what the loop reports.

Every random draw of an update (data order, prompts, noise, timesteps, latent samples) is derived from the
seed and the step number, so a run resumed from a saved state continues exactly as if never stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Callable, Literal

import torch

from ..config import ADAM_BETAS, ADAM_EPS, TrainConfig
from ..data.dataset import Dataset, scan_dataset, size_ids
from ..data.latents import LatentCache
from ..data.prompts import PromptBuilder, read_template
from ..drawing import image_grid
from ..embeddings import Embedding
from ..embeddings.fit import vectors_for
from ..embeddings.placeholder import init_vectors, prompt_has_name
from ..errors import TitkError, TrainingDiverged
from ..files import atomic_path
from ..models.sampling import generate
from ..models.tokenizer import clip_tokenizer
from ..paths import cache_dir
from .examples import Examples, step_generator
from .loss import LossInputs, draw_noise
from .norm_control import hold_norms, norm_targets
from .outputs import RunFolder, epoch_columns
from .plan import TrainPlan, make_plan
from .schedule import Schedule
from .start import read_start
from .validation import ValidationLoss


@dataclass(frozen=True)
class TrainEvent:
    """What the loop tells its callback after each update ("update") and each save ("checkpoint")."""

    kind: Literal["update", "checkpoint"]
    step: int
    loss: float
    lr: float
    epoch: float
    images_seen: int
    snapshot: Callable[[], Embedding] = field(repr=False)
    files: tuple[Path, ...] = ()
    validation_loss: float | None = None  # at every `validate_every` steps (validation.py), else None

    @cached_property
    def embedding(self) -> Embedding:
        """A copy of the vectors at this step, made only when asked for (during the callback): copying them
        at every update would cost a host sync per step on a GPU."""
        return self.snapshot()


@dataclass
class TrainResult:
    embedding: Embedding
    plan: TrainPlan
    run_dir: Path
    steps_done: int
    files: list[Path]
    losses: list[float] = field(default_factory=list)
    peak_memory: int | None = None  # bytes of GPU memory at most allocated while training (its packed group's, when packed)


@dataclass
class Job:
    """One embedding to train, with what `train` takes for it."""

    config: TrainConfig
    plan: TrainPlan | None = None
    dataset: Dataset | None = None
    resume: bool = False
    latent_cache: str | Path | None = None
    callback: Callable[[TrainEvent], None] | None = None
    validate_every: int = 0


def load_dataset(config: TrainConfig) -> Dataset:
    d = config.data
    if d.path is None:
        raise TitkError("data.path: no dataset folder given (set it in the config or pass --dataset)")
    return scan_dataset(
        d.path, recursive=d.recursive, caption_extension=config.caption_extension, filename_regex=d.filename_regex,
        filename_join=d.filename_join, min_side=d.min_side, on_bad_image=d.on_bad_image,
    )


class Trainee:
    """One job's state through the loop: its data, plan, vectors, optimizer and schedules. Its methods are
    the steps of an update, in the order the loop calls them."""

    def __init__(self, index: int, job: Job, bundle):
        from ..models.loading import Architecture, read_architecture

        config = job.config
        self.index, self.job, self.config, self.t, self.name = index, job, config, config.train, config.embedding.name
        self.start = read_start(config)
        self.n_vectors = self.start.n_vectors
        if bundle is not None:  # before any file is written
            check_family_settings(config, bundle)
        self.dataset = job.dataset or load_dataset(config)
        plan = job.plan
        if plan is None:
            arch = read_architecture(config.model) if bundle is None else Architecture(
                bundle.family, dict(bundle.unet.config), bundle.vae_scale_factor
            )
            plan = make_plan(config, self.dataset, arch)
        self.plan = plan
        self.run = RunFolder(config, plan, self.dataset)
        self.prompts = PromptBuilder(self.t.semantics, read_template(config.template, config.data.template_dir), self.name,
                                     config.data.shuffle_tags, config.data.tag_dropout)
        _check_prompts_name(self.dataset, self.prompts, self.name, self.t.semantics, config.caption_extension)
        self.state = self.run.start(job.resume)
        self.step = self.state["step"] if self.state else plan.start_step
        self.syntax = self.t.semantics == "a1111"  # A1111 reads its prompt syntax in training prompts; kohya plain text

    def prepare(self, bundle, progress) -> None:
        """Steps 3 and 4: the latent cache, and the N trainable rows per text encoder (nothing else trains)."""
        config, plan, t, state = self.config, self.plan, self.t, self.state
        self.bundle, self.progress = bundle, progress
        cache = LatentCache(self.job.latent_cache or cache_dir() / "latents", bundle)
        latents = cache.load_or_encode(
            self.dataset, plan.image_sizes, config.resize, use_alpha=config.data.use_alpha, alpha=t.semantics, progress=progress
        )
        for latent, record in zip(latents, self.dataset.records):
            latent.size_ids = size_ids(record, latent.size, config.resize, t.semantics)
        self.examples = Examples(self.dataset, latents, self.prompts, config.latent_sampling, bundle.latent_scaling, t.seed,
                                 bundle.latent_shift)
        self.validation = ValidationLoss(
            bundle, self.dataset.records, latents, self.prompts, self.name, self.n_vectors, syntax=self.syntax
        ) if self.job.validate_every else None
        if state:
            initial = state["vectors"]
        elif self.start.embedding is not None:
            initial = vectors_for(self.start.embedding, bundle, where=str(self.start.path))
        else:
            initial = init_text_vectors(config, bundle, self.n_vectors)
        self.vectors = {k: torch.nn.Parameter(v.to(bundle.device, torch.float32).clone()) for k, v in initial.items()}
        if not config.embedding.train_t5 and "t5" in self.vectors:  # SD3 trains its CLIP vectors by default
            self.vectors["t5"].requires_grad_(False)
        self.trained = {k: v for k, v in self.vectors.items() if v.requires_grad}  # what the optimizer and norm holding touch
        # embedding.norm vocab: only the direction learns; every vector is held at its vocabulary's median norm
        # from the start and after each update (norm_control.py). free (A1111, kohya): nothing is held.
        self.held = norm_targets(bundle) if config.embedding.norm == "vocab" else None
        if self.held:
            hold_norms(self.trained, self.held)
        self.optimizer = torch.optim.AdamW(
            list(self.trained.values()), lr=plan.lr_pairs[0][0], betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=plan.weight_decay
        )
        self.scaler = torch.amp.GradScaler(bundle.device.type, enabled=bundle.dtype == torch.float16)
        if state:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
        self.lr_schedule = Schedule.from_string(config.learning_rate, plan.max_steps, self.step)
        self.clip_schedule = Schedule.from_string(plan.clip_threshold, plan.max_steps, self.step, what="train.clip_threshold")
        self.kohya_matrix_clip = t.semantics == "kohya" and plan.clip_mode == "norm"
        # kohya clips through a loop variable left over from its encoder loop: SDXL's last encoder (CLIP-G) only.
        last = bundle.encoders[-1].key
        self.clipped = {last: self.vectors[last]} if t.semantics == "kohya" else self.vectors
        self.losses: list[float] = []
        # Passes count from where the run began (a new DataLoader in A1111): the file's step, or 0.
        self.origin = plan.start_step
        self.views = sum(plan.batching.update(s - self.origin).views for s in range(self.origin, self.step))
        self.task = progress.add_task(f"training {self.name}", total=plan.stop_step, completed=self.step, status="")
        self.started = time.monotonic()

    def begin_update(self) -> bool:
        """The update's micro-batches; False when training is over (the steps, or A1111's passes, are done)."""
        plan = self.plan
        if not (self.step < plan.max_steps or self.t.semantics == "a1111"):
            return False
        self.update = plan.batching.update(self.step - self.origin)
        if plan.max_passes is not None and self.update.pass_index >= plan.max_passes:
            return False  # A1111's outer loop has run out of passes
        self.captured: list = []
        self.loss_sum, self.finished, self.pending = 0.0, False, []
        return True

    def micro_batch(self, micro: int) -> LossInputs | None:
        """What the UNet sees for this job's micro-batch `micro` (None when it has no such micro-batch)."""
        if micro >= len(self.update.batches) or self.finished:
            return None
        self.lr = self.lr_schedule.apply(self.step)  # A1111 consults the schedule before every micro-batch
        if self.lr_schedule.finished and self.t.semantics == "a1111":
            self.finished = True
            return None
        self.clip_threshold = self.clip_schedule.apply(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        generator = step_generator(self.t.seed, self.step, micro)
        latent, weights, texts, sizes = self.examples.micro_batch(self.update.batches[micro], self.step, micro, generator)
        # A1111 normalises emphasis over the batch. The text encoder reads this job's vectors; kohya's clipping
        # records the outputs its matrix norm needs.
        self.bundle.set_vectors(self.vectors)
        _record_into(self.bundle, self.captured if self.kohya_matrix_clip else None, self.clipped)
        cond = self.bundle.encode_ids(self.bundle.tokenize(texts, self.name, self.n_vectors, syntax=self.syntax), per_prompt=False)
        cond.time_ids = sizes  # read by SDXL only: each image's original size and crop (dataset.size_ids)
        return draw_noise(self.bundle, latent, cond, weights, generator)

    def add_loss(self, loss: torch.Tensor, micro: int) -> torch.Tensor:
        """This micro-batch's loss as its backward takes it (divided as the semantics say, scaled for fp16)."""
        if self.t.host_sync == "update":  # read back once, after the last micro-batch
            self.pending.append(loss.detach())
        else:
            self.loss_sum += _checked(loss.item(), self.step, micro) / self.update.divisor
        return self.scaler.scale(loss / self.update.divisor)

    def end_update(self) -> bool:
        """Clip and step, then log, call back, save and preview. False when A1111's schedule ran out."""
        if self.finished:
            return False
        config, plan, bundle, step = self.config, self.plan, self.bundle, self.step
        # Before the optimizer step, so a NaN leaves the vectors as the last update left them.
        for micro, value in enumerate(torch.stack(self.pending).tolist() if self.pending else []):
            self.loss_sum += _checked(value, step, micro) / self.update.divisor
        self.scaler.unscale_(self.optimizer)
        _clip(self.clipped, plan.clip_mode, self.clip_threshold, self.captured, self.scaler)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.held:
            hold_norms(self.trained, self.held)
        self.optimizer.zero_grad(set_to_none=True)
        step = self.step = step + 1
        self.views += self.update.views
        loss, lr = self.loss_sum, self.lr
        self.losses.append(loss)

        # Log, save, preview -------------------------------------------------------------------------------
        epoch, epoch_step = epoch_columns(step, plan.batching.updates_per_pass)
        self.run.log({
            "step": step, "epoch": epoch, "epoch_step": epoch_step, "loss": f"{loss:.6f}",
            "learn_rate": lr, "images_seen": self.views, "seconds": f"{time.monotonic() - self.started:.2f}",
        })
        self.progress.update(self.task, completed=step, status=f"loss {loss:.4f}  lr {lr:.2e}  epoch {plan.epoch_of(step):.2f}")
        snapshot = partial(_embedding, config, bundle, self.vectors, step)
        validation_loss, every, callback = None, self.job.validate_every, self.job.callback
        # At a sweep's intermediate steps: every validate_every steps while as many remain (the end has its final scores).
        if self.validation is not None and step % every == 0 and step + every <= plan.stop_step:
            _capture(bundle, False)  # kohya's clipping records encoder outputs; these are not an update's
            bundle.set_vectors(self.vectors)
            validation_loss = self.validation()
        if callback:
            callback(TrainEvent("update", step, loss, lr, plan.epoch_of(step), self.views, snapshot, validation_loss=validation_loss))
        number = self.run.checkpoint_number(step, config.output.save_every)
        if number is not None:
            files = self.run.save_embedding(snapshot(), str(number))
            self.run.save_state(step, self.vectors, self.optimizer, self.scaler)
            if callback:
                callback(TrainEvent("checkpoint", step, loss, lr, plan.epoch_of(step), self.views, snapshot, tuple(files)))
        preview = self.run.checkpoint_number(step, config.output.preview.every)
        if preview is not None:
            bundle.set_vectors(self.vectors)
            _save_preview(self.run.preview_path(str(preview)), config, bundle, self.n_vectors)
        return True

    def finish(self, peak_memory: int | None) -> TrainResult:
        """Step 6: the final embedding and state saved."""
        final = _embedding(self.config, self.bundle, self.vectors, self.step)
        self.run.save_state(self.step, self.vectors, self.optimizer, self.scaler)
        files = self.run.save_embedding(final, None)
        final.name = self.name
        return TrainResult(final, self.plan, self.run.root, self.step, files, self.losses, peak_memory)


def init_text_vectors(config: TrainConfig, bundle, n_vectors: int) -> dict[str, torch.Tensor]:
    """A fresh TI's vectors before any update: the init text's token rows, per text encoder; with
    `embedding.cross_init`, the text encoder's output at those tokens instead (what the UNet sees for the
    init text: the last layer as the model's conditioning takes it), mapped to the vectors the same way."""
    text, mode = config.embedding.init_text, config.init_mode
    if not (config.embedding.cross_init and text):
        return {enc.key: init_vectors(enc.tokenizer, enc.table, text, n_vectors, mode, enc.truncates_init_text) for enc in bundle.encoders}
    with torch.no_grad():
        hidden = bundle.encode_ids(bundle.tokenize([text], None, 0, syntax=False), per_prompt=False).hidden[0].float().cpu()
    out, offset = {}, 0
    for enc in bundle.encoders:  # SDXL's conditioning holds its encoders side by side
        outputs = hidden[1:, offset : offset + enc.width]  # after the start token
        out[enc.key] = init_vectors(enc.tokenizer, outputs, text, n_vectors, mode, enc.truncates_init_text, positions=True)
        offset += enc.width
    return out


def check_family_settings(config: TrainConfig, bundle) -> None:
    """Settings the model's family cannot honour, refused in one line before anything is trained or written."""
    spec = bundle.family.spec
    if config.train.semantics == "kohya" and spec.flow_matching:
        raise TitkError(f"train.semantics: kohya has no textual inversion for {spec.label}; use a1111")
    if config.embedding.cross_init and spec.one_chunk:
        raise TitkError(f"embedding.cross_init: not available for {spec.label} models yet; train from init_text's rows")
    if config.embedding.train_t5 and "t5" not in [e.key for e in bundle.encoders]:
        raise TitkError(f"embedding.train_t5: {bundle.name} has no T5 encoder ({', '.join(e.key for e in bundle.encoders)})")
    for name in ("width", "height", "bucket_step"):
        if problem := spec.side_problem(f"data.{name}:", getattr(config.data, name)):
            raise TitkError(problem)
    if config.output.preview.every:
        from ..models.sampling import check_sampling

        check_sampling(bundle, config.output.preview, "output.preview")  # said now, not at the first preview


def _checked(loss: float, step: int, micro: int) -> float:
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"training stopped: the loss became {loss} at step {step + 1} (micro-batch {micro + 1}); "
            f"checkpoints saved before stay valid. Lower the learning rate, or train in bf16/fp32 instead of fp16"
        )
    return loss


def _embedding(config: TrainConfig, bundle, vectors, step: int) -> Embedding:
    return Embedding(
        config.embedding.name, {k: v.detach().clone() for k, v in vectors.items()}, step=step,
        base_model_hash=bundle.short_hash, base_model_name=bundle.name, family=bundle.family.value,
        extra=_kohya_metadata(config, bundle) if config.layout == "kohya" else {},
    )


def _kohya_metadata(config: TrainConfig, bundle) -> dict[str, str]:
    """What kohya's `get_sai_model_spec` adds for a TI from its arguments: the training resolution and the
    prediction type (its `--resolution`, `--v_parameterization`)."""
    width, height = config.data.width or bundle.default_size, config.data.height or bundle.default_size
    return {
        "modelspec.resolution": f"{width}x{height}",
        **({} if bundle.family.spec.flow_matching else  # kohya's modelspec names only epsilon and v
           {"modelspec.prediction_type": "v" if bundle.prediction_type == "v_prediction" else "epsilon"}),
    }


def _check_prompts_name(dataset, prompts: PromptBuilder, name: str, semantics: str, extension: str) -> None:
    """kohya trains nothing on an image whose caption lacks the token; say so before training starts."""
    if semantics != "kohya":
        return
    tokenizer = clip_tokenizer()  # every SD family shares CLIP's vocabulary
    lacking = [
        r.path.with_suffix(extension).name if r.caption_from_file else r.path.name
        for r in dataset.records
        if not prompt_has_name(tokenizer, prompts.caption_text(r.caption), name, semantics)
    ]
    if lacking and all("[filewords]" in line and "[name]" not in line for line in prompts.lines):
        shown = ", ".join(lacking[:3]) + (f" and {len(lacking) - 3} more" if len(lacking) > 3 else "")
        raise TitkError(
            f"kohya semantics: {len(lacking)} of {len(dataset)} captions lack the token {name!r} ({shown}); "
            "those images would train nothing. Add the token to every caption or use a template with [name]"
        )


def _capture(bundle, on: bool, clipped: dict | None = None) -> list:
    """Start (or stop) recording the token-embedding outputs whose gradients kohya's clipping includes
    (those of the encoders in `clipped`, or of all)."""
    captured = [] if on else None
    _record_into(bundle, captured, clipped)
    return captured if on else []


def _record_into(bundle, captured: list | None, clipped: dict | None) -> None:
    for enc in bundle.encoders:
        enc.spliced.capture = captured if clipped is None or enc.key in clipped else None


def _clip(vectors, mode: str, threshold: float, captured: list, scaler) -> None:
    params = list(vectors.values())
    if mode == "value":
        torch.nn.utils.clip_grad_value_(params, threshold)
    elif mode == "norm" and not captured:
        torch.nn.utils.clip_grad_norm_(params, threshold)
    elif mode == "norm":
        # kohya clips the whole token-embedding matrix: the rows of the caption's ordinary tokens count
        # towards the norm too (they are reset after the step), so fold their gradients in.
        total = sum(float(p.grad.float().pow(2).sum()) for p in params if p.grad is not None)
        rows: dict[int, torch.Tensor] = {}
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        for ids, out in captured:
            if out.grad is None:
                continue
            flat_ids, flat_grad = ids.reshape(-1), out.grad.reshape(-1, out.shape[-1]).float() / scale
            uniq, inverse = flat_ids.unique(return_inverse=True)
            summed = torch.zeros(len(uniq), flat_grad.shape[1], device=flat_grad.device).index_add_(0, inverse, flat_grad)
            for token, grad in zip(uniq.tolist(), summed):
                rows[token] = rows[token] + grad if token in rows else grad
        total += sum(float(g.pow(2).sum()) for g in rows.values())
        coef = threshold / (total**0.5 + 1e-6)
        if coef < 1:
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(coef)


def _save_preview(path: Path, config: TrainConfig, bundle, n_vectors: int) -> None:
    p = config.output.preview
    # A preview is drawn at the training size unless it asks for its own.
    sampling = p.model_copy(update={"width": p.width or config.data.width, "height": p.height or config.data.height})
    name = config.embedding.name
    texts = [text.replace("[name]", name) for text in p.prompts]
    pairs = [(text, seed) for text in texts for seed in p.seeds]
    images = generate(bundle, [a for a, _ in pairs], [b for _, b in pairs], sampling, name=name, n_vectors=n_vectors)
    grid = image_grid(images, len(texts), len(p.seeds), row_labels=texts, col_labels=[f"seed {s}" for s in p.seeds])
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
