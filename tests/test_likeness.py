"""Likeness, not copying: identity against held-out photos, the copy index, photographs only, and the sweep's
leave-out split. Ground truth from the toy world (and the real face pack where the assets are present); no
training except the last test's tiny sweep."""

import math
import random
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import write_sweep_config
from PIL import Image

from titk.config import (
    IdentitySettings,
    ObjectiveSettings,
    SuitePrompt,
    SweepConfig,
    load_sweep_config,
    parse,
)
from titk.errors import TitkError
from titk.evaluate.evaluator import EvalContext
from titk.evaluate.scorers import References, Sample
from titk.evaluate.scorers.identity import IdentityScorer
from titk.toyworld.world import heldout, random_look, render

HELD = [2, 7, 12]  # what the sweep's default split holds out of 15 images (tested below)


@pytest.fixture(scope="module")
def toy_faces():
    import torch

    from titk.evaluate.scorers.toyworld import toy_scorers

    torch.set_num_threads(1)
    return toy_scorers(IdentitySettings())[0]


def dataset(person, seed: int, n: int = 15) -> list[Image.Image]:
    """A TI dataset as write_dataset draws it: n looks of one person."""
    rng = random.Random(f"dataset:{person.name}:{seed}")
    return [render(person, random_look(rng), rng.randrange(2**31)) for _ in range(n)]


def new_photos(person, tag: str, n: int = 16) -> list[Image.Image]:
    """Photos of `person` in looks of their own, none of them a dataset image."""
    return [render(person, random_look(random.Random(f"{tag}:{i}")), 10_000 + i) for i in range(n)]


def as_samples(images, photo: bool = True, kind: str = "identity") -> list[Sample]:
    return [Sample(image, "", "", i, kind, i, photo) for i, image in enumerate(images)]


def held_out_scorer(faces, images) -> IdentityScorer:
    refs = References([images[i] for i in HELD], training=[im for i, im in enumerate(images) if i not in HELD])
    scorer = IdentityScorer(faces)
    scorer.prepare(refs, EvalContext({}))
    return scorer


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_copies_have_a_high_copy_index_new_photos_near_zero_another_person_low_similarity(toy_faces, seed):
    """Measured (seeds 0, 1, 2): copies 0.25, 0.11, 0.23; new looks of the person 0.07, −0.07, 0.05; another
    person's held-out similarity 0.41–0.44 against 0.99 for the person."""
    person = heldout(0)
    images = dataset(person, seed)
    scorer = held_out_scorer(toy_faces, images)
    copies = scorer.score(as_samples([im for i, im in enumerate(images) if i not in HELD]), None).summary
    fresh = scorer.score(as_samples(new_photos(person, "new")), None).summary
    other = scorer.score(as_samples(new_photos(heldout(1), "other")), None).summary
    assert copies["identity.copy_index"] > 0.1 and abs(fresh["identity.copy_index"]) < 0.1
    assert copies["identity.copy_index"] > fresh["identity.copy_index"] + 0.15
    # copying is not told apart by likeness alone: both look like the person
    assert min(copies["identity.similarity"], fresh["identity.similarity"]) > 0.95 > 0.6 > other["identity.similarity"]
    # half copies, half new photos: in between
    half = scorer.score(as_samples([images[i] for i in range(15) if i not in HELD][:8] + new_photos(person, "new")[:8]), None).summary
    assert fresh["identity.copy_index"] < half["identity.copy_index"] < copies["identity.copy_index"]


def test_without_held_out_photos_there_is_no_copy_index(toy_faces):
    scorer = IdentityScorer(toy_faces)
    scorer.prepare(References(dataset(heldout(0), 0)), EvalContext({}))
    result = scorer.score(as_samples(new_photos(heldout(0), "new", 4)), None)
    assert "identity.copy_index" not in result.summary and "copy" not in result.rows[0]
    assert scorer.protocol()["references_held_out"] is False


def test_only_photographic_prompts_enter_identity(toy_faces):
    """Paintings of another person, marked as not photographs, change none of the identity figures."""
    person = heldout(0)
    scorer = held_out_scorer(toy_faces, dataset(person, 0))
    photos = as_samples(new_photos(person, "new", 8))
    paintings = [Sample(im, "", "", i, "editability", 100 + i, photo=False) for i, im in enumerate(new_photos(heldout(1), "other", 8))]
    alone, mixed = scorer.score(photos, None), scorer.score(photos + paintings, None)
    for name in ("identity.similarity", "identity.detection_rate", "identity.copy_index", "identity.stability"):
        assert mixed.summary[name] == pytest.approx(alone.summary[name], nan_ok=True), name
    assert math.isnan(mixed.summary["identity.similarity@editability"])
    assert all(math.isnan(r["id_sim"]) and r["face_found"] is None and r["photo"] is False for r in mixed.rows[8:])
    # marked as photographs, the other person pulls the similarity down: the mark is what keeps them out
    counted = scorer.score(photos + as_samples([s.image for s in paintings], kind="editability"), None).summary
    assert counted["identity.similarity"] < alone.summary["identity.similarity"] - 0.2
    assert counted["identity.similarity@editability"] < 0.6


