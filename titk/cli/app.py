"""The `titk` Typer app, its consoles, shared options and table printers."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    name="titk",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# No emoji codes: user text such as a schedule "0.005:100:200" must print as written, not as 💯.
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        console.print(f"titk {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print titk's version and exit")):
    """Textual Inversion toolkit: train, search and score TI embeddings of a person."""


def _print_sections(sections: dict[str, dict[str, str]]) -> None:
    for title, rows in sections.items():
        table = Table(title=escape(title), title_justify="left", show_header=False, box=None, pad_edge=False, min_width=60)
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column(overflow="fold")
        for key, value in rows.items():
            table.add_row(escape(str(key)), escape(str(value)))
        console.print(table)
        console.print()


def _progress():
    """A transient bar whose descriptions (file names, stages) print as plain text: no markup, no emoji codes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True)


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


# Options with a fixed set of values are enums, so a wrong value is one line that lists the choices.
class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class EmbeddingFormat(str, Enum):
    a1111 = "a1111"
    safetensors = "safetensors"
    kohya = "kohya"
    diffusers = "diffusers"
    onetrainer = "onetrainer"
    png = "png"


class FamilyName(str, Enum):
    sd1 = "sd1"
    sd2 = "sd2"
    sdxl = "sdxl"
    sd3 = "sd3"
    flux = "flux"


def scorer_list(value: str | None) -> str | None:
    """`--scorers a,b`: each name checked here, so a misspelt one is a usage error that lists the choices."""
    from ..config import SCORERS

    if value is None:
        return None
    for name in (x.strip() for x in value.split(",")):
        if name not in SCORERS:
            raise typer.BadParameter(f"{name!r} is not one of {', '.join(SCORERS)}")
    return value


DatasetOption = typer.Option(None, "--dataset", "-d", help="image folder (overrides data.path)")
SetOption = typer.Option([], "--set", help="override a setting: section.key=value (repeatable)")
WorkdirOption = typer.Option(Path("work"), "--workdir", "-w", help="the study's work directory (storages, artifacts, cache, trials)")
StorageOption = typer.Option(None, "--storage", help="Optuna storage URL (e.g. postgresql://user@host/optuna); default: a journal file in the work dir")
TrackingOption = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (e.g. http://host:5000); default: SQLite in the work dir")
