"""Evaluation: metrics, identity with the real face pack, CLIP plumbing, the evaluator and the CLI."""

import itertools
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import assert_one_line_error, make_images
from PIL import Image

from titk.config import EvalSettings, IdentitySettings, parse
from titk.embeddings import Embedding
from titk.embeddings.formats import write_embedding
from titk.errors import TitkError
from titk.evaluate.metrics import entropy, js_divergence, mean_pairwise_distance, vendi_score
from titk.evaluate.scorers import References, Sample


# ----------------------------------------------------------------------------------------------- metrics


def test_vendi_identical_is_one_and_orthogonal_is_n():
    v = np.random.default_rng(0).normal(size=16)
    assert vendi_score(np.stack([v] * 7)) == pytest.approx(1.0)
    assert vendi_score(np.eye(5)) == pytest.approx(5.0)
    assert 1.0 < vendi_score(np.random.default_rng(1).normal(size=(6, 16))) < 6.0


def test_histogram_measures():
    h = np.array([3, 1, 0, 2])
    assert js_divergence(h, h * 5) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(math.log(2))
    assert entropy([1, 1, 1, 1]) == pytest.approx(math.log(4))
    assert entropy([5, 0, 0]) == 0.0
    assert mean_pairwise_distance(np.eye(3)) == pytest.approx(1.0)
    assert math.isnan(mean_pairwise_distance(np.ones((1, 3))))


def test_personality_shift_is_net_of_the_untrained_start():
    """The TI's share of the dataset's most common label against the untrained start's: the dataset is 60 %
    tank tops, the untrained start 10 %, the TI 35 %: it moved 0.25 of the 0.5 it could, an uptake of 0.5.
    Without an untrained histogram (a plain `titk eval`) no shift is claimed."""
    from titk.evaluate.evaluator import EvalContext
    from titk.evaluate.scorers.personality import AttributeClassifier, PersonalityScorer

    class Reads(AttributeClassifier):  # the label each image is drawn with, as a certain classifier would read it
        label_sets = {"clothing": ["tank top", "t-shirt"]}

        def probabilities(self, images, ctx, key):
            return {"clothing": np.array([[1.0, 0.0] if img.getpixel((0, 0))[0] > 127 else [0.0, 1.0] for img in images])}

    def images(tanks, n):
        return [Image.new("RGB", (4, 4), (255, 0, 0) if i < tanks else (0, 0, 0)) for i in range(n)]

    scorer = PersonalityScorer(Reads())
    scorer.prepare(References(images(6, 10)), EvalContext({}))
    samples = [Sample(img, "ohwx", "", i, "personality", 0) for i, img in enumerate(images(7, 20))]
    ctx = EvalContext({})
    plain = scorer.score(samples, ctx)
    assert "untrained" not in plain.extras["personality"]["clothing"] and not any("shift" in k for k in plain.summary)
    ctx.untrained = {"clothing": [2, 18]}
    result = scorer.score(samples, ctx)
    assert result.extras["personality"]["clothing"]["untrained"] == [2, 18]
    assert result.summary["personality.clothing.net_shift"] == pytest.approx(0.35 - 0.10)
    assert result.summary["personality.clothing.dataset_shift"] == pytest.approx(0.60 - 0.10)
    assert result.summary["personality.clothing.uptake"] == pytest.approx(0.5)
    # 7 of 20 against 2 of 20: the interval of the difference (Newcombe's) still includes zero
    low, high = result.summary["personality.clothing.net_shift_low"], result.summary["personality.clothing.net_shift_high"]
    assert low < 0 < 0.25 < high and (low, high) == pytest.approx((-0.0125, 0.4788), abs=1e-3)
    ctx.untrained = {"clothing": [12, 8]}  # the untrained start is already at the dataset's 60 %: nothing to take on
    assert math.isnan(scorer.score(samples, ctx).summary["personality.clothing.uptake"])
    ctx.untrained = {"clothing": [5, 15]}  # 25 %: within the dataset's 6 of 10 (31 %-83 %) noise, so no ratio is given
    assert math.isnan(scorer.score(samples, ctx).summary["personality.clothing.uptake"])


