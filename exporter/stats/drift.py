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


# -------------------------------------------------------------------------------------------------------
# The same statistics for many features at once: one row per feature, bins padded with zeros on the right
# (a scrape computes them for every numeric feature of every window; one numpy call per statistic instead
# of one per feature and statistic). Each row equals the one-feature function above, up to rounding.


def _shares(counts: np.ndarray) -> np.ndarray:
    return counts / counts.sum(axis=1, keepdims=True)


def psi_rows(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """:func:`psi` of each row."""
    p = np.maximum(_shares(ref), PSI_EPSILON)
    q = np.maximum(_shares(cur), PSI_EPSILON)
    return np.sum((q - p) * np.log(q / p), axis=1)


def js_distance_rows(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """:func:`js_distance` of each row (empty bins, padding included, add nothing)."""
    p, q = _shares(ref), _shares(cur)
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum(axis=1)
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum(axis=1)
    return np.sqrt(np.maximum(0.5 * kl_p + 0.5 * kl_q, 0.0))


def ks_rows(ref: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ks` of each row: the statistics and their p-values."""
    n, m = ref.sum(axis=1), cur.sum(axis=1)
    d = np.max(np.abs(np.cumsum(ref, axis=1) / n[:, None] - np.cumsum(cur, axis=1) / m[:, None]), axis=1)
    en = np.sqrt(n * m / (n + m))
    return d, kolmogorov((en + 0.12 + 0.11 / en) * d)


def wasserstein_rows(
    ref: np.ndarray, cur: np.ndarray, points_ref: np.ndarray, points_cur: np.ndarray, scale: np.ndarray
) -> np.ndarray:
    """:func:`wasserstein` of each row; padded bins must sit at the row's largest point (they move nothing)."""
    xs = np.concatenate([points_ref, points_cur], axis=1)
    ws = np.concatenate([_shares(ref), -_shares(cur)], axis=1)
    order = np.argsort(xs, axis=1, kind="stable")
    xs, ws = np.take_along_axis(xs, order, axis=1), np.take_along_axis(ws, order, axis=1)
    cdf_gap = np.cumsum(ws, axis=1)[:, :-1]
    distance = np.sum(np.abs(cdf_gap) * np.diff(xs, axis=1), axis=1)
    return np.where(scale > 0, distance / np.where(scale > 0, scale, 1.0), distance)


# -------------------------------------------------------------------------------------------------------
# One categorical distribution against several windows' counts (a feature's windows, computed together).
# Unlike the *_rows functions above, these give each row the exact bits of the one-row function: the rows
# share the reference and are not padded, every sum runs along a row's own contiguous terms, and the caller
# passes only rows that leave the same bins empty (JS and chi-square sum over the non-empty bins alone).


def categorical_rows(ref: np.ndarray, cur: np.ndarray) -> tuple[list[float], list[float], np.ndarray, np.ndarray]:
    """:func:`psi`, :func:`js_distance` and :func:`chi2` (statistic, p-value) of ``ref`` against each row of
    ``cur``; every row must have its zero counts in the same bins as the first row."""
    r = len(cur)
    # PSI
    p = np.maximum(ref / ref.sum(), PSI_EPSILON)
    q = np.maximum(cur / cur.sum(axis=1, keepdims=True), PSI_EPSILON)
    psi_values = np.sum((q - p) * np.log(q / p), axis=1).tolist()
    # Jensen-Shannon: each KL sum over the bins where its own distribution is non-zero.
    p, q = ref / ref.sum(), cur / cur.sum(axis=1, keepdims=True)
    m = 0.5 * (p + q)
    nz_p, nz_q = p > 0, cur[0] > 0
    # C order: a boolean index on the second axis can give a Fortran-ordered array, whose rows numpy would
    # then not sum as it sums a row alone (pairwise along contiguous memory).
    m_p, m_q, q = (np.ascontiguousarray(a[:, nz]) for a, nz in ((m, nz_p), (m, nz_q), (q, nz_q)))
    kl_p = np.sum(p[nz_p] * np.log2(p[nz_p] / m_p), axis=1).tolist()
    kl_q = np.sum(q * np.log2(q / m_q), axis=1).tolist()
    js_values = [math.sqrt(max(0.5 * a + 0.5 * b, 0.0)) for a, b in zip(kl_p, kl_q)]
    # Chi-square: the 2 x K table of each row, its categories empty on both sides dropped.
    keep = np.vstack([ref, cur[0]]).astype(np.float64).sum(axis=0) > 0
    k = int(keep.sum())
    if k < 2:
        return psi_values, js_values, np.zeros(r), np.ones(r)
    table = np.empty((r, 2, k))
    table[:, 0] = ref[keep]
    table[:, 1] = cur[:, keep]
    expected = (
        table.sum(axis=2, keepdims=True)
        * table.sum(axis=1, keepdims=True)
        / table.reshape(r, 2 * k).sum(axis=1).reshape(r, 1, 1)
    )
    stat = np.sum(((table - expected) ** 2 / expected).reshape(r, 2 * k), axis=1)
    return psi_values, js_values, stat, chdtrc(k - 1, stat)
