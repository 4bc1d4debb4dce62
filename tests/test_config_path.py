"""One config path: a sweep's base file, base_overrides and --set merge the same way, and the README's
person sweep runs as typed on offline stand-ins."""

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


def test_every_shipped_recipe_and_sweep_loads():
    """The files under experiments/ are what users copy: each parses, and each sweep's base file is found."""
    from titk.config import load_train_config

    recipes = sorted((ROOT / "experiments/recipes").glob("*.yaml"))
    sweeps = sorted((ROOT / "experiments/sweeps").glob("*.yaml"))
    assert {"sdxl-kohya-bs4-400steps.yaml", "a1111-15img-bs3-ga15-200steps.yaml"} <= {p.name for p in recipes}
    assert "person-sdxl.yaml" in {p.name for p in sweeps}
    for recipe in recipes:
        assert load_train_config(recipe).model.source.startswith("path/to/"), recipe.name
    for sweep in sweeps:
        assert load_sweep_config(sweep, ["base.data.path=/photos"]).study == sweep.stem, sweep.name
    sdxl = load_sweep_config(ROOT / "experiments/sweeps/person-sdxl.yaml")
    assert sdxl.base.data.width == 1024 and sdxl.base.data.resize == "buckets" and sdxl.base.output.layout == "kohya"
