"""The toy world: its people, datasets and scorers; and the proofs that TI learns in it."""

import random

import numpy as np
import pytest
from PIL import Image

from titk.toyworld.proofs import generate, toy_sampling, train_tis, untrained, write_skewed
from titk.toyworld.world import (
    CLOTHING, FRAMINGS, IDENTITY_ATTRIBUTES, caption, clothing_bias, heldout, identities, random_look, render, write_dataset,
)


def test_identities_are_distinct_and_heldout_ones_are_new_combinations():
    pre, held = identities()
    assert len(pre) == 96 and len(held) == 8
    people = pre + held
    assert len({p.name for p in people}) == 104
    combos = lambda ps: {tuple(p.attributes().values()) for p in ps}  # noqa: E731
    assert not combos(held) & combos(pre)
    for name, options in IDENTITY_ATTRIBUTES.items():  # every held-out attribute value occurs in pretraining
        assert {getattr(p, name) for p in held} <= {getattr(p, name) for p in pre} <= set(options)
    assert identities() == (pre, held) and heldout(0) == held[0] and heldout(held[1].name) == held[1]


def test_rendering_and_looks():
    person = heldout(0)
    look = random_look(random.Random(0))
    a, b = render(person, look, 7), render(person, look, 7)
    assert a.size == (64, 64) and np.array_equal(np.asarray(a), np.asarray(b))
    rng = random.Random(1)
    draws = [random_look(rng, clothing_bias("tank top", 0.8)).clothing for _ in range(400)]
    assert 0.74 < draws.count("tank top") / 400 < 0.86 and set(draws) <= set(CLOTHING)
    text = caption(person, look, random.Random(0), style="both")
    assert person.name in text and person.hair_colour in text and look.clothing in text


def test_written_dataset(tmp_path):
    looks = write_dataset(tmp_path / "all", heldout(0), 15, weights=clothing_bias("tank top", 1.0))
    assert len(list((tmp_path / "all").glob("*.png"))) == 15 and all(look.clothing == "tank top" for look in looks)
    assert "tank top" in (tmp_path / "all" / "000.txt").read_text()


@pytest.mark.parametrize("share, tanks", [(0.6, 9), (0.8, 12), (0.47, 7)])
def test_a_dataset_holds_the_share_it_is_asked_for(tmp_path, share, tanks):
    """"60 % tank tops" is 9 of 15, not a draw that may give 7; the other clothing shares the rest evenly. Datasets
    of one seed at two shares differ in clothing only, so a study of the share changes nothing else."""
    skewed = write_dataset(tmp_path / "skewed", heldout(0), 15, seed=3, weights=clothing_bias("tank top", share))
    clothing = [look.clothing for look in skewed]
    assert clothing.count("tank top") == tanks
    others = [clothing.count(c) for c in CLOTHING if c != "tank top"]
    assert sum(others) == 15 - tanks and max(others) - min(others) <= 1
    captions = [(tmp_path / "skewed" / f"{i:03d}.txt").read_text() for i in range(15)]
    assert sum("tank top" in text for text in captions) == tanks
    other = write_dataset(tmp_path / "other", heldout(0), 15, seed=3, weights=clothing_bias("tank top", 0.2))
    assert [(a.clothing_colour, a.background, a.framing) for a in skewed] == [(b.clothing_colour, b.background, b.framing) for b in other]
    same = [i for i, (a, b) in enumerate(zip(skewed, other)) if a.clothing == b.clothing]
    assert same and all(np.array_equal(np.asarray(Image.open(tmp_path / "skewed" / f"{i:03d}.png")), np.asarray(Image.open(tmp_path / "other" / f"{i:03d}.png"))) for i in same)


