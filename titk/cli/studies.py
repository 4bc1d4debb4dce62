"""Commands about studies: sweep, worker, serve, report, demo, the toy world."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ..errors import TitkError

from .app import SetOption, StorageOption, TrackingOption, WorkdirOption, _print_frame, app, console, err_console


def _note(message: str) -> None:
    err_console.print(f"[yellow]note:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _trial_line(study, trial) -> None:
    value = "" if trial.values is None else "  value " + ", ".join(f"{v:.4f}" for v in trial.values)
    if trial.state.name == "PRUNED":  # Optuna's value for it is an intermediate one, not a result
        pruned = trial.user_attrs.get("titk.pruned") or {}
        if "step" in pruned:
            value = f"  by the {pruned['rule']} rule at step {pruned['step']} (intermediate objective {pruned['value']:.4f}; no final score)"
        else:
            value = f"  by the {pruned.get('rule', 'pruning')} rule" + (f" after {pruned['images']} images" if "images" in pruned else "") + " (no final score)"
    reason = trial.user_attrs.get("fail_reason") or ""
    if "duplicate_of" in trial.user_attrs:
        reason = f"same settings as trial {trial.user_attrs['duplicate_of']}: answered from it, not trained again"
    colour = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red"}.get(trial.state.name, "white")
    console.print(f"[{colour}]trial {trial.number} {trial.state.name.lower()}[/]{value}  {escape(reason)}", highlight=False, soft_wrap=True)


def _trial_start(number: int, k: int, n: int, settings: dict, n_images: int) -> None:
    shown = ", ".join(f"{name.rsplit('.', 1)[-1]} {value:.4g}" if isinstance(value, float) else f"{name.rsplit('.', 1)[-1]} {value}" for name, value in settings.items())
    console.print(f"[bold]trial {number}[/] ({k} of {n}): {escape(shown) or 'the base settings'}, {n_images} images", highlight=False, soft_wrap=True)


def _confirm_start(setting, seed: int) -> None:
    baseline = setting.trial is None or setting.key == "baseline"  # its label names it: "the baseline (lr …)"
    what = escape(setting.label) if baseline else f"trial {setting.trial} ({escape(setting.label)})"
    console.print(f"[bold]confirming[/] {what}, seed {seed}", highlight=False, soft_wrap=True)


def _run_sweep(config: Path, workdir: Path, storage, tracking_uri, n_trials, create: bool, create_only: bool, set_: list[str]):
    from ..config import load_sweep_config

    cfg = load_sweep_config(config, set_)
    _run(cfg, workdir, dict(config_dir=config.parent, storage_url=storage, tracking=tracking_uri, create=create,
                            create_only=create_only, n_trials=n_trials))


def _run(cfg, workdir: Path, options: dict) -> None:
    """Run (or confirm) a study and print its summary: the best trials with their intervals, the seed noise,
    and the confirmation's sentence."""
    from ..sweep.runner import run_sweep

    try:
        result = run_sweep(cfg, workdir=workdir, on_trial=_trial_line, on_note=_note, on_start=_trial_start,
                           on_confirm=_confirm_start, **options)
    except KeyboardInterrupt:
        err_console.print("interrupted: finished trials are kept; run the same command again to resume the study")
        sys.exit(130)
    if options.get("create_only"):
        console.print(f"study {cfg.study!r} ready in {result.storage}; start workers with `titk worker`", highlight=False)
        return
    if result.note:
        console.print(f"[yellow]note:[/] {escape(result.note)}", highlight=False, soft_wrap=True)
    from ..sweep.pruning import Pruning

    _summary(result, cfg.study, workdir, Pruning(cfg.objective).rule if cfg.objective.eval_every != 0 else None)


def _pruning_signal(study, table, rule: str | None) -> str | None:
    """How well the intermediate values the rule pruned on (median, halving, hyperband) ranked the complete
    trials as their final scores do (Spearman's ρ at the last step most trials reached), or why that is not known."""
    import pandas as pd

    from ..analysis.predictiveness import describe, signal_correlations

    if rule not in ("median", "halving", "hyperband"):  # the Wilcoxon rule reports per-image values, not a score per step
        return None
    rows = [{"trial": t.number, "metric": "intermediate/objective", "step": step, "value": value}
            for t in study.get_trials(deepcopy=False) for step, value in t.intermediate_values.items()]
    curves = pd.DataFrame(rows, columns=["trial", "metric", "step", "value"])
    lines = describe(signal_correlations(curves, table, "value")) if "value" in table else []
    if not lines:
        return "pruning signal: not measured (a rank correlation needs 3 complete trials with intermediate evaluations)"
    return f"pruning signal: {lines[0]} with the final objective (+1: prunes as the end would rank)"