def test_a_shift_interval_matches_newcombes_worked_example():
    """Newcombe (1998), Statistics in Medicine 17:873, method 10: 56/70 against 48/80 gives 0.0524 to 0.3339."""
    from titk.stats import shift_interval

    assert shift_interval(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    assert all(math.isnan(x) for x in shift_interval(3, 10, 0, 0))


# ----------------------------------------------------------------------------------------------- real face pack


@pytest.fixture(scope="module")
def faces(assets):
    from titk.evaluate.scorers.identity import InsightFaceEmbedder

    return InsightFaceEmbedder(IdentitySettings(pack=str(assets / "face-test-pack"), det_size=640))


def _embedding(faces, path):
    face, _ = faces.largest(Image.open(path).convert("RGB"))
    return face.embedding


def test_obama_is_more_like_obama_than_biden_on_every_pair(faces, assets):
    obama = [_embedding(faces, p) for p in sorted((assets / "faces").glob("obama__*"))]
    biden = [_embedding(faces, p) for p in sorted((assets / "faces").glob("biden__*"))]
    assert obama[0].shape == (128,)  # the test pack's recogniser is 128-d, not 512
    same = [float(a @ b) for a, b in itertools.combinations(obama, 2)]
    other = [float(a @ b) for a in obama for b in biden]
    assert min(same) > max(other)


def test_group_photo_gives_29_faces(faces, assets):
    assert len(faces.faces(Image.open(assets / "faces" / "group_solvay_1927.jpg"))) == 29


def test_no_face_gives_detection_rate_zero_and_nan_similarity(faces, assets):
    from titk.evaluate.evaluator import EvalContext, load_references
    from titk.evaluate.scorers.identity import IdentityScorer

    scorer = IdentityScorer(faces)
    refs = load_references(assets / "faces", 64)
    scorer.prepare(References([i for i, p in zip(refs.images, refs.paths) if "obama" in p.name], []), EvalContext({}))
    blank = Sample(Image.new("RGB", (256, 256), (128, 128, 128)), "a photo of x", "a photo of ", 1, "identity", 0)
    result = scorer.score([blank, blank], EvalContext({}))
    rows, summary = result.rows, result.summary
    assert summary["identity.detection_rate"] == 0.0
    assert math.isnan(summary["identity.similarity"]) and math.isnan(rows[0]["id_sim"])
    assert 0.5 < summary["identity.ceiling"] < 1.0  # Obama's photos, leave-one-out
    biden = Image.open(assets / "faces" / "biden__2.jpg").convert("RGB")
    obama = Image.open(assets / "faces" / "obama__4.jpg").convert("RGB")
    result = scorer.score([Sample(obama, "", "", 1, "identity", 0), Sample(biden, "", "", 2, "identity", 0)], EvalContext({}))
    rows, summary = result.rows, result.summary
    assert summary["identity.detection_rate"] == 1.0 and rows[0]["id_sim"] > 0.6 > 0.3 > rows[1]["id_sim"]


def test_missing_pack_and_faceless_references(tmp_path):
    from titk.evaluate.scorers.identity import InsightFaceEmbedder, resolve_pack

    with pytest.raises(TitkError, match=f"looked in {tmp_path / 'models' / 'buffalo_l'}"):
        resolve_pack("buffalo_l", tmp_path)
    with pytest.raises(TitkError, match="no .onnx"):
        InsightFaceEmbedder(IdentitySettings(pack=str(tmp_path)))


def test_reference_folder_without_faces(faces, tmp_path):
    from titk.evaluate.evaluator import EvalContext, load_references
    from titk.evaluate.scorers.identity import IdentityScorer

    for i in range(2):
        Image.new("RGB", (128, 128), (i * 100, 50, 50)).save(tmp_path / f"{i}.png")
    with pytest.raises(TitkError, match="no face found in any of the 2 reference images"):
        IdentityScorer(faces).prepare(load_references(tmp_path, 64), EvalContext({}))


# ----------------------------------------------------------------------------------------------- CLIP and the evaluator


def test_clip_plumbing_with_random_weights():
    from titk.evaluate.evaluator import EvalContext
    from titk.evaluate.scorers.clip import ClipModel, ClipScorer

    clip = ClipModel("ViT-B-32", None, "cpu", 32)
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)) for i in range(3)]
    feats = clip.image_features(images)
    assert feats.shape == (3, 512) and np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    assert np.allclose(clip.image_features(images[:1]), feats[:1], atol=1e-5)
    scorer = ClipScorer(clip)
    ctx = EvalContext({})
    scorer.prepare(References(images[:1]), ctx)
    result = scorer.score([Sample(images[0], "a photo of ohwx", "a photo of ", 1, "identity", 0)], ctx)
    rows, summary = result.rows, result.summary
    assert rows[0]["clip_i"] == pytest.approx(1.0, abs=1e-5)  # an image against itself
    assert -1.0 <= rows[0]["clip_t"] <= 1.0 and "clip_t@identity" in summary


