"""Helpers shared by tests."""

from pathlib import Path

import numpy as np
import yaml
from PIL import Image


def make_images(folder: Path, n: int, size=(64, 64), seed: int = 0, captions: str | None = None) -> Path:
    """`n` random RGB images 000.png … in `folder`; with `captions`, a caption file each ({i} is replaced)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
        if captions is not None:
            (folder / f"{i:03d}.txt").write_text(captions.replace("{i}", str(i)))
    return folder


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code != 0, "a user mistake must exit non-zero"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


def write_sweep_config(tmp_path, fixtures, **over) -> Path:
    """A sweep over the tiny SD1 fixture on 6 random images; `a__b=value` overrides nested keys."""
    data = make_images(tmp_path / "data", 6)
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({
        "steps": 2, "seeds": [1], "prompts": [{"text": "a photo of [name]", "kind": "identity"}, {"text": "[name] at home", "kind": "personality"}],
    }))
    config = {
        "study": "tiny",
        "base": {
            "model": {"source": str(fixtures["tiny-sd1"].folder), "dtype": "fp32"},
            "embedding": {"name": "ohwx", "vectors": 2, "init_text": "person"},
            "data": {"path": str(data)},
            "train": {"batch_size": 2, "max_steps": 6, "learning_rate": "0.05"},
            "output": {"save_every": 0},
        },
        "space": {"train.learning_rate": {"low": 0.00001, "high": 0.1, "log": True}, "embedding.vectors": {"choice": [1, 2, 3]}},
        "enqueue": [
            {"train.learning_rate": 0.05, "embedding.vectors": 2},
            {"train.learning_rate": 0.04, "embedding.vectors": 2},
            {"train.learning_rate": 0.00001, "embedding.vectors": 2},
        ],
        "n_trials": 4,
        "confirm": {"top": 0},  # confirmation is tested on its own (test_confirm.py)
        "objective": {"metrics": {"norms.mean": 1.0}, "floors": {}, "eval_every": 2},
        "evaluation": {"suite": str(suite), "scorers": ["norms"]},
    }
    for key, value in over.items():
        node = config
        *path, last = key.split("__")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def plain_ids(tokenizer, prompts: list[str], name: str, first_extra: int, n_vectors: int):
    """[B, 77] ids of plain prompts (no emphasis, one chunk) with the name's tokens replaced by the ids
    first_extra … first_extra + N − 1: how kohya's added tokens, or A1111's spliced vectors, sit in a prompt.
    Written apart from titk's tokenization so tests can hold it against its own."""
    import torch

    name_ids = tokenizer(name, add_special_tokens=False).input_ids
    rows = []
    for prompt in prompts:
        ids, out, i = tokenizer(prompt, add_special_tokens=False).input_ids, [], 0
        while i < len(ids):
            if ids[i : i + len(name_ids)] == name_ids:
                out += range(first_extra, first_extra + n_vectors)
                i += len(name_ids)
            else:
                out.append(ids[i])
                i += 1
        out = [tokenizer.bos_token_id] + out[:75] + [tokenizer.eos_token_id]
        rows.append(out + [tokenizer.pad_token_id] * (77 - len(out)))
    return torch.tensor(rows)


def save_tiny_pipeline(family: str, folder: Path, seed: int = 0) -> Path:
    """The tiny random-weight pipeline of `family` (titk.models.fixtures) saved as a diffusers folder."""
    from titk.models.fixtures import build_tiny_pipeline
    from titk.models.loading import quiet_libraries

    with quiet_libraries():
        build_tiny_pipeline(family, seed=seed).save_pretrained(folder, safe_serialization=True)
    return folder
