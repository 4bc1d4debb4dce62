"""The search space: which training settings and which images a trial uses.

Parameter names are training-config paths (`train.learning_rate`, `embedding.vectors`, `data.resize` ...),
checked against the config before anything runs. The dataset is searched too: subsets of a size (drawn in balanced passes) or of a range of sizes,
one include flag per image (so a study can tell which images help), or leaving one image out.
"""

from __future__ import annotations

import random

from ..config import ParamSpec, SweepConfig, TrainConfig, merge, parse
from ..errors import TitkError

FIXED_SECTIONS = ("model", "output")  # one model per study; outputs are the sweep's own
NO_IMAGE = "(none)"


def _field(model, part: str):
    fields = getattr(model, "model_fields", {})
    if part not in fields:
        return None
    return fields[part].annotation


def check_space(config: SweepConfig, n_images: int) -> None:
    """Every problem with the space, before any training starts: unknown or fixed settings, empty ranges,
    subsets that do not fit the dataset, values the training config refuses."""
    base = config.base
    for key, spec in config.space.items():
        section, _, name = key.partition(".")
        if section in FIXED_SECTIONS:
            raise TitkError(f"space: {key}: {section} settings are fixed for a study")
        part = getattr(base, section, None)
        if part is None or not name or "." in name or name not in type(part).model_fields:
            raise TitkError(f"space: {key!r} is not a training setting (use section.name, e.g. train.learning_rate)")
        if spec.choice is not None:
            if spec.low is not None or spec.high is not None:
                raise TitkError(f"space: {key}: give either choice or low/high, not both")
            if not spec.choice:
                raise TitkError(f"space: {key}: empty choice")
            values = spec.choice
        else:
            if spec.low is None or spec.high is None:
                raise TitkError(f"space: {key}: needs a choice or both low and high")
            if spec.low > spec.high:
                raise TitkError(f"space: {key}: empty range {spec.low}..{spec.high}")
            if spec.log and spec.low <= 0:
                raise TitkError(f"space: {key}: a log range must be positive")
            if spec.step is not None and spec.step <= 0:  # Optuna takes a negative step and never moves
                raise TitkError(f"space: {key}: step {spec.step} must be positive")
            values = [spec.low, spec.high]
        for value in values:  # each end and each choice must be a value the config accepts
            apply_settings(base, {key: value}, where=f"space: {key}={value!r}")
    subset = config.subset
    modes = sum([subset.size is not None, subset.include_flags, subset.leave_one_out, subset.compose is not None])
    if modes > 1:
        raise TitkError("subset: choose one of size, include_flags, leave_one_out and compose")
    if subset.compose is not None and subset.compose.size > n_images:
        raise TitkError(f"subset.compose.size: subsets of {subset.compose.size} images, but the dataset has only {n_images}")
    if subset.size is not None:
        low, high = (subset.size, subset.size) if isinstance(subset.size, int) else (subset.size.low, subset.size.high)
        if low is None or high is None or low < 1 or low > high:
            raise TitkError(f"subset.size: empty or invalid range {low}..{high}")
        if high > n_images:
            raise TitkError(f"subset.size: subsets of {int(high)} images, but the dataset has only {n_images}")
    if subset.include_flags and subset.min_images > n_images:
        raise TitkError(f"subset.min_images: {subset.min_images} is more than the {n_images} images")