def test_clip_weights_offline_is_a_clear_error():
    from titk.evaluate.scorers.clip import ClipModel

    with pytest.raises(TitkError, match="clip.pretrained"):
        ClipModel("ViT-B-32", "openai", "cpu", 32)
    with pytest.raises(TitkError, match="no such weights file"):
        ClipModel("ViT-B-32", "/nowhere/clip.bin", "cpu", 32)


@pytest.fixture(scope="module")
def sd1(fixtures):
    from titk.models import load_model

    return load_model(fixtures["tiny-sd1"].folder, dtype="fp32")


def tiny_embedding(n=2, width=32, name="ohwx"):
    return Embedding(name, {"clip_l": torch.randn(n, width, generator=torch.Generator().manual_seed(0)) * 0.1})


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("refs"), 3)


def test_evaluator_scores_and_is_deterministic(sd1, refs, tmp_path):
    from titk.evaluate.evaluator import build_evaluator, load_references

    settings = parse(EvalSettings, {"suite": "quick", "scorers": ["clip", "diversity", "personality", "norms"], "clip": {"pretrained": None}}, "t")
    evaluator = build_evaluator(sd1, settings, load_references(refs, 64))
    card = evaluator.evaluate(tiny_embedding())
    n = len(evaluator.suite.items)
    assert len(card.table) == n == 10 and card.grid is not None
    assert {"prompt", "clean_prompt", "seed", "kind", "clip_t", "clip_i", "vendi_prompt", "clothing"} <= set(card.table.columns)
    assert (card.table["clean_prompt"].str.contains("ohwx")).sum() == 0 and card.table["prompt"].str.contains("ohwx").all()
    assert card.summary["diversity.images_per_prompt"] == 2 and 0 < card.summary["norms.mean"]
    assert card.extras["personality"]["clothing"]["labels"][0] == "a tank top"
    again = evaluator.evaluate(tiny_embedding())
    assert np.array_equal(np.asarray(card.images[3]), np.asarray(again.images[3]))  # same (prompt, seed), same image
    other = evaluator.evaluate(Embedding("ohwx", {"clip_l": torch.zeros(2, 32)}))
    assert not np.array_equal(np.asarray(card.images[0]), np.asarray(other.images[0]))  # the vectors matter
    paths = card.save(tmp_path / "out")
    table = pd.read_parquet(paths["scores.parquet"])
    assert len(table) == n
    scorecard = json.loads(paths["scorecard.json"].read_text())
    assert scorecard["protocol"]["suite"] == "quick" and len(scorecard["protocol"]["suite_sha256"]) == 64
    assert scorecard["protocol"]["seeds"] == [1, 2] and scorecard["protocol"]["clip"]["clip_model"] == "ViT-B-32"
    assert Image.open(paths["grid.png"]).size[0] > 64


def test_personality_on_a_probe_suite_of_its_own(sd1, refs, tmp_path):
    """evaluation.personality_suite: personality is measured on the probe suite's images only (all of them
    personality probes, whatever kind the file gives), at the final evaluation only; the dataset side counts
    the images trained on when they are named; the probes' grid and labels are saved."""
    from titk.evaluate.evaluator import build_evaluator, load_references

    probes = tmp_path / "probes.yaml"
    probes.write_text(yaml.safe_dump({"steps": 2, "cfg": 5.0, "seeds": [1, 2, 3], "prompts": [{"text": "[name]"}, {"text": "a photo of [name]"}]}))
    settings = parse(EvalSettings, {"suite": "quick", "personality_suite": str(probes), "scorers": ["clip", "personality"],
                                    "clip": {"pretrained": None}}, "t")
    evaluator = build_evaluator(sd1, settings, load_references(refs, 64))
    seen = []
    card = evaluator.evaluate(tiny_embedding(), on_progress=lambda done, total: seen.append((done, total)))
    assert len(card.table) == len(evaluator.suite.items) and "clothing" not in card.table and "clip_t" in card.table
    assert seen[-1] == (len(evaluator.suite.items) + 6, len(evaluator.suite.items) + 6)
    hist = card.extras["personality"]["clothing"]
    assert sum(hist["generated"]) == 6 and sum(hist["dataset"]) == 3
    assert len(card.extras["personality_probes"]) == 6 and {"prompt", "seed", "clothing", "clothing_p"} <= set(card.extras["personality_probes"][0])
    assert [row["file"] for row in card.extras["personality_dataset"]] == sorted(p.name for p in refs.iterdir())
    assert card.protocol["personality_suite"]["images"] == 6
    paths = card.save(tmp_path / "out")
    assert Image.open(paths["personality.png"]).size[0] > 3 * 64
    part = evaluator.evaluate(tiny_embedding(), suite=evaluator.suite.subset(1))  # an intermediate evaluation
    assert not any(k.startswith("personality.") for k in part.summary) and part.probe_grid is None
    first = sorted(p.name for p in refs.iterdir())[0]
    trained = evaluator.score(evaluator.samples(tiny_embedding()), tiny_embedding(), probes=evaluator.probes(tiny_embedding()), trained_on=[first])
    assert sum(trained.extras["personality"]["clothing"]["dataset"]) == 1
    assert sum(evaluator.personality(tiny_embedding())["clothing"]) == 6


