"""The package's shape: no import cycles between its parts, the arrows the design forbids absent, each
default in titk/config/ alone, and the shipped prompt files reachable from a non-editable install."""

import ast
import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "titk"

# part → parts (or libraries) it must never import
FORBIDDEN = {
    "train": {"tracking", "sweep", "analysis", "mlflow", "optuna"},  # the training loop knows no study
    "evaluate": {"train", "sweep"},  # scoring does not train
    "data": {"models", "train", "evaluate"},  # datasets know no model
    "embeddings": {"train", "models", "evaluate"},  # embedding formats do not train
    "models": {"sweep", "tracking", "analysis", "optuna", "mlflow", "toyworld"},  # models know no study
    "analysis": {"train"},  # analysis does not train
}


def _part(module: str) -> str:
    """The part a module belongs to: its subpackage, or the top-level module's own name."""
    return module.split(".")[1] if module.count(".") >= 1 else module


@functools.lru_cache(maxsize=1)
def _imports() -> dict[str, set[str]]:
    """module name → titk modules and third-party roots it imports (at any depth in the file)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                    found.add(target)
                    found.update(f"{target}.{a.name}" for a in node.names)
                else:
                    found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[module] = found
    return graph


@functools.lru_cache(maxsize=1)
def _part_graph() -> dict[str, set[str]]:
    modules = _imports()
    parts: dict[str, set[str]] = {}
    for module, targets in modules.items():
        if module == "titk" or module == "titk.cli" or module == "titk.__main__":
            continue  # the CLI and the package's public surface sit on top of everything
        src = _part(module)
        for target in targets:
            if target.startswith("titk.") and target in modules:
                dst = _part(target)
                if dst != src and dst not in ("cli", "__main__"):
                    parts.setdefault(src, set()).add(dst)
            elif not target.startswith("titk"):
                parts.setdefault(src, set()).add(target.split(".")[0])
    return parts


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if not state.get(nxt):
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if not state.get(node):
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_between_parts():
    parts = _part_graph()
    graph = {k: {v for v in vs if v in parts} for k, vs in parts.items()}
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_no_import_cycle_between_modules():
    modules = _imports()
    graph = {m: {t for t in ts if t in modules and t != m} for m, ts in modules.items()}
    # a package's __init__ re-exports its modules; an arrow back to it is not a cycle of logic
    graph = {m: {t for t in ts if not (m.startswith(t + ".") and t in modules)} for m, ts in graph.items()}
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_forbidden_arrows_are_absent(part):
    imported = _part_graph().get(part, set())
    assert not (imported & FORBIDDEN[part]), f"titk.{part} imports {sorted(imported & FORBIDDEN[part])}"


def test_the_cycle_check_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


# Each default titk has, as it would be written where it is used; titk/config/ must be its only home.
DEFAULTS = [
    r'(=\s*|Option\(\s*)"buffalo_l"', r'(=\s*|Option\(\s*)"ViT-B-32"', r'(=\s*|Option\(\s*)"openai"', r'(=\s*|Option\(\s*)"dpm\+\+2m"',
    r"det_size\b.*=\s*640", r"det_thresh\b.*=\s*0\.5", r"\bcfg\b.*=\s*7\.0", r"(limit|references)\b.*=\s*64\b",
    r"batch_size: int = \d", r"heartbeat\b.*=\s*60\b", r"n_startup_trials=\d", r"p_threshold=0\.\d",
    r"(=\s*|Option\(\s*)512\b", r"(=\s*|\(\s*1,\s*)77\b", r"\bstep: int = 64\b",
]
# The same number meaning something else.
NOT_DEFAULTS = {
    ("titk/evaluate/dataset_check.py", r"(=\s*|Option\(\s*)512\b"): "ORB matching scale, not a model resolution",
    ("titk/embeddings/formats.py", r"(=\s*|Option\(\s*)512\b"): "the picture size of an A1111 image embedding",
    ("titk/train/memory.py", r"(=\s*|Option\(\s*)512\b"): "bytes: the CUDA allocator's smallest block",
}


def _repeats(code: str) -> list[str]:
    return [p for p in DEFAULTS if re.search(p, code)]


def test_each_default_lives_only_in_config():
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "config" or "toyworld" in path.parts:  # the toy world's architecture is its own
            continue
        code = "\n".join(line.split("#")[0] for line in path.read_text().splitlines() if not line.lstrip().startswith(('"', "'")))
        found = [p for p in _repeats(code) if (str(path.relative_to(ROOT)), p) not in NOT_DEFAULTS]
        assert not found, f"{path.relative_to(ROOT)} repeats defaults: {found}"


def test_the_default_check_sees_a_repeated_default():
    assert _repeats('def f(pack: str = "buffalo_l"):')
    assert _repeats("    det_size: int = 640,")
    assert _repeats("torch.zeros((1, 77, 768))")
    assert not _repeats("x = 640\nwidth=7.5")


def test_files_stay_small():
    big = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 460}
    assert not big, f"split these: {big}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """`pip install .` (not -e) into a folder of its own, once: the package as a user gets it, with its
    `titk` console script in bin/ (its dependencies are the dev venv's)."""
    import shutil

    # From a copy without build/: pip would reuse a stale build/lib and install files the source no longer has.
    source = tmp_path_factory.mktemp("source") / "titk"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "work", "runs", "*.egg-info", "__pycache__", ".pytest_cache"))
    target = tmp_path_factory.mktemp("install") / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, cwd=target.parent, capture_output=True)
    return target


