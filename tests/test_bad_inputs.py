"""A corpus of bad inputs, one row each, across every command.

Each row is a command line built on small shared inputs and what must happen: a refusal (non-zero exit,
one `error:` line naming the file or setting, no traceback) or, for inputs that deserve a warning, exit 0
and one warning line. Either way the output the command was given must not be half-written: a path that
did not exist still does not, and one that did is unchanged.
"""

from __future__ import annotations

import os
import struct
import subprocess
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml
from helpers import assert_one_line_error, make_images
from safetensors.torch import save_file


def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG that claims a huge size: PIL refuses it at open, before decoding anything."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


def _mount(folder: Path, options: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode == 0


class World:
    """The shared inputs, made once for the module; each case adds its own bad one in its tmp_path."""

    def __init__(self, root: Path, fixtures):
        from titk.embeddings.embedding import Embedding
        from titk.embeddings.formats import write_embedding

        self.root, self.model = root, fixtures["tiny-sd1"].folder
        self.data = make_images(root / "data", 3)
        self.recipe = self.write_recipe(root / "recipe.yaml")
        emb = Embedding("ohwx", {"clip_l": torch.randn(2, 32)}, step=7, base_model_hash="0123456789", base_model_name="tiny")
        self.pt = write_embedding(emb, root / "ohwx.pt")[0]
        self.sweep = self.write_sweep(root / "sweep.yaml")
        self.mounts: list[Path] = []

    def write_recipe(self, path: Path, **over) -> Path:
        cfg = {"model": {"source": str(self.model), "dtype": "fp32"}, "embedding": {"name": "ohwx", "vectors": 1},
               "train": {"max_steps": 2}, "output": {"save_every": 0, "preview": {"every": 0}}}
        return _dump(path, cfg, over)

    def write_sweep(self, path: Path, **over) -> Path:
        cfg = {"study": "bad-inputs", "base": {"model": {"source": str(self.model), "dtype": "fp32"}, "embedding": {"name": "ohwx"},
                                              "data": {"path": str(self.data)}, "train": {"max_steps": 2}},
               "space": {"train.learning_rate": {"low": 0.001, "high": 0.01}}, "n_trials": 1,
               "evaluation": {"scorers": ["norms"]}, "objective": {"metrics": {"norms.mean": 1.0}, "floors": {}}}
        return _dump(path, cfg, over)

    def mounted(self, name: str, options: str) -> Path:
        """A small tmpfs (read-only with `ro`), or a skip where this machine cannot mount one."""
        folder = self.root / name
        if folder not in self.mounts:
            if not _mount(folder, options):
                pytest.skip(f"cannot mount a tmpfs ({options}) here")
            self.mounts.append(folder)
        return folder

    def full_disk(self, t: Path) -> Path:
        disk = self.mounted("full", "size=1m")
        for p in disk.iterdir():
            p.unlink() if p.is_file() else None
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * max(0, free - 4096))
        return disk


def _dump(path: Path, cfg: dict, over: dict) -> Path:
    for key, value in over.items():
        node, (*parents, last) = cfg, key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, fixtures):
    w = World(tmp_path_factory.mktemp("bad-inputs"), fixtures)
    yield w
    for folder in w.mounts:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


# ------------------------------------------------------------------------------------------------ inputs


def save(path: Path, obj) -> Path:
    if path.suffix == ".safetensors":
        save_file(obj, str(path))
    else:
        torch.save(obj, path)
    return path


def data_with(t: Path, name: str, content: bytes, n: int = 2) -> Path:
    folder = make_images(t / "data", n)
    (folder / name).write_bytes(content)
    return folder


def truncated_png(t: Path) -> bytes:
    make_images(t / "whole", 1, size=(64, 64))
    return (t / "whole" / "000.png").read_bytes()[:200]


def a1111(tensor) -> dict:
    return {"string_to_param": {"*": tensor}, "name": "ohwx", "step": 3}