def _summary(result, study: str, workdir: Path, pruner: str | None = None) -> None:
    from ..sweep.trials import best_trials, seed_interval, seed_noise

    table = result.table
    counts = ", ".join(f"{n} {state.lower()}" for state, n in table["state"].value_counts().items()) if not table.empty else "no trials"
    best = best_trials(result.study, table)
    if "mlflow_run_id" in best:  # eight characters find a run in the MLflow UI's search, as with git hashes
        best = best.assign(run=best["mlflow_run_id"].fillna("").str[:8])
    if "value" in best:  # a trial's value is its mean over seeds: with one seed it has no interval, and says so
        best = best.assign(seeds=[seed_interval(v).text() if isinstance(v, list) else "" for v in best["values_per_seed"]])
    params = [c for c in best.columns if c.startswith("param.")]
    short = [c.rsplit(".", 1)[-1] for c in params]
    headers = {c: c for c in ("trial", "value", "value0", "value1") if c in best}
    headers.update({"seeds": "over seeds"} if "seeds" in best else {})
    headers.update({"feasible": "feasible"} if "feasible" in best else {})
    headers.update({c: s if short.count(s) == 1 else c.removeprefix("param.") for c, s in zip(params, short)})
    headers.update({"run": "MLflow run"} if "run" in best else {})
    _print_frame(best, f"study {study}: {counts} (pruned trials stopped early and are not ranked)", headers)
    noise = seed_noise(table)
    if noise is not None:
        console.print(f"seed noise: the baseline's objective {noise.text()}, seed-to-seed sd {noise.sd:.3f}", highlight=False, soft_wrap=True)
    elif "value" in table:
        console.print("seed noise: not measured (no complete baseline trial with several seeds)", highlight=False)
    signal = _pruning_signal(result.study, table, pruner)
    if signal:
        console.print(escape(signal), highlight=False, soft_wrap=True)
    record = result.confirmation
    if record is not None:
        console.print(f"[bold]decision:[/] {escape(record['sentence'])}", highlight=False, soft_wrap=True)
        console.print(f"next: {escape(record['next'])}", highlight=False, soft_wrap=True)
    elif "value" in table:
        console.print(f"not confirmed: the best value is one seed's, biased upwards by the search; run `titk confirm {workdir}`", highlight=False, soft_wrap=True)
    console.print(f"MLflow UI and Optuna dashboard: titk serve {workdir}    report: titk report {workdir} -o report.html", highlight=False, soft_wrap=True)


@app.command()
def sweep(
    config: Path = typer.Argument(..., help="sweep config (YAML): base training config, space, subset, objective, evaluation"),
    workdir: Path = WorkdirOption,
    storage: Optional[str] = StorageOption,
    tracking_uri: Optional[str] = TrackingOption,
    n_trials: Optional[int] = typer.Option(None, min=1, help="finished trials wanted (default: the config's n_trials)"),
    create_only: bool = typer.Option(False, "--create-only", help="create the study (and its MLflow experiment) and stop"),
    set_: list[str] = SetOption,
):
    """Search training settings and dataset subsets with Optuna, scoring every trial and recording it in MLflow.
    On an existing study it continues where it stopped.

    \b
    Example:
      titk sweep experiments/sweeps/person-settings.yaml -w work/me \\
          --set base.model.source=sd15.safetensors --set base.data.path=photos/
    """
    _run_sweep(config, workdir, storage, tracking_uri, n_trials, True, create_only, set_)


@app.command()
def worker(
    config: Path = typer.Argument(..., help="the study's sweep config"),
    workdir: Path = WorkdirOption,
    storage: Optional[str] = StorageOption,
    tracking_uri: Optional[str] = TrackingOption,
    set_: list[str] = SetOption,
):
    """Join an existing study and run its trials one after another on this machine's GPU (one worker per GPU).

    \b
    Example:
      titk worker sweep.yaml --storage postgresql://titk@db/optuna --tracking-uri http://mlflow:5000
    """
    _run_sweep(config, workdir, storage, tracking_uri, None, False, False, set_)


