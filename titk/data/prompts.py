"""Captions, template files and the training prompt of each image, as A1111 and kohya build them.

A1111 (`PersonalizedBase.create_text`): pick a template line at random; split the caption on ","; drop each
tag with probability p (kept when random() > p); shuffle the tags; re-join with "," (pieces not stripped);
put the result in place of `[filewords]`, then the embedding name in place of `[name]`. With neither
shuffle nor dropout, each image's prompt is built once and kept for the whole run.

kohya: the caption's first line, stripped; shuffled tags are stripped and re-joined with ", ". The caption
must already contain the token, or the image gives no gradient.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import io
import random
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import TitkError

NAME, FILEWORDS = "[name]", "[filewords]"
_FILENAME_PREFIX = re.compile(r"^[-\d]+\s*")


# A1111 v1.10.1's textual_inversion_templates/. titk ships none of them and none of its own templates uses
# these names: a file called subject_filewords must mean A1111's, which users have on disk.
A1111_TEMPLATES = ("hypernetwork", "none", "style", "style_filewords", "subject", "subject_filewords")
SHIPPED_PREFIX = "titk-"


@dataclass(frozen=True)
class Template:
    """A template file's lines (each stripped, blank lines kept, as A1111 reads them) and where they came from."""

    source: str  # a shipped name, or the file's path
    lines: list[str]
    sha256: str  # of the file's bytes

    def describe(self) -> str:
        return f"{self.source} ({len(self.lines)} lines, sha256 {self.sha256[:10]})"


def shipped_templates() -> list[str]:
    folder = importlib.resources.files("titk.data").joinpath("templates")
    return sorted(p.name.removesuffix(".txt") for p in folder.iterdir() if p.name.endswith(".txt"))


def find_template(template: str, template_dir: str | Path | None = None) -> Template:
    """The template `template` names: a file path; else a name (with or without .txt) in `template_dir`, a
    folder of A1111 templates searched like A1111's list (subfolders too); else one of titk's shipped ones."""
    path = Path(template)
    if path.is_dir():
        names = ", ".join(sorted(p.stem for p in path.rglob("*.txt"))[:8]) or "no .txt files"
        raise TitkError(f"data.template: {template} is a folder; set data.template_dir to it and data.template to a name in it ({names})")
    if path.is_file():
        return _template_file(path, str(path))
    if template_dir is not None:
        found = _in_folder(Path(template_dir), template)
        if found is not None:
            return _template_file(found, str(found))
    shipped = importlib.resources.files("titk.data").joinpath("templates").joinpath(f"{template}.txt")
    if template.startswith(SHIPPED_PREFIX) and shipped.is_file():
        return _template_text(shipped.read_bytes(), template, template)
    raise TitkError(_not_found(template, template_dir))


def read_template(template: str, template_dir: str | Path | None = None) -> list[str]:
    return find_template(template, template_dir).lines


def _in_folder(folder: Path, name: str) -> Path | None:
    if not folder.is_dir():
        raise TitkError(f"data.template_dir: {folder} is not a folder (A1111 keeps its templates in textual_inversion_templates/)")
    wanted = name if name.endswith(".txt") else f"{name}.txt"
    direct = folder / wanted
    if direct.is_file():
        return direct
    deeper = sorted(p for p in folder.rglob(wanted) if p.is_file())  # A1111 lists templates in subfolders by file name
    return deeper[0] if deeper else None


def _not_found(template: str, template_dir) -> str:
    titk_names = ", ".join(shipped_templates())
    if template.removesuffix(".txt") in A1111_TEMPLATES and template_dir is None:
        return (
            f"data.template: {template!r} is one of A1111's templates, which titk does not ship: set data.template_dir to "
            f"your A1111 textual_inversion_templates folder or give the file's path (titk's own: {titk_names})"
        )
    where = f", in {template_dir}" if template_dir is not None else ""
    return f"data.template: {template!r} is neither a shipped template ({titk_names}){where} nor a file"


def _template_file(path: Path, source: str) -> Template:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TitkError(f"{path}: template unreadable ({exc.strerror})") from None
    return _template_text(raw, source, str(path))


def _template_text(raw: bytes, source: str, where: str) -> Template:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TitkError(f"{where}: template file is not UTF-8 text") from None
    # A1111 (`PersonalizedBase`) strips each of the file's lines (readlines); a blank line is a valid, empty choice.
    lines = [line.strip() for line in io.StringIO(text, newline=None).readlines()]
    if not lines:
        raise TitkError(f"data.template: {where} has no lines")
    return Template(source, lines, hashlib.sha256(raw).hexdigest())


def read_caption(image: Path, extension: str) -> str | None:
    """The raw caption file `<stem><extension>` next to the image, or None."""
    path = image.with_suffix(extension)
    if not path.is_file():
        return None
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TitkError(f"{path}: caption is not UTF-8 text (bad byte at offset {exc.start}); re-save it as UTF-8") from None


def filename_caption(image: Path, regex: str = "", join: str = " ") -> str:
    """A1111's fallback caption: the file stem without leading digits and dashes, or the regex matches joined."""
    text = _FILENAME_PREFIX.sub("", image.stem)
    if regex:
        text = join.join(re.findall(regex, text))
    return text


class PromptBuilder:
    """Builds each image's training prompt under one of the two semantics."""

    def __init__(self, semantics: str, lines: list[str], name: str, shuffle_tags: bool, tag_dropout: float):
        self.semantics = semantics
        self.lines = lines
        self.name = name
        self.shuffle_tags = shuffle_tags
        self.tag_dropout = tag_dropout

    @property
    def fixed_per_image(self) -> bool:
        """A1111 builds the prompt once per image unless shuffle or dropout asks for a new one each time."""
        return self.semantics == "a1111" and not self.shuffle_tags and self.tag_dropout == 0

    def caption_text(self, caption: str) -> str:
        return caption if self.semantics == "a1111" else (caption.splitlines() or [""])[0].strip()

    def build(self, caption: str, rng: random.Random) -> str:
        caption = self.caption_text(caption)
        line = rng.choice(self.lines)
        if self.semantics == "a1111":
            tags = caption.split(",")
            if self.tag_dropout:
                tags = [t for t in tags if rng.random() > self.tag_dropout]
            if self.shuffle_tags:
                rng.shuffle(tags)
            words = ",".join(tags)
        else:
            words = caption
            if self.shuffle_tags:
                tags = [t.strip() for t in caption.split(",")]
                rng.shuffle(tags)
                words = ", ".join(tags)
        return line.replace(FILEWORDS, words).replace(NAME, self.name)
