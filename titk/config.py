"""Typed configuration and YAML loading. Every default of titk lives in this file, once."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import TitkError

Precision = Literal["auto", "fp32", "bf16", "fp16"]


class Strict(BaseModel):
    """Unknown keys are errors: a misspelt setting must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Strict):
    source: str = Field(description="diffusers folder, .safetensors/.ckpt checkpoint, or hub id")
    config_dir: Path | None = Field(None, description="diffusers config folder for a non-standard single file")
    prediction_type: Literal["epsilon", "v_prediction"] | None = Field(
        None, description="override the model's eps/v parameterisation"
    )
    dtype: Precision = Field("auto", description="precision of the frozen model")
    device: str = "auto"
    clip_skip: int = Field(1, ge=1, le=12, description="A1111's 'CLIP skip': 1 = last layer")


M = TypeVar("M", bound=BaseModel)


def validation_message(exc: ValidationError, where: str) -> str:
    """The first problem of a pydantic error as one line: `file: key.path: what is wrong`."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"]
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
