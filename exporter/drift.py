"""Drift math: pure functions comparing a window's binned counts with the reference's, bin for bin.

Every statistic is computed from counts over bin edges frozen from the reference, so its cost depends on
the number of bins, never on the events in the window. docs/drift.md gives each method's bias from the
binning and from small samples.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import chdtrc, kolmogorov

# Added to every share before a logarithm, so that an empty bin on one side gives a large but finite PSI.
PSI_EPSILON = 1e-4

NUMERIC_METHODS = ("psi", "ks", "ks_pvalue", "js", "wasserstein")
CATEGORICAL_METHODS = ("psi", "js", "chi2", "chi2_pvalue", "unseen")
CLASS_METHODS = ("psi", "js", "chi2", "chi2_pvalue")  # predicted classes and labels

# For these methods a feature drifts when the value is BELOW its threshold.
PVALUE_METHODS = frozenset({"ks_pvalue", "chi2_pvalue"})


def over_threshold(method: str, value: float, threshold: float) -> bool:
    return value < threshold if method in PVALUE_METHODS else value > threshold


def psi(ref: np.ndarray, cur: np.ndarray) -> float:
    """Population stability index: sum over bins of (q - p) * ln(q / p), shares floored at PSI_EPSILON."""
    p = np.maximum(ref / ref.sum(), PSI_EPSILON)
    q = np.maximum(cur / cur.sum(), PSI_EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(ref: np.ndarray, cur: np.ndarray) -> float:
    """Jensen-Shannon distance with base-2 logarithms (0 identical, 1 disjoint); scipy's jensenshannon(base=2)."""
    p, q = ref / ref.sum(), cur / cur.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return math.sqrt(max(0.5 * kl(p) + 0.5 * kl(q), 0.0))


def ks(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic on the bin edges, and its asymptotic p-value.

    The two empirical CDFs are exact at every bin edge, so the statistic is the largest gap over the
    edges: never above the exact statistic, and below it by at most the mass inside one bin.
    """
    n, m = float(ref.sum()), float(cur.sum())
    d = float(np.max(np.abs(np.cumsum(ref) / n - np.cumsum(cur) / m)))
    # Kolmogorov's limiting distribution with Stephens' small-sample correction: about a microsecond,
    # where scipy's exact kstwo.sf takes milliseconds at n in the thousands (scrape time matters).
    en = math.sqrt(n * m / (n + m))
    return d, float(kolmogorov((en + 0.12 + 0.11 / en) * d))


def wasserstein(
    ref: np.ndarray, cur: np.ndarray, points_ref: np.ndarray, points_cur: np.ndarray, scale: float
) -> float:
    """Earth mover's distance between two binned distributions, each bin's mass at its point, over ``scale``.

    ``points_*`` place each bin's mass (the bin's midpoint inside the reference range; the mean of the
    values seen below or above it outside). Dividing by the reference standard deviation makes one
    threshold fit every feature.
    """
    xs = np.concatenate([points_ref, points_cur])
    ws = np.concatenate([ref / ref.sum(), -cur / cur.sum()])
    order = np.argsort(xs, kind="stable")
    xs, ws = xs[order], ws[order]
    cdf_gap = np.cumsum(ws)[:-1]
    distance = float(np.sum(np.abs(cdf_gap) * np.diff(xs)))
    return distance / scale if scale > 0 else distance


def chi2(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """Pearson's chi-square test of homogeneity on the 2 x K table [reference; window], no continuity
    correction (scipy's chi2_contingency(..., correction=False)); categories empty on both sides dropped."""
    table = np.vstack([ref, cur]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 0.0, 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    stat = float(np.sum((table - expected) ** 2 / expected))
    return stat, float(chdtrc(table.shape[1] - 1, stat))