def test_partial_captions_leave_parts_out_and_keep_the_images():
    """`partial_captions`: that share of the pretraining captions leaves out framing, clothing and background
    with even odds each, so "a photo of X" is a prompt the model saw; the images are those of a full-caption run."""
    import torch

    from titk.config import PretrainSettings
    from titk.toyworld.pretrain import render_set

    person, look = heldout(0), random_look(random.Random(1))
    assert caption(person, look, random.Random(2), style="name", leave_out=frozenset({"framing", "clothing", "background"})) == f"a photo of {person.name}"
    text = caption(person, look, random.Random(2), style="name", leave_out=frozenset({"clothing"}))
    assert look.clothing not in text and f"a {look.framing} photo of" in text
    full_pixels, full, _ = render_set(PretrainSettings(images_per_identity=2))
    pixels, partial, _ = render_set(PretrainSettings(images_per_identity=2, partial_captions=0.5))
    assert torch.equal(pixels, full_pixels)
    changed = [b for a, b in zip(full, partial) if a != b]
    assert 0.3 < len(changed) / len(full) < 0.6  # half are redrawn; a redrawn caption may match its original
    assert any(not any(f"{f} photo" in text for f in FRAMINGS) for text in changed)
    assert any("wearing" not in text for text in changed) and all("wearing" in text for text in full)


@pytest.fixture(scope="module")
def toy():
    from titk.config import IdentitySettings
    from titk.evaluate.scorers.toyworld import ToyAttributeClassifier, ToyFaceEmbedder
    from titk.toyworld.vision import load_vision

    vision = load_vision()
    return ToyFaceEmbedder(vision, IdentitySettings().det_thresh), ToyAttributeClassifier(vision)


def test_toy_face_embedder_tells_people_apart(toy):
    faces, _ = toy
    _, held = identities()
    rng = random.Random(3)
    embs = {p.name: [faces.largest(render(p, random_look(rng), rng.randrange(2**31)))[0].embedding for _ in range(6)] for p in held}
    same = [float(a @ b) for v in embs.values() for i, a in enumerate(v) for b in v[i + 1 :]]
    other = [float(a @ b) for x in held for y in held if x.name < y.name for a in embs[x.name] for b in embs[y.name]]
    assert np.mean(same) > np.mean(other) + 0.3
    empty = render(None, random_look(rng), 1)
    assert faces.faces(empty) == []  # no person, no face


def test_toy_attribute_classifier_reads_clothing(toy, tmp_path):
    from titk.evaluate.evaluator import EvalContext

    _, classifier = toy
    rng = random.Random(4)
    people = identities()[1]
    looks = [random_look(rng) for _ in range(60)]
    images = [render(rng.choice(people), look, rng.randrange(2**31)) for look in looks]
    probs = classifier.probabilities(images, EvalContext({}), "samples")
    predicted = [CLOTHING[i] for i in probs["clothing"].argmax(1)]
    assert np.mean([p == look.clothing for p, look in zip(predicted, looks)]) > 0.9


# ------------------------------------------------------------------------------------------------ proofs

PROOF_SEEDS = list(range(1, 9))


@pytest.fixture(scope="module")
def toy_source():
    """The toy model the proofs below run on; test_toyworld_sdxl.py runs them on the SDXL one."""
    return "toyworld"


@pytest.fixture(scope="module")
def toy_model(toy_source):
    from titk.models import load_model

    return load_model(toy_source, dtype="fp32")


SKEWS = {"balanced": 0.0, "half": 0.5, "biased": 0.8}  # share of tank tops and of full-body shots (balanced: uniform draws)
SKEW_LABELS = {"tank tops": {"clothing": "tank top"}}  # a skew of clothing alone (test_toyworld_sd3.py, _flux.py); the others skew both


@pytest.fixture(scope="module")
def skews():
    """The wardrobes the proofs train (test_toyworld_sdxl.py leaves out the dose-response's middle one)."""
    return SKEWS


@pytest.fixture(scope="module")
def proof_training():
    """The proofs' TI settings where a family's differ from titk/toyworld/proofs.py's ({"embedding": ..., "train": ...}:
    test_toyworld_sd3.py trains longer, as its flow matching needs)."""
    return {}