def test_identity_through_the_evaluator_with_the_real_pack(sd1, assets, tmp_path):
    from titk.evaluate.evaluator import build_evaluator, load_references

    folder = tmp_path / "obama"
    folder.mkdir()
    for p in sorted((assets / "faces").glob("obama__*"))[:3]:
        shutil.copy(p, folder / p.name)
    settings = parse(EvalSettings, {"suite": "quick", "scorers": ["identity", "norms"], "identity": {"pack": str(assets / "face-test-pack")}}, "t")
    card = build_evaluator(sd1, settings, load_references(folder, 64)).evaluate(tiny_embedding())
    assert card.summary["identity.detection_rate"] == 0.0  # a random tiny model draws no faces
    assert math.isnan(card.summary["identity.similarity"])
    assert card.protocol["identity"]["det_size"] == 640 and card.protocol["identity"]["embedding_dim"] == 128
    assert set(card.protocol["identity"]["face_models"]) == {"det_scrfd_2.5g_bnkps.onnx", "rec_mobilefacenet_128d.onnx"}
    assert card.arrays["face_embeddings"].shape == (10, 128)


def test_cli_eval_writes_table_scorecard_and_grid(run_cli, fixtures, refs, tmp_path):
    files = []
    for i in range(2):
        path = tmp_path / f"ohwx-{i}.pt"
        write_embedding(tiny_embedding(), path)
        files.append(path)
    out = tmp_path / "eval"
    args = ["eval", *files, "--model", fixtures["tiny-sd1"].folder, "--references", refs, "--suite", "quick",
            "--scorers", "clip,diversity,norms", "--set", "evaluation.clip.pretrained=null", "-o", out]
    code, text, err = run_cli(*args)
    assert code == 0, err
    for path in files:
        for name in ("scores.parquet", "scores.csv", "scorecard.json", "grid.png"):
            assert (out / path.stem / name).is_file()
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["embedding"]) == ["ohwx-0.pt", "ohwx-1.pt"]
    # the shipped neutral probes: personality on 48 images of their own, their grid beside the suite's
    code, _, err = run_cli("eval", files[0], "--model", fixtures["tiny-sd1"].folder, "--references", refs, "--suite", "quick",
                           "--personality-suite", "personality", "--scorers", "personality", "--set", "evaluation.clip.pretrained=null",
                           "-o", tmp_path / "probed")
    assert code == 0, err
    card = json.loads((tmp_path / "probed" / "ohwx-0" / "scorecard.json").read_text())
    assert sum(card["extras"]["personality"]["clothing"]["generated"]) == 48 and card["protocol"]["personality_suite"]["suite"] == "personality"
    assert (tmp_path / "probed" / "ohwx-0" / "personality.png").is_file()


def test_cli_eval_bad_inputs(run_cli, fixtures, refs, tmp_path):
    wide = tmp_path / "wide.pt"
    write_embedding(Embedding("wide", {"clip_l": torch.zeros(2, 768)}), wide)
    base = ["eval", wide, "--model", fixtures["tiny-sd1"].folder, "--scorers", "norms"]
    code, _, err = run_cli(*base)
    assert_one_line_error(code, err, "--references")
    code, _, err = run_cli(*base, "--references", refs)
    assert_one_line_error(code, err, "width 768 does not fit tiny-sd1", "32")
    code, _, err = run_cli(*base, "--references", refs, "--suite", "nope")
    assert_one_line_error(code, err, "nope")
    code, _, err = run_cli(*base, "--references", refs, "--personality-suite", "nope")
    assert_one_line_error(code, err, "'nope': not a file, nor experiments/prompts/nope.yaml")
    code, _, err = run_cli(*base, "--references", tmp_path / "missing")
    assert_one_line_error(code, err, "reference folder not found")
