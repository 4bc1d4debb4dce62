"""One config path: a sweep's base file, base_overrides and --set merge the same way, and the README's
person sweep runs as typed on offline stand-ins."""

import re
import shlex
import shutil
from pathlib import Path

import yaml

from titk.config import load_sweep_config, merge

ROOT = Path(__file__).resolve().parents[1]


def test_set_reaches_into_a_file_base():
    config = load_sweep_config(ROOT / "experiments/sweeps/person-settings.yaml",
                               ["base.model.source=/models/sd15.safetensors", "base.data.path=/photos"])
    assert config.base.model.source == "/models/sd15.safetensors"
    assert str(config.base.data.path) == "/photos"
    assert config.base.embedding.vectors == 8  # the rest of the recipe file is kept
    assert config.base.output.save_every == 0  # and its base_overrides apply


def test_overriding_one_preview_setting_keeps_the_recipes_others(tmp_path):
    recipe = ROOT / "experiments/recipes/a1111-15img-bs3-ga15-200steps.yaml"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "study": "s", "base": str(recipe), "base_overrides": {"output": {"preview": {"seeds": [7]}}},
    }))
    config = load_sweep_config(sweep)
    assert config.base.output.preview.seeds == [7]
    assert config.base.output.preview.every == 25  # the recipe's, not the default 500
    config = load_sweep_config(sweep, ['base.output.preview.prompts=["a photo of [name] smiling"]'])
    assert config.base.output.preview.every == 25 and config.base.output.preview.seeds == [7]


def test_inline_and_file_bases_give_the_same_config(tmp_path):
    recipe = ROOT / "experiments/recipes/a1111-15img-bs3-ga15-200steps.yaml"
    inline = tmp_path / "inline.yaml"
    inline.write_text(yaml.safe_dump({"study": "s", "base": yaml.safe_load(recipe.read_text())}))
    from_file = tmp_path / "file.yaml"
    from_file.write_text(yaml.safe_dump({"study": "s", "base": str(recipe)}))
    sets = ["base.train.learning_rate=0.01", "base.output.preview.steps=5"]
    assert load_sweep_config(inline, sets).base == load_sweep_config(from_file, sets).base


def test_set_into_a_value_is_one_clear_error(tmp_path, run_cli):
    from helpers import assert_one_line_error

    code, _, err = run_cli("plan", ROOT / "experiments/recipes/a1111-15img-bs3-ga15-200steps.yaml",
                           "--set", "model.source.x=1", "-d", tmp_path)
    assert_one_line_error(code, err, "model.source", "not a section")


def test_merge_is_deep_and_copies():
    base = {"a": {"b": 1, "c": [1]}, "d": 2}
    out = merge(base, {"a": {"b": 3}})
    assert out == {"a": {"b": 3, "c": [1]}, "d": 2}
    out["a"]["c"].append(2)
    assert base["a"]["c"] == [1]


def _readme_sweep_command() -> list[str]:
    """The README's person-sweep command, as a user would type it."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^titk sweep experiments/sweeps/person-settings\.yaml.*?(?<!\\)$", text, re.M | re.S)
    assert match, "the README shows a person sweep"
    line = re.sub(r"\s*#.*$", "", match.group(0).replace("\\\n", " "), flags=re.M)
    return shlex.split(line)


def test_readme_person_sweep_runs_as_typed(tmp_path, fixtures, assets, run_cli, monkeypatch):
    """Only paths change (the checkpoint, the photos, the work dir) plus offline stand-ins for what no hub
    can give here (the face pack, random CLIP weights) and sizes a CPU test can afford."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("obama__1.jpg", "obama__2.jpg", "obama__3.jpg", "obama__4.jpg"):
        shutil.copy(assets / "faces" / name, photos / name)
    shutil.copy(fixtures["tiny-sd1"].safetensors, tmp_path / "sd15.safetensors")
    suite = tmp_path / "tiny-suite.yaml"
    suite.write_text(yaml.safe_dump({"steps": 2, "seeds": [1], "prompts": [{"text": "a photo of [name]"}, {"text": "[name] in a park", "kind": "editability"}]}))
    monkeypatch.chdir(ROOT)  # the README's paths are relative to the project
    args = _readme_sweep_command()
    assert args[:2] == ["titk", "sweep"]
    args = [a.replace("work/me", str(tmp_path / "work")).replace("sd15.safetensors", str(tmp_path / "sd15.safetensors"))
            .replace("photos/", str(photos)) for a in args[1:]]
    stand_ins = [
        "--set", f"base.model.config_dir={fixtures['tiny-sd1'].folder}",  # a tiny architecture needs its configs
        "--set", f"evaluation.identity.pack={assets / 'face-test-pack'}", "--set", "evaluation.clip.pretrained=null",
        "--set", f"evaluation.suite={suite}", "--set", f"objective.intermediate_suite={suite}",
        "--set", "base.data.width=64", "--set", "base.data.height=64",
        "--set", "space.train.epochs.low=2", "--set", "space.train.epochs.high=2", "--set", "space.train.epochs.step=null",
        "--n-trials", "1",
    ]
    code, out, err = run_cli(*args, *stand_ins)
    assert code == 0, err
    assert "trial 0 complete" in out and "study person-settings: 1 complete" in out
    config = load_sweep_config(ROOT / "experiments/sweeps/person-settings.yaml", [a for a in args if "=" in a and not a.startswith("-")])
    assert config.base.model.source.endswith("sd15.safetensors")


def test_eval_builds_the_toy_worlds_scorers_like_a_sweep(tmp_path, run_cli):
    """`evaluation.world: toyworld` means the same in `titk eval` as in a sweep (no insightface pack asked for)."""
    import torch

    from titk.embeddings import Embedding
    from titk.embeddings.formats import write_embedding
    from titk.toyworld.world import heldout, write_dataset

    write_dataset(tmp_path / "data", heldout(0), 4)
    emb = Embedding("ohwx", {"clip_l": torch.randn(2, 96) * 0.3})
    write_embedding(emb, tmp_path / "ohwx.pt", "a1111")
    code, out, err = run_cli("eval", tmp_path / "ohwx.pt", "-m", "toyworld", "-r", tmp_path / "data", "--suite", "toy-quick",
                             "--scorers", "identity,personality,norms", "--set", "evaluation.world=toyworld", "-o", tmp_path / "out")
    assert code == 0, err
    import json

    protocol = json.loads((tmp_path / "out" / "ohwx" / "scorecard.json").read_text())["protocol"]
    assert protocol["identity"]["face_model"].startswith("toy world vision model")
    assert "face_pack" not in protocol["identity"]