def unreadable(t: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root reads a file whatever its mode")
    folder = make_images(t / "data", 2)
    (folder / "000.png").chmod(0)
    return folder


def full_png_target(w: World, t: Path) -> Path:
    return w.full_disk(t) / "ohwx.png"


class Namespace:  # any class outside torch's allow-list; weights_only must refuse to build it
    pass


@dataclass
class Case:
    id: str
    args: Callable[[World, Path], list]
    needles: tuple[str, ...] = ()  # in the error (or warning) line
    output: Callable[[World, Path], Path] | None = None  # must not be half-written
    warn: str | None = None  # accepted with one line holding this marker ("warning:"), in stdout or stderr
    code: int | None = None
    marks: list = field(default_factory=list)


def bad(id, args, *needles, output=None, code=None, marks=()):
    return Case(id, args, needles, output, None, code, list(marks))


def warns(id, args, *needles, output=None, marker="warning:"):
    return Case(id, args, needles, output, marker, 0)


def accepted(id, args):  # looks odd, is valid: must not be refused
    return Case(id, args, code=0)


SWEEP = ["--create-only"]
CASES = [
    # ---- titk inspect: embedding files
    bad("inspect-decompression-bomb-png", lambda w, t: ["inspect", (t / "bomb.png").write_bytes(_png_header(100000, 100000)) and t / "bomb.png"], "bomb.png", "decompression bomb"),
    bad("inspect-bomb-warning-size-png", lambda w, t: ["inspect", (t / "big.png").write_bytes(_png_header(10000, 10000)) and t / "big.png"], "big.png", "too large"),
    bad("inspect-truncated-png", lambda w, t: ["inspect", (t / "cut.png").write_bytes(truncated_png(t)) and t / "cut.png"], "cut.png", "not a readable image"),
    bad("inspect-zero-byte-pt", lambda w, t: ["inspect", (t / "e.pt").write_bytes(b"") or t / "e.pt"], "e.pt", "empty"),
    bad("inspect-zero-byte-safetensors", lambda w, t: ["inspect", (t / "e.safetensors").write_bytes(b"") or t / "e.safetensors"], "e.safetensors", "empty"),
    bad("inspect-zero-byte-png", lambda w, t: ["inspect", (t / "e.png").write_bytes(b"") or t / "e.png"], "e.png", "empty"),
    bad("inspect-pickle-weights-only-refuses", lambda w, t: ["inspect", save(t / "evil.pt", {"x": Namespace()})], "evil.pt", "refused"),
    bad("inspect-pt-holding-a-string", lambda w, t: ["inspect", save(t / "s.pt", "hello")], "s.pt", "holds a str"),
    bad("inspect-string-where-a-tensor-should-be", lambda w, t: ["inspect", save(t / "s.pt", a1111("hello"))], "s.pt", "string_to_param", "not a tensor"),
    bad("inspect-pt-without-tensors", lambda w, t: ["inspect", save(t / "n.pt", {"a": 1})], "n.pt", "no tensors"),
    bad("inspect-a1111-two-terms", lambda w, t: ["inspect", save(t / "two.pt", {"string_to_param": {"a": torch.ones(1, 32), "b": torch.ones(1, 32)}})], "two.pt", "exactly one term"),
    bad("inspect-safetensors-wrong-keys", lambda w, t: ["inspect", save(t / "k.safetensors", {"a": torch.ones(2, 32), "b": torch.ones(2, 32)})], "k.safetensors"),
    bad("inspect-safetensors-int-dtype", lambda w, t: ["inspect", save(t / "i.safetensors", {"ohwx": torch.ones(2, 32, dtype=torch.int64)})], "i.safetensors", "int64", "floating point"),
    bad("inspect-safetensors-bool-dtype", lambda w, t: ["inspect", save(t / "b.safetensors", {"ohwx": torch.ones(2, 32, dtype=torch.bool)})], "b.safetensors", "floating point"),
    bad("inspect-safetensors-3d-shape", lambda w, t: ["inspect", save(t / "3d.safetensors", {"ohwx": torch.ones(2, 3, 32)})], "3d.safetensors", "(2, 3, 32)"),
    bad("inspect-safetensors-scalar", lambda w, t: ["inspect", save(t / "0d.safetensors", {"ohwx": torch.tensor(1.0)})], "0d.safetensors", "shape ()"),
    bad("inspect-safetensors-no-vectors", lambda w, t: ["inspect", save(t / "none.safetensors", {"ohwx": torch.ones(0, 32)})], "none.safetensors", "at least one vector"),
    bad("inspect-safetensors-nan", lambda w, t: ["inspect", save(t / "nan.safetensors", {"ohwx": torch.full((2, 32), float("nan"))})], "nan.safetensors", "NaN"),
    bad("inspect-sdxl-encoders-disagree", lambda w, t: ["inspect", save(t / "x.safetensors", {"clip_l": torch.ones(2, 32), "clip_g": torch.ones(3, 64)})], "x.safetensors", "disagree"),
    bad("inspect-safetensors-garbage", lambda w, t: ["inspect", (t / "g.safetensors").write_bytes(b"\xff" * 64) and t / "g.safetensors"], "g.safetensors", "not a readable"),
    bad("inspect-unknown-file-type", lambda w, t: ["inspect", (t / "notes.txt").write_text("x") and t / "notes.txt"], "notes.txt", "not an embedding file type"),
    bad("inspect-missing-file", lambda w, t: ["inspect", t / "nowhere.pt"], "nowhere.pt", "no such file"),
    bad("inspect-dtype-not-a-choice", lambda w, t: ["inspect", w.pt, "--model", w.model, "--dtype", "fp8"], "--dtype", "fp32", "bf16"),
    bad("inspect-model-missing", lambda w, t: ["inspect", w.pt, "--model", t / "sd.safetensors"], "sd.safetensors", "no such file"),
    warns("inspect-embedding-of-wrong-width-for-model", lambda w, t: ["inspect", save(t / "w48.safetensors", {"ohwx": torch.ones(2, 48)}), "--model", w.model], "w48.safetensors", "does not fit"),
    accepted("inspect-nested-large-pt", lambda w, t: ["inspect", save(t / "big.pt", {**a1111(torch.randn(2, 32)), "extra": {"history": {"optimizer": torch.zeros(27_000_000)}, "notes": {str(i): {"a": [i] * 10} for i in range(1000)}}})]),
    # ---- titk convert
    bad("convert-to-unknown-format", lambda w, t: ["convert", w.pt, t / "out.pt", "--to", "gif"], "--to", "safetensors", "onetrainer", output=lambda w, t: t / "out.pt"),
    bad("convert-to-unknown-suffix", lambda w, t: ["convert", w.pt, t / "out.xyz"], "out.xyz", "--to", output=lambda w, t: t / "out.xyz"),
    bad("convert-target-is-a-folder", lambda w, t: ["convert", w.pt, (t / "dir.pt").mkdir() or t / "dir.pt"], "dir.pt: is a folder", output=lambda w, t: t / "dir.pt"),  # names the target, not a temporary file
    bad("convert-target-under-a-file", lambda w, t: ["convert", w.pt, (t / "f").write_text("x") and t / "f" / "o.pt"], str("/f"), output=lambda w, t: t / "f"),
    bad("convert-bad-name", lambda w, t: ["convert", w.pt, t / "o.pt", "--name", "a/b"], "--name", output=lambda w, t: t / "o.pt"),
    bad("convert-onetrainer-to-pt", lambda w, t: ["convert", w.pt, t / "o.pt", "--to", "onetrainer"], "o.pt", ".safetensors", output=lambda w, t: t / "o.pt"),
    bad("convert-source-decompression-bomb", lambda w, t: ["convert", (t / "b.png").write_bytes(_png_header(100000, 100000)) and t / "b.png", t / "o.pt"], "b.png", output=lambda w, t: t / "o.pt"),
    bad("convert-into-read-only-folder", lambda w, t: ["convert", w.pt, w.mounted("ro", "ro,size=1m") / "o.pt"], "/ro/", output=lambda w, t: w.root / "ro" / "o.pt"),
    bad("convert-onto-full-disk", lambda w, t: ["convert", w.pt, full_png_target(w, t)], "disk full", "ohwx.png", code=4, output=lambda w, t: w.root / "full" / "ohwx.png"),
    # ---- titk plan / train: datasets
    bad("plan-empty-dataset-folder", lambda w, t: ["plan", w.recipe, "-d", (t / "d").mkdir() or t / "d"], "/d", "no images"),
    bad("plan-dataset-of-non-images", lambda w, t: ["plan", w.recipe, "-d", data_with(t, "a.txt", b"x", 0)], "data", "no images"),
    bad("plan-decompression-bomb-in-dataset", lambda w, t: ["plan", w.recipe, "-d", data_with(t, "z.png", _png_header(100000, 100000))], "z.png", "decompression bomb"),
    bad("train-decompression-bomb-in-dataset", lambda w, t: ["train", w.recipe, "-d", data_with(t, "z.png", _png_header(100000, 100000)), "-o", t / "run"], "z.png", output=lambda w, t: t / "run"),
    bad("train-bomb-warning-size-in-dataset", lambda w, t: ["train", w.recipe, "-d", data_with(t, "z.png", _png_header(10000, 10000)), "-o", t / "run"], "z.png", "too large", output=lambda w, t: t / "run"),
    bad("train-truncated-image", lambda w, t: ["train", w.recipe, "-d", data_with(t, "z.png", truncated_png(t)), "-o", t / "run"], "z.png", "truncated", output=lambda w, t: t / "run"),
    bad("plan-zero-byte-image", lambda w, t: ["plan", w.recipe, "-d", data_with(t, "z.png", b"")], "z.png"),
    bad("plan-caption-not-utf8", lambda w, t: ["plan", w.recipe, "-d", data_with(t, "000.txt", b"caf\xe9 \xff")], "000.txt", "UTF-8"),
    bad("plan-unreadable-image", lambda w, t: ["plan", w.recipe, "-d", unreadable(t)], "000.png"),
    bad("plan-dataset-is-a-file", lambda w, t: ["plan", w.recipe, "-d", w.pt], "ohwx.pt", "not found"),
    bad("plan-images-below-min-side", lambda w, t: ["plan", w.recipe, "-d", w.data, "--set", "data.min_side=1000"], "000.png", "minimum side"),
    warns("plan-empty-caption-file", lambda w, t: ["plan", w.recipe, "-d", data_with(t, "000.txt", b"")], "000.png", "empty"),
    warns("plan-dataset-of-one-image", lambda w, t: ["plan", w.recipe, "-d", make_images(t / "one", 1)], "one image"),
    warns("plan-learning-rate-above-1", lambda w, t: ["plan", w.recipe, "-d", w.data, "--set", "train.learning_rate=5"], "train.learning_rate", "above 1"),
    # ---- configs and --set
    bad("config-unknown-key", lambda w, t: ["plan", w.write_recipe(t / "r.yaml", train__learnin_rate=0.1), "-d", w.data], "r.yaml", "train.learnin_rate", "unknown setting"),
    bad("config-wrong-type", lambda w, t: ["plan", w.write_recipe(t / "r.yaml", train__max_steps="many"), "-d", w.data], "r.yaml", "train.max_steps"),
    bad("config-negative-learning-rate", lambda w, t: ["plan", w.write_recipe(t / "r.yaml", train__learning_rate=-0.01), "-d", w.data], "learning_rate", "positive"),
    bad("config-batch-size-0", lambda w, t: ["plan", w.write_recipe(t / "r.yaml", train__batch_size=0), "-d", w.data], "train.batch_size"),
    bad("config-vectors-0", lambda w, t: ["plan", w.write_recipe(t / "r.yaml", embedding__vectors=0), "-d", w.data], "embedding.vectors"),
    bad("config-max-steps-and-epochs", lambda w, t: ["plan", w.write_recipe(t / "r.yaml", train__epochs=3), "-d", w.data], "max_steps or epochs"),
    bad("config-caption-extension-without-dot", lambda w, t: ["plan", w.write_recipe(t / "r.yaml", data__caption_extension="txt"), "-d", w.data], "data.caption_extension", ".txt"),
    bad("config-missing-template", lambda w, t: ["plan", w.write_recipe(t / "r.yaml", data__template="nosuch"), "-d", w.data], "data.template", "nosuch"),
    bad("config-missing-file", lambda w, t: ["plan", t / "none.yaml", "-d", w.data], "none.yaml", "no such file"),
    bad("config-yaml-syntax-error", lambda w, t: ["plan", (t / "s.yaml").write_text("model: {source: x\nembedding: [\n") and t / "s.yaml", "-d", w.data], "s.yaml", "not valid YAML"),
    bad("config-zero-byte", lambda w, t: ["plan", (t / "z.yaml").write_text("") or t / "z.yaml", "-d", w.data], "z.yaml", "model"),
    bad("config-top-level-list", lambda w, t: ["plan", (t / "l.yaml").write_text("- a\n") and t / "l.yaml", "-d", w.data], "l.yaml", "mapping"),
    bad("config-not-utf8", lambda w, t: ["plan", (t / "c.yaml").write_bytes(b"model: {source: caf\xe9}\n") and t / "c.yaml", "-d", w.data], "c.yaml"),
    bad("config-is-a-folder", lambda w, t: ["plan", w.data, "-d", w.data], "data"),
    bad("config-model-source-missing", lambda w, t: ["train", w.write_recipe(t / "r.yaml", model__source=str(t / "sd.safetensors")), "-d", w.data, "-o", t / "run"], "sd.safetensors", output=lambda w, t: t / "run"),
    bad("set-without-equals", lambda w, t: ["plan", w.recipe, "-d", w.data, "--set", "train.max_steps"], "--set", "section.key=value"),
    bad("set-unknown-key", lambda w, t: ["plan", w.recipe, "-d", w.data, "--set", "train.nosuch=1"], "train.nosuch", "unknown setting"),
    bad("set-bad-yaml-value", lambda w, t: ["plan", w.recipe, "-d", w.data, "--set", "train.max_steps=[1"], "--set", "not valid YAML"),
    bad("set-into-a-value", lambda w, t: ["plan", w.recipe, "-d", w.data, "--set", "embedding.name.x=3"], "embedding.name", "not a section"),
    bad("set-bad-embedding-name", lambda w, t: ["plan", w.recipe, "-d", w.data, "--set", "embedding.name=a/b"], "embedding.name"),
    bad("plan-family-not-a-choice", lambda w, t: ["plan", w.write_recipe(t / "r.yaml", model__source="/nowhere/sd.safetensors"), "-d", w.data, "--family", "sd9"], "--family", "sdxl"),
    # ---- titk train: run folders
    bad("train-output-is-a-file", lambda w, t: ["train", w.recipe, "-d", w.data, "-o", (t / "run").write_text("x") and t / "run"], "run", "a file is in the way", output=lambda w, t: t / "run"),
    bad("train-output-under-a-file", lambda w, t: ["train", w.recipe, "-d", w.data, "-o", (t / "f").write_text("x") and t / "f" / "run"], "/f", output=lambda w, t: t / "f"),
    bad("train-output-read-only", lambda w, t: ["train", w.recipe, "-d", w.data, "-o", w.mounted("ro", "ro,size=1m") / "run"], "/ro/run", output=lambda w, t: w.root / "ro" / "run"),
    # ---- titk sweep / worker: spaces, storages, work directories
    bad("sweep-range-low-above-high", lambda w, t: ["sweep", w.write_sweep(t / "s.yaml", space={"train.learning_rate": {"low": 0.1, "high": 0.01}}), "-w", t / "wk", *SWEEP], "train.learning_rate", "empty range", output=lambda w, t: t / "wk"),
    bad("sweep-empty-choice", lambda w, t: ["sweep", w.write_sweep(t / "s.yaml", space={"embedding.vectors": {"choice": []}}), "-w", t / "wk", *SWEEP], "embedding.vectors", "empty choice", output=lambda w, t: t / "wk"),
    bad("sweep-negative-step", lambda w, t: ["sweep", w.write_sweep(t / "s.yaml", space={"train.batch_size": {"low": 1, "high": 3, "step": -1}}), "-w", t / "wk", *SWEEP], "train.batch_size", "step", output=lambda w, t: t / "wk"),
    bad("sweep-unknown-space-setting", lambda w, t: ["sweep", w.write_sweep(t / "s.yaml", space={"train.nosuch": {"low": 1, "high": 2}}), "-w", t / "wk", *SWEEP], "train.nosuch", output=lambda w, t: t / "wk"),
    bad("sweep-base-missing-file", lambda w, t: ["sweep", w.write_sweep(t / "s.yaml", base="nosuch.yaml"), "-w", t / "wk", *SWEEP], "nosuch.yaml", "no such file", output=lambda w, t: t / "wk"),
    bad("sweep-unknown-metric", lambda w, t: ["sweep", w.write_sweep(t / "s.yaml", objective={"metrics": {"identity.simlarity": 1.0}}), "-w", t / "wk", *SWEEP], "identity.simlarity", output=lambda w, t: t / "wk"),
    bad("sweep-subset-larger-than-dataset", lambda w, t: ["sweep", w.write_sweep(t / "s.yaml", subset={"size": 10}), "-w", t / "wk", *SWEEP], "subset.size", output=lambda w, t: t / "wk"),
    bad("sweep-set-unknown-key", lambda w, t: ["sweep", w.sweep, "-w", t / "wk", "--set", "nosuch=1", *SWEEP], "nosuch", "unknown setting", output=lambda w, t: t / "wk"),
    bad("sweep-n-trials-0", lambda w, t: ["sweep", w.sweep, "-w", t / "wk", "--n-trials", "0"], "--n-trials", output=lambda w, t: t / "wk"),
    bad("sweep-workdir-is-a-file", lambda w, t: ["sweep", w.sweep, "-w", (t / "wk").write_text("x") and t / "wk", *SWEEP], "wk", "a file is in the way", output=lambda w, t: t / "wk"),
    bad("sweep-workdir-under-a-file", lambda w, t: ["sweep", w.sweep, "-w", (t / "f").write_text("x") and t / "f" / "wk", *SWEEP], "/f", output=lambda w, t: t / "f"),
    bad("sweep-workdir-read-only", lambda w, t: ["sweep", w.sweep, "-w", w.mounted("ro", "ro,size=1m") / "wk", *SWEEP], "/ro/wk", output=lambda w, t: w.root / "ro" / "wk"),
    bad("sweep-storage-unreachable-postgres", lambda w, t: ["sweep", w.sweep, "-w", t / "wk", "--storage", "postgresql://titk@127.0.0.1:1/optuna", *SWEEP], "--storage", "cannot reach", output=lambda w, t: t / "wk"),
    bad("sweep-storage-not-a-url", lambda w, t: ["sweep", w.sweep, "-w", t / "wk", "--storage", "not a url", *SWEEP], "--storage", output=lambda w, t: t / "wk"),
    bad("sweep-tracking-uri-not-a-uri", lambda w, t: ["sweep", w.sweep, "-w", t / "wk", "--tracking-uri", "not a uri", *SWEEP], "--tracking-uri", output=lambda w, t: t / "wk"),
    bad("worker-study-does-not-exist", lambda w, t: ["worker", w.sweep, "-w", t / "wk"], "does not exist", output=lambda w, t: t / "wk"),
    # ---- titk eval
    bad("eval-scorer-not-a-choice", lambda w, t: ["eval", w.pt, "-m", w.model, "-r", w.data, "--scorers", "norms,idnetity", "-o", t / "ev"], "--scorers", "idnetity", "personality", output=lambda w, t: t / "ev"),
    bad("eval-references-empty-folder", lambda w, t: ["eval", w.pt, "-m", w.model, "-r", (t / "r").mkdir() or t / "r", "--scorers", "norms", "-o", t / "ev"], "/r", output=lambda w, t: t / "ev"),
    bad("eval-zero-byte-embedding", lambda w, t: ["eval", (t / "e.pt").write_bytes(b"") or t / "e.pt", "-m", w.model, "-r", w.data, "--scorers", "norms", "-o", t / "ev"], "e.pt", "empty", output=lambda w, t: t / "ev"),
    bad("eval-embedding-of-wrong-width", lambda w, t: ["eval", save(t / "w48.safetensors", {"ohwx": torch.ones(2, 48)}), "-m", w.model, "-r", w.data, "--scorers", "norms", "-o", t / "ev"], "width 48", output=lambda w, t: t / "ev"),
    # ---- titk dataset check
    bad("dataset-check-empty-folder", lambda w, t: ["dataset", "check", (t / "d").mkdir() or t / "d", "--no-faces", "-o", t / "dc"], "/d", "no images", output=lambda w, t: t / "dc"),
    bad("dataset-check-caption-not-utf8", lambda w, t: ["dataset", "check", data_with(t, "000.txt", b"\xff\xfe"), "--no-faces", "-o", t / "dc"], "000.txt", "UTF-8", output=lambda w, t: t / "dc"),
    bad("dataset-check-output-is-a-file", lambda w, t: ["dataset", "check", w.data, "--no-faces", "-o", (t / "dc").write_text("x") and t / "dc"], "dc", output=lambda w, t: t / "dc"),
    warns("dataset-check-lists-a-decompression-bomb", lambda w, t: ["dataset", "check", data_with(t, "z.png", _png_header(100000, 100000)), "--no-faces", "-o", t / "dc"], "z.png", "decompression bomb", marker="skipped:"),
    bad("dataset-check-onto-full-disk", lambda w, t: ["dataset", "check", w.data, "--no-faces", "-o", w.full_disk(t) / "dc"], "disk full", code=4, output=lambda w, t: w.root / "full" / "dc"),
    # ---- titk report / serve
    bad("report-workdir-missing", lambda w, t: ["report", t / "nowork", "-o", t / "r.html"], "nowork", output=lambda w, t: t / "r.html"),
    bad("report-workdir-is-a-file", lambda w, t: ["report", w.pt, "-o", t / "r.html"], "ohwx.pt", output=lambda w, t: t / "r.html"),
    bad("serve-workdir-missing", lambda w, t: ["serve", t / "nowork", "--check"], "nowork", "not a sweep work directory"),
    bad("confirm-workdir-missing", lambda w, t: ["confirm", t / "nowork"], "nowork", "not a sweep work directory"),
    bad("confirm-seeds-too-few", lambda w, t: ["confirm", t / "nowork", "--seeds", "1"], "--seeds"),
    bad("serve-port-out-of-range", lambda w, t: ["serve", t / "nowork", "--port", "70000", "--check"], "--port"),
    # ---- titk toyworld / demo
    bad("toyworld-dataset-out-is-a-file", lambda w, t: ["toyworld", "dataset", (t / "f").write_text("x") and t / "f"], "/f", "in the way", output=lambda w, t: t / "f"),
    bad("toyworld-dataset-out-holds-files", lambda w, t: ["toyworld", "dataset", make_images(t / "d", 1), "--n", "2"], "/d", "already holds files", output=lambda w, t: t / "d"),
    bad("toyworld-dataset-zero-images", lambda w, t: ["toyworld", "dataset", t / "d", "--n", "0"], "--n", output=lambda w, t: t / "d"),
    bad("toyworld-dataset-share-above-1", lambda w, t: ["toyworld", "dataset", t / "d", "--tank-tops", "2"], "--tank-tops", output=lambda w, t: t / "d"),
    bad("toyworld-dataset-identity-out-of-range", lambda w, t: ["toyworld", "dataset", t / "d", "--identity", "99"], "identity 99", output=lambda w, t: t / "d"),
    bad("toyworld-dataset-onto-full-disk", lambda w, t: ["toyworld", "dataset", w.full_disk(t) / "toy", "--n", "3"], "disk full", "/full/toy", code=4, output=lambda w, t: w.root / "full" / "toy"),
    bad("toyworld-dataset-read-only", lambda w, t: ["toyworld", "dataset", w.mounted("ro", "ro,size=1m") / "toy", "--n", "2"], "/ro", output=lambda w, t: w.root / "ro" / "toy"),
    bad("demo-workdir-is-a-file", lambda w, t: ["demo", "-w", (t / "f").write_text("x") and t / "f"], "/f", output=lambda w, t: t / "f"),
    # ---- command lines
    bad("unknown-command", lambda w, t: ["nosuch"], "nosuch"),
    bad("missing-argument", lambda w, t: ["convert", w.pt], "target"),
]


def _state(path: Path | None):
    """What a path holds (bytes of a file, names and bytes under a folder), to compare before and after."""
    if path is None or not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else None) for p in path.rglob("*"))


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, world, run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a command that falls back to a default output folder writes it here
    args = case.args(world, tmp_path)
    output = case.output(world, tmp_path) if case.output else None
    before = _state(output)
    code, out, err = run_cli(*args)
    if case.code == 0:
        assert code == 0, err
        assert "Traceback" not in err and "error:" not in err
        if case.warn:
            lines = [line for line in (out + "\n" + err).splitlines() if case.warn in line]
            assert len(lines) == 1, f"expected one {case.warn!r} line, got {lines} (stderr {err!r})"
            for needle in case.needles:
                assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    else:
        assert_one_line_error(code, err, *case.needles)
        if case.code is not None:
            assert code == case.code
        assert _state(output) == before, f"{output} was changed or half-written"
    assert not [p for p in tmp_path.rglob("*.tmp")], "a temporary file was left behind"


