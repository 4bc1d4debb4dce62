"""Embedding files: round trips, diffusers' loader, A1111's and kohya's loading rules, bad files, CLI."""

import os
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error
from PIL import Image
from safetensors.torch import load_file, save_file

from titk.embeddings import Embedding
from titk.embeddings.fit import vectors_for
from titk.embeddings.formats import read_embedding_file, write_embedding
from titk.embeddings.png import read_image_embedding
from titk.errors import TitkError


def emb(widths: dict, n=3, name="ohwx", seed=0, **kw) -> Embedding:
    g = torch.Generator().manual_seed(seed)
    return Embedding(name, {k: torch.randn(n, w, generator=g) for k, w in widths.items()}, **kw)


FAMILIES = {
    "sd1": {"clip_l": 768},
    "sd2": {"clip_h": 1024},
    "sdxl": {"clip_l": 768, "clip_g": 1280},
    "sd3": {"clip_l": 768, "clip_g": 1280, "t5": 4096},
    "flux": {"clip_l": 768, "t5": 4096},
}
SUFFIX = {"a1111": ".pt", "safetensors": ".safetensors", "kohya": ".safetensors", "diffusers": ".safetensors", "onetrainer": ".safetensors", "png": ".png"}


def same(a: Embedding, b: Embedding) -> bool:
    if a.n_vectors != b.n_vectors or len(a.vectors) != len(b.vectors):
        return False
    if len(a.vectors) == 1:
        return torch.equal(a.single, b.single)
    return all(torch.equal(a.vectors[k], b.vectors[k]) for k in a.vectors)


# ----------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("fmt", sorted(SUFFIX))
def test_every_format_round_trips(tmp_path, family, fmt):
    original = emb(FAMILIES[family], step=42, base_model_hash="0123456789", base_model_name="base")
    path = tmp_path / f"ohwx{SUFFIX[fmt]}"
    if fmt == "diffusers" and family in ("sd3", "flux"):
        with pytest.raises(TitkError, match="no file layout"):
            write_embedding(original, path, fmt)
        return
    files = write_embedding(original, path, fmt)
    assert all(f.is_file() for f in files)
    found = read_embedding_file(path)
    assert same(found.embedding, original)
    assert found.embedding.family == family
    expected_format = {
        ("diffusers", "sdxl"): "diffusers-sdxl-pair", ("png", "sd1"): "a1111-png", ("png", "sd2"): "a1111-png",
    }.get((fmt, family))
    if expected_format is None and family in ("sdxl", "sd3", "flux") and fmt != "png":
        expected_format = family
    if expected_format is None:
        expected_format = {"png": "a1111-png"}.get(fmt, fmt)
    assert found.format == expected_format
    if fmt in ("a1111", "safetensors", "png") and family in ("sd1", "sd2"):
        assert found.embedding.step == 42 and found.embedding.base_model_hash == "0123456789"


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_t5_vectors_are_written_for_comfyui_and_onetrainer_and_read_under_either_key(tmp_path, family):
    """ComfyUI reads T5 vectors under `t5xxl`, OneTrainer under `t5`: titk's files carry both (the OneTrainer
    layout exactly OneTrainer's), and a file with either is read."""
    original = emb(FAMILIES[family])
    write_embedding(original, tmp_path / "both.safetensors", "safetensors")
    stored = load_file(tmp_path / "both.safetensors")
    assert set(stored) == set(FAMILIES[family]) | {"t5xxl"} and torch.equal(stored["t5xxl"], stored["t5"])
    write_embedding(original, tmp_path / "ot.safetensors", "onetrainer")
    assert "t5xxl" not in load_file(tmp_path / "ot.safetensors")
    write_embedding(original, tmp_path / "kohya.safetensors", "kohya")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "kohya.safetensors"), "pt") as f:
        meta = f.metadata()
    arch, code = {"sd3": ("stable-diffusion-3", "Stability-AI"), "flux": ("flux-1-dev", "black-forest-labs")}[family]
    assert meta["modelspec.architecture"] == f"{arch}/textual-inversion" and code in meta["modelspec.implementation"]
    comfy = {("t5xxl" if k == "t5" else k): v for k, v in original.vectors.items()}
    save_file(comfy, str(tmp_path / "comfy.safetensors"))
    for name in ("both", "ot", "comfy"):
        found = read_embedding_file(tmp_path / f"{name}.safetensors")
        assert found.format == family and same(found.embedding, original), name
    save_file({**comfy, "t5": torch.zeros(3, 4096)}, str(tmp_path / "torn.safetensors"))
    with pytest.raises(TitkError, match="t5 and t5xxl hold different vectors"):
        read_embedding_file(tmp_path / "torn.safetensors")