def test_a_suite_marks_photographs():
    assert SuitePrompt(text="a photo of [name] on the beach").photo and SuitePrompt(text="[name] at home").photo
    assert not SuitePrompt(text="an oil painting of [name]").photo and not SuitePrompt(text="a pencil sketch of [name]").photo
    assert SuitePrompt(text="a photo of [name] in front of a statue").photo  # saying photo wins
    assert not SuitePrompt(text="a photo of [name]", photo=False).photo  # the suite's word is final
    from titk.evaluate.suite import load_suite

    person = load_suite("person")
    assert [p.text for p in person.spec.prompts if not p.photo] == [
        "an oil painting of [name]", "a pencil sketch of [name]", "a watercolor painting of [name]"]
    assert all(p.photo for p in load_suite("toy").spec.prompts)


def test_the_evaluator_passes_the_mark_to_identity(sd1, toy_faces, tmp_path, one_thread):
    """Through the evaluator: the painting prompt's images have no identity values, and the protocol says
    which prompts counted and which references were used."""
    import torch

    from titk.config import EvalSettings
    from titk.embeddings import Embedding
    from titk.evaluate.evaluator import build_evaluator

    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"steps": 2, "seeds": [1, 2], "width": 64, "height": 64,
                                     "prompts": [{"text": "a photo of [name]"}, {"text": "an oil painting of [name]", "kind": "editability"}]}))
    images = dataset(heldout(0), 0)
    refs = References([images[i] for i in HELD], training=[im for i, im in enumerate(images) if i not in HELD], source="test photos")
    settings = parse(EvalSettings, {"world": "toyworld", "suite": str(suite), "scorers": ["identity"]}, "t")
    card = build_evaluator(sd1, settings, refs).evaluate(Embedding("ohwx", {"clip_l": torch.zeros(2, 32)}))
    assert list(card.table["photo"]) == [True, True, False, False]
    assert card.table.loc[~card.table["photo"], "id_sim"].isna().all() and card.table.loc[~card.table["photo"], "face_found"].isna().all()
    assert card.protocol["photo_prompts"] == [0] and card.protocol["references_held_out"] and card.protocol["training_images"] == 12
    assert card.protocol["identity"]["references"] == "test photos" and "copy_baseline" in card.protocol["identity"]


def test_copy_index_and_held_out_similarity_can_be_objectives_and_floors():
    from titk.evaluate.registry import check_metric
    from titk.sweep.scoring import floor_constraints, objective_value

    assert check_metric("identity.copy_index", ["identity"], "objective").lower_is_better
    assert check_metric("identity.similarity@editability", ["identity"], "objective").scorer == "identity"
    with pytest.raises(TitkError, match="needs the identity scorer"):
        check_metric("identity.copy_index", ["clip"], "objective")
    o = parse(ObjectiveSettings, {"metrics": {"identity.similarity": 1.0, "identity.copy_index": -1.0},
                                  "floors": {"identity.copy_index": 0.05, "identity.similarity": 0.5}}, "t")
    copying, generalising = {"identity.similarity": 0.9, "identity.copy_index": 0.2}, {"identity.similarity": 0.9, "identity.copy_index": 0.0}
    assert objective_value(generalising, o) > objective_value(copying, o)
    assert floor_constraints(copying, o)["floor:identity.copy_index"] > 0 >= floor_constraints(generalising, o)["floor:identity.copy_index"]
    # a missing copy index (no face anywhere) is no reward and breaks its ceiling
    missing = {"identity.similarity": 0.9}
    assert objective_value(missing, o) < objective_value(copying, o) and floor_constraints(missing, o)["floor:identity.copy_index"] > 0


def test_real_faces_copy_index_and_references_that_are_training_images(assets, tmp_path):
    """The real face pack: copies of the training photos score above zero, Biden far below; a reference that is
    also a training image is not held out."""
    from titk.evaluate.evaluator import held_out_references
    from titk.evaluate.scorers.identity import InsightFaceEmbedder

    faces = InsightFaceEmbedder(IdentitySettings(pack=str(assets / "face-test-pack")))
    for folder, numbers in (("train", (1, 2, 3)), ("held", (1, 4, 5))):
        (tmp_path / folder).mkdir()
        for i in numbers:
            shutil.copy(assets / "faces" / f"obama__{i}.jpg", tmp_path / folder)
    refs = held_out_references(tmp_path / "held", tmp_path / "train", 64)
    assert [p.name for p in refs.paths] == ["obama__4.jpg", "obama__5.jpg"] and len(refs.training) == 3
    assert "1 of them are training images" in refs.source
    scorer = IdentityScorer(faces)
    scorer.prepare(refs, EvalContext({}))
    copies = scorer.score(as_samples(refs.training), None).summary
    biden = scorer.score(as_samples([Image.open(assets / "faces" / "biden__1.jpg").convert("RGB")]), None).summary
    assert copies["identity.copy_index"] > 0.05 > -0.5 > biden["identity.copy_index"]  # measured 0.11 and −0.78
    assert copies["identity.similarity"] > 0.6 > 0.3 > biden["identity.similarity"]
    same = held_out_references(tmp_path / "train", tmp_path / "train", 64)
    assert not same.heldout and "not held out" in same.source


