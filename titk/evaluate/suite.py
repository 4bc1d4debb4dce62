"""Prompt suites: YAML files of prompts (each with a kind), seeds and sampling settings.

A suite (or a label-set file) is named by a path, or by a name looked up as `experiments/prompts/<name>.yaml`
in the current folder (the user's own) and then among the suites titk ships in `titk/prompts/`.
"""

from __future__ import annotations

import importlib.resources
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import PromptSuite, parse, read_yaml
from ..errors import TitkError
from ..hashing import sha256_bytes


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


def shipped_prompts() -> Path:
    """The suites and label sets shipped with titk (package data, so a non-editable install has them)."""
    return Path(str(importlib.resources.files("titk.prompts")))


def find_prompt_file(name: str) -> Path:
    """`name` as a path, or `<name>.yaml` in ./experiments/prompts/, then among titk's shipped prompt files."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise TitkError(f"{path}: no such file")
        return path
    for folder in (Path.cwd() / "experiments" / "prompts", shipped_prompts()):
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    shipped = sorted(p.stem for p in shipped_prompts().glob("*.yaml"))
    raise TitkError(f"{name!r}: not a file, nor experiments/prompts/{name}.yaml here, nor one of titk's ({', '.join(shipped)})")


def load_suite(name: str) -> Suite:
    path = find_prompt_file(name)
    spec = parse(PromptSuite, read_yaml(path), str(path))
    canonical = json.dumps(spec.model_dump(mode="json", exclude={"batch_size"}), sort_keys=True).encode()  # images do not depend on it
    items = [
        (i, p.text, p.kind, seed)
        for i, p in enumerate(spec.prompts)
        for seed in (p.seeds or spec.seeds)
    ]
    return Suite(path.stem, spec, sha256_bytes(canonical), items)