@pytest.fixture(scope="module")
def wardrobes(toy_model, tmp_path_factory, skews, proof_training):
    """TIs of one held-out person trained on 15 images: in a wardrobe and framing drawn uniformly (here 4, 4, 4
    and 3 of the four kinds of clothing), and in 50 % and 80 % tank tops and full-body shots (8 and 12 of 15,
    dealt exactly): {name: (dataset folder, embedding)}. The proofs below read them, so each is trained once."""
    tmp = tmp_path_factory.mktemp("wardrobes")
    for name, share in skews.items():
        write_skewed(tmp / name, SKEW_LABELS.get(name, {"clothing": "tank top", "framing": "full-body"}) if share else {}, share)
    trained = train_tis(toy_model, {name: (tmp / name, tmp / f"run-{name}") for name in skews}, tmp / "cache",
                        proof_training.get("embedding"), **proof_training.get("train", {}))
    return {name: (tmp / name, embedding) for name, embedding in trained.items()}


@pytest.fixture(scope="module")
def proof_seeds():
    """The paired sampling seeds of the learning proof: 8 (the issue's least), 16 where a family's gain is noisier
    (test_toyworld_flux.py). The thresholds below hold for any number."""
    return PROOF_SEEDS


def test_ti_learns_an_identity_never_seen_in_pretraining(toy_model, toy, wardrobes, proof_seeds):
    """15 images of a held-out person: samples of the trained TI look like them, the init text's do not."""
    from scipy import stats

    faces, _ = toy
    person = heldout(0)
    references = [render(person, random_look(random.Random(i)), i) for i in range(15)]
    centroid = np.mean([faces.largest(img)[0].embedding for img in references], axis=0)
    centroid /= np.linalg.norm(centroid)

    def similarity(images):
        return np.array([float(f.embedding @ centroid) if (f := faces.largest(img)[0]) is not None else 0.0 for img in images])

    _, trained = wardrobes["balanced"]
    after = similarity(generate(toy_model, trained, ["a photo of ohwx"], proof_seeds))
    before = similarity(generate(toy_model, untrained(toy_model), ["a photo of ohwx"], proof_seeds))
    gain = after - before
    assert gain.mean() > 0.2, f"mean gain {gain.mean():.3f}: before {before.round(2)}, after {after.round(2)}"
    assert (gain > 0).mean() >= 7 / 8, f"{(gain > 0).sum()} of {len(gain)} seeds gain"
    assert stats.ttest_rel(after, before, alternative="greater").pvalue < 0.01


@pytest.fixture(scope="module")
def probed(toy_model, wardrobes):
    """The personality histograms of the untrained start and of each wardrobe's TI, on the shipped neutral
    probes (toy-personality: 48 images each), through the evaluator a sweep uses: {name: {label set: counts}}."""
    from titk.config import EvalSettings, parse
    from titk.evaluate.evaluator import build_evaluator, image_files, load_references

    toy = toy_sampling(toy_model)  # the probes' DPM++ 2M, or the toy Flux model's Euler and true CFG
    settings = parse(EvalSettings, {"world": "toyworld", "suite": "toy-quick", "personality_suite": "toy-personality",
                                    "scorers": ["personality"], "sampler": toy.sampler, "true_cfg": toy.true_cfg}, "proof")
    folder, _ = wardrobes["balanced"]
    evaluator = build_evaluator(toy_model, settings, load_references(folder, 64))
    assert len(evaluator.personality_probes.items) == 48 and len(image_files(folder)) == 15
    counts = {"untrained": evaluator.personality(untrained(toy_model), "ohwx")}
    counts |= {name: evaluator.personality(embedding, "ohwx") for name, (_, embedding) in wardrobes.items()}
    return counts


def _share(counts: dict, attribute: str, label: str) -> tuple[int, int]:
    values = {"clothing": CLOTHING, "framing": FRAMINGS}[attribute]
    hist = counts[attribute]
    return hist[values.index(label)], sum(hist)


