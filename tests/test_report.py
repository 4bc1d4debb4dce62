"""`titk report` opens with the decision and says what each figure rests on: studies built by hand (no training)."""

import math
import re
from html.parser import HTMLParser

import numpy as np
import optuna
from PIL import Image
from scipy import stats

from titk.analysis.html import build_report
from titk.analysis.study import StudyData
from titk.sweep.trials import trials_frame

IMAGES = [f"img{i}.png" for i in range(6)]
CONFIG = {"objective": {"metrics": {"identity.similarity": 1.0}, "floors": {"identity.detection_rate": 0.5}}}
LR = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
SENTENCE = "lr 0.004 beats the A1111 15/3/15 recipe by +0.070 identity similarity (95 % CI 0.030-0.110, 5 seeds)"
RECORD: dict = {
    "objective": "identity.similarity", "level": 1 - 0.05 / 3, "seeds": [0, 1, 2, 3, 4], "suite": "person",  # Bonferroni: 3 candidates
    "baseline": {"label": "A1111 15/3/15", "trial": 0, "params": {"train.learning_rate": 0.005}, "values": [0.40, 0.42, 0.41, 0.39, 0.43]},
    "candidates": [
        {"trial": 2, "label": "lr 0.004", "params": {"train.learning_rate": 0.004}, "subset": ["img0.png", "img1.png", "img2.png"],
         "values": [0.47, 0.50, 0.48, 0.46, 0.49], "difference": 0.07, "ci_low": 0.03, "ci_high": 0.11, "p_value": 0.004, "verdict": "better"},
        {"trial": 1, "label": "lr 0.0002", "params": {"train.learning_rate": 0.0002}, "subset": None,
         "values": [0.38, 0.41, 0.40, 0.40, 0.42], "difference": -0.01, "ci_low": -0.04, "ci_high": 0.02, "p_value": 0.5, "verdict": "no difference"},
        {"trial": 3, "label": "lr 0.001", "params": {"train.learning_rate": 0.001}, "subset": None,  # as stored: no interval is null
         "values": [0.40], "difference": 0.0, "ci_low": None, "ci_high": None, "p_value": None, "verdict": "no difference"},
    ],
    "sentence": SENTENCE, "next": "narrow the learning rate to 0.003-0.006 and search vectors",
}
RECORD["best"] = RECORD["candidates"][0]


def _trial(lr, seeds, *, subset=None, baseline=False, state="COMPLETE", summary=None, intermediate=None):
    attrs = {"values_per_seed": seeds, "subset": subset, "summary": summary or {"identity.similarity": float(np.mean(seeds))}}
    if baseline:
        attrs["titk.baseline"] = True
    complete = state == "COMPLETE"
    return optuna.create_trial(
        params={"train.learning_rate": lr}, distributions={"train.learning_rate": LR}, user_attrs=attrs,
        # Optuna gives a pruned trial its last intermediate value, as `study.tell` does
        value=float(np.mean(seeds)) if complete else (list(intermediate.values())[-1] if intermediate else None), intermediate_values=intermediate or {},
        state=getattr(optuna.trial.TrialState, state))


def _study(trials, record=None, name="hand") -> StudyData:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name=name, direction="maximize")
    study.set_user_attr("titk.config", CONFIG)
    if record:
        study.set_user_attr("titk.confirmation", record)
    for t in trials:
        study.add_trial(t)
    return StudyData(name, study, trials_frame(study), IMAGES)


class _Outline(HTMLParser):
    """The page's headings, paragraphs and table cells in order, with their text."""

    def __init__(self):
        super().__init__()
        self.items, self._open = [], None

    def handle_starttag(self, tag, attrs):
        if tag in ("h1", "h2", "p", "td", "dt", "dd"):
            self._open = [tag, ""]

    def handle_endtag(self, tag):
        if self._open and tag == self._open[0]:
            self.items.append(tuple(self._open))
            self._open = None

    def handle_data(self, data):
        if self._open:
            self._open[1] += data


def outline(page: str) -> list[tuple[str, str]]:
    parser = _Outline()
    parser.feed(page)
    return parser.items


def _after_title(page: str) -> list[tuple[str, str]]:
    items = outline(page)
    assert items[0][0] == "h1"
    return items[1:]


def _section(page: str, title: str) -> str:
    """The text of one section: from its heading to the next."""
    items, out, inside = outline(page), [], False
    for tag, text in items:
        if tag in ("h1", "h2"):
            inside = text == title
        elif inside:
            out.append(text)
    return " ".join(out)