def test_onetrainers_mislabelled_flux_files_are_read_as_clip_l(tmp_path):
    """OneTrainer wrote Flux's CLIP-L vectors under clip_g for five months (OneTrainer#514: ComfyUI then says
    "768 != 4096"); titk reads such a file as the Flux embedding it is and says so."""
    original = emb(FAMILIES["flux"])
    save_file({"clip_g": original.vectors["clip_l"], "t5": original.vectors["t5"]}, str(tmp_path / "old.safetensors"))
    found = read_embedding_file(tmp_path / "old.safetensors")
    assert found.format == "flux-clip-g-mislabelled" and found.embedding.family == "flux" and same(found.embedding, original)


def test_onetrainer_output_vectors_round_trip(tmp_path):
    original = emb({"clip_l": 768}, output_vectors={"clip_l": torch.randn(3, 768)})
    write_embedding(original, tmp_path / "ot.safetensors", "onetrainer")
    assert set(load_file(tmp_path / "ot.safetensors")) == {"emp_params", "emp_params_out"}
    back = read_embedding_file(tmp_path / "ot.safetensors").embedding
    assert torch.equal(back.output_vectors["clip_l"], original.output_vectors["clip_l"])


def test_a1111_pt_is_exactly_a1111s_dict(tmp_path):
    write_embedding(emb({"clip_l": 768}, step=7, base_model_hash="abcdef0123", base_model_name="sd15"), tmp_path / "ohwx.pt")
    data = torch.load(tmp_path / "ohwx.pt", weights_only=True)
    assert set(data) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
    assert data["string_to_token"] == {"*": 265} and list(data["string_to_param"]) == ["*"]
    t = data["string_to_param"]["*"]
    assert t.dtype == torch.float32 and t.device.type == "cpu" and not t.requires_grad
    assert (data["name"], data["step"], data["sd_checkpoint"], data["sd_checkpoint_name"]) == ("ohwx", 7, "abcdef0123", "sd15")


