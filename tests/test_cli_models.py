"""`titk inspect` and `titk doctor` on good and bad inputs: one clear line and a non-zero exit for mistakes."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import assert_one_line_error
from safetensors.torch import save_file


def test_help_lists_the_commands(run_cli):
    code, out, _ = run_cli("--help")
    assert code == 0
    for command in ("doctor", "inspect"):
        assert command in out


@pytest.mark.parametrize("args, needle", [
    (["toyworld", "dataset", "out", "--n", "abc"], "--n"),
    (["toyworld", "pretrain", "--stop-at", "0"], "--stop-at"),
    (["train"], "config"),
    (["nosuch"], "nosuch"),
])
def test_command_line_mistakes_are_one_line(run_cli, args, needle):
    code, _, err = run_cli(*args)
    assert_one_line_error(code, err, needle, "--help")
    assert code == 2


def test_doctor_runs_offline(run_cli):
    code, out, _ = run_cli("doctor", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["versions"]["torch"] == torch.__version__.split("+")[0]
    assert "sdpa" in report["devices"] and "auto device / dtype" in report["devices"]
    assert "offline" in report["model hub"]["huggingface.co"]
    assert "face packs" in report["locations"]


def test_inspect_describes_a_model(run_cli, fixtures):
    code, out, err = run_cli("inspect", fixtures["tiny-sdxl"].ckpt, "--model-config", fixtures["tiny-sdxl"].folder)
    assert code == 0, err
    assert "sdxl" in out and "clip_g (64)" in out


def test_missing_path(run_cli, tmp_path):
    code, _, err = run_cli("inspect", tmp_path / "nowhere" / "model.safetensors")
    assert_one_line_error(code, err, "model.safetensors", "no such file")


def test_folder_that_is_not_a_pipeline(run_cli, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    code, _, err = run_cli("inspect", tmp_path)
    assert_one_line_error(code, err, str(tmp_path), "not a diffusers pipeline folder")


def test_folder_with_missing_weights(run_cli, fixtures, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(fixtures["tiny-sd1"].folder, broken)
    for f in (broken / "unet").glob("*.safetensors"):
        f.unlink()
    code, _, err = run_cli("inspect", broken)
    assert_one_line_error(code, err, str(broken), "could not load")


def test_truncated_safetensors(run_cli, fixtures, tmp_path):
    data = fixtures["tiny-sd1"].safetensors.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    code, _, err = run_cli("inspect", cut, "--model-config", fixtures["tiny-sd1"].folder)
    assert_one_line_error(code, err, "cut.safetensors", "truncated")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    code, _, err = run_cli("inspect", empty)
    assert_one_line_error(code, err, "empty.safetensors")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused_and_never_run(run_cli, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _RunsCode(marker)}, evil)
    code, _, err = run_cli("inspect", evil)
    assert_one_line_error(code, err, "evil.ckpt", "refused")
    assert "system" in err
    assert not marker.exists(), "the pickle's code ran"


def test_unknown_architectures(run_cli, tmp_path):
    sd3 = tmp_path / "sd3.safetensors"
    save_file({"model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight": torch.zeros(2, 2)}, str(sd3))
    code, _, err = run_cli("inspect", sd3)
    assert_one_line_error(code, err, "sd3.safetensors", "an SD3 single file needs its clip_l and clip_g text encoders; it holds none")
    other = tmp_path / "vae.safetensors"
    save_file({f"encoder.down.{i}.conv.weight": torch.zeros(2, 2) for i in range(3)}, str(other))
    code, _, err = run_cli("inspect", other)
    assert_one_line_error(code, err, "vae.safetensors", "no Stable Diffusion UNet")
    inpaint = tmp_path / "inpaint.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 9, 3, 3)}, str(inpaint))
    code, _, err = run_cli("inspect", inpaint)
    assert_one_line_error(code, err, "inpaint.safetensors", "9 input channels")
    unet = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}
    half_sdxl = tmp_path / "sdxl.safetensors"  # CLIP-G's token table but no CLIP-L
    save_file({**unet, "conditioner.embedders.1.model.token_embedding.weight": torch.zeros(2, 2)}, str(half_sdxl))
    code, _, err = run_cli("inspect", half_sdxl)
    assert_one_line_error(code, err, "sdxl.safetensors", "SDXL checkpoint without its CLIP-L encoder")
    unet_only = tmp_path / "unet.safetensors"
    save_file(unet, str(unet_only))
    code, _, err = run_cli("inspect", unet_only)
    assert_one_line_error(code, err, "unet.safetensors", "a UNet but no text encoder titk recognises")
    pixart = tmp_path / "pixart"
    pixart.mkdir()
    (pixart / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    code, _, err = run_cli("inspect", pixart)
    assert_one_line_error(code, err, "PixArtAlphaPipeline", "does not support")
    (pixart / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))  # a Flux folder without its parts
    code, _, err = run_cli("inspect", pixart)
    assert_one_line_error(code, err, "pixart: could not load the pipeline")


def test_non_standard_single_file_without_config_names_the_mismatch(run_cli, fixtures):
    code, _, err = run_cli("inspect", fixtures["tiny-sd1"].safetensors)
    assert_one_line_error(code, err, "tiny-sd1.safetensors", "UNet width is 32", "--model-config")


def test_hub_id_offline_says_to_pass_a_local_path(run_cli):
    code, _, err = run_cli("inspect", "stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert_one_line_error(code, err, "stable-diffusion-v1-5/stable-diffusion-v1-5", "pass a local path", "offline")


def test_console_script_prints_one_line_and_exits_non_zero(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "titk", "inspect", str(tmp_path / "missing.ckpt")],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "40"},
    )
    assert_one_line_error(proc.returncode, proc.stderr, "missing.ckpt")


@pytest.mark.parametrize("bad", ["fp8", "cuda:7"])
def test_bad_precision_or_device(run_cli, fixtures, bad):
    option = "--dtype" if bad == "fp8" else "--device"
    code, _, err = run_cli("inspect", fixtures["tiny-sd1"].folder, option, bad)
    assert_one_line_error(code, err)


def test_version(run_cli):
    import titk

    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == f"titk {titk.__version__}"
