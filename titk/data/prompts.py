"""Captions, template files and the training prompt of each image, as A1111 and kohya build them.

A1111 (`PersonalizedBase.create_text`): pick a template line at random; split the caption on ","; drop each
tag with probability p (kept when random() > p); shuffle the tags; re-join with "," (pieces not stripped);
put the result in place of `[filewords]`, then the embedding name in place of `[name]`. With neither
shuffle nor dropout, each image's prompt is built once and kept for the whole run.

kohya: the caption's first line, stripped; shuffled tags are stripped and re-joined with ", ". The caption
must already contain the token, or the image gives no gradient.
"""

from __future__ import annotations

import importlib.resources
import random
import re
from pathlib import Path

from ..errors import TitkError

NAME, FILEWORDS = "[name]", "[filewords]"
_FILENAME_PREFIX = re.compile(r"^[-\d]+\s*")


def shipped_templates() -> list[str]:
    folder = importlib.resources.files("titk.data").joinpath("templates")
    return sorted(p.name.removesuffix(".txt") for p in folder.iterdir() if p.name.endswith(".txt"))


def read_template(template: str) -> list[str]:
    """Template lines from a shipped template name (e.g. `subject_filewords`) or a file path."""
    shipped = importlib.resources.files("titk.data").joinpath("templates").joinpath(f"{template}.txt")
    if shipped.is_file():
        text = shipped.read_text(encoding="utf-8")
    else:
        path = Path(template)
        if not path.is_file():
            raise TitkError(
                f"data.template: {template!r} is neither a shipped template ({', '.join(shipped_templates())}) nor a file"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise TitkError(f"{path}: template file is not UTF-8 text") from None
    # A1111 strips each line and keeps blank lines as valid (empty) choices, except a final newline.
    lines = [line.strip() for line in text.splitlines()]
    if not lines:
        raise TitkError(f"data.template: {template!r} has no lines")
    return lines


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
