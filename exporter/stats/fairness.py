"""Fairness of a binary classifier across the groups of a sensitive feature: each group's rates from its counts,
and the disparities between groups (docs/fairness.md). Pure functions of counts; None where undefined."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RATES = ("selection_rate", "true_positive_rate", "false_positive_rate", "accuracy")
DISPARITIES = (
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equal_opportunity_difference",
    "equalized_odds_difference",
    "accuracy_difference",
)
OUTCOMES = ("tp", "fp", "tn", "fn")


@dataclass(frozen=True)
class GroupCounts:
    """One group's counts in a window: predictions by prediction time, labelled outcomes by join time."""

    predictions: int
    predicted_positive: int
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def labeled(self) -> int:
        return self.tp + self.fp + self.tn + self.fn


def _cells(confusion: np.ndarray, positive: int) -> tuple:
    """tp, fp, tn, fn of an (actual x predicted) confusion matrix of two classes."""
    negative = 1 - positive
    return (
        confusion[positive, positive],
        confusion[negative, positive],
        confusion[negative, negative],
        confusion[positive, negative],
    )


def group_counts(pred_bins: np.ndarray, confusion: np.ndarray, positive: int) -> GroupCounts:
    """From a window's predicted-class counts and its (actual x predicted) confusion matrix of two classes."""
    tp, fp, tn, fn = (int(v) for v in _cells(confusion, positive))
    return GroupCounts(int(pred_bins.sum()), int(pred_bins[positive]), tp, fp, tn, fn)


def _share(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None


def _outcome_rates(tp: float, fp: float, tn: float, fn: float) -> dict[str, float | None]:
    return {
        "true_positive_rate": _share(tp, tp + fn),
        "false_positive_rate": _share(fp, fp + tn),
        "accuracy": _share(tp + tn, tp + fp + tn + fn),
    }


def group_rates(c: GroupCounts) -> dict[str, float | None]:
    """Selection rate (of all predictions), true and false positive rates and accuracy (of labelled ones)."""
    return {"selection_rate": _share(c.predicted_positive, c.predictions), **_outcome_rates(c.tp, c.fp, c.tn, c.fn)}


def estimated_outcomes(est_confusion: np.ndarray, positive: int) -> dict[str, float]:
    """A group's expected tp, fp, tn and fn: the window's expected (actual x predicted) confusion matrix of its
    scored predictions (exporter/stats/estimate.py), where every prediction, labelled or not, counts the
    calibrated probability of each class being the truth."""
    return dict(zip(OUTCOMES, (float(v) for v in _cells(est_confusion, positive)), strict=True))


def estimated_rates(outcomes: dict[str, float]) -> dict[str, float | None]:
    """True and false positive rates and accuracy from expected outcomes (no selection rate: it is never
    estimated, every prediction's class is known)."""
    return {"selection_rate": None, **_outcome_rates(*(outcomes[o] for o in OUTCOMES))}


ESTIMATED_DISPARITIES = ("equal_opportunity_difference", "equalized_odds_difference", "accuracy_difference")


def _difference(values: dict[str, float], reference: str | None) -> float | None:
    """spread (reference None): max minus min over the groups; else the largest gap to the reference group."""
    if reference is None:
        return max(values.values()) - min(values.values()) if len(values) >= 2 else None
    ref = values.get(reference)
    others = [v for g, v in values.items() if g != reference]
    if ref is None or not others:
        return None
    return max(abs(v - ref) for v in others)


def _ratio(values: dict[str, float], reference: str | None) -> float | None:
    """spread: min over max; else the lowest ratio of a group's value to the reference group's."""
    if reference is None:
        if len(values) < 2 or max(values.values()) == 0:
            return None
        return min(values.values()) / max(values.values())
    ref = values.get(reference)
    others = [v for g, v in values.items() if g != reference]
    if not ref or not others:
        return None
    return min(v / ref for v in others)


def disparities(rates: dict[str, dict[str, float | None]], reference: str | None = None) -> dict[str, float | None]:
    """The disparities between groups (group -> group_rates), each over the groups where its rate is defined.

    ``reference`` None: spread (max minus min over the groups, min over max for the ratio); else the largest
    gap to the reference group (and the lowest ratio to it). A disparity needs two groups, and in reference
    mode the reference group itself, with the rate defined.
    """

    def defined(name: str) -> dict[str, float]:
        return {g: r[name] for g, r in rates.items() if r[name] is not None}  # type: ignore[misc]

    selection, tpr, fpr = defined("selection_rate"), defined("true_positive_rate"), defined("false_positive_rate")
    tpr_gap, fpr_gap = _difference(tpr, reference), _difference(fpr, reference)
    return {
        "demographic_parity_difference": _difference(selection, reference),
        "demographic_parity_ratio": _ratio(selection, reference),
        "equal_opportunity_difference": tpr_gap,
        "equalized_odds_difference": max(tpr_gap, fpr_gap) if tpr_gap is not None and fpr_gap is not None else None,
        "accuracy_difference": _difference(defined("accuracy"), reference),
    }