def test_old_parameterdict_form_and_half_precision(tmp_path):
    t = torch.randn(2, 768)
    torch.save({"string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(t)}), "name": "old", "step": 3}, tmp_path / "old.pt")
    found = read_embedding_file(tmp_path / "old.pt")
    assert found.format == "a1111" and torch.equal(found.embedding.single, t) and found.embedding.step == 3
    save_file({"emb_params": t.half()}, str(tmp_path / "half.safetensors"))
    found = read_embedding_file(tmp_path / "half.safetensors")
    assert found.format == "kohya" and found.stored_dtype == "float16"


def test_png_survives_losing_its_text_chunk(tmp_path):
    original = emb({"clip_l": 768})
    write_embedding(original, tmp_path / "e.png")
    Image.open(tmp_path / "e.png").convert("RGB").save(tmp_path / "stripped.png")  # re-encoded: no chunk
    assert "sd-ti-embedding" not in Image.open(tmp_path / "stripped.png").info
    assert same(read_embedding_file(tmp_path / "stripped.png").embedding, original)
    Image.open(tmp_path / "e.png").save(tmp_path / "e.webp", lossless=True)
    assert same(read_embedding_file(tmp_path / "e.webp").embedding, original)


# ----------------------------------------------------------------------------------------------- diffusers


@pytest.mark.parametrize("fmt", ["a1111", "safetensors", "kohya", "diffusers", "onetrainer"])
def test_diffusers_loads_every_single_encoder_format(tmp_path, fixtures, fmt):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(fixtures["tiny-sd1"].folder, safety_checker=None, requires_safety_checker=False)
    original = emb({"clip_l": 32}, n=4, name="ohwx")
    path = tmp_path / f"ohwx{SUFFIX[fmt]}"
    write_embedding(original, path, fmt)
    token = None if fmt in ("a1111", "safetensors", "diffusers") else "ohwx"  # kohya/OneTrainer keys need token=
    pipe.load_textual_inversion(str(path), token=token)
    prompt = pipe.maybe_convert_prompt("a photo of ohwx", pipe.tokenizer)
    assert prompt == "a photo of ohwx ohwx_1 ohwx_2 ohwx_3"
    ids = pipe.tokenizer.convert_tokens_to_ids(["ohwx", "ohwx_1", "ohwx_2", "ohwx_3"])
    rows = pipe.text_encoder.get_input_embeddings().weight[ids]
    assert torch.equal(rows.detach(), original.single)


@pytest.mark.parametrize("fmt", ["safetensors", "diffusers", "onetrainer", "kohya"])
def test_diffusers_loads_both_sdxl_encoders(tmp_path, fixtures, fmt):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(fixtures["tiny-sdxl"].folder)
    original = Embedding("ohwx", {"clip_l": torch.randn(2, 32), "clip_g": torch.randn(2, 64)})
    path = tmp_path / f"ohwx{SUFFIX[fmt]}"
    files = write_embedding(original, path, fmt)
    if fmt == "diffusers":  # two files, one call each
        pipe.load_textual_inversion(str(files[0]), token="ohwx", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
        pipe.load_textual_inversion(str(files[1]), token="ohwx", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    else:  # one file holding clip_l and clip_g: two calls on its parts
        state = load_file(path)
        pipe.load_textual_inversion(state["clip_l"], token="ohwx", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
        pipe.load_textual_inversion(state["clip_g"], token="ohwx", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    for tok, te, key in ((pipe.tokenizer, pipe.text_encoder, "clip_l"), (pipe.tokenizer_2, pipe.text_encoder_2, "clip_g")):
        assert pipe.maybe_convert_prompt("ohwx", tok) == "ohwx ohwx_1"
        rows = te.get_input_embeddings().weight[tok.convert_tokens_to_ids(["ohwx", "ohwx_1"])]
        assert torch.equal(rows.detach(), original.vectors[key])


# ----------------------------------------------------------------------------------------------- A1111 and kohya rules


def a1111_load(path: Path, expected_width: int):
    """A1111's EmbeddingDatabase.load_from_file rules as formats.md §2.1 states them.

    Returns (token, vec) where vec is a tensor or a {clip_l, clip_g} dict, or "skipped" on a width mismatch.
    """
    suffix = path.suffix.lower()
    if suffix in (".png", ".webp"):
        data = read_image_embedding(Image.open(path))
        token = data.get("name", path.stem)
    elif suffix == ".safetensors":
        data, token = load_file(str(path)), path.stem
    else:
        data, token = torch.load(path, map_location="cpu", weights_only=True), path.stem
    if "string_to_param" in data:
        params = getattr(data["string_to_param"], "_parameters", data["string_to_param"])
        assert len(params) == 1, "embedding file has multiple terms in it"
        vec = next(iter(params.values()))
    elif "clip_g" in data and "clip_l" in data:
        vec = {"clip_g": data["clip_g"], "clip_l": data["clip_l"]}
        width = data["clip_g"].shape[-1] + data["clip_l"].shape[-1]
        return (token, vec) if width == expected_width else "skipped"
    elif isinstance(next(iter(data.values())), torch.Tensor):
        assert len(data) == 1, "embedding file has multiple terms in it"
        vec = next(iter(data.values()))
    else:
        raise AssertionError("Couldn't identify as neither textual inversion embedding nor diffuser concept")
    if vec.ndim == 1:
        vec = vec[None]
    return (token, vec) if vec.shape[-1] == expected_width else "skipped"


@pytest.mark.parametrize("fmt", ["a1111", "safetensors", "kohya", "diffusers", "onetrainer", "png"])
def test_written_files_satisfy_a1111s_loader(tmp_path, fmt):
    original = emb({"clip_l": 768})
    path = tmp_path / f"my-face{SUFFIX[fmt]}"
    original.name = "my-face"  # titk stores the name equal to the file stem
    write_embedding(original, path, fmt)
    token, vec = a1111_load(path, 768)
    assert token == "my-face" and torch.equal(vec, original.single)
    assert a1111_load(path, 1024) == "skipped"  # a width mismatch is skipped, as A1111 does


def test_sdxl_files_satisfy_a1111s_loader(tmp_path):
    original = emb({"clip_l": 768, "clip_g": 1280})
    for fmt in ("a1111", "safetensors", "kohya", "onetrainer"):
        path = tmp_path / f"xl-{fmt}{SUFFIX[fmt]}"
        write_embedding(original, path, fmt)
        token, vec = a1111_load(path, 768 + 1280)
        assert torch.equal(vec["clip_g"], original.vectors["clip_g"]) and torch.equal(vec["clip_l"], original.vectors["clip_l"])


def test_a1111_rules_refuse_multi_term_files_and_convert_fixes_them(tmp_path, run_cli):
    path = tmp_path / "ot.safetensors"
    write_embedding(emb({"clip_l": 768}, output_vectors={"clip_l": torch.randn(3, 768)}), path, "onetrainer")
    with pytest.raises(AssertionError, match="multiple terms"):
        a1111_load(path, 768)
    code, out, err = run_cli("convert", path, tmp_path / "fixed.pt")
    assert code == 0, err
    assert "left out" in out  # the _out vectors have no place in an A1111 file
    token, vec = a1111_load(tmp_path / "fixed.pt", 768)
    assert token == "fixed" and vec.shape == (3, 768)


def kohya_weights(path: Path, n_vectors: int, sdxl: bool = False):
    """kohya's --weights rules (formats.md §2.3): first tensor, or A1111's string_to_param; N must match."""
    data = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
    if sdxl:
        return data["clip_l"], data["clip_g"]
    if "string_to_param" in data:
        tensor = next(iter(data["string_to_param"].values()))
    else:
        tensor = next(iter(data.values()))
    assert tensor.shape[0] == n_vectors, "num_vectors_per_token mismatch"
    return tensor


@pytest.mark.parametrize("fmt", ["a1111", "safetensors", "kohya", "diffusers", "onetrainer"])
def test_written_files_satisfy_kohyas_weights_rules(tmp_path, fmt):
    original = emb({"clip_l": 768}, n=4)
    path = tmp_path / f"w{SUFFIX[fmt]}"
    write_embedding(original, path, fmt)
    assert torch.equal(kohya_weights(path, 4), original.single)
    xl = emb({"clip_l": 768, "clip_g": 1280})
    write_embedding(xl, tmp_path / "xl.safetensors", "kohya")
    l, g = kohya_weights(tmp_path / "xl.safetensors", 3, sdxl=True)
    assert torch.equal(g, xl.vectors["clip_g"])


# ----------------------------------------------------------------------------------------------- bad files


def test_bad_embedding_files(tmp_path):
    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"string_to_param": {"*": torch.zeros(1, 768)}, "x": RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(TitkError, match="refused.*system"):
        read_embedding_file(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    write_embedding(emb({"clip_l": 768}), tmp_path / "ok.safetensors")
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:100])
    with pytest.raises(TitkError, match="cut.safetensors.*truncated"):
        read_embedding_file(tmp_path / "cut.safetensors")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(TitkError, match="empty"):
        read_embedding_file(tmp_path / "empty.pt")
    torch.save({"string_to_param": {"*": torch.zeros(1, 768)}}, tmp_path / "cut.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "cut.pt").read_bytes()[:50])
    with pytest.raises(TitkError, match="cut.pt"):
        read_embedding_file(tmp_path / "cut.pt")
    save_file({"a": torch.zeros(2, 768), "b": torch.zeros(2, 768)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(TitkError, match="not an embedding layout"):
        read_embedding_file(tmp_path / "two.safetensors")
    torch.save({"string_to_param": {"*": torch.zeros(1, 768), "x": torch.zeros(1, 768)}}, tmp_path / "multi.pt")
    with pytest.raises(TitkError, match="exactly one term"):
        read_embedding_file(tmp_path / "multi.pt")
    Image.new("RGB", (32, 32)).save(tmp_path / "plain.png")
    with pytest.raises(TitkError, match="without an embedding"):
        read_embedding_file(tmp_path / "plain.png")


def test_width_mismatch_names_both_widths(fixtures):
    from titk.models import load_model

    sd1 = load_model(fixtures["tiny-sd1"].folder, dtype="fp32")
    with pytest.raises(TitkError, match="width 768 does not fit tiny-sd1 \\(text encoder width 32\\)"):
        vectors_for(emb({"clip_l": 768}), sd1, "x.pt")
    xl = load_model(fixtures["tiny-sdxl"].folder, dtype="fp32")
    with pytest.raises(TitkError, match="needs clip_l \\(32\\) and clip_g \\(64\\)"):
        vectors_for(emb({"clip_l": 32}), xl, "x.pt")
    fitted = vectors_for(Embedding("x", {"clip_l": torch.zeros(2, 32), "clip_g": torch.zeros(2, 64)}), xl)
    assert set(fitted) == {"clip_l", "clip_g"}
    # an SD3 file holds both of SDXL's CLIP tensors and a T5 one: refused rather than loaded half
    sd3 = Embedding("x", {"clip_l": torch.zeros(2, 32), "clip_g": torch.zeros(2, 64), "t5": torch.zeros(2, 4096)}, family="sd3")
    with pytest.raises(TitkError, match=r"t5 4096, made for sd3\) holds more than tiny-sdxl has encoders for; it needs clip_l"):
        vectors_for(sd3, xl, "x.safetensors")


# ----------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("fmt", sorted(SUFFIX))
def test_cli_convert_and_inspect_every_format(tmp_path, run_cli, fmt):
    src = tmp_path / "src.pt"
    write_embedding(emb({"clip_l": 768}, step=5, base_model_hash="aaaaaaaaaa", base_model_name="sd15"), src)
    out = tmp_path / f"face{SUFFIX[fmt]}"
    code, _, err = run_cli("convert", src, out, "--to", fmt)
    assert code == 0, err
    code, text, err = run_cli("inspect", out)
    assert code == 0, err
    assert "3 × 768" in text and "SD1.x" in text
    if fmt == "png":
        assert "a picture carrying the embedding" in text
    else:
        assert "3 vectors × 768 × 4 bytes (float32)" in text


def test_cli_inspect_with_model_and_errors(tmp_path, run_cli, fixtures):
    path = tmp_path / "tiny.pt"
    write_embedding(emb({"clip_l": 32}, n=2), path)
    code, text, err = run_cli("inspect", path, "--model", fixtures["tiny-sd1"].folder)
    assert code == 0, err
    assert "fits model" in text and "nearest:" in text and "vocabulary median" in text
    code, text, _ = run_cli("inspect", path, "--model", fixtures["tiny-sdxl"].folder)
    assert code == 0 and "no:" in text
    (tmp_path / "junk.pt").write_bytes(b"junk")
    code, _, err = run_cli("inspect", tmp_path / "junk.pt")
    assert_one_line_error(code, err, "junk.pt")
    code, _, err = run_cli("convert", path, tmp_path / "x.pt", "--to", "nope")
    assert_one_line_error(code, err, "--to", "'nope' is not one of", "onetrainer")


def test_written_files_get_the_usual_permissions(tmp_path):
    """safetensors creates 0600 files; titk's outputs follow the umask like any other file."""
    import os
    import stat

    from titk.embeddings import Embedding
    from titk.embeddings.formats import write_embedding

    old = os.umask(0o022)
    try:
        files = write_embedding(Embedding("ohwx", {"clip_l": torch.randn(2, 768)}), tmp_path / "ohwx.safetensors", "safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o644