# ----------------------------------------------------------------------------------------------- the sweep's split


def test_hold_out_picks_spread_images_and_refuses_what_cannot_work(tmp_path):
    from titk.sweep.holdout import hold_out
    from titk.toyworld.world import write_dataset
    from titk.train.trainee import load_dataset

    write_dataset(tmp_path / "data", heldout(0), 15)

    def config(**over):
        data = {"study": "s", "base": {"model": {"source": "toyworld"}, "embedding": {"name": "ohwx"}, "data": {"path": str(tmp_path / "data")}},
                "evaluation": {"world": "toyworld", "scorers": ["identity"]}, **over}
        return parse(SweepConfig, data, "t")

    data = load_dataset(config().base)
    split = hold_out(config(), data)
    assert split.names == [f"{i:03d}.png" for i in HELD] and len(split.dataset) == 12
    assert not {r.path.name for r in split.dataset.records} & set(split.names)
    assert hold_out(config(holdout={"share": 0}), data).names == []
    assert hold_out(config(holdout={"min_dataset": 16}), data).names == []
    assert hold_out(config(evaluation={"scorers": ["norms"]}), data).names == []  # nothing would look at them
    with pytest.raises(TitkError, match="identity.copy_index needs held-out photos"):
        hold_out(config(holdout={"share": 0}, objective={"metrics": {"identity.copy_index": -1.0}}), data)
    with pytest.raises(TitkError, match="objective.pareto: identity.copy_index is lower-is-better"):
        hold_out(config(objective={"pareto": ["identity.similarity", "identity.copy_index"]}), data)
    with pytest.raises(TitkError, match="leaves none to train on"):
        hold_out(config(holdout={"min_images": 15}), data)
    # references that are dataset images are not held out: the split is made as if none were given
    refs = tmp_path / "refs"
    refs.mkdir()
    shutil.copy(tmp_path / "data" / "000.png", refs)
    assert hold_out(config(references=str(refs)), data).names == split.names
    render(heldout(0), random_look(random.Random(99)), 99).save(refs / "new.png")
    given = hold_out(config(references=str(refs)), data)
    assert given.names == [] and len(given.dataset) == 15 and [p.name for p in given.photos] == ["new.png"]


def test_sweep_trains_no_trial_on_the_held_out_images(tmp_path, fixtures, one_thread):
    """A sweep over 10 toy images with subsets: 002.png and 007.png are held out, no trial trains on them, no
    manifest lists them, attribution does not see them, and the scorecards say the references were held out."""
    import json

    from mlflow import MlflowClient

    from titk.analysis import load_study
    from titk.sweep.runner import run_sweep
    from titk.toyworld.world import write_dataset

    path = write_sweep_config(tmp_path, fixtures, n_trials=2, enqueue=[], space={}, subset={"size": 4}, base__train__max_steps=2,
                              objective={"metrics": {"identity.similarity": 1.0, "identity.copy_index": -0.5}, "floors": {"identity.copy_index": 0.9}, "eval_every": 0},
                              evaluation__world="toyworld", evaluation__scorers=["identity", "norms"])
    write_dataset(tmp_path / "toy", heldout(0), 10)
    config = load_sweep_config(path, [f"base.data.path={tmp_path / 'toy'}"])
    result = run_sweep(config, workdir=tmp_path / "work", show_progress=False)
    held = ["002.png", "007.png"]
    assert result.study.user_attrs["titk.heldout"] == held
    trials = [t for t in result.study.trials if "subset" in t.user_attrs]
    assert len(trials) == 2
    client = MlflowClient(result.tracking_uri)
    for trial in trials:
        assert len(trial.user_attrs["subset"]) == 4 and not set(trial.user_attrs["subset"]) & set(held)
        run = trial.user_attrs["mlflow_run_id"]
        manifest = json.loads(Path(client.download_artifacts(run, "dataset/manifest.json", str(tmp_path))).read_text())
        files = [row[manifest["columns"].index("file")] for row in manifest["data"]]
        assert len(files) == 8 and not set(files) & set(held)
        final = [f.path for f in client.list_artifacts(run, "scorecards") if "final" in f.path]
        assert final
        for name in final:
            card = json.loads(Path(client.download_artifacts(run, name, str(tmp_path))).read_text())
            assert card["protocol"]["references_held_out"] and "002.png, 007.png" in card["protocol"]["identity"]["references"]
            assert card["protocol"]["identity"]["training_faces"] == "8 of 8 training images"  # the tiny model draws no person: NaN
            assert "identity.copy_index" in card["summary"]
    assert sorted(load_study(tmp_path / "work").images) == sorted(f"{i:03d}.png" for i in range(10) if f"{i:03d}.png" not in held)
