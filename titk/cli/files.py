"""Commands about files: doctor, inspect, convert."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ..errors import TitkError
from ..paths import TOY_SOURCES
from .app import EmbeddingFormat, Precision, _print_sections, app, console, err_console


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="print the report as JSON")):
    """Versions, devices and what they support, where models and face packs are looked for, the hub.

    \b
    Example:
      titk doctor
      titk doctor --json > doctor.json
    """
    from ..doctor import report

    data = report()
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        _print_sections(data)


def _is_model_source(path: str) -> bool:
    """A model (folder, checkpoint, hub id) rather than an embedding file."""
    p = Path(path)
    if p.is_dir() or path in TOY_SOURCES:
        return True
    if not p.exists():
        return "/" in path and p.suffix == ""  # a hub id
    suffix = p.suffix.lower()
    if suffix == ".ckpt":
        return True
    if suffix == ".safetensors":
        from ..models.single_file import read_checkpoint_index

        from ..embeddings.formats import EMBEDDING_KEYS

        try:
            keys, _ = read_checkpoint_index(p)
        except TitkError:
            return False  # let the embedding reader report what is wrong with the file
        model_prefixes = ("model.", "first_stage_model.", "cond_stage_model.", "conditioner.", "lora_")
        return any(k.startswith(model_prefixes) for k in keys) or (len(keys) > 1 and not keys <= EMBEDDING_KEYS)
    if suffix not in (".pt", ".bin", ".pth") or p.stat().st_size <= 100 * 2**20:
        return False
    # Size alone misleads: an embedding saved with a large nested dict is as big as a model. Mapped, not
    # read, so a real 4 GB checkpoint costs nothing here.
    import torch

    from ..embeddings.formats import EMBEDDING_KEYS

    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return True  # let the model loader report what is wrong with the file
    return not (isinstance(state, dict) and set(state) & (EMBEDDING_KEYS | {"string_to_param"}))


@app.command()
def inspect(
    path: str = typer.Argument(..., help="an embedding file, or a model (diffusers folder, checkpoint or hub id)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="a model to check the embedding against"),
    model_config: Optional[Path] = typer.Option(None, help="diffusers config folder for a non-standard single file"),
    dtype: Precision = typer.Option(Precision.fp32, help="precision to load a model in"),
    device: str = typer.Option("cpu", help="device to load a model on"),
):
    """Describe an embedding (format, family, vectors, norms, size, metadata; with --model the nearest
    tokens and whether it fits) or a model (family, prediction type, encoders, short hash).

    \b
    Example:
      titk inspect runs/ohwx/ohwx.pt
      titk inspect runs/ohwx/ohwx.pt --model sd15.safetensors
      titk inspect sd15.safetensors
    """
    from ..models import load_model

    dtype = dtype.value
    if _is_model_source(path):
        bundle = load_model(path, config_dir=model_config, dtype=dtype, device=device)
        _print_sections({"model": bundle.describe()})
        return
    from ..embeddings.formats import read_embedding_file
    from ..embeddings.describe import describe

    found = read_embedding_file(path)
    bundle = load_model(model, config_dir=model_config, dtype=dtype, device=device) if model else None
    sections = describe(found, bundle)
    _print_sections(sections)
    fits = sections["embedding"].get("fits model", "yes")
    if not fits.startswith("yes"):  # described all the same, but a script checking the fit must hear it
        err_console.print(f"[yellow]warning:[/] {escape(str(found.path))} does not fit {escape(str(model))}: {escape(fits.removeprefix('no: '))}", highlight=False, soft_wrap=True)
    health = sections["embedding"].get("norm health", "")
    if health.startswith(("high", "runaway")):  # one line a script (or a tired eye) cannot miss
        err_console.print(f"[yellow]warning:[/] {escape(str(found.path))}: norms {escape(health)}", highlight=False, soft_wrap=True)


@app.command()
def convert(
    source: Path = typer.Argument(..., help="an embedding file in any format titk reads"),
    target: Path = typer.Argument(..., help="the file to write"),
    to: Optional[EmbeddingFormat] = typer.Option(None, "--to", help="the format to write (default: from the target's suffix)"),
    name: Optional[str] = typer.Option(None, help="the stored name (default: the source's stored name)"),
):
    """Convert an embedding between the formats people exchange. The name, step and base model stored in
    the source are kept; --name gives another name.

    \b
    Example:
      titk convert ohwx.pt ohwx.safetensors
      titk convert ohwx.safetensors kohya/ohwx.safetensors --to kohya
      titk convert ohwx.pt card.png --name ohwx-v2
    """
    from ..embeddings.embedding import check_name
    from ..embeddings.formats import FORMAT_BY_SUFFIX, read_embedding_file, write_embedding
    from ..embeddings.describe import summary

    found = read_embedding_file(source)
    emb = found.embedding
    if name is not None:
        emb.name = check_name(name, "--name")
    fmt = to.value if to else FORMAT_BY_SUFFIX.get(target.suffix.lower())
    if fmt is None:
        raise TitkError(f"{target}: no format follows from the suffix {target.suffix or '(none)'!r}; give --to ({', '.join(f.value for f in EmbeddingFormat)})")
    files = write_embedding(emb, target, fmt)
    kept = fmt == "onetrainer" or not emb.output_vectors
    console.print(f"wrote {', '.join(str(f) for f in files)}: {escape(summary(emb))}", highlight=False, soft_wrap=True)
    if not kept:
        console.print("[yellow]warning:[/] the output vectors (_out) have no place in this format and were left out", soft_wrap=True)


