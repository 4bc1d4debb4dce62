"""Datasets: image decoding and modes, captions and templates, prompt rules, bad inputs, alpha, buckets, latents."""

import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from titk.data.dataset import alpha_weight, bucket_sizes, nearest_bucket, prepare_pixels, scan_dataset
from titk.data.images import BadImage, open_image
from titk.data.prompts import PromptBuilder, filename_caption, read_caption, read_template
from titk.errors import TitkError


def noise(w=64, h=64, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------- images


def test_modes_convert_correctly(tmp_path):
    rgba = np.dstack([noise(), np.full((64, 64), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    img = open_image(tmp_path / "rgba.png")
    assert img.rgb.mode == "RGB" and img.alpha is not None and np.asarray(img.alpha).max() == 128

    Image.fromarray(noise()[..., 0], "L").convert("LA").save(tmp_path / "la.png")
    assert open_image(tmp_path / "la.png").alpha is not None

    p = Image.fromarray(noise()).convert("P")
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    assert open_image(tmp_path / "p.png").alpha is not None

    Image.fromarray(noise()).convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert open_image(tmp_path / "cmyk.jpg").rgb.mode == "RGB"

    grey16 = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    g = np.asarray(open_image(tmp_path / "g16.png").rgb)
    assert g.shape == (64, 64, 3) and g.min() == 0 and g.max() == 255  # scaled, not clipped at 255

    Image.fromarray(noise()[..., 0], "L").save(tmp_path / "l.png")
    assert open_image(tmp_path / "l.png").rgb.mode == "RGB"


def test_exif_rotation_is_applied(tmp_path):
    img = Image.fromarray(noise(80, 40))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert open_image(tmp_path / "rot.jpg").rgb.size == (40, 80)


def _bomb_png(path: Path, side: int = 40000):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_bad_images_name_the_file(tmp_path):
    _bomb_png(tmp_path / "bomb.png")
    with pytest.raises(BadImage, match="bomb.png.*decompression bomb"):
        open_image(tmp_path / "bomb.png")
    Image.fromarray(noise(1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(BadImage, match=r"dot.png.*1×1"):
        open_image(tmp_path / "dot.png", min_side=32)
    data = (tmp_path / "dot.png").read_bytes()
    Image.fromarray(noise()).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:200])
    with pytest.raises(BadImage, match="cut.png"):
        open_image(tmp_path / "cut.png")
    (tmp_path / "fake.jpg").write_bytes(b"not an image at all" + data[:0])
    with pytest.raises(BadImage, match="fake.jpg"):
        open_image(tmp_path / "fake.jpg")


# ----------------------------------------------------------------------------------------------- datasets


def test_scan_reads_captions_and_filename_fallback(tmp_path):
    Image.fromarray(noise()).save(tmp_path / "001-a woman smiling.png")
    Image.fromarray(noise()).save(tmp_path / "b.png")
    (tmp_path / "b.txt").write_text("red hair, blue eyes\n", encoding="utf-8")
    (tmp_path / "notes.json").write_text("{}")  # not an image: ignored
    ds = scan_dataset(tmp_path)
    captions = {r.path.name: (r.caption, r.caption_from_file) for r in ds.records}
    assert captions["001-a woman smiling.png"] == ("a woman smiling", False)
    assert captions["b.png"] == ("red hair, blue eyes\n", True)  # A1111 reads the whole file, unstripped
    assert filename_caption(Path("12-x_y-z.png"), regex=r"[a-z]+", join="+") == "x+y+z"


def test_recursive_scan(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.fromarray(noise()).save(tmp_path / "sub" / "a.png")
    Image.fromarray(noise()).save(tmp_path / "b.png")
    assert len(scan_dataset(tmp_path)) == 1
    assert len(scan_dataset(tmp_path, recursive=True)) == 2


@pytest.mark.parametrize("case", ["empty", "only_corrupt", "one_corrupt", "not_utf8", "tiny", "bomb", "missing"])
def test_bad_datasets_are_one_clear_error(tmp_path, case):
    folder = tmp_path / "data"
    folder.mkdir()
    if case not in ("empty", "only_corrupt", "missing"):
        for i in range(3):
            Image.fromarray(noise(seed=i)).save(folder / f"good{i}.png")
    if case == "only_corrupt":
        (folder / "x.png").write_bytes(b"garbage")
        (folder / "y.jpg").write_bytes(b"garbage")
    expected = {
        "empty": "no images found", "only_corrupt": "x.png", "one_corrupt": "broken.jpg", "not_utf8": "good1.txt",
        "tiny": "dot.png", "bomb": "bomb.png", "missing": "not found",
    }[case]
    if case == "one_corrupt":
        (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    if case == "not_utf8":
        (folder / "good1.txt").write_bytes("caf\xe9".encode("latin-1"))
    if case == "tiny":
        Image.fromarray(noise(1, 1)).save(folder / "dot.png")
    if case == "bomb":
        _bomb_png(folder / "bomb.png")
    with pytest.raises(TitkError, match=expected):
        scan_dataset(folder if case != "missing" else tmp_path / "nope")


def test_skip_policy_lists_bad_files(tmp_path):
    Image.fromarray(noise()).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"garbage")
    ds = scan_dataset(tmp_path, on_bad_image="skip")
    assert len(ds) == 1 and "bad.png" in ds.skipped[0]


# ----------------------------------------------------------------------------------------------- prompts


def test_templates_and_prompt_rules():
    lines = read_template("titk-subject-filewords")
    assert all("[name]" in line and "[filewords]" in line for line in lines)
    fixed = PromptBuilder("a1111", ["a photo of [name], [filewords]"], "ohwx", False, 0.0)
    assert fixed.fixed_per_image
    assert fixed.build("red hair, blue eyes", random.Random(0)) == "a photo of ohwx, red hair, blue eyes"
    shuffled = PromptBuilder("a1111", ["[filewords]"], "ohwx", True, 0.0)
    assert not shuffled.fixed_per_image
    outs = {shuffled.build("a,b,c,d", random.Random(i)) for i in range(30)}
    assert len(outs) > 1 and all(sorted(o.split(",")) == ["a", "b", "c", "d"] for o in outs)  # pieces kept unstripped
    dropout = PromptBuilder("a1111", ["[filewords]"], "ohwx", False, 1.0)
    assert dropout.build("a, b", random.Random(0)) == ""  # p=1 drops every tag
    kohya = PromptBuilder("kohya", ["[filewords]"], "ohwx", False, 0.0)
    assert kohya.build("  ohwx, smiling  \nsecond line", random.Random(0)) == "ohwx, smiling"


def test_template_file_and_bad_template(tmp_path):
    (tmp_path / "t.txt").write_text("one [name]\n\ntwo [name]\n")
    assert read_template(str(tmp_path / "t.txt")) == ["one [name]", "", "two [name]"]
    with pytest.raises(TitkError, match="neither a shipped template"):
        read_template("no-such-template")


def test_template_names_never_collide_with_a1111s_and_a1111_folders_are_read(tmp_path):
    import hashlib

    from titk.data.prompts import A1111_TEMPLATES, find_template, shipped_templates

    assert shipped_templates() and all(name.startswith("titk-") for name in shipped_templates())
    assert not set(shipped_templates()) & set(A1111_TEMPLATES)
    with pytest.raises(TitkError, match="'subject_filewords' is one of A1111's templates.*template_dir.*titk-subject-filewords"):
        find_template("subject_filewords")
    # A user's A1111 folder: a name (with or without .txt), also in a subfolder as A1111 lists them
    folder = tmp_path / "textual_inversion_templates"
    (folder / "mine").mkdir(parents=True)
    raw = b"a photo of a [name], [filewords]\r\na rendering of a [name]\n\n"
    (folder / "subject_filewords.txt").write_bytes(raw)
    (folder / "mine" / "deep.txt").write_text("[name]\n")
    for name in ("subject_filewords", "subject_filewords.txt"):
        t = find_template(name, folder)
        assert t.source == str(folder / "subject_filewords.txt")
        assert t.lines == ["a photo of a [name], [filewords]", "a rendering of a [name]", ""]  # readlines, stripped
        assert t.sha256 == hashlib.sha256(raw).hexdigest()
        assert t.describe() == f"{folder / 'subject_filewords.txt'} (3 lines, sha256 {hashlib.sha256(raw).hexdigest()[:10]})"
    assert find_template("deep", folder).lines == ["[name]"]
    assert find_template(str(folder / "subject_filewords.txt")).lines[0] == "a photo of a [name], [filewords]"  # a file path
    assert find_template("titk-subject", folder).source == "titk-subject"  # titk's own still found beside a folder
    with pytest.raises(TitkError, match="is a folder; set data.template_dir to it.*subject_filewords"):
        find_template(str(folder))
    with pytest.raises(TitkError, match=f"'style' is neither a shipped template .*, in {folder} nor a file"):
        find_template("style", folder)
    with pytest.raises(TitkError, match="data.template_dir: .*nope is not a folder"):
        find_template("style", tmp_path / "nope")


def test_caption_not_utf8(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(TitkError, match="a.txt.*not UTF-8"):
        read_caption(tmp_path / "a.png", ".txt")


# ----------------------------------------------------------------------------------------------- alpha, buckets


def test_alpha_weight_min_zero_mean_one_and_uniform_gives_ones():
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, 16, dtype=np.uint8), (8, 1)))  # 16 wide, 8 tall
    w = alpha_weight(alpha, (16, 8))
    assert w.shape == (8, 16)  # (w, h) order respected for non-square maps
    assert float(w.min()) == 0.0 and float(w.mean()) == pytest.approx(1.0)
    uniform = alpha_weight(Image.new("L", (8, 8), 255), (4, 4))
    assert torch.equal(uniform, torch.ones(4, 4))
    assert alpha_weight(None, (4, 4)) is None


def test_buckets_cover_and_crop(tmp_path):
    buckets = bucket_sizes(512, 64)
    assert (512, 512) in buckets and all(w % 64 == 0 and h % 64 == 0 for w, h in buckets)
    assert all(w * h <= 512 * 512 for w, h in buckets)
    assert nearest_bucket(1000, 500, buckets)[0] > nearest_bucket(1000, 500, buckets)[1]
    Image.fromarray(noise(120, 60)).save(tmp_path / "wide.png")
    rec = scan_dataset(tmp_path).records[0]
    pixels, _ = prepare_pixels(rec, (128, 64), "buckets")
    assert pixels.shape == (3, 64, 128) and -1.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0
    stretched, _ = prepare_pixels(rec, (64, 64), "stretch")
    assert stretched.shape == (3, 64, 64)


# ----------------------------------------------------------------------------------------------- latent cache


def test_latent_cache_encodes_once_and_follows_image_changes(tmp_path, fixtures, monkeypatch):
    from titk.data.latents import LatentCache, sample_latent
    from titk.models import load_model

    bundle = load_model(fixtures["tiny-sd1"].folder, dtype="fp32")
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.fromarray(noise(seed=i)).save(data / f"{i}.png")
    calls = []
    original = LatentCache._encode
    monkeypatch.setattr(LatentCache, "_encode", lambda self, px: calls.append(len(px)) or original(self, px))
    cache = LatentCache(tmp_path / "cache", bundle)
    ds = scan_dataset(data)
    first = cache.load_or_encode(ds, [(64, 64)] * 3, "stretch", use_alpha=False)
    assert sum(calls) == 3
    again = LatentCache(tmp_path / "cache", bundle).load_or_encode(ds, [(64, 64)] * 3, "stretch", use_alpha=False)
    assert sum(calls) == 3 and torch.equal(first[0].mean, again[0].mean)  # reused across runs
    Image.fromarray(noise(seed=99)).save(data / "1.png")
    cache.load_or_encode(scan_dataset(data), [(64, 64)] * 3, "stretch", use_alpha=False)
    assert sum(calls) == 4  # only the changed image
    lat, sha = first[0], ds.records[0].sha256
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(sample_latent(lat, "deterministic", 0.5, 0, sha, gen), lat.mean * 0.5)
    once = [sample_latent(lat, "once", 1.0, 0, sha, torch.Generator().manual_seed(k)) for k in range(2)]
    assert torch.equal(once[0], once[1]) and not torch.equal(once[0], lat.mean)
    rand = [sample_latent(lat, "random", 1.0, 0, sha, gen) for _ in range(2)]
    assert not torch.equal(rand[0], rand[1])