def test_shipped_prompts_are_found_from_a_non_editable_install(installed, tmp_path):
    """The suites, label sets, the report's template and the toy models travel as package data."""
    target = installed
    assert not (target / "experiments").exists()
    code = (
        "import titk, pathlib; from titk.evaluate.suite import load_suite, find_prompt_file; "
        "from titk.toyworld.world import DEMO_CONFIG; from titk.paths import toyworld_model; "
        "assert pathlib.Path(titk.__file__).is_relative_to(pathlib.Path(r'%s')), titk.__file__; "
        "from importlib.resources import files; "
        "print(load_suite('person').name, len(load_suite('toy').items), find_prompt_file('personality-labels').name, DEMO_CONFIG.is_file(), "
        "files('titk.analysis').joinpath('templates/report.html').is_file(), "
        "all((m / 'unet' / 'diffusion_pytorch_model.safetensors').is_file() for m in (toyworld_model('sd1'), toyworld_model('sdxl'))))"
    ) % target
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # toy.yaml: 6 prompts × 4 seeds; the report's template; the toy world's SD1 and SDXL models
    assert out.stdout.split() == ["person", "24", "personality-labels.yaml", "True", "True", "True"]


@pytest.mark.assets
def test_titk_plan_and_eval_run_from_a_non_editable_install(installed, fixtures, assets, tmp_path):
    """The installed `titk` command, from a folder with no experiments/ in it: `titk plan` on a shipped recipe
    as shipped (the family's standard architecture from the installed package's configs) and `titk eval`
    with a shipped prompt suite and the shipped personality label sets (the tiny model, the real test face
    pack, random CLIP weights; toy-quick is the smallest shipped suite)."""
    import json
    import shutil

    import torch

    from titk.embeddings import Embedding
    from titk.embeddings.formats import write_embedding

    titk = installed / "bin" / "titk"
    env = {**os.environ, "PYTHONPATH": str(installed)}
    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in sorted((assets / "faces").glob("obama__*"))[:3]:
        shutil.copy(photo, photos / photo.name)
    recipe = ROOT / "experiments/recipes/a1111-15img-bs3-ga15-200steps.yaml"
    plan = subprocess.run([str(titk), "plan", str(recipe), "-d", "photos", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert plan.returncode == 0, plan.stderr
    result = json.loads(plan.stdout)
    assert "standard architecture" in json.dumps(result) and result["max_steps"] == 200, result

    write_embedding(Embedding("ohwx", {"clip_l": torch.randn(2, 32, generator=torch.Generator().manual_seed(0)) * 0.1}), tmp_path / "ohwx.pt", "a1111")
    shutil.copy(fixtures["tiny-sd1"].safetensors, tmp_path / "model.safetensors")
    evaluated = subprocess.run(
        [str(titk), "eval", "ohwx.pt", "-m", "model.safetensors", "-r", "photos", "--face-pack", str(assets / "face-test-pack"),
         "--suite", "toy-quick", "--set", f"model.config_dir={fixtures['tiny-sd1'].folder}", "--set", "evaluation.clip.pretrained=null",
         "-o", "out"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert evaluated.returncode == 0, evaluated.stderr
    protocol = json.loads((tmp_path / "out" / "ohwx" / "scorecard.json").read_text())["protocol"]
    assert protocol["suite"] == "toy-quick" and len(protocol["seeds"]) == 2 and "personality" in protocol
    assert "ohwx.pt" in (tmp_path / "out" / "summary.csv").read_text()


def test_public_surface_resolves():
    import titk

    for name in titk.__all__:
        assert getattr(titk, name) is not None, name
    assert callable(titk.train_embedding) and titk.train_embedding.__module__ == "titk.train.loop"
