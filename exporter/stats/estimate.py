"""Quality estimated before the labels come: confidence-based performance estimation (CBPE) in streaming form.

A calibrated score is the probability that its class is the true one. Over a window, the expected confusion
matrix is then a sum over the scored predictions: each one adds its calibrated probability of being of class
``k`` to cell ``(k, predicted class)``. Accuracy, precision, recall and F1 follow from that matrix as from a
labelled one (ratios of expected counts, as NannyML's CBPE computes them), and for a binary model the ROC AUC
from the calibrated positive probability summed per score bin. Every figure is a function of additive sums,
so a window costs the same memory whatever the traffic, and replicas add up.

Calibration comes from the reference: when it carries the model's scores and the true labels, an isotonic
map per score column is fitted on them. As NannyML does, the map is kept only when it helps on rows it was not
fitted on (3-fold cross-validation of the expected calibration error); otherwise the scores are taken as they
are. Without scores or labels in the reference there is nothing to calibrate against and no estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import isotonic_regression

from exporter.stats import quality

FOLDS = 3
MIN_ROWS = 100  # labelled, scored reference rows needed to calibrate
ECE_BINS = 10
MAX_KNOTS = 1000  # a map keeps at most this many (score, probability) points


@dataclass(frozen=True)
class Calibration:
    """How a model's scores become probabilities: ``method`` "isotonic" (``maps``: per score column, the
    knots of a piecewise-linear increasing map) or "none" (the scores are used as they are)."""

    method: str
    maps: tuple[tuple[np.ndarray, np.ndarray], ...]
    ece_raw: float  # mean one-vs-rest ECE of the raw scores on the reference
    ece_calibrated: float  # the same for the isotonic maps, out of fold
    rows: int  # labelled, scored reference rows it was fitted on

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated score columns (events x score columns)."""
        if self.method == "none":
            return np.clip(scores, 0.0, 1.0)
        out = np.empty_like(scores, dtype=np.float64)
        for j, (x, y) in enumerate(self.maps):
            out[:, j] = np.interp(scores[:, j], x, y)
        return out

    def as_json(self) -> dict:
        return {
            "method": self.method,
            "ece_raw": self.ece_raw,
            "ece_calibrated": self.ece_calibrated,
            "rows": self.rows,
            "maps": [{"x": x.tolist(), "y": y.tolist()} for x, y in self.maps],
        }

    @staticmethod
    def from_json(data, columns: int) -> Calibration:
        """Validate a calibration as written by :meth:`as_json`; raise ValueError naming the problem."""
        if not isinstance(data, dict) or data.get("method") not in ("isotonic", "none"):
            raise ValueError("'method' must be isotonic or none")
        maps = []
        for m in data.get("maps") or []:
            x, y = np.asarray(m["x"], dtype=np.float64), np.asarray(m["y"], dtype=np.float64)
            if x.ndim != 1 or x.shape != y.shape or not 1 <= len(x) <= MAX_KNOTS:
                raise ValueError(f"a map needs 1 to {MAX_KNOTS} x and y values of the same length")
            if np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0) or not (np.all(y >= 0) and np.all(y <= 1)):
                raise ValueError("a map's x must increase and its y rise within [0, 1]")
            maps.append((x, y))
        if data["method"] == "isotonic" and len(maps) != columns:
            raise ValueError(f"isotonic calibration needs {columns} maps, one per score column")
        return Calibration(
            data["method"],
            tuple(maps),
            float(data["ece_raw"]),
            float(data["ece_calibrated"]),
            int(data["rows"]),
        )