@app.command()
def confirm(
    workdir: Path = typer.Argument(..., help="a sweep's work directory"),
    top: Optional[int] = typer.Option(None, min=1, help="best trials to confirm (default: the config's confirm.top)"),
    seeds: Optional[int] = typer.Option(None, min=2, max=50, help="fresh seeds per setting (default: from the measured seed noise)"),
    trial: list[int] = typer.Option([], "--trial", help="confirm this trial (repeat for several) instead of the best"),
    storage: Optional[str] = StorageOption,
    tracking_uri: Optional[str] = TrackingOption,
):
    """Train the best trials and the baseline again on fresh seeds and compare them, paired, on the full suite:
    one sentence says whether anything beats the baseline beyond seed noise. Results are kept as they finish.

    \b
    Example:
      titk confirm work/me
      titk confirm work/me --trial 7 --trial 12 --seeds 5
    """
    from ..config import SweepConfig, parse
    from ..sweep.storage import read_record, recorded_stores

    meta = read_record(workdir)
    cfg = parse(SweepConfig, meta["config"], str(workdir / "sweep.json"))
    if cfg.objective.pareto:
        raise TitkError("confirm: this study has two objectives (objective.pareto); confirmation compares one")
    recorded_storage, recorded_tracking = recorded_stores(workdir, meta)
    wanted = {"top": top if top is not None else (0 if trial else cfg.confirm.top), "seeds": seeds, "trials": list(trial) or None}
    _run(cfg, workdir, dict(storage_url=storage or recorded_storage, tracking=tracking_uri or recorded_tracking, create=False,
                            confirm=wanted, confirm_only=True))


@app.command()
def serve(
    workdir: Path = typer.Argument(..., help="a sweep's work directory"),
    port: int = typer.Option(5000, min=1, max=65535, help="MLflow UI port"),
    dashboard_port: int = typer.Option(8080, min=1, max=65535, help="optuna-dashboard port"),
    check: bool = typer.Option(False, "--check", help="start both, check they answer, then stop"),
):
    """Start the MLflow UI and optuna-dashboard for a work directory, on 127.0.0.1. Ctrl-C, SIGTERM and SIGHUP stop both.

    \b
    Example:
      titk serve work/me
      titk serve work/me --port 5001 --dashboard-port 8081
    """
    from ..sweep.serve import ServerFailed
    from ..sweep.serve import serve as run_servers

    try:
        run_servers(workdir, port, dashboard_port, check=check, console=console)
    except ServerFailed as exc:  # why a server failed is in its log, which does not fit on one line
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        for line in exc.tail:
            err_console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code)


@app.command()
def report(
    workdir: Optional[Path] = typer.Argument(None, help="a sweep's work directory"),
    output: Path = typer.Option(Path("report.html"), "--output", "-o", help="the HTML file to write"),
    study: Optional[str] = typer.Option(None, help="study name (with --storage and --tracking-uri instead of a work dir)"),
    storage: Optional[str] = StorageOption,
    tracking_uri: Optional[str] = TrackingOption,
):
    """One self-contained HTML page about a study. It opens with the decision (the confirmed settings and
    images, how sure, what next), then the best trials with intervals and samples, which settings matter,
    identity against editability, learning curves and how well intermediate scores predict the final one,
    which images help, personality, seed variance.

    \b
    Example:
      titk report work/me -o report.html
      titk report --study me --storage postgresql://titk@db/optuna --tracking-uri http://mlflow:5000 -o me.html
    """
    from rich.progress import Progress

    from ..analysis import load_study
    from ..analysis.html import SECTIONS, write_report

    data = load_study(workdir, study=study, storage=storage, tracking_uri=tracking_uri, notify=_note)
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("report", total=len(SECTIONS))

        def section(name: str) -> None:
            progress.update(task, description=f"report: {name}", completed=SECTIONS.index(name))

        path = write_report(data, output, on_progress=section)
    console.print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB, opens offline)", highlight=False)


toyworld_app = typer.Typer(help="The toy world: a synthetic world where TI learning can be checked on a CPU.", no_args_is_help=True)
app.add_typer(toyworld_app, name="toyworld")


@toyworld_app.command("dataset")
def toyworld_dataset(
    out: Path = typer.Argument(..., help="folder to write the images (and captions) to"),
    identity: str = typer.Option("0", help="a held-out identity: its index or name"),
    n: int = typer.Option(15, min=1, help="number of images"),
    tank_tops: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="share of images in a tank top, 0 to 1 (default: clothing uniform)"),
    seed: int = typer.Option(0),
    captions: bool = typer.Option(True, help="write <stem>.txt captions describing each look"),
):
    """Write a TI dataset of a toy-world identity that the toy model never saw.

    \b
    Example:
      titk toyworld dataset data/lateni --n 15 --tank-tops 0.6
    """
    from ..toyworld.world import clothing_bias, heldout, write_dataset

    person = heldout(identity)
    looks = write_dataset(out, person, n, seed=seed, weights=clothing_bias("tank top", tank_tops) if tank_tops is not None else None, captions=captions)
    tanks = sum(look.clothing == "tank top" for look in looks)
    console.print(f"wrote {n} images of {person.name} ({person.describe()}), {tanks} in tank tops, to {out}", highlight=False, soft_wrap=True)


