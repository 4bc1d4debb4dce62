"""Commands about one embedding: plan, train, eval, dataset check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ..errors import TitkError
from ..paths import TOY_SOURCES
from .app import DatasetOption, FamilyName, SetOption, _print_frame, _progress, app, console, scorer_list


@app.command()
def plan(
    config: Path = typer.Argument(..., help="training config (YAML)"),
    dataset: Optional[Path] = DatasetOption,
    set_: list[str] = SetOption,
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
    family: FamilyName = typer.Option(FamilyName.sd1, help="the family to plan for while model.source is not on disk yet"),
):
    """What a training config will really do with a dataset: effective BS and GA, steps, epochs, views, LR, FLOPs,
    GPU memory.
    A recipe whose model.source is still a placeholder is planned with the family's standard architecture.

    \b
    Example:
      titk plan experiments/recipes/a1111-15img-bs3-ga15-200steps.yaml -d photos/
      titk plan my.yaml -d photos/ --set train.batch_size=2 --json
    """
    from ..config import load_train_config
    from ..models.families import Family
    from ..models.loading import HUB_ID, read_architecture, shipped_architecture
    from ..train.trainee import load_dataset
    from ..train.plan import estimate_memory, make_plan

    cfg = load_train_config(config, dataset=dataset, overrides=set_)
    data = load_dataset(cfg)
    source = Path(cfg.model.source).expanduser()
    placeholder = source.suffix.lower() in (".safetensors", ".ckpt") or not HUB_ID.match(cfg.model.source)  # a file or folder
    if cfg.model.source not in TOY_SOURCES and not source.exists() and placeholder:
        # Comparing recipes needs no checkpoint in hand: the plan depends on the family alone.
        arch = shipped_architecture(Family(family.value))
        result = make_plan(cfg, data, arch)
        result.notes.insert(0, f"model.source {cfg.model.source} is not on disk: planned with the {family.value} family's standard architecture (titk's shipped config)")
    else:
        arch = read_architecture(cfg.model)
        result = make_plan(cfg, data, arch)
    if arch is not None:
        estimate_memory(result, cfg, arch)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        from ..train.plan_table import print_plan

        print_plan(result, console)


@app.command()
def train(
    config: Path = typer.Argument(..., help="training config (YAML)"),
    dataset: Optional[Path] = DatasetOption,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="run folder (overrides output.dir)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the newest saved state in the run folder"),
    set_: list[str] = SetOption,
):
    """Train a TI embedding: checkpoints, previews, a log and resumable states in the run folder.

    \b
    Example:
      titk train my.yaml -d photos/ -o runs/ohwx
      titk train my.yaml -d photos/ -o runs/ohwx --resume --set train.max_steps=400
    """
    from ..config import load_train_config
    from ..models.loading import read_architecture
    from ..train.trainee import load_dataset
    from ..train.loop import train as run_training
    from ..train.plan import make_plan
    from ..train.plan_table import print_plan

    cfg = load_train_config(config, dataset=dataset, output=output, overrides=set_)
    data = load_dataset(cfg)
    result = run_training(cfg, make_plan(cfg, data, read_architecture(cfg.model)), dataset=data, resume=resume, show_progress=True)
    print_plan(result.plan, console, brief=True)
    console.print(f"[bold green]done[/]: {result.steps_done} steps; final embedding: " + ", ".join(str(f) for f in result.files))
    if result.peak_memory is not None:
        console.print(f"peak GPU memory while training: {result.peak_memory / 2**30:.2f} GiB")


@app.command("eval")
def evaluate(
    embeddings: list[Path] = typer.Argument(..., help="embedding files (any format); several are scored on one loaded model"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="the model (overrides model.source)"),
    references: Optional[Path] = typer.Option(None, "--references", "-r", help="photos of the person, best ones not trained on (held out)"),
    train_images: Optional[Path] = typer.Option(
        None, "--train-images", help="the images the embedding was trained on: with held-out --references, the copy index (samples closer to a training image than a new photo is)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="evaluation config (YAML: model, references, evaluation)"),
    suite: Optional[str] = typer.Option(None, help="prompt suite: experiments/prompts/<name>.yaml or a path"),
    personality_suite: Optional[str] = typer.Option(
        None, help="neutral probes personality is measured on, apart from --suite (e.g. personality: 48 images)"),
    face_pack: Optional[str] = typer.Option(None, help="insightface pack name or folder"),
    scorers: Optional[str] = typer.Option(None, callback=scorer_list, help="comma-separated: identity, clip, diversity, personality, norms"),
    out: Path = typer.Option(Path("eval"), "--out", "-o", help="output folder; one subfolder per embedding"),
    embeddings_dir: Optional[Path] = typer.Option(
        None, "--embeddings", help="a folder of other embeddings the prompts may name, e.g. A1111's embeddings folder (model.embeddings_dir)"
    ),
    set_: list[str] = SetOption,
):
    """Score embeddings on generated samples: identity, CLIP-T/CLIP-I, diversity, personality, norms.

    \b
    Example:
      titk eval runs/ohwx/ohwx.pt runs/ohwx/embeddings/ohwx-*.pt -m sd15.safetensors -r photos/ -o eval/
      titk eval ohwx.pt -m sd15.safetensors -r photos/ --scorers identity,norms
      titk eval ohwx.pt -m sd15.safetensors -r heldout/ --train-images photos/
      titk eval ohwx.pt -m sd15.safetensors -r photos/ --personality-suite personality
    """
    from ..config import EvalConfig, apply_overrides, parse, read_yaml
    from ..embeddings.formats import read_embedding_file
    from ..evaluate.evaluator import build_evaluator, held_out_references, load_references
    from ..models import load_model

    data = read_yaml(config) if config else {}
    given = {"model.source": model, "references": references, "train_images": train_images, "evaluation.suite": suite,
             "evaluation.personality_suite": personality_suite, "evaluation.identity.pack": face_pack, "model.embeddings_dir": embeddings_dir}
    data = apply_overrides(data, [f"{key}={json.dumps(str(value))}" for key, value in given.items() if value is not None])
    if scorers:
        data = apply_overrides(data, [f"evaluation.scorers={json.dumps([x.strip() for x in scorers.split(',') if x.strip()])}"])
    cfg = parse(EvalConfig, apply_overrides(data, set_), str(config or "evaluation"))
    if cfg.references is None:
        raise TitkError("references: give the person's photos with --references DIR (best: photos not trained on, with --train-images DIR)")
    found = [read_embedding_file(p) for p in embeddings]  # every file checked before the model loads
    limit = cfg.evaluation.max_references
    refs = held_out_references(cfg.references, cfg.train_images, limit) if cfg.train_images else load_references(cfg.references, limit)
    bundle = load_model(cfg.model)
    evaluator = build_evaluator(bundle, cfg.evaluation, refs)
    rows = []
    with _progress() as progress:
        for item in found:
            task = progress.add_task(f"scoring {item.path.name}", total=len(evaluator.suite.items))
            card = evaluator.evaluate(item.embedding, name=item.token, on_progress=lambda done, total: progress.update(task, completed=done, total=total))
            card.save(out / item.path.stem)
            rows.append({"embedding": item.path.name, **card.summary})
    import pandas as pd

    from ..evaluate.registry import HEADLINES

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
    template: Optional[str] = typer.Option(
        None, help="the training template (a file, a name in --template-dir, or titk's own); missing captions are "
        "flagged only when it uses [filewords] (default: titk train's, titk-subject-filewords)"),
    template_dir: Optional[Path] = typer.Option(None, help="a folder of templates, e.g. A1111's textual_inversion_templates"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="where the table and contact sheet go (default: ./dataset-check-<folder>)"),
):
    """Per image: faces and face size, sharpness, near-duplicates, who it shows (photos of anyone but the
    folder's main person are flagged as intruders), size and bucket, caption; a table and a contact sheet.

    \b
    Example:
      titk dataset check photos/ --face-pack buffalo_l
      titk dataset check photos/ --no-faces -o checks/photos
      titk dataset check photos/ --no-faces --template-dir ~/sd/textual_inversion_templates --template subject_filewords
    """
    import pandas as pd
    from ..config import DatasetCheckSettings, merge, parse
    from ..evaluate.dataset_check import DEFAULT_TEMPLATE, check_dataset, template_uses_captions
    from ..evaluate.scorers.identity import InsightFaceEmbedder

    template = template or DEFAULT_TEMPLATE
    try:
        template_uses_captions(template, template_dir)
    except TitkError as exc:  # its message names data.template(_dir), settings this command has as options
        message = str(exc).removeprefix("data.template: ").replace("data.template_dir", "--template-dir").replace("data.template", "--template")
        raise TitkError(message if message.startswith("--template-dir") else f"--template: {message}") from None
    given = {"size": size, "identity": {"pack": face_pack} if face_pack else {}}
    settings = parse(DatasetCheckSettings, merge({}, {k: v for k, v in given.items() if v is not None}), "titk dataset check")
    embedder = None if no_faces else InsightFaceEmbedder(settings.identity)
    with _progress() as progress:
        task = progress.add_task("scanning", total=None)

        def step(stage: str, done: int, total: int) -> None:
            progress.update(task, description=stage, completed=done, total=total)

        report = check_dataset(folder, settings, face_embedder=embedder, template=template, template_dir=template_dir, on_progress=step)
    out = out or Path(f"dataset-check-{folder.resolve().name}")
    paths = report.save(out)
    table = report.table
    face = table["face_px"].map(lambda v: "" if pd.isna(v) else f"{v:.0f} px") + table["face_share"].map(lambda v: "" if pd.isna(v) else f" {v:.0%}")
    view = table.assign(size=table["width"].astype(str) + "×" + table["height"].astype(str), face=face)
    headers = {"file": "file", "size": "size", "bucket": "bucket", "faces": "faces", "face": "face",
               "sharpness": "sharp", "identity_sim": "same person", "flags": "flags"}
    _print_frame(view, f"{folder} — {report.summary['images']} images, {report.summary['flagged']} flagged", headers)
    console.print(
        "size: width×height in px; bucket: the aspect bucket it trains in (w×h px at the training size); faces: faces found; face: the largest "
        "face's height in px and as a share of the image height (small under 10 %); sharp: variance of the Laplacian "
        "over the face (or the image) scaled to 256 px tall (blurry under 30); same person: cosine similarity "
        "(−1 to 1) of the largest face to the mean face of the folder's person (the largest group of alike faces), "
        "the face itself left out; faces outside that group are intruders",
        style="dim", highlight=False, soft_wrap=True,
    )
    summary = report.summary
    if summary["with_face"]:
        console.print(f"person: {summary['person']} of {summary['with_face']} faces; intruders: {summary['intruders']}", highlight=False)
    if summary["identity_note"]:
        console.print(f"[yellow]identity:[/] {escape(summary['identity_note'])}", soft_wrap=True)
    uses = "uses [filewords]: images without a caption file are flagged (their file name stands in)" if summary["template_uses_captions"] else "has no [filewords]: captions are not used"
    console.print(f"template {escape(template)} {escape(uses)}", highlight=False, soft_wrap=True)
    for skipped in summary["skipped"]:
        console.print(f"[yellow]skipped:[/] {escape(skipped)}", soft_wrap=True)
    console.print(f"table: {paths['table']}; contact sheet: {paths['sheet']}", highlight=False, soft_wrap=True)


