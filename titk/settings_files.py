"""Reading settings: YAML files, `--set section.key=value` overrides deep-merged into them, and pydantic
validation with one-line errors. The models and their defaults are in titk/config.py.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import TitkError

M = TypeVar("M", bound=BaseModel)


def validation_message(exc: ValidationError, where: str) -> str:
    """The first problem of a pydantic error as one line: `file: key.path: what is wrong`."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")  # a validator's own sentence, without pydantic's label
    if err["type"] == "extra_forbidden":
        msg = "unknown setting"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{where}: {loc}: {msg}{more}"


def parse(model: type[M], data: dict, where: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise TitkError(validation_message(exc, where)) from None


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TitkError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TitkError(f"{path}: unreadable ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise TitkError(f"{path}: not valid YAML{at}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TitkError(f"{path}: expected a mapping of settings at the top level")
    return data


def load_config(model: type[M], path: str | Path) -> M:
    return parse(model, read_yaml(path), str(path))


def merge(base: dict, override: dict) -> dict:
    """A copy of `base` with `override` merged in: mappings key by key, any other value replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(item: str, data: dict | None = None) -> dict:
    """`a.b.c=value` (the value read as YAML) as the nested mapping {a: {b: {c: value}}}. Keys that hold dots
    themselves (a sweep's `space: {train.epochs: ...}`) are matched against `data`: `space.train.epochs.low=2`."""
    key, sep, raw = item.partition("=")
    parts = [p.strip() for p in key.split(".")]
    if not sep or not all(parts):
        raise TitkError(f"--set {item!r}: expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise TitkError(f"--set {item!r}: the value is not valid YAML") from None
    for part in reversed(_dotted_keys(parts, data)):
        value = {part: value}
    return value


def _dotted_keys(parts: list[str], node) -> list[str]:
    keys, i = [], 0
    while i < len(parts):
        j = next((j for j in range(len(parts), i + 1, -1) if isinstance(node, dict) and ".".join(parts[i:j]) in node), i + 1)
        keys.append(".".join(parts[i:j]))
        node = node.get(keys[-1]) if isinstance(node, dict) else None
        i = j
    return keys


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`section.key=value` pairs merged into a config mapping, in order."""
    for item in overrides:
        override = parse_override(item, data)
        _check_sections(data, override, item)
        data = merge(data, override)
    return data


def _check_sections(data, override: dict, item: str, path: str = "") -> None:
    """`--set a.b=1` where `a` holds a value rather than settings is a mistake, not a replacement."""
    for key, value in override.items():
        if isinstance(value, dict) and key in data and not isinstance(data[key], dict) and data[key] is not None:
            raise TitkError(f"--set {item!r}: {path}{key} is a value ({data[key]!r}), not a section of settings")
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            _check_sections(data[key], value, item, f"{path}{key}.")