def test_an_unreadable_image_is_named_as_unreadable(world, run_cli, tmp_path, monkeypatch):
    # chmod cannot stop root reading a file, so the refusal comes from the read itself, as it would for a user
    folder = make_images(tmp_path / "data", 2)
    read_bytes = Path.read_bytes

    def refuse(path):
        if path.name == "000.png":
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    code, _, err = run_cli("plan", world.recipe, "-d", folder)
    assert_one_line_error(code, err, "000.png", "cannot read it")
    assert "write" not in err


def test_the_corpus_is_large():
    assert len(CASES) >= 60


# ------------------------------------------------------------------------------------------------ item 6


COMMANDS = [["doctor"], ["inspect"], ["convert"], ["plan"], ["train"], ["eval"], ["dataset", "check"], ["sweep"], ["worker"],
            ["serve"], ["confirm"], ["report"], ["toyworld", "dataset"], ["toyworld", "pretrain"], ["demo"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_help_has_an_example(run_cli, command):
    code, out, _ = run_cli(*command, "--help")
    assert code == 0
    assert "Example:" in out
    example = out.split("Example:", 1)[1].splitlines()[1]
    assert f"titk {' '.join(command)}" in example, "the example's first line runs the command itself, on a line of its own"


def test_every_command_is_in_the_help_test(run_cli):
    from titk.cli import app

    import typer.main

    group = typer.main.get_command(app)
    leaves = []
    for name, cmd in group.commands.items():
        leaves += [[name, sub] for sub in cmd.commands] if hasattr(cmd, "commands") else [[name]]
    assert sorted(leaves) == sorted(COMMANDS)


@pytest.mark.parametrize("args, option, choices", [
    (["convert", "a.pt", "b.pt", "--to", "gif"], "--to", ["a1111", "safetensors", "kohya", "diffusers", "onetrainer", "png"]),
    (["inspect", "a.pt", "--dtype", "fp8"], "--dtype", ["auto", "fp32", "bf16", "fp16"]),
    (["eval", "a.pt", "--scorers", "identity,clip,idnetity"], "--scorers", ["identity", "clip", "diversity", "personality", "norms"]),
    (["plan", "a.yaml", "--family", "sd9"], "--family", ["sd1", "sd2", "sdxl"]),
], ids=["convert --to", "inspect --dtype", "eval --scorers", "plan --family"])
def test_choices_are_one_line_listing_them(run_cli, args, option, choices):
    code, _, err = run_cli(*args)
    assert_one_line_error(code, err, option, *choices)
    assert code == 2


@pytest.mark.parametrize("fmt, suffix", [("a1111", ".pt"), ("safetensors", ".safetensors"), ("kohya", ".safetensors"), ("png", ".png")])
def test_convert_keeps_name_step_and_base_model(world, run_cli, tmp_path, fmt, suffix):
    from titk.embeddings.formats import read_embedding_file

    target = tmp_path / f"renamed{suffix}"
    code, _, err = run_cli("convert", world.pt, target, "--to", fmt)
    assert code == 0, err
    emb = read_embedding_file(target).embedding
    if fmt != "kohya":  # kohya's files keep the name only as modelspec.title
        assert emb.name == "ohwx"
        assert (emb.step, emb.base_model_hash, emb.base_model_name) == (7, "0123456789", "tiny")
    code, _, err = run_cli("convert", world.pt, tmp_path / f"named{suffix}", "--to", fmt, "--name", "other")
    assert code == 0, err
    if fmt != "kohya":
        assert read_embedding_file(tmp_path / f"named{suffix}").embedding.name == "other"