def isotonic_map(scores: np.ndarray, outcome: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The increasing map from score to the share of positives (pool adjacent violators, by scipy), as knots
    for linear interpolation, flat beyond the ends; equal scores are pooled first."""
    x, inverse = np.unique(scores, return_inverse=True)
    weight = np.bincount(inverse).astype(np.float64)
    y = np.bincount(inverse, weights=outcome.astype(np.float64)) / weight
    fitted = isotonic_regression(y, weights=weight, increasing=True).x
    # Knots where the map bends: the ends of every flat run.
    keep = np.ones(len(x), dtype=bool)
    if len(x) > 2:
        keep[1:-1] = (fitted[1:-1] != fitted[:-2]) | (fitted[1:-1] != fitted[2:])
    x, fitted = x[keep], np.clip(fitted[keep], 0.0, 1.0)
    if len(x) > MAX_KNOTS:  # thin evenly; the map stays increasing
        pick = np.unique(np.linspace(0, len(x) - 1, MAX_KNOTS).round().astype(np.int64))
        x, fitted = x[pick], fitted[pick]
    return x, fitted


def ece(probability: np.ndarray, outcome: np.ndarray) -> float:
    """One-vs-rest expected calibration error over :data:`ECE_BINS` equal-width bins."""
    b = np.minimum((probability * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    n = np.bincount(b, minlength=ECE_BINS)
    gap = np.bincount(b, weights=outcome - probability, minlength=ECE_BINS)
    return float(np.abs(gap).sum() / max(n.sum(), 1))


def fit(scores: np.ndarray, outcomes: np.ndarray) -> Calibration:
    """Calibration of score columns (rows x columns) against their outcomes (1 where the column's class is the
    true one): isotonic maps if they lower the cross-validated ECE, else none."""
    rows, columns = scores.shape
    raw = float(np.mean([ece(scores[:, j], outcomes[:, j]) for j in range(columns)]))
    fold = np.arange(rows) % FOLDS
    out_of_fold = np.empty_like(scores, dtype=np.float64)
    for f in range(FOLDS):
        train, test = fold != f, fold == f
        for j in range(columns):
            x, y = isotonic_map(scores[train, j], outcomes[train, j])
            out_of_fold[test, j] = np.interp(scores[test, j], x, y)
    calibrated = float(np.mean([ece(out_of_fold[:, j], outcomes[:, j]) for j in range(columns)]))
    if calibrated >= raw:
        return Calibration("none", (), raw, calibrated, rows)
    maps = tuple(isotonic_map(scores[:, j], outcomes[:, j]) for j in range(columns))
    return Calibration("isotonic", maps, raw, calibrated, rows)


def probabilities(calibration: Calibration, scores: np.ndarray, positive: int | None) -> np.ndarray:
    """Full class-probability rows (events x classes) from raw score columns: binary ``[1 - p, p]`` in class
    order (``positive`` is the positive class's index), multiclass calibrated one-vs-rest and renormalised."""
    p = calibration.apply(scores)
    if positive is not None:
        out = np.empty((len(p), 2))
        out[:, positive] = p[:, 0]
        out[:, 1 - positive] = 1.0 - p[:, 0]
        return out
    total = p.sum(axis=1, keepdims=True)
    return np.divide(p, total, out=np.full_like(p, 1.0 / p.shape[1]), where=total > 0)


def schema(classes: int, binary: bool) -> dict:
    """The window arrays of the estimate, per time bucket (see :func:`scatter`)."""
    out = {
        "est_n": ((), np.int64),
        "est_confusion": ((classes, classes), np.float64),
        "est_var": ((), np.float64),
        "est_sq": ((), np.float64),
        # The scored predictions of the bucket that have their label now (added when the label comes, into the
        # prediction's bucket): how many, how many right, and their estimated number right with its variance.
        "est_lab_n": ((), np.int64),
        "est_lab_correct": ((), np.int64),
        "est_lab_p": ((), np.float64),
        "est_lab_var": ((), np.float64),
    }
    if binary:
        out["est_hist_n"] = ((quality.SCORE_BINS,), np.int64)
        out["est_hist_pos"] = ((quality.SCORE_BINS,), np.float64)
    return out


ARRAYS = (
    "est_n",
    "est_confusion",
    "est_var",
    "est_sq",
    "est_lab_n",
    "est_lab_correct",
    "est_lab_p",
    "est_lab_var",
    "est_hist_n",
    "est_hist_pos",
)


def scatter(
    calibration: Calibration, events: np.ndarray, predicted: np.ndarray, scores: np.ndarray, positive: int | None
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """What the scored predictions ``events`` (indices in the batch) add to the window arrays: their count,
    the expected confusion matrix (cell ``(k, predicted)`` gains the probability of class ``k``), the variance
    of the number correct (sum of ``p (1 - p)`` of the predicted class), and for a binary model the count and
    the summed calibrated positive probability per raw score bin."""
    prob = probabilities(calibration, scores, positive)
    n, c = prob.shape
    out = {
        "est_n": (events, np.zeros(n, dtype=np.int64), None),
        "est_confusion": (
            np.repeat(events, c),
            (np.arange(c)[None, :] * c + predicted[:, None]).ravel(),
            prob.ravel(),
        ),
    }
    p_hat = prob[np.arange(n), predicted]
    out["est_var"] = (events, np.zeros(n, dtype=np.int64), p_hat * (1.0 - p_hat))
    out["est_sq"] = (events, np.zeros(n, dtype=np.int64), p_hat * p_hat)
    if positive is not None:
        bins = quality.score_bin(scores[:, 0])
        out["est_hist_n"] = (events, bins, None)
        out["est_hist_pos"] = (events, bins, prob[:, positive])
    return out


def labelled_scatter(
    calibration: Calibration, predicted: np.ndarray, actual: np.ndarray, scores: np.ndarray, positive: int | None
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """What labels joined to scored predictions add to their predictions' buckets: the count, the number
    right, and the calibrated probability of the predicted class (its sum and the sum of ``p (1 - p)``)."""
    n = len(predicted)
    prob = probabilities(calibration, scores, positive)
    p_hat = prob[np.arange(n), predicted]
    events, zero = np.arange(n), np.zeros(n, dtype=np.int64)
    return {
        "est_lab_n": (events, zero, None),
        "est_lab_correct": (events, zero, (predicted == actual).astype(np.float64)),
        "est_lab_p": (events, zero, p_hat),
        "est_lab_var": (events, zero, p_hat * (1.0 - p_hat)),
    }


def figures(totals: dict, binary: bool) -> dict | None:
    """Estimated quality of a window from its summed arrays: accuracy with its standard deviation, the
    per-class precision, recall and F1, the ROC AUC of a binary model, the nowcast (realized where labelled,
    estimated elsewhere) and the calibration gap (realized minus estimated, over the labelled predictions),
    each with its standard deviation; None for an empty window."""
    n = float(totals["est_n"])
    if n == 0:
        return None
    conf = totals["est_confusion"]
    out = quality.classification(conf)
    out["accuracy_stddev"] = float(np.sqrt(max(float(totals["est_var"]), 0.0))) / n
    # The estimate's own standard error: how much it varies with the sample of inputs (the spread of the
    # predictions' probabilities of being right over sqrt(n)); what a test of the estimate against a floor needs.
    total = float(np.trace(conf))
    spread = max(float(totals["est_sq"]) - total * total / n, 0.0)
    out["accuracy_stderr"] = float(np.sqrt(spread / (n * (n - 1)))) if n > 1 else None
    # The nowcast: the labelled predictions as they turned out, the others as estimated.
    labelled = float(totals["est_lab_n"])
    right, expected = float(totals["est_lab_correct"]), float(totals["est_lab_p"])
    out["nowcast_accuracy"] = min(max((float(np.trace(conf)) - expected + right) / n, 0.0), 1.0)
    pending_var = max(float(totals["est_var"]) - float(totals["est_lab_var"]), 0.0)
    out["nowcast_accuracy_stddev"] = float(np.sqrt(pending_var)) / n
    # The calibration gap: realized minus estimated accuracy over the labelled ones.
    out["calibration_gap"] = (right - expected) / labelled if labelled else None
    out["calibration_gap_stddev"] = (
        float(np.sqrt(max(float(totals["est_lab_var"]), 0.0))) / labelled if labelled else None
    )
    out["roc_auc"] = None
    if binary:
        pos = totals["est_hist_pos"]
        auc = quality.binned_auc(pos, totals["est_hist_n"] - pos)
        out["roc_auc"] = None if auc is None else auc[0]
    return out
