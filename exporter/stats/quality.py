"""Model-quality math: pure functions from a window's sufficient statistics to published figures.

Nothing here knows about HTTP, clocks, threads or Prometheus. Every function returns ``None`` (or leaves a
class out) where a figure is undefined, so that the collector publishes no series rather than 0 or NaN.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

# Score histogram edges for AUC. Uniform 0.01 steps in the middle and log-spaced tails, because confident
# models put most of their scores within 1e-2 of 0 or 1. 130 bins. The middle edges are k / 100 exactly (the
# double nearest to "0.05", as a parsed score is), so scores given to two decimals never share a bin.
_TAIL = np.geomspace(1e-5, 0.01, 16)[:-1]
SCORE_EDGES = np.unique(np.concatenate([_TAIL, np.arange(1, 100) / 100, 1.0 - _TAIL[::-1]]))
SCORE_BINS = len(SCORE_EDGES) + 1

# Reliability (ECE) bins: ten equal-width confidence bins, as in Guo et al. 2017.
ECE_BINS = 10

# Probabilities are clipped to [EPS, 1 - EPS] before the log, as scikit-learn's log_loss does.
EPS = float(np.finfo(np.float64).eps)


def score_bin(p: np.ndarray) -> np.ndarray:
    """Bin index of each probability in :data:`SCORE_EDGES` (bin i holds edges[i-1] <= p < edges[i])."""
    return np.searchsorted(SCORE_EDGES, p, side="right")


def ece_bin(confidence: np.ndarray) -> np.ndarray:
    """Equal-width reliability bin of each top-label confidence; 1.0 falls in the last bin."""
    return np.minimum((np.asarray(confidence) * ECE_BINS).astype(np.int64), ECE_BINS - 1)


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def classification(confusion: np.ndarray) -> dict:
    """Accuracy, balanced accuracy and per-class precision, recall and F1 from a C x C confusion matrix.

    ``confusion[actual, predicted]`` counts labelled outcomes. Per-class figures are dicts from class
    index to value and omit a class where the figure divides by zero (scikit-learn's ``zero_division``
    case): precision of a class never predicted, recall of a class never seen.
    """
    c = np.asarray(confusion, dtype=np.float64)
    n = c.sum()
    tp = np.diag(c)
    predicted = c.sum(axis=0)
    actual = c.sum(axis=1)
    precision = {i: tp[i] / predicted[i] for i in range(len(tp)) if predicted[i] > 0}
    recall = {i: tp[i] / actual[i] for i in range(len(tp)) if actual[i] > 0}
    f1_den = predicted + actual  # 2tp + fp + fn
    f1 = {i: 2 * tp[i] / f1_den[i] for i in range(len(tp)) if f1_den[i] > 0}
    return {
        "accuracy": _ratio(tp.sum(), n),
        # Mean recall over the classes present in the window, as scikit-learn's balanced_accuracy_score.
        "balanced_accuracy": float(np.mean(list(recall.values()))) if recall else None,
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def binned_auc(pos_hist: np.ndarray, neg_hist: np.ndarray) -> tuple[float, float] | None:
    """ROC AUC from score histograms of the positives and negatives, with its error bound.

    Pairs in different bins are ordered exactly; pairs in the same bin count as ties (1/2), as
    scikit-learn does for equal scores. So the exact AUC differs by at most
    ``0.5 * sum_b pos_b * neg_b / (P * N)``, which is returned as the bound.
    """
    pos = np.asarray(pos_hist, dtype=np.float64)
    neg = np.asarray(neg_hist, dtype=np.float64)
    p, n = pos.sum(), neg.sum()
    if p == 0 or n == 0:
        return None
    neg_below = np.cumsum(neg) - neg
    same_bin = float(np.dot(pos, neg))
    auc = (float(np.dot(pos, neg_below)) + 0.5 * same_bin) / (p * n)
    return auc, 0.5 * same_bin / (p * n)


def roc_auc(hist_pos: np.ndarray, hist_all: np.ndarray) -> tuple[float, float] | None:
    """Binary AUC (one score column) or one-vs-rest macro AUC (one column per class) with its bound.

    ``hist_pos[s]`` is the histogram of score column ``s`` over events whose actual class is that column's
    class; ``hist_all[s]`` over all scored events. Classes without both positives and negatives in the
    window are left out of the macro average.
    """
    per_class = [binned_auc(hp, ha - hp) for hp, ha in zip(hist_pos, hist_all)]
    defined = [r for r in per_class if r is not None]
    if not defined:
        return None
    return float(np.mean([a for a, _ in defined])), float(np.mean([b for _, b in defined]))


def gini(auc: tuple[float, float] | None) -> tuple[float, float] | None:
    """The Gini coefficient (accuracy ratio) of a binary model, 2 AUC - 1, with its bound (twice the AUC's)."""
    return None if auc is None else (2.0 * auc[0] - 1.0, 2.0 * auc[1])


def expected_calibration_error(count: np.ndarray, correct: np.ndarray, confidence_sum: np.ndarray) -> float | None:
    """Top-label ECE: sum over bins of |accuracy - mean confidence| weighted by the bin's share.

    Exact for the ten equal-width bins, because each bin keeps its count, correct count and sum of
    confidences.
    """
    count = np.asarray(count, dtype=np.float64)
    total = count.sum()
    if total == 0:
        return None
    return float(np.sum(np.abs(np.asarray(correct) - np.asarray(confidence_sum))) / total)


def regression(n: float, err_sum: float, abs_sum: float, sq_sum: float, y_sum: float, y_sq_sum: float) -> dict:
    """MAE, RMSE, mean error (bias, prediction - label) and R^2 from running sums.

    R^2 follows scikit-learn's r2_score: 1 - SSE / SST, undefined (absent) when the labels have no variance.
    """
    if n <= 0:
        return {}
    out = {"mae": abs_sum / n, "rmse": math.sqrt(max(sq_sum, 0.0) / n), "mean_error": err_sum / n}
    sst = y_sq_sum - y_sum * y_sum / n
    # Cancellation in the sums can leave a tiny SST for constant labels; treat it as zero variance.
    if sst > 1e-12 * max(y_sq_sum, 1.0):
        out["r2"] = 1.0 - sq_sum / sst
    return out


def z_of_confidence(confidence: float) -> float:
    """The one-sided normal quantile of ``confidence`` (0.99 -> 2.326): how many standard errors of evidence
    the bundled quality alerts ask for before they fire."""
    return NormalDist().inv_cdf(confidence)


def ks_separation(pos_hist: np.ndarray, neg_hist: np.ndarray) -> tuple[float, float] | None:
    """Kolmogorov-Smirnov separation of binary scores: the largest gap between the score distributions of
    the positives and the negatives (as in credit scoring), from their histograms, with its error bound.

    The gap is read at the bin edges. Inside a bin each distribution function rises by at most that bin's
    share of its class, so the exact statistic (over every threshold) exceeds the binned one by at most
    ``max_b max(pos_b / P, neg_b / N)``, which is returned as the bound.
    """
    pos = np.asarray(pos_hist, dtype=np.float64)
    neg = np.asarray(neg_hist, dtype=np.float64)
    p, n = pos.sum(), neg.sum()
    if p == 0 or n == 0:
        return None
    gap = np.abs(np.cumsum(pos) / p - np.cumsum(neg) / n)
    return float(gap.max()), float(np.maximum(pos / p, neg / n).max())
