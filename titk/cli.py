"""The `titk` command. Commands are thin: they parse options, call the library, and print results.

A user mistake (a TitkError) is printed as one line on stderr with a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import TitkError

app = typer.Typer(
    name="titk",
    help="Textual Inversion toolkit: train, search and score TI embeddings of a person.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _print_sections(sections: dict[str, dict[str, str]]) -> None:
    for title, rows in sections.items():
        table = Table(title=escape(title), title_justify="left", show_header=False, box=None, pad_edge=False, min_width=60)
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column(overflow="fold")
        for key, value in rows.items():
            table.add_row(escape(str(key)), escape(str(value)))
        console.print(table)
        console.print()


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else escape(str(value))


def _print_frame(frame, title: str, columns: dict[str, str]) -> None:
    """Some columns of a DataFrame as a table; `columns` maps each column to its header."""
    table = Table(title=escape(title), title_justify="left")
    for header in columns.values():
        table.add_column(header, overflow="fold")
    for row in frame[list(columns)].itertuples(index=False):
        table.add_row(*[_cell(v) for v in row])
    console.print(table)


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="print the report as JSON")):
    """Versions, devices and what they support, where models and face packs are looked for, the hub."""
    from .doctor import report

    data = report()
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        _print_sections(data)


def _is_model_source(path: str) -> bool:
    """A model (folder, checkpoint, hub id) rather than an embedding file."""
    p = Path(path)
    if p.is_dir() or path == "toyworld":
        return True
    if not p.exists():
        return "/" in path and p.suffix == ""  # a hub id
    suffix = p.suffix.lower()
    if suffix == ".ckpt":
        return True
    if suffix == ".safetensors":
        from .models.loading import read_checkpoint_index

        from .embeddings.formats import EMBEDDING_KEYS

        try:
            keys, _ = read_checkpoint_index(p)
        except TitkError:
            return False  # let the embedding reader report what is wrong with the file
        model_prefixes = ("model.", "first_stage_model.", "cond_stage_model.", "conditioner.", "lora_")
        return any(k.startswith(model_prefixes) for k in keys) or (len(keys) > 1 and not keys <= EMBEDDING_KEYS)
    return suffix in (".pt", ".bin", ".pth") and p.stat().st_size > 100 * 2**20


@app.command()
def inspect(
    path: str = typer.Argument(..., help="an embedding file, or a model (diffusers folder, checkpoint or hub id)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="a model to check the embedding against"),
    model_config: Optional[Path] = typer.Option(None, help="diffusers config folder for a non-standard single file"),
    dtype: str = typer.Option("fp32", help="precision to load a model in: fp32, bf16, fp16 or auto"),
    device: str = typer.Option("cpu", help="device to load a model on"),
):
    """Describe an embedding (format, family, vectors, norms, size, metadata; with --model the nearest
    tokens and whether it fits) or a model (family, prediction type, encoders, short hash)."""
    from .models import load_model

    if _is_model_source(path):
        bundle = load_model(path, config_dir=model_config, dtype=dtype, device=device)
        _print_sections({"model": bundle.describe()})
        return
    from .embeddings.formats import read_embedding_file
    from .embeddings.describe import describe

    found = read_embedding_file(path)
    bundle = load_model(model, config_dir=model_config, dtype=dtype, device=device) if model else None
    _print_sections(describe(found, bundle))


@app.command()
def convert(
    source: Path = typer.Argument(..., help="an embedding file in any format titk reads"),
    target: Path = typer.Argument(..., help="the file to write"),
    to: str = typer.Option(None, "--to", help="a1111, safetensors, kohya, diffusers, onetrainer or png (default: from the suffix)"),
    name: Optional[str] = typer.Option(None, help="the stored name (default: the target's file stem, which A1111 uses)"),
):
    """Convert an embedding between the formats people exchange."""
    from .embeddings.embedding import check_name
    from .embeddings.formats import FORMAT_BY_SUFFIX, read_embedding_file, write_embedding
    from .embeddings.describe import summary

    found = read_embedding_file(source)
    emb = found.embedding
    emb.name = check_name(name or target.stem.removesuffix("_2"), "--name")
    fmt = to or FORMAT_BY_SUFFIX.get(target.suffix.lower())
    files = write_embedding(emb, target, fmt)
    kept = fmt == "onetrainer" or not emb.output_vectors
    console.print(f"wrote {', '.join(str(f) for f in files)}: {escape(summary(emb))}", highlight=False, soft_wrap=True)
    if not kept:
        console.print("[yellow]warning:[/] the output vectors (_out) have no place in this format and were left out", soft_wrap=True)


DatasetOption = typer.Option(None, "--dataset", "-d", help="image folder (overrides data.path)")
SetOption = typer.Option([], "--set", help="override a setting: section.key=value (repeatable)")


@app.command()
def plan(
    config: Path = typer.Argument(..., help="training config (YAML)"),
    dataset: Optional[Path] = DatasetOption,
    set_: list[str] = SetOption,
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
):
    """What a training config will really do with a dataset: effective BS and GA, steps, epochs, views, LR, FLOPs."""
    from .config import load_train_config
    from .models.loading import read_architecture
    from .train.loop import load_dataset
    from .train.plan import make_plan

    cfg = load_train_config(config, dataset=dataset, overrides=set_)
    result = make_plan(cfg, load_dataset(cfg), read_architecture(cfg.model))
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        from .train.plan_table import print_plan

        print_plan(result, console)


@app.command()
def train(
    config: Path = typer.Argument(..., help="training config (YAML)"),
    dataset: Optional[Path] = DatasetOption,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="run folder (overrides output.dir)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the newest saved state in the run folder"),
    set_: list[str] = SetOption,
):
    """Train a TI embedding: checkpoints, previews, a log and resumable states in the run folder."""
    from .config import load_train_config
    from .models.loading import read_architecture
    from .train.loop import load_dataset
    from .train.loop import train as run_training
    from .train.plan import make_plan
    from .train.plan_table import print_plan

    cfg = load_train_config(config, dataset=dataset, output=output, overrides=set_)
    data = load_dataset(cfg)
    result = run_training(cfg, make_plan(cfg, data, read_architecture(cfg.model)), dataset=data, resume=resume, show_progress=True)
    print_plan(result.plan, console, brief=True)
    console.print(f"[bold green]done[/]: {result.steps_done} steps; final embedding: " + ", ".join(str(f) for f in result.files))


@app.command("eval")
def evaluate(
    embeddings: list[Path] = typer.Argument(..., help="embedding files (any format); several are scored on one loaded model"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="the model (overrides model.source)"),
    references: Optional[Path] = typer.Option(None, "--references", "-r", help="photos of the person (the training images)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="evaluation config (YAML: model, references, evaluation)"),
    suite: Optional[str] = typer.Option(None, help="prompt suite: experiments/prompts/<name>.yaml or a path"),
    face_pack: Optional[str] = typer.Option(None, help="insightface pack name or folder"),
    scorers: Optional[str] = typer.Option(None, help="comma-separated: identity, clip, diversity, personality, norms"),
    out: Path = typer.Option(Path("eval"), "--out", "-o", help="output folder; one subfolder per embedding"),
    set_: list[str] = SetOption,
):
    """Score embeddings on generated samples: identity, CLIP-T/CLIP-I, diversity, personality, norms."""
    from .config import EvalConfig, apply_overrides, parse, read_yaml
    from .embeddings.formats import read_embedding_file
    from .evaluate.evaluator import build_evaluator, load_references
    from .models import load_model

    data = read_yaml(config) if config else {}
    given = {"model.source": model, "references": references, "evaluation.suite": suite, "evaluation.identity.pack": face_pack}
    data = apply_overrides(data, [f"{key}={json.dumps(str(value))}" for key, value in given.items() if value is not None])
    if scorers:
        data = apply_overrides(data, [f"evaluation.scorers={json.dumps([x.strip() for x in scorers.split(',') if x.strip()])}"])
    cfg = parse(EvalConfig, apply_overrides(data, set_), str(config or "evaluation"))
    if cfg.references is None:
        raise TitkError("references: give the person's photos with --references DIR (usually the training images)")
    found = [read_embedding_file(p) for p in embeddings]  # every file checked before the model loads
    refs = load_references(cfg.references, cfg.evaluation.max_references)
    bundle = load_model(cfg.model)
    evaluator = build_evaluator(bundle, cfg.evaluation, refs)
    rows = []
    from rich.progress import Progress

    with Progress(console=console, transient=True) as progress:
        for item in found:
            task = progress.add_task(f"scoring {item.path.name}", total=len(evaluator.suite.items))
            card = evaluator.evaluate(item.embedding, name=item.token, on_progress=lambda done, total: progress.update(task, completed=done))
            card.save(out / item.path.stem)
            rows.append({"embedding": item.path.name, **card.summary})
    import pandas as pd

    from .evaluate.registry import HEADLINES

    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "summary.csv", index=False)
    shown = ("embedding", *HEADLINES)
    _print_frame(table, "scores", {c: c for c in shown if c in table})
    console.print(f"per-image tables, scorecards and grids in {out}/<embedding>/; summary in {out / 'summary.csv'}", highlight=False, soft_wrap=True)


dataset_app = typer.Typer(help="Look at a dataset before training.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")


@dataset_app.command("check")
def dataset_check(
    folder: Path = typer.Argument(..., help="a folder of photos of the person"),
    face_pack: Optional[str] = typer.Option(None, help="insightface pack name or folder (default: buffalo_l)"),
    no_faces: bool = typer.Option(False, "--no-faces", help="skip face detection (no face pack needed)"),
    size: Optional[int] = typer.Option(None, help="training size, for the bucket each image falls in (default: 512)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="where the table and contact sheet go (default: ./dataset-check-<folder>)"),
):
    """Per image: faces and face size, sharpness, near-duplicates, identity outliers, size and bucket,
    caption; a table and a contact sheet."""
    from .config import DatasetCheckSettings, merge, parse
    from .evaluate.dataset_check import check_dataset
    from .evaluate.scorers.identity import InsightFaceEmbedder

    given = {"size": size, "identity": {"pack": face_pack} if face_pack else {}}
    settings = parse(DatasetCheckSettings, merge({}, {k: v for k, v in given.items() if v is not None}), "titk dataset check")
    embedder = None if no_faces else InsightFaceEmbedder(settings.identity)
    report = check_dataset(folder, settings, face_embedder=embedder)
    out = out or Path(f"dataset-check-{folder.resolve().name}")
    paths = report.save(out)
    headers = {"file": "file", "size": "size", "bucket": "bucket", "faces": "faces", "face_share": "face",
               "sharpness": "sharp", "identity_loo": "id LOO", "flags": "flags"}
    view = report.table.assign(size=report.table["width"].astype(str) + "×" + report.table["height"].astype(str))
    _print_frame(view, f"{folder} — {report.summary['images']} images, {report.summary['flagged']} flagged", headers)
    for skipped in report.summary["skipped"]:
        console.print(f"[yellow]skipped:[/] {escape(skipped)}", soft_wrap=True)
    console.print(f"table: {paths['table']}; contact sheet: {paths['sheet']}", highlight=False, soft_wrap=True)


WorkdirOption = typer.Option(Path("work"), "--workdir", "-w", help="the study's work directory (storages, artifacts, cache, trials)")
StorageOption = typer.Option(None, "--storage", help="Optuna storage URL (e.g. postgresql://user@host/optuna); default: a journal file in the work dir")
TrackingOption = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (e.g. http://host:5000); default: SQLite in the work dir")


def _trial_line(study, trial) -> None:
    value = "" if trial.values is None else "  value " + ", ".join(f"{v:.4f}" for v in trial.values)
    if trial.state.name == "PRUNED" and trial.intermediate_values:  # not comparable with finished trials' values
        step = max(trial.intermediate_values)
        value = f"  at step {step}: {trial.intermediate_values[step]:.4f} on the intermediate suite"
    reason = trial.user_attrs.get("fail_reason") or ""
    colour = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red"}.get(trial.state.name, "white")
    console.print(f"[{colour}]trial {trial.number} {trial.state.name.lower()}[/]{value}  {escape(reason)}", highlight=False, soft_wrap=True)


def _run_sweep(config: Path, workdir: Path, storage, tracking_uri, n_trials, create: bool, create_only: bool, set_: list[str]):
    from .config import load_sweep_config
    from .sweep.runner import run_sweep
    from .sweep.trials import best_trials

    cfg = load_sweep_config(config, set_)
    try:
        result = run_sweep(cfg, workdir=workdir, config_dir=config.parent, storage_url=storage, tracking=tracking_uri,
                           create=create, create_only=create_only, n_trials=n_trials, on_trial=_trial_line)
    except KeyboardInterrupt:
        err_console.print("interrupted: finished trials are kept; run the same command again to resume the study")
        sys.exit(130)
    if create_only:
        console.print(f"study {cfg.study!r} ready in {result.storage}; start workers with `titk worker`", highlight=False)
        return
    table = result.table
    counts = ", ".join(f"{n} {state.lower()}" for state, n in table["state"].value_counts().items()) if not table.empty else "no trials"
    best = best_trials(result.study, table)
    if "mlflow_run_id" in best:  # eight characters find a run in the MLflow UI's search, as with git hashes
        best = best.assign(run=best["mlflow_run_id"].fillna("").str[:8])
    params = [c for c in best.columns if c.startswith("param.")]
    short = [c.rsplit(".", 1)[-1] for c in params]
    headers = {c: c for c in ("trial", "value", "value0", "value1", "feasible") if c in best}
    headers.update({c: s if short.count(s) == 1 else c.removeprefix("param.") for c, s in zip(params, short)})
    headers.update({"run": "MLflow run"} if "run" in best else {})
    _print_frame(best, f"study {cfg.study}: {counts}", headers)
    console.print(f"MLflow UI and Optuna dashboard: titk serve {workdir}    report: titk report {workdir} -o report.html", highlight=False, soft_wrap=True)


@app.command()
def sweep(
    config: Path = typer.Argument(..., help="sweep config (YAML): base training config, space, subset, objective, evaluation"),
    workdir: Path = WorkdirOption,
    storage: Optional[str] = StorageOption,
    tracking_uri: Optional[str] = TrackingOption,
    n_trials: Optional[int] = typer.Option(None, help="finished trials wanted (default: the config's n_trials)"),
    create_only: bool = typer.Option(False, "--create-only", help="create the study (and its MLflow experiment) and stop"),
    set_: list[str] = SetOption,
):
    """Search training settings and dataset subsets with Optuna, scoring every trial and recording it in MLflow.
    On an existing study it continues where it stopped."""
    _run_sweep(config, workdir, storage, tracking_uri, n_trials, True, create_only, set_)


@app.command()
def worker(
    config: Path = typer.Argument(..., help="the study's sweep config"),
    workdir: Path = WorkdirOption,
    storage: Optional[str] = StorageOption,
    tracking_uri: Optional[str] = TrackingOption,
    set_: list[str] = SetOption,
):
    """Join an existing study and run its trials one after another on this machine's GPU (one worker per GPU)."""
    _run_sweep(config, workdir, storage, tracking_uri, None, False, False, set_)