def test_a_confirmed_study_opens_with_the_sentence_the_settings_and_the_next_step(tmp_path):
    data = _study([_trial(0.005, [0.40, 0.42, 0.41], baseline=True), _trial(0.0002, [0.41]), _trial(0.004, [0.49], subset=IMAGES[:3])], RECORD)
    data.workdir = tmp_path
    grid = tmp_path / "confirm" / "trial-2" / "seed-0" / "samples.png"
    grid.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(grid)
    page = build_report(data)
    rest = _after_title(page)
    assert rest[0] == ("h2", "Decision")
    assert rest[1] == ("p", SENTENCE)  # the first paragraph under the title is the decision
    headings = [text for tag, text in rest if tag == "h2"]
    assert headings[0] == "Decision" and page.index(SENTENCE) < min(page.index(f"<h2>{h}</h2>") for h in headings[1:])
    decision = _section(page, "Decision")
    assert "train.learning_rate = 0.004" in decision  # what to use
    assert "3 images: img0.png, img1.png, img2.png" in decision and "leave out img3.png" in decision
    assert "maximise identity.similarity" in decision and "identity.detection_rate ≥ 0.5" in decision
    assert "5 seeds" in decision and "98.3 % CI +0.030 to +0.110" in decision and "p = 0.004" in decision
    assert RECORD["next"] in decision
    assert "unconfirmed" not in decision.lower()
    progress = page.index("<h2>Progress</h2>")
    assert page.index('alt="confirmation: difference from the recipe"') < progress  # the difference ± CI figure
    assert page.index('alt="samples of lr 0.004"') < progress  # the confirmed setting's own samples
    assert ["3", "lr 0.001", "+0.000", "– to –", "–", "no difference"] == [text for tag, text in outline(page) if tag == "td"][12:18]


def test_an_unconfirmed_study_says_so_first_and_names_titk_confirm():
    data = _study([_trial(0.005, [0.40], baseline=True), _trial(0.004, [0.49]), _trial(0.0002, [0.41])])
    data.workdir = "work/me"
    page = build_report(data)
    rest = _after_title(page)
    assert rest[0] == ("h2", "Decision")
    tag, first = rest[1]
    assert tag == "p" and first.startswith("Unconfirmed: trial 1 leads the search with 0.490, measured on one seed with no interval")
    decision = _section(page, "Decision")
    assert "titk confirm work/me" in decision and page.index("titk confirm work/me") < page.index("<h2>Progress</h2>")
    assert "train.learning_rate = 0.004" in decision
    assert "Seed noise Not measured: the baseline ran one seed" in decision
    recipe_leads = build_report(_study([_trial(0.005, [0.60], baseline=True), _trial(0.004, [0.49])]))
    assert _after_title(recipe_leads)[1][1].startswith("Unconfirmed: the baseline recipe (trial 0) leads the search")


def test_sections_that_cannot_be_drawn_say_why():
    data = _study([_trial(0.005, [0.40], baseline=True), _trial(0.004, [0.49]), _trial(0.0002, [0.41])])
    page = build_report(data)
    reasons = {
        "Identity against editability": "Not drawn: this is not a two-objective study (objective.pareto is unset), and the pair it would draw "
                                        "instead was not measured: clip_t missing.",
        "Seed variance": "Not drawn: no trial ran two or more seeds",
        "Learning curves": "Not drawn: the study was loaded without a tracking URI",
        "Do intermediate scores predict the final one?": "Not drawn: the study was loaded without a tracking URI",
        "Which images help": "Not drawn: all trials trained on the same images",
        "Personality: what the TIs generate by themselves": "Not drawn: no trial recorded personality histograms",
    }
    for title, reason in reasons.items():
        assert reason in _section(page, title), title
    assert "Only 3 trials: importance from fewer than about 10–20 trials is unreliable" in _section(page, "Which settings matter")


def test_personality_says_how_many_images_each_share_rests_on():
    trials = [_trial(0.005, [0.40], baseline=True), _trial(0.004, [0.49]), _trial(0.0002, [0.41])]
    for t, generated in zip(trials, ([4, 4], [6, 2], [16, 4])):  # 8, 8 and 20 generated images
        t.user_attrs["personality"] = {"clothing": {"labels": ["tank top", "t-shirt"], "generated": generated, "dataset": [9, 6]}}
    text = _section(build_report(_study(trials)), "Personality: what the TIs generate by themselves")
    assert "as few as 8 generated images per trial here, so a share is known only to ±28% at worst" in text  # 4 of 8: 22-78 %
    assert "untrained" not in text  # no untrained start recorded: no shift claimed


def test_personality_states_the_shift_against_the_dataset_and_the_untrained_start():
    trials = [_trial(0.004, [0.49]), _trial(0.005, [0.40])]
    for t in trials:  # tank tops: dataset 9 of 15, untrained 2 of 20, TI 14 of 20
        t.user_attrs["personality"] = {"clothing": {"labels": ["tank top", "t-shirt"], "generated": [14, 6], "dataset": [9, 6], "untrained": [2, 18]}}
    text = _section(build_report(_study(trials)), "Personality: what the TIs generate by themselves")
    # (0.70 - 0.10) / (0.60 - 0.10) = 120 %: more tank tops than the dataset itself
    assert "clothing, tank top: dataset 60% (36%–80%), untrained 10% (3%–30%), trial 0 70% (48%–85%); net of the untrained start it moved +60% (+30% to +77%); it took on 120% of the dataset's skew." in text
    for t in trials:  # untrained 7 of 20 (15%-59%) overlaps the dataset's 36%-80%: a ratio would be noise
        t.user_attrs["personality"]["clothing"]["untrained"] = [7, 13]
    text = _section(build_report(_study(trials)), "Personality: what the TIs generate by themselves")
    assert "untrained 35% (18%–57%)" in text and "within the untrained start's sampling noise, so no uptake is stated" in text
    assert "of the dataset's skew" not in text