@pytest.mark.parametrize("attribute, label", [("clothing", "tank top"), ("framing", "full-body")])
def test_a_skewed_dataset_shifts_its_ti_net_of_the_untrained_start(probed, attribute, label):
    """80 % tank tops and 80 % full-body shots in the dataset: with prompts that leave both open, the TI shows
    more of each than its untrained start does, and more than the TI of a dataset drawn uniformly, each with a
    95 % interval of the difference above zero. The second matters for framing: training on the uniform
    dataset moves a TI to full-body shots too (0 of 48 untrained, 34 of 48 after). Measured on 48 probe
    images each: tank tops 45 against 14 untrained and 8 uniform; full-body 48 against 0 and 34."""
    from titk.stats import shift_interval

    got = _share(probed["biased"], attribute, label)
    for other in ("untrained", "balanced"):
        base = _share(probed[other], attribute, label)
        low, high = shift_interval(*got, *base)
        assert low > 0, f"{label}: TI {got}, {other} {base}: {got[0] / got[1] - base[0] / base[1]:+.2f} ({low:+.2f} to {high:+.2f})"


def test_more_skew_in_the_dataset_gives_more_skew_in_the_ti(probed):
    """The dose-response: 4, 8 and 12 of 15 images in tank tops give TIs in more tank tops at each step,
    and the difference between the ends has an interval above zero. Measured: 8, 36 and 45 of 48."""
    from titk.stats import shift_interval

    shares = {name: _share(probed[name], "clothing", "tank top") for name in SKEWS}
    levels = [shares[name][0] / shares[name][1] for name in SKEWS]
    assert levels == sorted(levels) and len(set(levels)) == len(levels), shares
    assert shift_interval(*shares["biased"], *shares["balanced"])[0] > 0, shares


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_each_new_familys_toy_model_keeps_within_its_budget(family):
    """Each family's shipped toy model holds at most 30 MB of weights and took about 90 minutes on 2 CPU cores
    over its stages, as its record says (at most 100: SD3's 94.8 include minutes that shared the cores; at least
    60: a continued record that lost its earlier stage's time would read less)."""
    import json

    from titk.paths import toyworld_model

    folder = toyworld_model(family).parent
    record = json.loads((folder / "toyworld.json").read_text())
    minutes = (record["total_seconds"] + (record.get("continued_from") or {}).get("seconds", 0)) / 60
    weights = sum(f.stat().st_size for f in folder.rglob("*.safetensors")) / 1e6
    assert weights <= 30 and 60 <= minutes <= 100, f"{family}: {weights:.1f} MB, {minutes:.1f} min"


def test_pretraining_writes_a_loadable_model_and_an_honest_record(tmp_path, monkeypatch):
    """The pretraining command end to end, minutes made into seconds: a diffusers folder titk loads, the vision
    model, and a record whose history stops where stop_at says; a continuation keeps the earlier history."""
    import json

    from titk.config import PretrainSettings
    from titk.models import load_model
    from titk.toyworld.pretrain import pretrain

    tiny = dict(images_per_identity=1, vision_steps=2, vae_steps=2, unet_steps=8, stop_at=4, batch_size=4, eval_every=4)
    lines = []
    monkeypatch.setattr("titk.toyworld.pretrain.cpu_has_fast_bf16", lambda: False)  # as on a CPU that emulates bf16
    record = pretrain(tmp_path / "a", PretrainSettings(**tiny), log=lines.append)
    assert [h["step"] for h in record["history"]] == [4] and "unet step 0" in "\n".join(lines)
    assert json.loads((tmp_path / "a" / "toyworld.json").read_text())["settings"]["stop_at"] == 4
    assert record["vae_precision"] == "fp32"  # emulated bf16 made the VAE ten times slower
    bundle = load_model(str(tmp_path / "a" / "model"), dtype="fp32")
    assert bundle.family.name == "SD1" and (tmp_path / "a" / "vision.safetensors").is_file()

    again = pretrain(tmp_path / "b", PretrainSettings(**{**tiny, "stop_at": 2, "continue_from": str(tmp_path / "a" / "model")}), log=lines.append)
    assert [h["step"] for h in again["history"]] == [4, 2] and again["continued_from"]["settings"]["stop_at"] == 4