def check_values(config: SweepConfig, dataset, enqueued: list[dict]) -> None:
    """Each choice, both ends of each range and each enqueued trial, planned on the dataset: a value the
    training refuses (0 vectors, a schedule that never steps) fails here, before a study exists."""
    from ..train.plan import make_plan

    def plan(settings: dict, where: str) -> None:
        trial_config = apply_settings(config.base, settings, where=where)
        try:
            make_plan(trial_config, dataset)
        except TitkError as exc:
            raise TitkError(f"{where}: {exc}") from None

    for key, spec in config.space.items():
        for value in spec.choice if spec.choice is not None else [spec.low, spec.high]:
            plan({key: value}, f"space: {key}={value!r}")
    for number, params in enumerate(enqueued, 1):
        for key, value in params.items():
            spec = config.space[key]
            inside = value in spec.choice if spec.choice is not None else _number(value) is not None and spec.low <= _number(value) <= spec.high
            if not inside:
                allowed = spec.choice if spec.choice is not None else f"{spec.low}..{spec.high}"
                raise TitkError(f"enqueue: entry {number}: {key}={value!r} is outside the space ({allowed})")
        plan(params, f"enqueue: entry {number}")


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def suggest(trial, key: str, spec: ParamSpec):
    if spec.choice is not None:
        return trial.suggest_categorical(key, spec.choice)
    if all(isinstance(v, int) for v in (spec.low, spec.high)) and (spec.step is None or isinstance(spec.step, int)):
        return trial.suggest_int(key, spec.low, spec.high, step=spec.step or 1, log=spec.log)
    return trial.suggest_float(key, float(spec.low), float(spec.high), log=spec.log, step=spec.step)


def suggest_settings(trial, config: SweepConfig) -> dict[str, object]:
    return {key: suggest(trial, key, spec) for key, spec in config.space.items()}


def apply_settings(base: TrainConfig, settings: dict[str, object], where: str = "trial settings", **sections) -> TrainConfig:
    """The base config with searched settings (and extra section values, e.g. the output dir) applied;
    `where` names them in an error."""
    data = base.model_dump(mode="json")
    for key, value in settings.items():
        section, _, name = key.partition(".")
        if name in ("learning_rate", "clip_threshold") and isinstance(value, (int, float)):
            value = repr(float(value))
        data[section][name] = value
        if name == "epochs":
            data["train"]["max_steps"] = None
        elif name == "max_steps":
            data["train"]["epochs"] = None
    return parse(TrainConfig, merge(data, sections), where)


def suggest_subset(trial, config: SweepConfig, names: list[str], labels: dict[str, str] | None = None) -> list[int]:
    """The indices of the images this trial trains on (records the choice on the trial). `labels`: each
    image's label of the composed attribute (subset.compose)."""
    subset, n = config.subset, len(names)
    if subset.compose is not None:
        spec = subset.compose
        share = float(suggest(trial, "subset_share", spec.share))
        carrying = [i for i, name in enumerate(names) if (labels or {}).get(name) == spec.label]
        others = [i for i in range(n) if i not in carrying]
        k = round(share * spec.size)
        if k > len(carrying) or spec.size - k > len(others):
            raise TitkError(composition_problem(spec, share, len(carrying), n))
        rng = random.Random(f"titk:compose:{config.seed}:{trial.number}")
        chosen = sorted(rng.sample(carrying, k) + rng.sample(others, spec.size - k))
    elif subset.include_flags:
        chosen = [i for i, name in enumerate(names) if trial.suggest_categorical(f"include:{name}", [True, False])]
    elif subset.leave_one_out:
        out = trial.suggest_categorical("leave_out", [NO_IMAGE, *names])
        chosen = [i for i, name in enumerate(names) if name != out]
    elif subset.size is not None:
        # Membership is drawn, not searched, reproducibly from the study seed and the trial number alone (so
        # workers need not agree on anything). One size: balanced, every image in as many trials as the others.
        if isinstance(subset.size, int):
            chosen = balanced_subset(n, subset.size, config.seed, trial.number)
        else:
            size = suggest(trial, "subset_size", subset.size)
            chosen = sorted(random.Random(f"titk:subset:{config.seed}:{trial.number}").sample(range(n), int(size)))
    else:
        chosen = list(range(n))
    trial.set_user_attr("subset", [names[i] for i in chosen])
    return chosen


def composition_problem(spec, share: float, carrying: int, n: int) -> str:
    k = round(share * spec.size)
    return (f"subset.compose: a share of {share:g} of {spec.size} images needs {k} with {spec.attribute} {spec.label!r} and "
            f"{spec.size - k} without, but the attribute model finds {carrying} of the dataset's {n} images with it: "
            "add images, or narrow subset.compose.share or size")


