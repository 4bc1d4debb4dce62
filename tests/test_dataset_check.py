"""`titk dataset check`: intruders in a mixed folder, captions per template, the contact sheet, the CLI."""

import math
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import assert_one_line_error, make_images
from PIL import Image, ImageFilter

from titk.config import DatasetCheckSettings, IdentitySettings
from titk.evaluate.dataset_check import INTRUDER, PERSON, check_dataset, find_person

# The assets' faces/ folder: 5 photos of Obama and 6 other people (2 of Biden, 4 of one photo each), the
# case where the person the folder is of has fewer photos than everyone else together.
PERSON_FILES = [f"obama__{n}.jpg" for n in range(1, 6)]
OTHERS = ["biden__1.jpg", "biden__2.jpg", "astronaut__1.png", "gauss__1.png", "newton__1.png", "group_solvay_1927.jpg"]


@pytest.fixture(scope="module")
def faces(assets):
    from titk.evaluate.scorers.identity import InsightFaceEmbedder

    return InsightFaceEmbedder(IdentitySettings(pack=str(assets / "face-test-pack"), det_size=640))


@pytest.fixture(scope="module")
def mixed(assets, faces, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed")
    for name in PERSON_FILES + OTHERS:
        shutil.copy(assets / "faces" / name, folder / name)
    (folder / "obama__2.txt").write_text("obama at a lectern")
    return check_dataset(folder, DatasetCheckSettings(), face_embedder=faces)


def test_every_other_person_is_an_intruder_when_the_person_has_few_photos(mixed):
    rows = mixed.table.set_index("file")
    assert len(rows) == 11
    for name in OTHERS:
        assert "intruder" in rows.loc[name, "flags"], name
    for name in PERSON_FILES:
        assert "intruder" not in rows.loc[name, "flags"], name
    assert rows.loc[OTHERS, "person"].tolist() == [False] * 6 and rows.loc[PERSON_FILES, "person"].tolist() == [True] * 5
    assert "also in biden__2.jpg" in rows.loc["biden__1.jpg", "flags"]
    # Every person photo is more like the others of the person than any intruder is.
    assert rows.loc[PERSON_FILES, "identity_sim"].min() > 0.5 > 0.3 > rows.loc[OTHERS, "identity_sim"].max()
    assert mixed.summary["person"] == 5 and mixed.summary["intruders"] == 6 and mixed.summary["identity_note"] == ""


def test_other_checks_on_real_photos(mixed):
    rows = mixed.table.set_index("file")
    assert rows.loc["obama__1.jpg", "near_duplicates"] == "obama__5.jpg"
    assert rows.loc["obama__5.jpg", "near_duplicates"] == "obama__1.jpg"
    assert all(rows.loc[f, "near_duplicates"] == "" for f in ("obama__2.jpg", "obama__3.jpg", "obama__4.jpg", "biden__1.jpg"))
    assert bool(rows.loc["obama__2.jpg", "caption"]) and "no caption" in rows.loc["obama__3.jpg", "flags"]
    assert "no caption" not in rows.loc["obama__2.jpg", "flags"]
    assert rows.loc["group_solvay_1927.jpg", "faces"] == 29 and "small face" in rows.loc["group_solvay_1927.jpg", "flags"]
    assert (rows.loc[PERSON_FILES + OTHERS[:-1], "faces"] == 1).all() and (rows["sharpness"] > 30).all()


def _cells(report, thumb=192):
    """Each image's thumbnail area on the contact sheet (the layout contact_sheet draws)."""
    cols = max(1, min(6, math.ceil(math.sqrt(len(report.table)))))
    sheet = np.asarray(report.sheet)
    for k, name in enumerate(report.table["file"]):
        x, y = (k % cols) * thumb, (k // cols) * (thumb + 56)
        yield name, sheet[y : y + thumb, x : x + thumb]


def _share(cell, colour) -> float:
    return float((np.abs(cell.astype(int) - colour).sum(-1) < 30).mean())


def test_contact_sheet_boxes_faces_and_frames_intruders_in_red(mixed):
    for name, cell in _cells(mixed):
        left_edge = cell[8:-8, 1:4]
        if name in OTHERS:
            assert _share(left_edge, INTRUDER) > 0.95, name
        else:
            assert _share(left_edge, INTRUDER) == 0, name
            assert _share(cell, PERSON) > 0.002, f"{name}: no face box in the person's colour"


def test_find_person_on_embeddings():
    rng = np.random.default_rng(0)
    base = np.eye(16)
    person = base[0] + 0.3 * rng.normal(size=(3, 16)) / 4
    others = base[1:7] + 0.05 * rng.normal(size=(6, 16))
    found = find_person(np.concatenate([others[:3], person, others[3:]]))
    assert found.person.tolist() == [False] * 3 + [True] * 3 + [False] * 3 and found.note == ""
    assert found.similarity[3:6].min() > 0.5 > found.similarity[[0, 1, 2, 6, 7, 8]].max()
    # A tie or nobody twice: said, not guessed silently.
    tie = find_person(np.stack([base[0], base[0] + 0.1 * base[2], base[1], base[1] + 0.3 * base[3]]))
    assert tie.person.tolist() == [True, True, False, False] and "2 people have 2 photos each" in tie.note
    nobody = find_person(base[:4])
    assert not nobody.person.any() and "no two of the 4 faces" in nobody.note


def test_captions_are_flagged_only_when_the_template_uses_filewords(tmp_path, run_cli):
    folder = make_images(tmp_path / "photos", 3, size=(128, 128))
    (folder / "000.txt").write_text("a caption")
    custom = tmp_path / "mine.txt"
    custom.write_text("a photo of [name]\n[filewords], by [name]\n")

    def uncaptioned(**kw):
        rows = check_dataset(folder, DatasetCheckSettings(), **kw).table
        return sorted(rows.loc[rows["flags"].str.contains("no caption"), "file"])

    assert uncaptioned() == ["001.png", "002.png"]  # titk train's default template, titk-subject-filewords
    assert uncaptioned(template="titk-subject-filewords") == ["001.png", "002.png"]
    assert uncaptioned(template=str(custom)) == ["001.png", "002.png"]
    assert uncaptioned(template="titk-subject") == []
    for extra, flagged, said in (("titk-subject", 0, "has no [filewords]"), ("titk-subject-filewords", 2, "uses [filewords]")):
        code, out, err = run_cli("dataset", "check", folder, "--no-faces", "--template", extra, "-o", tmp_path / extra)
        assert code == 0, err
        assert pd.read_csv(tmp_path / extra / "dataset_check.csv")["flags"].fillna("").str.contains("no caption").sum() == flagged
        assert said in " ".join(out.split())
    code, _, err = run_cli("dataset", "check", folder, "--no-faces", "--template", "no-such-template")
    assert_one_line_error(code, err, "--template", "no-such-template", "titk-subject-filewords")
    # A1111's names are looked up in the user's A1111 folder, never among titk's own
    a1111 = tmp_path / "textual_inversion_templates"
    a1111.mkdir()
    (a1111 / "subject.txt").write_text("a photo of a [name]\n")
    code, _, err = run_cli("dataset", "check", folder, "--no-faces", "--template", "subject", "-o", tmp_path / "x")
    assert_one_line_error(code, err, "--template", "'subject' is one of A1111's templates", "--template-dir")
    code, out, err = run_cli("dataset", "check", folder, "--no-faces", "--template-dir", a1111, "--template", "subject", "-o", tmp_path / "y")
    assert code == 0, err
    assert "has no [filewords]" in " ".join(out.split())
    code, _, err = run_cli("dataset", "check", folder, "--no-faces", "--template-dir", tmp_path / "nope", "--template", "subject", "-o", tmp_path / "z")
    assert_one_line_error(code, err, "--template-dir", "nope", "not a folder")


def test_progress_reaches_every_image_and_pair(tmp_path):
    folder = make_images(tmp_path / "photos", 4, size=(96, 96))
    seen = []
    check_dataset(folder, DatasetCheckSettings(), on_progress=lambda *step: seen.append(step))
    assert ("scanning", 0, 4) in seen and ("scanning", 4, 4) in seen and seen[-1] == ("comparing", 6, 6)


def test_cli_on_real_photos(assets, tmp_path, run_cli):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("obama__2.jpg", "obama__3.jpg", "obama__4.jpg", "newton__1.png"):
        shutil.copy(assets / "faces" / name, folder / name)
    code, out, err = run_cli("dataset", "check", folder, "--face-pack", assets / "face-test-pack", "-o", tmp_path / "out")
    assert code == 0, err
    assert (tmp_path / "out" / "contact_sheet.png").is_file() and (tmp_path / "out" / "dataset_check.csv").is_file()
    flat = " ".join(out.split())
    assert "intruder" in flat and "person: 3 of 4 faces; intruders: 1" in flat
    assert "variance of the Laplacian" in flat and "cosine similarity (−1 to 1)" in flat
    code, _, err = run_cli("dataset", "check", folder, "--face-pack", "no-such-pack")
    assert_one_line_error(code, err, "no-such-pack", "looked in")


def test_blur_is_flagged_without_faces(tmp_path):
    rng = np.random.default_rng(0)
    sharp = Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
    sharp.save(tmp_path / "sharp.png")
    sharp.filter(ImageFilter.GaussianBlur(6)).save(tmp_path / "soft.png")
    report = check_dataset(tmp_path, DatasetCheckSettings())
    rows = report.table.set_index("file")
    assert "blurry" in rows.loc["soft.png", "flags"] and "blurry" not in rows.loc["sharp.png", "flags"]
    assert rows["person"].isna().all() and "intruder" not in " ".join(rows["flags"])
