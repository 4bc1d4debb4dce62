"""The Textual Inversion training loop, read top to bottom.

1. Scan and validate the dataset and compute the plan (or take the caller's), before any model work.
2. Load the frozen model (or take one already loaded, as a sweep worker does).
3. Encode every image once into the latent cache.
4. Create the N trainable vectors per text encoder; nothing else is trainable.
5. For each optimizer update: the micro-batches the semantics assign to it, the denoising loss of each
   divided as the semantics say, one backward each, then clip and step. Log, save and preview as asked.
6. Save the final embedding.

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
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..config import ADAM_BETAS, ADAM_EPS, TrainConfig
from ..data.dataset import Dataset, scan_dataset
from ..data.latents import LatentCache
from ..data.prompts import PromptBuilder, read_template
from ..embeddings import Embedding
from ..embeddings.fit import vectors_for
from ..embeddings.placeholder import init_vectors, prompt_has_name
from ..errors import TitkError, TrainingDiverged
from ..drawing import image_grid
from ..models.sampling import generate
from ..models.tokenizer import clip_tokenizer
from ..files import atomic_path
from ..paths import cache_dir
from .examples import Examples, step_generator
from .loss import diffusion_loss
from .norm_control import hold_norms, norm_targets
from .outputs import RunFolder, epoch_columns
from .plan import TrainPlan, make_plan
from .schedule import Schedule
from .validation import ValidationLoss
from .start import read_start


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


def load_dataset(config: TrainConfig) -> Dataset:
    d = config.data
    if d.path is None:
        raise TitkError("data.path: no dataset folder given (set it in the config or pass --dataset)")
    return scan_dataset(
        d.path, recursive=d.recursive, caption_extension=config.caption_extension, filename_regex=d.filename_regex,
        filename_join=d.filename_join, min_side=d.min_side, on_bad_image=d.on_bad_image,
    )


def train(
    config: TrainConfig,
    plan: TrainPlan | None = None,
    *,
    dataset: Dataset | None = None,
    bundle=None,
    resume: bool = False,
    show_progress: bool = True,
    latent_cache: str | Path | None = None,
    callback: Callable[[TrainEvent], None] | None = None,
    validate_every: int = 0,
) -> TrainResult:
    """Train one embedding following `plan` (made here from the config and dataset when not given).
    `callback(event)` gets a TrainEvent after each update and each save; an exception it raises (a sweep's
    pruning) stops training with what was saved kept. Every `validate_every` steps while as many remain
    (0: never) the update's event carries the deterministic validation loss (validation.py)."""
    from ..models.loading import Architecture, load_model, read_architecture

    t, name = config.train, config.embedding.name
    start = read_start(config)
    n_vectors = start.n_vectors

    # 1. Dataset and plan --------------------------------------------------------------------------
    dataset = dataset or load_dataset(config)
    if plan is None:
        arch = read_architecture(config.model) if bundle is None else Architecture(
            bundle.family, dict(bundle.unet.config), bundle.vae_scale_factor
        )
        plan = make_plan(config, dataset, arch)
    run = RunFolder(config, plan, dataset)
    prompts = PromptBuilder(t.semantics, read_template(config.template, config.data.template_dir), name, config.data.shuffle_tags, config.data.tag_dropout)

    _check_prompts_name(dataset, prompts, name, t.semantics, config.caption_extension)
    state = run.start(resume)
    start_step = state["step"] if state else plan.start_step

    # 2. Model -------------------------------------------------------------------------------------
    bundle = bundle or load_model(config.model_settings)

    # 3. Latents, encoded once per image and cached on disk -----------------------------------------
    progress = _progress(show_progress)
    with progress:
        cache = LatentCache(latent_cache or cache_dir() / "latents", bundle)
        latents = cache.load_or_encode(
            dataset, plan.image_sizes, config.resize, use_alpha=config.data.use_alpha, alpha=t.semantics, progress=progress
        )
        examples = Examples(dataset, latents, prompts, config.latent_sampling, bundle.latent_scaling, t.seed)
        validation = ValidationLoss(
            bundle, dataset.records, latents, prompts, bundle.latent_scaling, name, n_vectors, syntax=t.semantics == "a1111"
        ) if validate_every else None
        batching = plan.batching

        # 4. The trainable vectors: N rows per text encoder, and nothing else ---------------------------
        if state:
            initial = state["vectors"]
        elif start.embedding is not None:
            initial = vectors_for(start.embedding, bundle, where=str(start.path))
        else:
            initial = init_text_vectors(config, bundle, n_vectors)
        vectors = {k: torch.nn.Parameter(v.to(bundle.device, torch.float32).clone()) for k, v in initial.items()}
        # embedding.norm vocab: only the direction learns; every vector is held at its vocabulary's median norm
        # from the start and after each update (norm_control.py). free (A1111, kohya): nothing is held.
        held = norm_targets(bundle) if config.embedding.norm == "vocab" else None
        if held:
            hold_norms(vectors, held)
        optimizer = torch.optim.AdamW(
            list(vectors.values()), lr=plan.lr_pairs[0][0], betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=plan.weight_decay
        )
        scaler = torch.amp.GradScaler(bundle.device.type, enabled=bundle.dtype == torch.float16)
        if state:
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
        lr_schedule = Schedule.from_string(config.learning_rate, plan.max_steps, start_step)
        clip_schedule = Schedule.from_string(plan.clip_threshold, plan.max_steps, start_step, what="train.clip_threshold")
        kohya_matrix_clip = t.semantics == "kohya" and plan.clip_mode == "norm"
        # kohya clips through a loop variable left over from its encoder loop: SDXL's last encoder (CLIP-G) only.
        clipped = {bundle.encoders[-1].key: vectors[bundle.encoders[-1].key]} if t.semantics == "kohya" else vectors

        # 5. The loop ---------------------------------------------------------------------------------
        step, losses = start_step, []
        # Passes count from where the run began (a new DataLoader in A1111): the file's step, or 0.
        origin = plan.start_step
        views = sum(batching.update(s - origin).views for s in range(origin, start_step))
        task = progress.add_task(f"training {name}", total=plan.stop_step, completed=start_step, status="")
        started = time.monotonic()
        if config.train.gradient_checkpointing:
            bundle.unet.enable_gradient_checkpointing()
        if t.channels_last:  # convolutions in NHWC, which GPU tensor cores prefer; put back after training
            bundle.unet.to(memory_format=torch.channels_last)
        bundle.set_vectors(vectors)
        try:
            while step < plan.max_steps or t.semantics == "a1111":
                update = batching.update(step - origin)
                if plan.max_passes is not None and update.pass_index >= plan.max_passes:
                    break  # A1111's outer loop has run out of passes
                captured = _capture(bundle, kohya_matrix_clip, clipped)
                loss_sum, finished, pending = 0.0, False, []
                for micro, batch in enumerate(update.batches):
                    lr = lr_schedule.apply(step)  # A1111 consults the schedule before every micro-batch
                    if lr_schedule.finished and t.semantics == "a1111":
                        finished = True
                        break
                    clip_threshold = clip_schedule.apply(step)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    generator = step_generator(t.seed, step, micro)
                    latent, weights, texts = examples.micro_batch(batch, step, micro, generator)
                    # A1111 reads its prompt syntax in training prompts and normalises emphasis over the batch; kohya reads plain text.
                    tokens = bundle.tokenize(texts, name, n_vectors, syntax=t.semantics == "a1111")
                    cond = bundle.encode_ids(tokens, per_prompt=False)
                    loss = diffusion_loss(bundle, latent, cond, weights, generator)
                    if t.host_sync == "update":  # read back once, after the last micro-batch
                        pending.append(loss.detach())
                    else:
                        loss_sum += _checked(loss.item(), step, micro) / update.divisor
                    scaler.scale(loss / update.divisor).backward()
                if finished:
                    break
                # Before the optimizer step, so a NaN leaves the vectors as the last update left them.
                for micro, value in enumerate(torch.stack(pending).tolist() if pending else []):
                    loss_sum += _checked(value, step, micro) / update.divisor
                scaler.unscale_(optimizer)
                _clip(clipped, plan.clip_mode, clip_threshold, captured, scaler)
                scaler.step(optimizer)
                scaler.update()
                if held:
                    hold_norms(vectors, held)
                optimizer.zero_grad(set_to_none=True)
                step, views = step + 1, views + update.views
                losses.append(loss_sum)

                # Log, save, preview ---------------------------------------------------------------------
                epoch, epoch_step = epoch_columns(step, batching.updates_per_pass)
                run.log({
                    "step": step, "epoch": epoch, "epoch_step": epoch_step,
                    "loss": f"{loss_sum:.6f}",
                    "learn_rate": lr, "images_seen": views, "seconds": f"{time.monotonic() - started:.2f}",
                })
                progress.update(task, completed=step, status=f"loss {loss_sum:.4f}  lr {lr:.2e}  epoch {plan.epoch_of(step):.2f}")
                snapshot = partial(_embedding, config, bundle, vectors, step)
                validation_loss = None
                # At a sweep's intermediate steps: every validate_every steps while as many remain (the end has its final scores).
                if validation is not None and step % validate_every == 0 and step + validate_every <= plan.stop_step:
                    _capture(bundle, False)  # kohya's clipping records encoder outputs; these are not an update's
                    validation_loss = validation()
                if callback:
                    callback(TrainEvent("update", step, loss_sum, lr, plan.epoch_of(step), views, snapshot, validation_loss=validation_loss))
                number = run.checkpoint_number(step, config.output.save_every)
                if number is not None:
                    files = run.save_embedding(snapshot(), str(number))
                    run.save_state(step, vectors, optimizer, scaler)
                    if callback:
                        callback(TrainEvent("checkpoint", step, loss_sum, lr, plan.epoch_of(step), views, snapshot, tuple(files)))
                preview = run.checkpoint_number(step, config.output.preview.every)
                if preview is not None:
                    _save_preview(run.preview_path(str(preview)), config, bundle, n_vectors)
        finally:
            bundle.set_vectors(None)
            _capture(bundle, False)
            if config.train.gradient_checkpointing:
                bundle.unet.disable_gradient_checkpointing()
            if t.channels_last:
                bundle.unet.to(memory_format=torch.contiguous_format)

    # 6. The final embedding ---------------------------------------------------------------------------
    final = _embedding(config, bundle, vectors, step)
    run.save_state(step, vectors, optimizer, scaler)
    files = run.save_embedding(final, None)
    final.name = name
    return TrainResult(final, plan, run.root, step, files, losses)


