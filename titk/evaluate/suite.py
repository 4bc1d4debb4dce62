"""Prompt suites: YAML files of prompts (each with a kind), seeds, negative prompt and sampler settings.

A suite is named by a path, or by a name looked up as `experiments/prompts/<name>.yaml` in the current
folder and then in titk's source tree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from ..config import Strict, parse, read_yaml
from ..errors import TitkError
from ..hashing import sha256_bytes

KINDS = ("identity", "editability", "personality")
SOURCE_ROOT = Path(__file__).resolve().parents[2]


class SuitePrompt(Strict):
    text: str
    kind: Literal["identity", "editability", "personality"] = "identity"
    seeds: list[int] | None = None


class PromptSuite(Strict):
    sampler: str = "dpm++2m"
    steps: int = Field(25, ge=1)
    cfg: float = 7.0
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3, 4], min_length=1)
    prompts: list[SuitePrompt] = Field(min_length=1)


@dataclass
class Suite:
    name: str
    spec: PromptSuite
    sha256: str
    items: list[tuple[int, str, str, int]] = field(default_factory=list)  # (prompt index, template, kind, seed)

    @property
    def seeds(self) -> list[int]:
        return sorted({item[3] for item in self.items})

    def only(self, prompt_index: int) -> Suite:
        """The same suite restricted to one prompt's (prompt, seed) items."""
        return Suite(self.name, self.spec, self.sha256, [item for item in self.items if item[0] == prompt_index])


def find_in_experiments(name: str, folder: str) -> Path:
    """`name` as a path, or `experiments/<folder>/<name>.yaml` here or in titk's source tree."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise TitkError(f"{path}: no such file")
        return path
    for root in (Path.cwd(), SOURCE_ROOT):
        candidate = root / "experiments" / folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    raise TitkError(f"{name!r}: not a file, and no experiments/{folder}/{name}.yaml here or in titk's source tree")


def load_suite(name: str) -> Suite:
    path = find_in_experiments(name, "prompts")
    spec = parse(PromptSuite, read_yaml(path), str(path))
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()
    items = [
        (i, p.text, p.kind, seed)
        for i, p in enumerate(spec.prompts)
        for seed in (p.seeds or spec.seeds)
    ]
    return Suite(path.stem, spec, sha256_bytes(canonical), items)
