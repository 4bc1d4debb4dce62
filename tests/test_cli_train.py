"""`titk plan` and `titk train` from the command line, with bad inputs giving one line and writing nothing."""

import json
from pathlib import Path

import pytest
import yaml
from helpers import assert_one_line_error, make_images


@pytest.fixture
def setup(tmp_path, fixtures):
    data = make_images(tmp_path / "data", 6)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"source": str(fixtures["tiny-sd1"].folder), "dtype": "fp32"},
        "embedding": {"name": "ohwx", "vectors": 2},
        "train": {"batch_size": 3, "grad_accum": 6, "max_steps": 3},
        "output": {"save_every": 1, "preview": {"every": 0}},
    }))
    return tmp_path, config, data


def test_plan_prints_the_effective_numbers(run_cli, setup):
    tmp, config, data = setup
    code, out, err = run_cli("plan", config, "--dataset", data)
    assert code == 0, err
    assert "2 (asked for 6)" in out and "A1111 clamps" in out and "3 steps" in out.replace("\n", " ")
    code, out, _ = run_cli("plan", config, "--dataset", data, "--json", "--set", "train.semantics=kohya")
    assert code == 0 and '"grad_accum_eff": 6' in out


def test_plan_names_its_template_and_prints_user_text_as_written(run_cli, setup, tmp_path):
    import hashlib

    import titk

    tmp, config, data = setup
    shipped = Path(titk.__file__).parent / "data" / "templates" / "titk-subject-filewords.txt"
    digest = hashlib.sha256(shipped.read_bytes()).hexdigest()[:10]
    lines = len(shipped.read_text().splitlines())
    code, out, err = run_cli("plan", config, "--dataset", data, "--set", "train.learning_rate=0.005:100:200")
    assert code == 0, err
    flat = " ".join(out.split())
    assert f"template titk-subject-filewords ({lines} lines, sha256 {digest})" in flat
    assert "A1111's UI default is style_filewords.txt" in flat
    assert "'0.005:100:200' has two colons" in flat and "\U0001f4af" not in out  # no emoji for :100:
    a1111 = tmp_path / "textual_inversion_templates"
    a1111.mkdir()
    (a1111 / "subject.txt").write_bytes(b"a photo of [name]\n")
    code, out, err = run_cli("plan", config, "-d", data, "--set", f"data.template_dir={a1111}", "--set", "data.template=subject", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert (plan["template"], plan["template_lines"]) == (str(a1111 / "subject.txt"), 1)
    assert plan["template_sha256"] == hashlib.sha256(b"a photo of [name]\n").hexdigest()
    (a1111 / "none.txt").write_bytes(b"picture\n")  # A1111's none.txt has no [name]
    code, out, err = run_cli("plan", config, "-d", data, "--set", f"data.template_dir={a1111}", "--set", "data.template=none")
    assert code == 0, err
    assert "1 of 1 template lines lack [name]" in " ".join(out.split())
    code, _, err = run_cli("plan", config, "-d", data, "--set", "train.learning_rate='abc:100:'")
    assert_one_line_error(code, err, "'abc:100:'")


def test_train_then_resume(run_cli, setup):
    tmp, config, data = setup
    out_dir = tmp / "run"
    code, out, err = run_cli("train", config, "-d", data, "-o", out_dir)
    assert code == 0, err
    assert (out_dir / "ohwx.pt").is_file() and (out_dir / "embeddings" / "ohwx-2.pt").is_file()
    code, out, err = run_cli("train", config, "-d", data, "-o", out_dir, "--set", "train.max_steps=5", "--resume")
    assert code == 0, err
    assert "5 steps" in out


@pytest.mark.parametrize("case", ["empty", "corrupt", "setting", "vectors", "no-dataset"])
def test_bad_input_is_one_line_and_writes_nothing(run_cli, setup, case):
    tmp, config, data = setup
    args = ["train", config, "-d", data, "-o", tmp / "run"]
    needle = {"empty": "no images", "corrupt": "bad.png", "setting": "train.lr: unknown setting",
              "vectors": "1..75", "no-dataset": "data.path"}[case]
    if case == "empty":
        args[3] = tmp / "empty"
        (tmp / "empty").mkdir()
    elif case == "corrupt":
        (data / "bad.png").write_bytes(b"not a png")
    elif case == "setting":
        args += ["--set", "train.lr=0.1"]
    elif case == "vectors":
        args += ["--set", "embedding.vectors=80"]
    else:
        args = ["train", config, "-o", tmp / "run"]
    code, _, err = run_cli(*args)
    assert_one_line_error(code, err, needle)
    assert not (tmp / "run").exists()


def test_plan_works_on_a_shipped_recipe_before_its_model_is_set(tmp_path, run_cli):
    """Comparing recipes needs no checkpoint: the placeholder model.source is planned as the family's standard model."""
    import json
    from pathlib import Path

    from helpers import make_images

    recipe = Path(__file__).resolve().parents[1] / "experiments/recipes/a1111-15img-bs3-ga15-200steps.yaml"
    data = make_images(tmp_path / "photos", 15)
    code, out, err = run_cli("plan", recipe, "-d", data, "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["image_views"] == 3000 and plan["tflops_per_view"] == {"512x512": 1.6692}
    assert "is not on disk: planned with the sd1 family's standard architecture" in plan["notes"][0]
    # GPU memory of one micro-batch (3 views; auto precision is bf16 on a GPU): tests/test_memory.py tests the count
    assert plan["memory"] == {"size": "512x512", "batch": 3, "dtype": "bf16", "gradient_checkpointing": False, "weights_gib": 1.6,
                              "activations_gib": 2.13, "peak_gib": 3.74, "other_checkpointing_peak_gib": 2.23}
    # a packed group of 4 of it is one step of 12 views (docs/user-guide.md, "Packed trials")
    code, out, err = run_cli("plan", recipe, "-d", data, "--set", "train.batch_size=12", "--json")
    assert code == 0, err
    assert json.loads(out)["memory"] == {**plan["memory"], "batch": 12, "activations_gib": 8.54, "peak_gib": 10.14, "other_checkpointing_peak_gib": 4.13}
    code, out, err = run_cli("plan", recipe, "-d", data, "--set", "train.gradient_checkpointing=true", "--set", "model.dtype=fp32")
    assert code == 0, err
    assert "GPU memory about 4.46 GiB at 512x512, batch 3, fp32: denoiser weights 3.2 + activations 1.26 (without gradient checkpointing: 7.47)" in " ".join(out.split()), out
    code, _, err = run_cli("plan", recipe, "-d", data, "--family", "sd9")
    assert code == 2 and "--family" in err


def test_plan_of_the_sdxl_recipe_buckets_1024_px_and_counts_sdxls_flops(tmp_path, run_cli):
    """The SDXL recipe before its model is set: SDXL's UNet at 1024 px, portrait photos in their own bucket."""
    import json
    from pathlib import Path

    from helpers import make_images

    recipe = Path(__file__).resolve().parents[1] / "experiments/recipes/sdxl-kohya-bs4-400steps.yaml"
    data = make_images(tmp_path / "photos", 5, size=(48, 64))
    make_images(tmp_path / "square", 5, seed=1)
    for i, square in enumerate(sorted((tmp_path / "square").iterdir())):
        square.rename(data / f"sq{i}.png")
    code, out, err = run_cli("plan", recipe, "-d", data, "--family", "sdxl", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert set(plan["tflops_per_view"]) == {"1024x1024", "896x1152"} and plan["tflops_per_view"]["1024x1024"] > 8 * 1.6692
    assert "planned with the sdxl family's standard architecture" in plan["notes"][0]
