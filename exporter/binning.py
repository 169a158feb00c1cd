"""Where features meet the reference: a batch's values become bin indices, a window's bins become drift.

`Binner` turns a batch of predictions into flat indices into the window arrays (one vectorised pass per
batch, whatever the number of windows); `window_drift` turns a window's summed arrays into the published
drift and data-quality figures with the pure functions of `drift.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from exporter import drift
from exporter.config import ModelConfig
from exporter.reference import NUMERIC_SLOTS, TOP_CATEGORIES, CategoricalRef, NumericRef, Profile, category
from exporter.window import Schema

CAT_SLOTS = TOP_CATEGORIES + 1
# Arrays of the window rings that depend on the reference's bins (cleared when the reference changes).
REFERENCE_ARRAYS = ("num_counts", "num_out", "cat_counts", "cat_unseen", "pred_bins", "pred_out")


def drift_schema(model: ModelConfig) -> Schema:
    numeric = sum(f.type == "numeric" for f in model.features)
    categorical = len(model.features) - numeric
    schema: Schema = {
        "missing": ((len(model.features),), np.int32),
        "type_errors": ((len(model.features),), np.int32),  # values left out under invalid_features: count
        "num_counts": ((numeric, NUMERIC_SLOTS), np.int32),
        "num_out": ((numeric, 2), np.float64),  # sums of the values below / above the reference range
        "cat_counts": ((categorical, CAT_SLOTS), np.int32),
        "cat_unseen": ((categorical,), np.int32),
    }
    if model.is_classification:
        schema["pred_bins"] = ((len(model.classes),), np.int32)  # predicted classes
    else:
        schema["pred_bins"] = ((NUMERIC_SLOTS,), np.int32)
        schema["pred_out"] = ((2,), np.float64)
    return schema


@dataclass
class Binned:
    """One batch, as flat indices into the arrays of one window slot, with the event each came from."""

    scatter: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = field(default_factory=dict)
    missing: np.ndarray | None = None  # per feature, for the cumulative counter


class Binner:
    """Bins events of one model against its reference (or, without one, counts missing values only)."""

    def __init__(self, model: ModelConfig, profile: Profile | None):
        self.model = model
        self.profile = profile
        self.names = [f.name for f in model.features]
        self.numeric = [f.name for f in model.features if f.type == "numeric"]
        self.categorical = [f.name for f in model.features if f.type == "categorical"]
        self.refs = profile.features if profile else {}
        self.cat_index = {
            name: {c: i for i, c in enumerate(self.refs[name].categories)}
            for name in self.categorical
            if name in self.refs
        }

    def bin(self, features: list[dict | None], predictions: list, errors: list | None = None) -> Binned:
        """``errors``: per event, the (feature, reason) pairs validation left out (type errors are not missing)."""
        n = len(features)
        out = Binned()
        missing_rows, missing_cols = [], []
        # Numeric: one column at a time (vectorised over the batch).
        num_ev, num_idx, out_ev, out_idx, out_val = [], [], [], [], []
        for j, name in enumerate(self.numeric):
            col = np.fromiter((_num((f or {}).get(name)) for f in features), dtype=np.float64, count=n)
            gone = np.isnan(col)
            if gone.any():
                missing_rows.append(np.flatnonzero(gone))
                missing_cols.append(np.full(int(gone.sum()), self.names.index(name)))
            ref = self.refs.get(name)
            if ref is None:
                continue
            present = np.flatnonzero(~gone)
            values = col[present]
            bins = ref.bins(values)
            num_ev.append(present)
            num_idx.append(j * NUMERIC_SLOTS + bins)
            for side, mask in ((0, bins == 0), (1, bins == len(ref.counts) - 1)):
                if mask.any():
                    out_ev.append(present[mask])
                    out_idx.append(np.full(int(mask.sum()), j * 2 + side))
                    out_val.append(values[mask])
        if num_ev:
            out.scatter["num_counts"] = (np.concatenate(num_ev), np.concatenate(num_idx), None)
        if out_ev:
            out.scatter["num_out"] = (np.concatenate(out_ev), np.concatenate(out_idx), np.concatenate(out_val))
        # Categorical: a dictionary look-up per value.
        cat_ev, cat_idx, unseen_ev, unseen_idx = [], [], [], []
        for j, name in enumerate(self.categorical):
            ref = self.refs.get(name)
            index = self.cat_index.get(name)
            col = self.names.index(name)
            for i, f in enumerate(features):
                v = (f or {}).get(name)
                if v is None or v == "":  # as in a reference CSV, an empty value is a missing one
                    missing_rows.append(np.array([i]))
                    missing_cols.append(np.array([col]))
                    continue
                if ref is None:
                    continue
                key = category(v)
                cat_ev.append(i)
                cat_idx.append(j * CAT_SLOTS + index.get(key, len(ref.categories)))
                if key not in ref.known:
                    unseen_ev.append(i)
                    unseen_idx.append(j)
        if cat_ev:
            out.scatter["cat_counts"] = (np.asarray(cat_ev), np.asarray(cat_idx), None)
        if unseen_ev:
            out.scatter["cat_unseen"] = (np.asarray(unseen_ev), np.asarray(unseen_idx), None)
        te_rows = [i for i, errs in enumerate(errors or ()) for name, reason in errs if reason == "type_error"]
        te_cols = [self.names.index(name) for errs in (errors or ()) for name, reason in errs if reason == "type_error"]
        if te_rows:
            out.scatter["type_errors"] = (np.asarray(te_rows), np.asarray(te_cols), None)
        if missing_rows:
            rows, cols = np.concatenate(missing_rows), np.concatenate(missing_cols)
            if te_rows:  # a value of the wrong type was left out: it is an error, not a missing value
                keep = ~np.isin(rows * len(self.names) + cols, np.asarray(te_rows) * len(self.names) + te_cols)
                rows, cols = rows[keep], cols[keep]
            out.scatter["missing"] = (rows, cols, None)
            out.missing = np.bincount(cols, minlength=len(self.names))
        # The model's output: predicted classes always; regression values against the reference's bins.
        if self.model.is_classification:
            out.scatter["pred_bins"] = (np.arange(n), np.asarray(predictions, dtype=np.int64), None)
        elif self.profile is not None and isinstance(self.profile.prediction, NumericRef):
            ref = self.profile.prediction
            values = np.asarray(predictions, dtype=np.float64)
            bins = ref.bins(values)
            out.scatter["pred_bins"] = (np.arange(n), bins, None)
            for side, mask in ((0, bins == 0), (1, bins == len(ref.counts) - 1)):
                if mask.any():
                    prev = out.scatter.get("pred_out")
                    ev, idx, val = np.flatnonzero(mask), np.full(int(mask.sum()), side), values[mask]
                    if prev is not None:
                        ev, idx, val = (np.concatenate([a, b]) for a, b in zip(prev, (ev, idx, val)))
                    out.scatter["pred_out"] = (ev, idx, val)
        return out


def _num(v) -> float:
    return math.nan if v is None else float(v)


def scatter(array: np.ndarray, slots: np.ndarray, ev: np.ndarray, idx: np.ndarray, weights) -> None:
    """Add 1 (or ``weights``) at flat index ``idx`` of the slot of each event ``ev`` (skipping slot -1)."""
    s = slots[ev]
    keep = s >= 0
    if not keep.any():
        return
    flat = s[keep] * array[0].size + idx[keep]
    np.add.at(array.reshape(-1), flat, 1 if weights is None else weights[keep])


# -------------------------------------------------------------------------------------------------------
# From a window's totals to published figures.


@dataclass
class WindowDrift:
    features: dict[str, dict[str, float]]  # feature -> method -> value
    quality: dict[str, dict[str, float]]  # metric -> feature -> value
    prediction: dict[str, float]
    label: dict[str, float]
    drifted: int | None  # features over their threshold (None: nothing to compare)
    distribution: dict[str, dict[str, float]] = field(default_factory=dict)  # feature -> bin -> share


def distribution_bins(ref) -> list[str]:
    """Names of the coarse bins in which a feature's distribution is published: for numeric features the
    reference deciles (q01..q10) between below_min and above_max; for categorical ones the tracked
    categories and other."""
    if isinstance(ref, NumericRef):
        return ["below_min", *(f"q{i:02d}" for i in range(1, 11)), "above_max"]
    return [*ref.categories, "other"]


def distribution(ref, counts: np.ndarray) -> dict[str, float]:
    """Shares of ``counts`` (fine bins of ``ref``) in the coarse bins of :func:`distribution_bins`."""
    coarse = np.bincount(ref.psi_groups(), counts, 12) if isinstance(ref, NumericRef) else counts
    total = coarse.sum()
    return dict(zip(distribution_bins(ref), (coarse / total).tolist())) if total > 0 else {}


def _numeric(ref: NumericRef, cur: np.ndarray, out_sums: np.ndarray) -> dict[str, float]:
    groups = ref.psi_groups()
    d, p = drift.ks(ref.counts, cur)
    below = out_sums[0] / cur[0] if cur[0] else ref.edges[0]
    above = out_sums[1] / cur[-1] if cur[-1] else ref.edges[-1]
    scale = ref.std if ref.std > 0 else max(ref.edges[-1] - ref.edges[0], 1.0)
    return {
        "psi": drift.psi(np.bincount(groups, ref.counts, 12), np.bincount(groups, cur, 12)),
        "ks": d,
        "ks_pvalue": p,
        "js": drift.js_distance(ref.counts, cur),
        "wasserstein": drift.wasserstein(
            ref.counts, cur, ref.points(ref.edges[0], ref.edges[-1]), ref.points(below, above), scale
        ),
    }


def _categorical(ref: CategoricalRef, cur: np.ndarray) -> dict[str, float]:
    stat, p = drift.chi2(ref.counts, cur)
    return {"psi": drift.psi(ref.counts, cur), "js": drift.js_distance(ref.counts, cur), "chi2": stat, "chi2_pvalue": p}


def decision_method(model: ModelConfig, feature: str | None) -> str:
    """The method that says whether a feature (None: the predictions) drifted: ``drift.method`` where it
    applies, PSI where it does not (ks and wasserstein need numbers; classes and categories are not)."""
    numeric = (
        model.task == "regression"
        if feature is None
        else any(f.name == feature and f.type == "numeric" for f in model.features)
    )
    method = model.drift_method
    return method if numeric or method in drift.CATEGORICAL_METHODS else "psi"


def window_drift(
    model: ModelConfig, profile: Profile | None, totals: dict[str, np.ndarray], exclude: tuple[str, ...] = ()
) -> WindowDrift:
    """Drift and data quality of one window (``totals``: the ring's sums) against ``profile``.

    ``exclude`` names features left out of the drift (a segment's own feature: it trivially drifts there).
    """
    events = float(totals["predictions"])
    result = WindowDrift({}, {"missing": {}, "type_error": {}, "out_of_range": {}, "unseen": {}}, {}, {}, None)
    if events > 0:
        for i, f in enumerate(model.features):
            result.quality["missing"][f.name] = float(totals["missing"][i]) / events
            if model.invalid_features == "count":
                result.quality["type_error"][f.name] = float(totals["type_errors"][i]) / events
    if profile is None:
        return result
    minimum = model.drift_min_samples
    numeric = [f.name for f in model.features if f.type == "numeric"]
    categorical = [f.name for f in model.features if f.type == "categorical"]
    for j, name in enumerate(numeric):
        ref = profile.features[name]
        cur = totals["num_counts"][j, : len(ref.counts)].astype(np.float64)
        n = cur.sum()
        if n == 0:
            continue
        result.quality["out_of_range"][name] = float(cur[0] + cur[-1]) / n
        if n >= minimum:
            result.features[name] = _numeric(ref, cur, totals["num_out"][j])
            if model.drift_bins:
                result.distribution[name] = distribution(ref, cur)
    for j, name in enumerate(categorical):
        ref = profile.features[name]
        cur = totals["cat_counts"][j, : len(ref.counts)].astype(np.float64)
        n = cur.sum()
        if n == 0:
            continue
        unseen = float(totals["cat_unseen"][j]) / n
        result.quality["unseen"][name] = unseen
        if n >= minimum and name not in exclude:
            result.features[name] = {**_categorical(ref, cur), "unseen": unseen}
            if model.drift_bins:
                result.distribution[name] = distribution(ref, cur)
    if result.features:
        result.drifted = sum(
            drift.over_threshold(m, values[m], model.drift_threshold(name, m))
            for name, values in result.features.items()
            for m in (decision_method(model, name),)
        )
    result.prediction = _outcome(profile.prediction, totals["pred_bins"], totals.get("pred_out"), minimum)
    if model.is_classification and "confusion" in totals:
        result.label = _outcome(profile.label, totals["confusion"].sum(axis=1), None, minimum)
    return result


def _outcome(ref, cur: np.ndarray, out_sums, minimum: int) -> dict[str, float]:
    if ref is None:
        return {}
    cur = cur[: len(ref.counts)].astype(np.float64)
    if cur.sum() < minimum:
        return {}
    if isinstance(ref, NumericRef):
        return _numeric(ref, cur, out_sums)
    return _categorical(ref, np.concatenate([cur, np.zeros(len(ref.counts) - len(cur))]))
