"""The Textual Inversion training loop, read top to bottom, for one embedding or several packed together.

1. Scan and validate the dataset and compute the plan (or take the caller's), before any model work.
2. Load the frozen model (or take one already loaded, as a sweep worker does).
3. Encode every image once into the latent cache.
4. Create the N trainable vectors per text encoder; nothing else is trainable.
5. For each optimizer update: the micro-batches the semantics assign to it, the denoising loss of each
   divided as the semantics say, one backward each, then clip and step. Log, save and preview as asked.
   Packed, every job's micro-batch goes through one UNet call and one backward: the UNet is frozen, so the
   jobs share nothing else and each gets the vectors its own run would.
6. Save the final embedding.

Each job's state and the steps of its update are in trainee.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..config import TrainConfig
from ..data.dataset import Dataset
from ..embeddings import Embedding
from ..errors import TitkError
from .loss import denoising_losses
from .norm_control import hold_norms, norm_targets
from .plan import TrainPlan
from .start import read_start
from .trainee import Job, Trainee, TrainEvent, TrainResult, _capture, init_text_vectors

__all__ = ["Job", "TrainEvent", "TrainResult", "starting_embedding", "train", "train_together"]


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
    job = Job(config, plan, dataset, resume, latent_cache, callback, validate_every)
    (result,) = train_together([job], bundle=bundle, show_progress=show_progress)
    if isinstance(result, BaseException):
        raise result
    return result


def train_together(jobs: list[Job], *, bundle=None, show_progress: bool = True) -> list[TrainResult | Exception]:
    """Train several embeddings on one frozen model at once (packed trials): at each micro-batch, one UNet
    call over all of their micro-batches (one call per shape where shapes differ), each job with its own
    vectors, optimizer, schedules, data order and random draws, so that each result equals its own `train`
    within rounding. A job that fails, or whose callback raises (a pruned trial), stops alone: its exception
    is returned in its place and the others go on. The jobs share the model and its settings."""
    from ..models.loading import load_model

    first = jobs[0].config
    if len({pack_key(job.config) for job in jobs}) > 1:
        raise TitkError("packed trials must share the model and train.gradient_checkpointing, channels_last and compile")
    results: list[TrainResult | Exception | None] = [None] * len(jobs)

    # 1. Datasets and plans, before any model work ------------------------------------------------------
    trainees = []
    for i, job in enumerate(jobs):
        try:
            trainees.append(Trainee(i, job, bundle))
        except Exception as exc:  # noqa: BLE001  returned in its place; `train` raises it
            results[i] = exc

    if not trainees:
        return results

    # 2. Model ---------------------------------------------------------------------------------------
    bundle = bundle or load_model(first.model_settings)
    progress = _progress(show_progress)
    with progress:
        # 3-4. Each job's latents (encoded once, cached on disk) and trainable vectors --------------------
        for trainee in list(trainees):
            try:
                trainee.prepare(bundle, progress)
            except Exception as exc:  # noqa: BLE001
                results[trainee.index] = exc
                trainees.remove(trainee)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        gradient_checkpointing, channels_last, compiled = _fast_path(first)
        if gradient_checkpointing:
            bundle.unet.enable_gradient_checkpointing()
        if channels_last:  # convolutions in NHWC, which GPU tensor cores prefer; put back after training
            bundle.unet.to(memory_format=torch.channels_last)
        if compiled:  # one graph per shape (a bucket, a packed group's size), reused across steps
            bundle.unet.compile(dynamic=False)

        # 5. The loop: every running job's next update, micro-batch by micro-batch ---------------------
        running = list(trainees)

        def stop(trainee: Trainee, exc: Exception) -> None:
            results[trainee.index] = exc
            running.remove(trainee)

        try:
            while running:
                for trainee in [t for t in running if not t.begin_update()]:
                    running.remove(trainee)  # its steps or A1111's passes are done
                for micro in range(max((len(t.update.batches) for t in running), default=0)):
                    parts = {}
                    for trainee in list(running):
                        try:
                            if (part := trainee.micro_batch(micro)) is not None:
                                parts[trainee] = part
                        except Exception as exc:  # noqa: BLE001
                            stop(trainee, exc)
                    if not parts:
                        continue  # every job's update ended before this micro-batch (A1111's schedule ran out)
                    losses = denoising_losses(bundle, list(parts.values()))
                    scaled = []
                    for trainee, loss in zip(parts, losses):
                        try:
                            scaled.append(trainee.add_loss(loss, micro))
                        except Exception as exc:  # noqa: BLE001  a NaN loss: this job diverged
                            stop(trainee, exc)
                    if scaled:  # the jobs' losses are independent: each one's vectors get its own gradient
                        torch.stack(scaled).sum().backward()
                for trainee in list(running):
                    try:
                        if not trainee.end_update():
                            running.remove(trainee)  # A1111's schedule ran out mid-update
                    except Exception as exc:  # noqa: BLE001  a NaN loss, or the callback's (a pruned trial)
                        stop(trainee, exc)
        finally:
            bundle.set_vectors(None)
            _capture(bundle, False)
            if gradient_checkpointing:
                bundle.unet.disable_gradient_checkpointing()
            if channels_last:
                bundle.unet.to(memory_format=torch.contiguous_format)
            if compiled:
                bundle.unet._compiled_call_impl = None  # what nn.Module.compile set: the plain forward again

    # 6. The final embeddings ------------------------------------------------------------------------
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    for trainee in trainees:
        if results[trainee.index] is None:
            results[trainee.index] = trainee.finish(peak)
    return results


# ---------------------------------------------------------------------------------------------------- helpers


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


def _fast_path(config: TrainConfig) -> tuple[bool, bool, bool]:
    t = config.train
    return t.gradient_checkpointing, t.channels_last, t.compile


def pack_key(config: TrainConfig) -> tuple:
    """Jobs with equal keys can be trained together: the same model, loaded alike, and the same fast path."""
    return config.model_settings.model_dump_json(), _fast_path(config)


def _progress(show: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}", markup=False, style="bold"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}", markup=False),
        TimeElapsedColumn(), TimeRemainingColumn(), disable=not show, transient=False,
    )
