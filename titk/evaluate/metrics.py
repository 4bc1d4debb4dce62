"""Set-level measures, as plain functions of embeddings and histograms."""

from __future__ import annotations

import numpy as np


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


def vendi_score(embeddings: np.ndarray) -> float:
    """Vendi score (Friedman & Dieng 2023): exp of the entropy of the eigenvalues of K/n, K the cosine
    similarity matrix. The effective number of distinct items: 1 for identical ones, n for orthogonal ones."""
    x = normalise(embeddings)
    n = x.shape[0]
    if n == 0:
        return float("nan")
    eig = np.linalg.eigvalsh(x @ x.T / n)
    eig = eig[eig > 1e-12]
    return float(np.exp(-(eig * np.log(eig)).sum()))


def mean_pairwise_distance(embeddings: np.ndarray) -> float:
    """Mean cosine distance (1 − cos) over all pairs; NaN for fewer than two items."""
    x = normalise(embeddings)
    n = x.shape[0]
    if n < 2:
        return float("nan")
    sims = x @ x.T
    return float(1.0 - sims[np.triu_indices(n, 1)].mean())


def mean_pairwise_similarity(embeddings: np.ndarray) -> float:
    x = normalise(embeddings)
    n = x.shape[0]
    if n < 2:
        return float("nan")
    return float((x @ x.T)[np.triu_indices(n, 1)].mean())


def entropy(p: np.ndarray) -> float:
    """Shannon entropy in nats of a histogram (normalised here); at most ln(#labels)."""
    p = np.asarray(p, dtype=np.float64)
    total = p.sum()
    if total <= 0:
        return float("nan")
    p = p / total
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence in nats between two histograms (normalised here); 0 … ln 2."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a, b):
        mask = a > 0
        return float((a[mask] * np.log(a[mask] / b[mask])).sum())

    return max(0.0, 0.5 * kl(p, m) + 0.5 * kl(q, m))