@app.command()
def serve(
    workdir: Path = typer.Argument(..., help="a sweep's work directory"),
    port: int = typer.Option(5000, help="MLflow UI port"),
    dashboard_port: int = typer.Option(8080, help="optuna-dashboard port"),
    check: bool = typer.Option(False, "--check", help="start both, check they answer, then stop"),
):
    """Start the MLflow UI and optuna-dashboard for a work directory, on 127.0.0.1."""
    from .sweep.serve import serve as run_servers

    run_servers(workdir, port, dashboard_port, check=check, console=console)


@app.command()
def report(
    workdir: Optional[Path] = typer.Argument(None, help="a sweep's work directory"),
    output: Path = typer.Option(Path("report.html"), "--output", "-o", help="the HTML file to write"),
    study: Optional[str] = typer.Option(None, help="study name (with --storage and --tracking-uri instead of a work dir)"),
    storage: Optional[str] = StorageOption,
    tracking_uri: Optional[str] = TrackingOption,
):
    """One self-contained HTML page about a study: progress, best trials and their samples, which settings
    matter, identity against editability, learning curves, which images help, personality, seed variance."""
    from .analysis import load_study
    from .analysis.html import write_report

    data = load_study(workdir, study=study, storage=storage, tracking_uri=tracking_uri)
    path = write_report(data, output)
    console.print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB, opens offline)", highlight=False)


