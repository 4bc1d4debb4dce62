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

    @property
    def prompt_indices(self) -> list[int]:
        """The indices (into spec.prompts) of the prompts this suite's items use, in order."""
        return sorted({item[0] for item in self.items})

    def only(self, prompt_index: int) -> Suite:
        """The same suite restricted to one prompt's (prompt, seed) items."""
        return Suite(self.name, self.spec, self.sha256, [item for item in self.items if item[0] == prompt_index])

    def of_kind(self, kind: str) -> Suite | None:
        """The same suite restricted to one kind's prompts, or None when it has none."""
        items = [item for item in self.items if item[2] == kind]
        return Suite(f"{self.name} ({kind} prompts)", self.spec, self.sha256, items) if items else None

    def subset(self, seeds: int, per_kind: int | None = None) -> Suite:
        """The items of the first `seeds` seeds of each prompt (of only the first `per_kind` prompts of each
        kind when given), with the same sampling settings and prompt indices: each image is the one the
        whole suite would generate, so a score on the part is on the whole suite's scale."""
        counts: dict[str, int] = {}
        chosen: set[int] = set()
        for index, prompt in enumerate(self.spec.prompts):
            if per_kind is None or counts.get(prompt.kind, 0) < per_kind:
                counts[prompt.kind] = counts.get(prompt.kind, 0) + 1
                chosen.add(index)
        taken: dict[int, int] = {}
        items = []
        for item in self.items:  # in suite order: each prompt's seeds as listed
            if item[0] in chosen and taken.get(item[0], 0) < seeds:
                taken[item[0]] = taken.get(item[0], 0) + 1
                items.append(item)
        part = f"first {seeds} seed{'s' if seeds > 1 else ''}" + (f", first {per_kind} prompt{'s' if per_kind > 1 else ''} per kind" if per_kind else "")
        return Suite(f"{self.name} ({part})", self.spec, self.sha256, items)


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