# ---------------------------------------------------------------------------------------------------- helpers


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


def _checked(loss: float, step: int, micro: int) -> float:
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"training stopped: the loss became {loss} at step {step + 1} (micro-batch {micro + 1}); "
            f"checkpoints saved before stay valid. Lower the learning rate, or train in bf16/fp32 instead of fp16"
        )
    return loss


def starting_embedding(config: TrainConfig, bundle) -> Embedding:
    """What training `config` starts from, untrained: the start file's embedding, or the init text's rows
    (held at the vocabulary's norm under `embedding.norm: vocab`, as the loop holds them before its first
    update). A sweep measures a TI's personality shift against this."""
    start = read_start(config)
    if start.embedding is not None:
        return start.embedding
    vectors = {k: v.to(torch.float32).clone() for k, v in init_text_vectors(config, bundle, start.n_vectors).items()}
    if config.embedding.norm == "vocab":
        hold_norms(vectors, norm_targets(bundle))
    return Embedding(config.embedding.name, vectors, step=0, base_model_hash=bundle.short_hash, base_model_name=bundle.name,
                     family=bundle.family.value)


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
        "modelspec.prediction_type": "v" if bundle.prediction_type == "v_prediction" else "epsilon",
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
    for enc in bundle.encoders:
        enc.spliced.capture = captured if clipped is None or enc.key in clipped else None
    return captured if on else []


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


def _progress(show: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}", markup=False, style="bold"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}", markup=False),
        TimeElapsedColumn(), TimeRemainingColumn(), disable=not show, transient=False,
    )