def check_composition(config: SweepConfig, attributes: list[dict] | None, label_sets: dict[str, list[str]]) -> dict[str, str]:
    """Each image's label of the composed attribute ({file: label}), after checking that the attribute is a
    label set, the label one of its labels, and that every share the space allows can be drawn."""
    spec = config.subset.compose
    if spec is None:
        return {}
    if not attributes:
        raise TitkError("subset.compose needs the personality scorer (evaluation.scorers) to read each image's labels")
    if spec.attribute not in label_sets:
        raise TitkError(f"subset.compose.attribute: {spec.attribute!r} is not a label set (they are {', '.join(label_sets)})")
    if spec.label not in label_sets[spec.attribute]:
        raise TitkError(f"subset.compose.label: {spec.label!r} is not a {spec.attribute} label (they are {', '.join(label_sets[spec.attribute])})")
    labels = {row["file"]: row[spec.attribute] for row in attributes}
    carrying = sum(label == spec.label for label in labels.values())
    shares = spec.share.choice if spec.share.choice is not None else [spec.share.low, spec.share.high]
    for share in shares:
        k = round(float(share) * spec.size)
        if k > carrying or spec.size - k > len(labels) - carrying:
            raise TitkError(composition_problem(spec, float(share), carrying, len(labels)))
    return labels


def balanced_subset(n: int, size: int, seed, number: int) -> list[int]:
    """Trial `number`'s `size` of `n` images: the next `size` places of a sequence of shuffled passes over
    the dataset. After m passes every image has been in m trials, so attribution is equally sure of every
    image, where independent random subsets leave some images in few trials and their effects unknown."""
    first, last = number * size, (number + 1) * size - 1
    chosen: list[int] = []
    for npass, order in enumerate(_passes(n, size, seed, last // n)):
        chosen += [image for place, image in enumerate(order, npass * n) if first <= place <= last]
    return sorted(chosen)


def _passes(n: int, size: int, seed, last: int):
    """Shuffled orders of range(n), passes 0..last. A trial whose places run from one pass into the next
    must not get an image twice: the next pass starts with images that trial has not had yet."""
    order: list[int] = []
    for npass in range(last + 1):
        new = list(range(n))
        random.Random(f"titk:subset:{seed}:pass:{npass}").shuffle(new)
        carried = (npass * n) % size  # the straddling trial's places at the end of the previous pass
        if npass and carried:
            had = set(order[n - carried:])
            rest = [image for image in new if image not in had]
            head = size - carried
            new = rest[:head] + [image for image in new if image in had] + rest[head:]
        order = new
        yield order


def recipe_params(entry: dict | str, config: SweepConfig, base_dir) -> dict:
    """Parameters to enqueue: a mapping as given, or the space's settings read from a recipe file."""
    if isinstance(entry, dict):
        unknown = set(entry) - set(config.space)
        if unknown:
            raise TitkError(f"enqueue: {sorted(unknown)} are not in the space")
        return dict(entry)
    from pathlib import Path

    from ..config import read_yaml

    path = Path(entry) if Path(entry).is_absolute() else base_dir / entry
    recipe = read_yaml(path)
    params = {}
    for key in config.space:
        section, _, name = key.partition(".")
        if name in recipe.get(section, {}):
            value = recipe[section][name]
            if config.space[key].choice is None and name in ("learning_rate", "clip_threshold"):
                value = float(value)  # a searched range of rates takes numbers; a choice keeps the text
            params[key] = value
    if not params:
        raise TitkError(f"enqueue: {path} sets none of the searched settings")
    return params


def baseline_params(config: SweepConfig) -> dict | None:
    """The base config's own values of the searched settings, to enqueue as the baseline when no recipe is
    enqueued; None when a base value lies outside the space (then the study has no baseline)."""
    params = {}
    for key, spec in config.space.items():
        section, _, name = key.partition(".")
        value = getattr(getattr(config.base, section), name)
        if value is None:
            try:
                value = config.base.semantic(section, name)
            except KeyError:
                return None
        if spec.choice is not None:
            if value not in spec.choice:
                return None
        else:
            number = _number(value)
            if number is None or not spec.low <= number <= spec.high:
                return None
            value = int(number) if isinstance(spec.low, int) and isinstance(spec.high, int) and float(number).is_integer() else number
        params[key] = value
    return params