@toyworld_app.command("pretrain")
def toyworld_pretrain(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="where the model folder, vision model and record go (default: "
                                       "titk/toyworld/weights, or titk/toyworld/weights/<family> for another family)"),
    family: str = typer.Option("sd1", help="sd1, sdxl, sd3 or flux (all but sd1 reuse the shipped world's vision model and VAE)"),
    unet_steps: Optional[int] = typer.Option(None, min=1, help="length of the UNet and text-encoder learning-rate schedule"),
    stop_at: Optional[int] = typer.Option(None, min=1, help="end the UNet at this step of that schedule (the shipped model ends before the schedule does)"),
    vae_steps: Optional[int] = typer.Option(None, min=1),
    vision_steps: Optional[int] = typer.Option(None, min=1),
    seed: Optional[int] = typer.Option(None),
    continue_from: Optional[Path] = typer.Option(None, help="a saved toy model folder whose UNet and text encoder to train further"),
    shared_from: Optional[Path] = typer.Option(None, help="another family: the toy world folder whose vision model and VAE it reuses "
                                               "(default: the shipped SD1 world)"),
    timestep_weighting: Optional[str] = typer.Option(None, help="sd3, flux: how σ is drawn, logit_normal or none (uniform)"),
    partial_captions: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="the share of captions that leave out framing, "
                                                     "clothing and background with even odds each (default 0: every caption names all three)"),
):
    """Train a toy world's model from scratch (SD1 about 2 hours on 2 CPU cores, SDXL about 1 h 20 min, SD3 and Flux
    about 1 h 10 min and 45 min; each of their second stages, as docs/toyworld.md gives them, about 25 min more). Unset
    options take the settings that reproduce the shipped model of the family (titk.config.PretrainSettings.shipped).

    \b
    Example:
      titk toyworld pretrain -o toymodel/
      titk toyworld pretrain -o toymodel/ --continue-from titk/toyworld/weights/model --unet-steps 1000
      titk toyworld pretrain --family sdxl -o titk/toyworld/weights/sdxl
    """
    from ..config import PretrainSettings
    from ..config.training import SHIPPED_PRETRAINING
    from ..toyworld.pretrain import pretrain

    if family != "sd1" and family not in SHIPPED_PRETRAINING:
        raise TitkError(f"--family {family}: the toy world has models of sd1 and {', '.join(SHIPPED_PRETRAINING)}")
    if family == "sd1" and shared_from:
        raise TitkError("--shared-from: the sd1 model trains its own vision model and VAE; give it with --family sdxl, sd3 or flux")
    if timestep_weighting is not None and (family not in ("sd3", "flux") or timestep_weighting not in ("logit_normal", "none")):
        raise TitkError(f"--timestep-weighting {timestep_weighting}: logit_normal or none, for --family sd3 or flux (trained by flow matching)")
    given = dict(seed=seed, unet_steps=unet_steps, stop_at=stop_at, vae_steps=vae_steps, vision_steps=vision_steps,
                 continue_from=str(continue_from) if continue_from else None, shared_from=str(shared_from) if shared_from else None,
                 timestep_weighting=timestep_weighting, partial_captions=partial_captions)
    settings = PretrainSettings.shipped(family, **{k: v for k, v in given.items() if v is not None})
    out = out or Path("titk/toyworld/weights") / ("" if family == "sd1" else family)
    record = pretrain(out, settings, log=lambda line: console.print(line, highlight=False))
    console.print(f"done in {record['total_seconds'] / 60:.1f} min: {out}", highlight=False)


@app.command()
def demo(
    workdir: Path = typer.Option(Path("work/demo"), "--workdir", "-w", help="where the demo study goes"),
    config: Optional[Path] = typer.Option(None, help="the demo sweep config (default: titk/toyworld/demo.yaml, shipped with titk)"),
    set_: list[str] = SetOption,
):
    """A small sweep in the toy world: a TI of a person the toy model never saw, searched over learning rate,
    vectors and length, scored by the world's own face and attribute models. Run it again to continue.

    \b
    Example:
      titk demo
      titk serve work/demo
    """
    from ..toyworld.world import DEMO_CONFIG, clothing_bias, heldout, write_dataset

    config = config or DEMO_CONFIG
    data = workdir / "data"
    if not data.is_dir():
        person = heldout(0)
        looks = write_dataset(data, person, 15, weights=clothing_bias("tank top", 0.6))
        tanks = sum(look.clothing == "tank top" for look in looks)
        console.print(f"dataset: 15 images of {person.name} ({person.describe()}), {tanks} in tank tops → {data}", highlight=False, soft_wrap=True)
    _run_sweep(config, workdir, None, None, None, True, False, [f"base.data.path={data.resolve()}", *set_])
    console.print(f"notebooks: TITK_WORKDIR={workdir} jupyter lab experiments/notebooks/", highlight=False, soft_wrap=True)