def test_attribution_with_too_few_trials_says_so():
    subsets = [IMAGES[:3], IMAGES[3:]]
    data = _study([_trial(0.005, [0.40], subset=subsets[0]), _trial(0.004, [0.49], subset=subsets[1])])
    assert "Not drawn: too few trials on different subsets to estimate any image's effect with an interval (2 trials" in _section(
        build_report(data), "Which images help")


def test_best_trials_show_an_interval_over_seeds_or_say_there_is_none():
    three = [0.50, 0.56, 0.53]
    trials = [_trial(0.005, [0.40, 0.44, 0.42], baseline=True), _trial(0.004, three), _trial(0.0002, [0.45]),
              _trial(0.009, [0.1], state="PRUNED", intermediate={5: 0.95})]  # a high intermediate score is not a result
    page = build_report(_study(trials), top=2)
    cells = [text for tag, text in outline(page) if tag == "td"]
    half = stats.t.ppf(0.975, 2) * np.std(three, ddof=1) / math.sqrt(3)
    assert f"{np.mean(three):.3f} ± {half:.3f} (95% CI, 3 seeds)" in cells
    assert "0.450 (1 seed, no interval)" in cells
    best = _section(page, "Best trials")
    assert "0 (baseline)" in best and "(95% CI, 3 seeds)" in best  # the baseline is shown beside the best
    assert "0.95" not in best and "1 pruned trial is left out" in best
    assert _section(page, "Decision").startswith("Unconfirmed: trial 1 leads")  # not the pruned trial 3, 0.95 part-way
    assert re.search(r"Seed noise The baseline recipe scores 0\.420 ± [0-9.]+ \(95% CI, 3 seeds\)", _section(page, "Decision"))
    assert "Not drawn" not in _section(page, "Seed variance")  # two trials with several seeds: drawn with interval bars


def test_ti_health_and_copy_index_are_columns_of_the_best_trials():
    summary = {"identity.similarity": 0.5, "identity.copy_index": 0.12, "norms.clip_l_vs_vocab_median": 3.0, "norms.clip_l_max_vs_vocab_median": 23.0}
    page = build_report(_study([_trial(0.004, [0.5], summary=summary), _trial(0.005, [0.4], summary={"norms.clip_l_max_vs_vocab_median": 5.0})]))
    best = _section(page, "Best trials")
    assert "copy index (lower: less copying)" in page and "0.12" in best
    assert "clip_l largest norm ÷ vocab median" in page and "23.00× (runaway)" in best and "5.00× (high)" in best
    assert "mean norm" not in page  # the largest vector is what the flag judges


def test_intermediate_signals_are_drawn_against_the_final_objective_with_their_trial_count():
    import pandas as pd

    from titk.analysis import html

    rng = np.random.default_rng(0)
    finals = rng.uniform(0.2, 0.8, 6)
    trials = pd.DataFrame({"trial": range(7), "state": ["COMPLETE"] * 6 + ["PRUNED"], "value": [*finals, 0.9],
                           "duplicate_of": [None] * 7})
    curves = pd.DataFrame([{"trial": t, "metric": "intermediate/objective", "step": step, "value": v * step / 4}
                           for t, v in enumerate([*finals, 0.9]) for step in (2, 4)])
    curves = pd.concat([curves, pd.DataFrame([{"trial": t, "metric": "train.loss", "step": 4, "value": rng.normal()} for t in range(6)])])
    section = html._signal_correlation(curves, None, trials, trials[trials["state"] == "COMPLETE"])
    assert section.reason is None and len(section.figures) == 1
    assert section.notes[1].startswith("intermediate/objective at step 4: ρ = +1.00 (p = ") and section.notes[1].endswith(", 6 trials)")
    assert section.caveats == ["Only 6 trials: a rank correlation over so few trials has a wide interval; read the p-values."]
    learning = html._learning_curves(curves, None, [0], trials)
    assert [f["alt"] for f in learning.figures] == ["intermediate/objective curves", "train.loss curves"]
    assert "Pruned trials are drawn dashed" in learning.notes[0]
    too_few = html._signal_correlation(curves[curves["trial"] < 2], None, trials, trials.head(2))
    assert too_few.reason.startswith("too few complete trials with intermediate evaluations for a rank correlation")
