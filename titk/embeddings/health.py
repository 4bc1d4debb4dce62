"""Whether a TI's vectors are still on the vocabulary's scale.

A text encoder only ever saw token rows of about one size: in the toy world's CLIP the largest of its 49408
rows is 1.6× their median norm. Learned vectors are free to grow, and with a high learning rate or a long run
they do: norms of 20× the vocabulary's and more are a known failure of Textual Inversion (the token then
drowns the rest of the prompt, which stops steering the image). The ratio of a vector's norm to its
encoder's median row norm is the measure; the thresholds below are the one place that says what is far.

- ok: under 4×, within a few times anything the encoder was trained on;
- high: 4× to 10×, worth a look (prompts may start to lose their grip);
- runaway: 10× and more, the failure itself (half the 20× that is commonly reported, so it is caught on the way).
"""

from __future__ import annotations

import torch

HIGH = 4.0  # ratio to the vocabulary median from which a vector counts as high
RUNAWAY = 10.0  # ... and as runaway
LEVELS = ("ok", "high", "runaway")  # a level's index is what MLflow records (norms.health)


def health(ratio: float) -> str:
    """"ok", "high" or "runaway" for a norm ratio (vector norm / vocabulary median norm); NaN is "ok"
    (nothing to compare with says nothing is wrong, and callers say so themselves)."""
    if ratio >= RUNAWAY:
        return "runaway"
    if ratio >= HIGH:
        return "high"
    return "ok"


def vocab_median(table: torch.Tensor) -> float:
    """The median L2 norm of an encoder's token rows."""
    return float(table.float().norm(dim=1).median())


def verdict(ratios: dict[str, list[float]], medians: dict[str, float]) -> str:
    """One line about an embedding's worst vector: "ok: ...", "high: ..." or "runaway: ...", given each
    encoder's per-vector ratios and its vocabulary median."""
    key, index, worst = max(((k, i, r) for k, rs in ratios.items() for i, r in enumerate(rs)), key=lambda x: x[2])
    level = health(worst)
    where = f"{key} #{index} is {worst:.1f}× the vocabulary median norm {medians[key]:.4f}"
    if level == "ok":
        return f"ok: the largest vector, {where} (high from {HIGH:g}×, runaway from {RUNAWAY:g}×)"
    advice = "the vectors have outgrown the vocabulary; lower the learning rate, stop earlier, or train with embedding.norm: vocab"
    return f"{level}: {where} ({'runaway from' if level == 'runaway' else 'high from'} {RUNAWAY if level == 'runaway' else HIGH:g}×); {advice}"
