"""Printing a TrainPlan for people."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def print_plan(plan, console: Console, brief: bool = False) -> None:
    table = Table(title="training plan", title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    rows = [
        ("semantics", plan.semantics),
        ("dataset", f"{plan.n_images} images" + (f" × {plan.repeats} repeats" if plan.repeats > 1 else "")
         + f" at {', '.join(f'{s} ({n})' for s, n in plan.sizes.items())}"),
        ("batch size", _nominal(plan.batch_size, plan.batch_size_eff)),
        ("gradient accumulation", _nominal(plan.grad_accum, plan.grad_accum_eff)),
        ("per pass", f"{plan.micro_per_pass} micro-batches, {plan.updates_per_pass} update(s)"),
        ("steps", f"{plan.stop_step} (max {plan.max_steps}{STEPS_FROM.get(plan.max_steps_from, '')})"),
        ("epochs", f"{plan.epochs:g}"),
        ("image views", f"{plan.image_views}"),
        ("learning rate", "; ".join(f"{r:g} for {_steps(a, b)}" for r, a, b in plan.lr_segments)),
        ("optimizer", f"AdamW, weight decay {plan.weight_decay:g}; loss ÷ {plan.loss_divisor}"),
        ("clipping", "none" if plan.clip_mode == "none" else f"{plan.clip_mode} {plan.clip_threshold} (unscaled gradients)"),
        ("starts from", plan.start),
        ("template", f"{plan.template} ({plan.template_lines} lines, sha256 {plan.template_sha256[:10]})"),
    ]
    if plan.total_tflops is not None:
        per_view = ", ".join(f"{s}: {f:g}" for s, f in plan.tflops_per_view.items())
        rows.append(("compute", f"{plan.total_tflops:g} TFLOP ({per_view} TFLOP per view, UNet forward + backward)"))
    if plan.memory is not None:
        m = plan.memory
        other = "without" if m["gradient_checkpointing"] else "with"  # the setting the second figure is for
        rows.append(("GPU memory", f"about {m['peak_gib']:g} GiB at {m['size']}, batch {m['batch']}, {m['dtype']}: denoiser weights "
                     f"{m['weights_gib']:g} + activations {m['activations_gib']:g} ({other} gradient checkpointing: {m['other_checkpointing_peak_gib']:g}); "
                     "an estimate without the text encoders and CUDA's own (about 0.5 GiB)"))
    if brief:
        rows = rows[:1] + rows[3:8]
    for key, value in rows:
        table.add_row(key, escape(value))  # user text (paths, schedules) printed as written
    console.print(table)
    if not brief:
        for note in plan.notes:
            console.print(f"  [green]•[/] {escape(note)}", highlight=False)
    for warning in plan.warnings:
        console.print(f"  [yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)  # one line each, for grep and logs
    if not brief:
        for difference in plan.differences:
            console.print(f"  [magenta]differs from {plan.semantics}:[/] {escape(difference)}", highlight=False, soft_wrap=True)


STEPS_FROM = {"epochs": " from epochs", "semantics": ", kohya's default"}


def _nominal(nominal: int, effective: int) -> str:
    return f"{effective}" if nominal == effective else f"{effective} (asked for {nominal})"


def _steps(first: int, end: int) -> str:
    return f"step {first}" if end == first + 1 else f"steps {first}–{end - 1}"