toyworld_app = typer.Typer(help="The toy world: a synthetic world where TI learning can be checked on a CPU.", no_args_is_help=True)
app.add_typer(toyworld_app, name="toyworld")


@toyworld_app.command("dataset")
def toyworld_dataset(
    out: Path = typer.Argument(..., help="folder to write the images (and captions) to"),
    identity: str = typer.Option("0", help="a held-out identity: its index or name"),
    n: int = typer.Option(15, help="number of images"),
    tank_tops: Optional[float] = typer.Option(None, help="share of images in a tank top (default: clothing uniform)"),
    seed: int = typer.Option(0),
    captions: bool = typer.Option(True, help="write <stem>.txt captions describing each look"),
):
    """Write a TI dataset of a toy-world identity that the toy model never saw."""
    from .toyworld.world import clothing_bias, heldout, write_dataset

    person = heldout(identity)
    write_dataset(out, person, n, seed=seed, weights=clothing_bias("tank top", tank_tops) if tank_tops is not None else None, captions=captions)
    console.print(f"wrote {n} images of {person.name} ({person.describe()}) to {out}", highlight=False, soft_wrap=True)


@toyworld_app.command("pretrain")
def toyworld_pretrain(
    out: Path = typer.Option(Path("titk/toyworld/weights"), "--out", "-o", help="where the model folder, vision model and record go"),
    unet_steps: Optional[int] = typer.Option(None, min=1, help="length of the UNet and text-encoder learning-rate schedule"),
    stop_at: Optional[int] = typer.Option(None, min=1, help="end the UNet at this step of that schedule (the shipped model ends before the schedule does)"),
    vae_steps: Optional[int] = typer.Option(None, min=1),
    vision_steps: Optional[int] = typer.Option(None, min=1),
    seed: Optional[int] = typer.Option(None),
    continue_from: Optional[Path] = typer.Option(None, help="a saved toy model folder whose UNet and text encoder to train further"),
):
    """Train the toy world's model from scratch (about 2 hours on 2 CPU cores). Unset options take the
    defaults of titk.config.PretrainSettings, which reproduce the shipped model."""
    from .config import PretrainSettings
    from .toyworld.pretrain import pretrain

    given = dict(seed=seed, unet_steps=unet_steps, stop_at=stop_at, vae_steps=vae_steps, vision_steps=vision_steps,
                 continue_from=str(continue_from) if continue_from else None)
    settings = PretrainSettings(**{k: v for k, v in given.items() if v is not None})
    record = pretrain(out, settings, log=lambda line: console.print(line, highlight=False))
    console.print(f"done in {record['total_seconds'] / 60:.1f} min: {out}", highlight=False)


