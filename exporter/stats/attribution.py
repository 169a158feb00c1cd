"""Feature attributions: what drives the model now against what drove it on the reference (docs/attributions.md).

A prediction may carry each feature's attribution (a SHAP or LIME value from the model server). Each time bucket
keeps, per feature, how many predictions carried its attribution and the sum of their absolute values, and how
many predictions carried any: a window's figure per feature is its mean absolute attribution, the usual measure
of a feature's importance. The reference may carry the same values (columns ``attributions.<feature>``): its
mean absolute attribution per feature is the importance at training time.

Two figures compare the two profiles over the features both hold:

- the **attribution drift**: the total variation distance between the importance shares (each feature's mean
  absolute attribution over their sum), from 0 (the same shares) to 1 (no feature in common); the share of the
  model's attention that moved from some features to others;
- the **rank correlation**: Spearman's correlation between the two, 1 when the features rank alike.

Predictions without attributions cost nothing: no array is touched for them, and a model without
``attributions: true`` has none in its buckets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata

ARRAYS = ("attr_rows", "attr_n", "attr_abs")
REFERENCE_PREFIX = "attributions."


def schema(features: int) -> dict:
    """The arrays of a window bucket: predictions with an attribution; per feature, those with its attribution
    and the sum of its absolute values."""
    return {
        "attr_rows": ((), np.int64),
        "attr_n": ((features,), np.int64),
        "attr_abs": ((features,), np.float64),
    }


def scatter(values: np.ndarray, events: np.ndarray) -> dict:
    """The window entries of a batch's attributions: ``values`` (rows x features, NaN where left out) of the
    events ``events`` (their positions in the batch)."""
    have = ~np.isnan(values)
    row, col = np.nonzero(have)
    ev = events[row]
    carried = events[have.any(axis=1)]
    return {
        "attr_rows": (carried, np.zeros(len(carried), dtype=np.int64), None),
        "attr_n": (ev, col, None),
        "attr_abs": (ev, col, np.abs(values[row, col])),
    }


def reference_profile(columns: dict[str, list], names: list[str]) -> tuple[np.ndarray, int] | None:
    """The reference's mean absolute attribution per feature (NaN for a feature without a value) and the rows
    with any; None without attribution columns."""
    found = [REFERENCE_PREFIX + n in columns for n in names]
    if not any(found):
        return None
    rows = len(next(iter(columns.values())))
    table = np.full((rows, len(names)), np.nan)
    for j, name in enumerate(names):
        if found[j]:
            table[:, j] = [np.nan if v in (None, "") else float(v) for v in columns[REFERENCE_PREFIX + name]]
    if np.isinf(table).any():
        raise ValueError("an attribution is not a finite number")
    have = ~np.isnan(table)
    counts = have.sum(axis=0)
    sums = np.where(have, np.abs(table), 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return mean, int(have.any(axis=1).sum())


def ranks(mean_abs: np.ndarray) -> np.ndarray:
    """1 for the largest mean absolute attribution, 2 for the next... (ties in feature order); 0 for a feature
    without one."""
    out = np.zeros(len(mean_abs), dtype=np.int64)
    present = np.flatnonzero(~np.isnan(mean_abs))
    order = present[np.argsort(-mean_abs[present], kind="stable")]
    out[order] = np.arange(1, len(order) + 1)
    return out


def top(mean_abs: np.ndarray, n: int) -> set[int]:
    """The features of the ``n`` first ranks."""
    r = ranks(mean_abs)
    return {int(j) for j in np.flatnonzero((r > 0) & (r <= n))}


def drift(window: np.ndarray, reference: np.ndarray) -> float | None:
    """Total variation distance between the importance shares over the features both hold (None: fewer than
    two such features, or no importance on one side)."""
    both = ~np.isnan(window) & ~np.isnan(reference)
    if both.sum() < 2:
        return None
    w, r = window[both], reference[both]
    if w.sum() <= 0 or r.sum() <= 0:
        return None
    return float(0.5 * np.abs(w / w.sum() - r / r.sum()).sum())


def rank_correlation(window: np.ndarray, reference: np.ndarray) -> float | None:
    """Spearman's rank correlation over the features both hold (average ranks for ties; None: fewer than
    three such features, or one side constant)."""
    both = ~np.isnan(window) & ~np.isnan(reference)
    if both.sum() < 3:
        return None
    a, b = rankdata(window[both]), rankdata(reference[both])
    if a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


@dataclass
class WindowAttribution:
    rows: int  # predictions in the window with an attribution
    mean_abs: dict[str, float] = field(default_factory=dict)  # published features only
    rank: dict[str, int] = field(default_factory=dict)
    drift: float | None = None
    rank_correlation: float | None = None


def window(
    names: list[str], totals: dict, reference: np.ndarray | None, minimum: int, top_n: int
) -> WindowAttribution | None:
    """A window's figures from its totals (None: the model keeps no attributions). Published once the window
    holds ``minimum`` predictions with an attribution; features one by one for the ``top_n`` first of the
    window and of the reference."""
    if "attr_rows" not in totals:
        return None
    rows = int(totals["attr_rows"])
    out = WindowAttribution(rows)
    if rows < minimum or rows == 0:
        return out
    counts = totals["attr_n"].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, totals["attr_abs"] / np.maximum(counts, 1), np.nan)
    rank = ranks(mean)
    shown = top(mean, top_n) | (top(reference, top_n) if reference is not None else set())
    for j in sorted(shown):
        if not np.isnan(mean[j]):
            out.mean_abs[names[j]] = float(mean[j])
            out.rank[names[j]] = int(rank[j])
    if reference is not None:
        out.drift = drift(mean, reference)
        out.rank_correlation = rank_correlation(mean, reference)
    return out
