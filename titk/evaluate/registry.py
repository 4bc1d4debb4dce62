"""The metric table: every metric titk computes, the scorer that makes it, its per-image column, and whether
it is a headline (shown in tables, grids and MLflow's default columns). Analysis, tracking, sweeps and the
CLI name metrics through this table instead of repeating string literals.

Some names are families: `identity.similarity@<kind>` (per prompt kind), `personality.<set>.js`, the second
CLIP judge's `clip_t_2`, `norms.<encoder>_vs_vocab_median` and `norms.<encoder>_max_vs_vocab_median`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import TitkError


@dataclass(frozen=True)
class Metric:
    name: str
    scorer: str
    description: str
    column: str | None = None  # the per-image column of the score table, where one exists
    headline: bool = False
    lower_is_better: bool = False  # an objective weighs it negatively; a floor on it is a ceiling


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("identity.similarity", "identity", "cosine of each photographic sample's largest face to the centroid of the held-out photos' faces (of the references when none are held out)", "id_sim", True),
    Metric("identity.copy_index", "identity", "samples' similarity to their nearest training image minus the held-out photos' own: 0 like a new photo, above 0 copying (lower is better)", "copy", True, lower_is_better=True),
    Metric("identity.detection_rate", "identity", "share of images with a face", headline=True),
    Metric("identity.similarity_pairwise", "identity", "mean cosine to each reference face", "id_sim_pairwise"),
    Metric("identity.stability", "identity", "mean pairwise cosine of one prompt's faces across seeds"),
    Metric("identity.ceiling", "identity", "leave-one-out cosine of the references themselves", headline=True),
    Metric("clip_t", "clip", "CLIP cosine of image and prompt (name removed)", "clip_t", True),
    Metric("clip_i", "clip", "mean CLIP cosine of image and the dataset images", "clip_i", True),
    Metric("diversity.vendi", "diversity", "Vendi score of one prompt's images across seeds", "vendi_prompt", True),
    Metric("diversity.pairwise_distance", "diversity", "mean 1 − cos of one prompt's images", "pairwise_distance_prompt"),
    Metric("diversity.images_per_prompt", "diversity", "images per prompt the diversity rests on"),
    Metric("norms.mean", "norms", "mean L2 norm of the embedding's vectors"),
    Metric("norms.max", "norms", "largest L2 norm of the embedding's vectors"),
    Metric("norms.health", "norms", "the worst vector's level against its vocabulary median: 0 ok, 1 high, 2 runaway (titk/embeddings/health.py)"),
)}

# Families of names: (pattern, scorer, description).
_FAMILIES = (
    (re.compile(r"^(identity\.similarity|clip_t(_2)?)@(identity|editability|personality)$"), None, "the metric over one prompt kind"),
    (re.compile(r"^clip_[ti]_2$"), "clip", "the second CLIP judge's clip_t / clip_i"),
    (re.compile(r"^personality\.\w+\.(entropy|dataset_entropy|js)$"), "personality", "label histogram entropy / JS divergence to the dataset"),
    (re.compile(r"^personality\.\w+\.(net_shift|net_shift_low|net_shift_high|dataset_shift|uptake)$"), "personality", "shift toward the dataset's top label, net of the untrained start (with its 95 % interval)"),
    (re.compile(r"^norms\.\w+_max_vs_vocab_median$"), "norms", "largest vector norm over the vocabulary's median norm"),
    (re.compile(r"^norms\.\w+_vs_vocab_median$"), "norms", "mean vector norm over the vocabulary's median norm"),
)

HEADLINES = tuple(m.name for m in METRICS.values() if m.headline)
CURVE_METRIC = "identity.similarity"  # the score analysis draws as a learning curve
INTERMEDIATE = "intermediate/"  # prefix of scores from intermediate evaluations (another suite, apart from the final)


def lookup(name: str) -> Metric | None:
    """The table's entry for `name` (a family member gets its base's scorer and column)."""
    if name in METRICS:
        return METRICS[name]
    for pattern, scorer, description in _FAMILIES:
        if pattern.match(name):
            base = METRICS.get(name.split("@")[0].removesuffix("_2"))
            return Metric(name, scorer or (base.scorer if base else "clip"), description, base.column if base and "@" not in name else None)
    return None


def lower_is_better(name: str) -> bool:
    metric = lookup(name)
    return bool(metric and metric.lower_is_better)


def check_metric(name: str, scorers: list[str], where: str) -> Metric:
    """The metric, or one clear error: unknown (listing the known ones) or needing a scorer that is off."""
    metric = lookup(name)
    if metric is None:
        known = ", ".join(METRICS)
        raise TitkError(f"{where}: {name!r} is not a metric titk computes (known: {known}; and the families in docs/metrics.md)")
    if metric.scorer not in scorers:
        raise TitkError(f"{where}: {name!r} needs the {metric.scorer} scorer, which evaluation.scorers leaves out")
    return metric


def per_image_column(name: str) -> str:
    metric = lookup(name)
    if metric is None or metric.column is None:
        columns = ", ".join(m.name for m in METRICS.values() if m.column)
        raise TitkError(f"objective.metrics: {name} has no per-image value; the Wilcoxon pruner needs one of {columns}")
    return metric.column