@app.command()
def demo(
    workdir: Path = typer.Option(Path("work/demo"), "--workdir", "-w", help="where the demo study goes"),
    config: Optional[Path] = typer.Option(None, help="the demo sweep config (default: titk/toyworld/demo.yaml, shipped with titk)"),
    set_: list[str] = SetOption,
):
    """A small sweep in the toy world: a TI of a person the toy model never saw, searched over learning rate,
    vectors and length, scored by the world's own face and attribute models. Run it again to continue."""
    from .toyworld.world import DEMO_CONFIG, clothing_bias, heldout, write_dataset

    config = config or DEMO_CONFIG
    data = workdir / "data"
    if not data.is_dir():
        person = heldout(0)
        write_dataset(data, person, 15, weights=clothing_bias("tank top", 0.6))
        console.print(f"dataset: 15 images of {person.name} ({person.describe()}), 60 % in tank tops → {data}", highlight=False, soft_wrap=True)
    _run_sweep(config, workdir, None, None, None, True, False, [f"base.data.path={data.resolve()}", *set_])
    console.print(f"notebooks: TITK_WORKDIR={workdir} jupyter lab experiments/notebooks/", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    try:
        result = app(args=argv, prog_name="titk", standalone_mode=False)
    except TitkError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        sys.exit(130)
    except (click.exceptions.ClickException, typer.TyperException) as exc:  # newer typer raises its own copy of click's
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        err_console.print(f"[bold red]error:[/] {escape(message)}{hint}", highlight=False, soft_wrap=True)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
