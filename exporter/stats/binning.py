"""Where features meet the reference: a batch's values become bin indices, a window's bins become drift.

`Binner` turns a batch of predictions into flat indices into the window arrays (one vectorised pass per
batch, whatever the number of windows); `window_drift` turns a window's summed arrays into the published
drift and data-quality figures with the pure functions of `drift.py`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from exporter.config import ModelConfig
from exporter.stats import drift
from exporter.stats.coded import Coded
from exporter.stats.reference import NUMERIC_SLOTS, TOP_CATEGORIES, CategoricalRef, NumericRef, Profile, category
from exporter.stats.window import Schema

CAT_SLOTS = TOP_CATEGORIES + 1
# Arrays of the window rings that depend on the reference's bins (cleared when the reference changes).
MULTIVARIATE = ("mv_n", "mv_sum", "mv_sq")  # multivariate drift's sums (exporter/stats/multivariate.py)
REFERENCE_ARRAYS = ("num_counts", "num_out", "cat_counts", "cat_unseen", "pred_bins", "pred_out", *MULTIVARIATE)


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
    if (
        model.multivariate and len(model.features) >= 2
    ):  # multivariate drift: rows with an error, their sum and sum of squares
        schema["mv_n"] = ((), np.int64)
        schema["mv_sum"] = ((), np.float64)
        schema["mv_sq"] = ((), np.float64)
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
        self.numeric_col = np.array([self.names.index(name) for name in self.numeric], dtype=np.int64)
        self.refs = profile.features if profile else {}
        self._whole = self._whole_table() if profile is not None else None
        self.cat_index = {
            name: {c: i for i, c in enumerate(self.refs[name].categories)}
            for name in self.categorical
            if name in self.refs
        }
        # Per categorical feature, a category's slot and whether the reference knows it, in one look-up: the
        # slot (a top category's own, else the "other" one) when known, -1 - slot when not ("unseen").
        self.cat_codes = {name: self._codes(name) for name in self.cat_index}
        # Per categorical feature, what a value stands for in the bins and in multivariate drift's encoding,
        # found by one look-up (None: the feature has neither; only its missing values are counted).
        rec = profile.reconstruction if profile is not None else None
        encodings = rec.encodings if rec is not None else ()
        self._encoded = bool(encodings) and len(encodings) == len(self.categorical)
        self.cat_tables = [
            _Categories(
                self.cat_codes.get(name),
                -1 - len(self.refs[name].categories) if name in self.cat_codes else 0,
                encodings[j] if self._encoded else None,
                rec.rare[j] if self._encoded else 0.0,
            )
            if name in self.cat_codes or self._encoded
            else None
            for j, name in enumerate(self.categorical)
        ]

    def bin(
        self, numeric: np.ndarray, categorical: list[list], predictions: list, errors: list | None = None
    ) -> Binned:
        """Bin one batch given as columns (exporter/ingest/columns.py makes them from decoded items).

        ``numeric``: events x ``self.numeric`` floats, NaN where missing; ``categorical``: per feature of
        ``self.categorical``, its values (None or "" where missing); ``predictions``: class indices or values;
        ``errors``: per event, the (feature, reason) pairs validation left out (type errors are not missing).
        """
        n = len(predictions)
        out = Binned()
        missing_rows, missing_cols = [], []
        # Numeric: every column at once, one float array (NaN: missing); then binned column by column.
        if self.numeric:
            values = numeric
            gone = np.isnan(values)
            if gone.any():
                ev, j = np.nonzero(gone)
                missing_rows.append(ev)
                missing_cols.append(self.numeric_col[j])
            if self.refs:
                self._bin_numeric(values, gone, out)
        # Categorical: each value's entry in its feature's table, by one look-up (missing values included).
        cat_ev, cat_idx, unseen_ev, unseen_idx, encoded = [], [], [], [], []
        for j, (name, column) in enumerate(zip(self.categorical, categorical)):
            table = self.cat_tables[j]
            if table is None:  # nothing to bin it against: its missing values only (None, or "" as in a CSV)
                # (`in` first: a C-level scan finds most columns without a missing value)
                if None in column or "" in column:
                    absent = np.asarray([i for i, v in enumerate(column) if v is None or v == ""], dtype=np.int64)
                    missing_rows.append(absent)
                    missing_cols.append(np.full(len(absent), self.names.index(name)))
                continue
            entries = table.entries(column)
            gone = entries == table.missing
            present = None
            if gone.any():
                present = np.flatnonzero(~gone)
                absent = np.flatnonzero(gone)
                missing_rows.append(absent)
                missing_cols.append(np.full(len(absent), self.names.index(name)))
            if table.shares is not None:
                encoded.append(table.shares[entries])
            if table.slots is None or (present is not None and not present.size):
                continue
            if present is None:
                present, slots = np.arange(len(column)), table.slots[entries]
            else:
                slots = table.slots[entries[present]]
            unseen = slots < 0
            if unseen.any():
                unseen_ev.append(present[unseen])
                unseen_idx.append(np.full(int(unseen.sum()), j, dtype=np.int64))
                slots[unseen] = -1 - slots[unseen]
            cat_ev.append(present)
            cat_idx.append(j * CAT_SLOTS + slots)
        if cat_ev:
            out.scatter["cat_counts"] = (np.concatenate(cat_ev), np.concatenate(cat_idx), None)
        if unseen_ev:
            out.scatter["cat_unseen"] = (np.concatenate(unseen_ev), np.concatenate(unseen_idx), None)
        rec = self.profile.reconstruction if self.profile is not None else None
        if rec is not None:
            values = numeric if self.numeric else np.empty((n, 0))
            if self._encoded:  # the categorical columns' shares, from the look-up above
                # (in C order whatever the numeric columns' order: the products round alike for rows and columns)
                matrix = np.empty((n, values.shape[1] + len(encoded)))
                matrix[:, : values.shape[1]] = values
                matrix[:, values.shape[1] :] = np.array(encoded).T
            else:
                matrix = rec.matrix(values, categorical)
            rebuilt = rec.errors(matrix)  # each row's reconstruction error
            events, zero = np.arange(n), np.zeros(n, dtype=np.int64)
            out.scatter["mv_n"] = (events, zero, None)
            out.scatter["mv_sum"] = (events, zero, rebuilt)
            out.scatter["mv_sq"] = (events, zero, rebuilt * rebuilt)
        te_rows = [i for i, errs in enumerate(errors or ()) for name, reason in errs if reason == "type_error"]
        te_cols = [self.names.index(name) for errs in (errors or ()) for name, reason in errs if reason == "type_error"]
        if te_rows:
            out.scatter["type_errors"] = (np.asarray(te_rows), np.asarray(te_cols), None)
        if missing_rows:
            rows_, cols = np.concatenate(missing_rows), np.concatenate(missing_cols)
            if te_rows:  # a value of the wrong type was left out: it is an error, not a missing value
                keep = ~np.isin(rows_ * len(self.names) + cols, np.asarray(te_rows) * len(self.names) + te_cols)
                rows_, cols = rows_[keep], cols[keep]
            out.scatter["missing"] = (rows_, cols, None)
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

    def _codes(self, name: str) -> dict[str, int]:
        ref, index = self.refs[name], self.cat_index[name]
        other = len(ref.categories)
        codes = {c: other for c in ref.known}
        codes.update({c: (i if c in ref.known else -1 - i) for c, i in index.items()})
        return codes

    def _bin_numeric(self, values: np.ndarray, gone: np.ndarray, out: Binned) -> None:
        """Bin indices of the present numeric values, and the values outside the reference range."""
        if self._whole is not None and not gone.any():
            self._bin_whole(values, out)
            return
        num_ev, num_idx, out_ev, out_idx, out_val = [], [], [], [], []
        for j, name in enumerate(self.numeric):
            ref = self.refs.get(name)
            if ref is None:
                continue
            present = np.flatnonzero(~gone[:, j])
            column = values[present, j]
            bins = ref.bins(column)
            num_ev.append(present)
            num_idx.append(j * NUMERIC_SLOTS + bins)
            for side, mask in ((0, bins == 0), (1, bins == len(ref.counts) - 1)):
                if mask.any():
                    out_ev.append(present[mask])
                    out_idx.append(np.full(int(mask.sum()), j * 2 + side))
                    out_val.append(column[mask])
        if num_ev:
            out.scatter["num_counts"] = (np.concatenate(num_ev), np.concatenate(num_idx), None)
        if out_ev:
            out.scatter["num_out"] = (np.concatenate(out_ev), np.concatenate(out_idx), np.concatenate(out_val))

    def _whole_table(self) -> tuple | None:
        """What :meth:`_bin_whole` needs, when every numeric feature has a reference (else None)."""
        refs = [self.refs.get(name) for name in self.numeric]
        if not refs or any(r is None for r in refs):
            return None
        edges = [np.array(r.edges, dtype=np.float64) for r in refs]  # own contiguous copies: searchsorted's fast case
        return (
            edges,
            np.array([r.edges[-1] for r in refs])[:, None],  # each feature's maximum: in its last inside bin
            np.array([len(r.edges) - 1 for r in refs], dtype=np.int64)[:, None],
            np.array([len(r.counts) - 1 for r in refs], dtype=np.int64)[:, None],  # the bin above the maximum
            np.arange(len(refs), dtype=np.int64)[:, None] * NUMERIC_SLOTS,
            EdgeGrid(edges),
        )

    def _bin_whole(self, values: np.ndarray, out: Binned) -> None:
        """``_bin_numeric`` for a batch without missing values (the common one): the features' bins as one
        array, the events' flat indices and the values out of range found at once, not feature by feature.
        Feature-major (features x events), as _bin_numeric gives its entries: each feature's values are then
        contiguous (a columnar batch's already are: exporter/ingest/columnar.py)."""
        edges, maxima, last_inside, above, offsets, grid = self._whole
        n = len(values)
        by_feature = np.ascontiguousarray(values.T)  # a view when the batch came as columns
        bins = grid.bins(by_feature, edges)
        at_max = by_feature == maxima
        if at_max.any():
            bins[at_max] = np.broadcast_to(last_inside, bins.shape)[at_max]
        events = np.tile(np.arange(n, dtype=np.int64), len(edges))
        out.scatter["num_counts"] = (events, (bins + offsets).ravel(), None)
        below, over = bins == 0, bins == above
        if below.any() or over.any():
            feature, event = np.nonzero(below | over)
            side = over[feature, event]
            out.scatter["num_out"] = (event, feature * 2 + side, by_feature[feature, event])


class EdgeGrid:
    """``np.searchsorted(edges[j], values[j], side="right")`` for every feature j of a batch at once, by a
    look-up instead of a binary search per value (docs/performance.md#columnar-ingest).

    Each feature's range from its second to its last but one edge is cut into ``CELLS`` equal cells; a value's
    cell is ``trunc(clip((v - first) * scale, -1, CELLS)) + 1`` (0 and CELLS + 1 beyond the range). That function
    never decreases as v grows, and the edges' cells are computed by the very same operations, so an edge in a
    lower cell than v's is <= v and an edge in a higher cell is > v: a value's bin is the count of edges in the
    cells below its own (a table), plus one if its cell holds one edge that is <= v. Values in a cell holding
    two edges or more (ties, or edges closer than a cell) go through searchsorted, as does a feature whose
    range is empty. tests/stats/test_edge_grid.py compares it with searchsorted on generated edges and values.
    """

    CELLS = 512  # tables of 514 cells per feature: 5.5 KB (an int16, a float and a bool each)

    def __init__(self, edges: list[np.ndarray]):
        f, width = len(edges), self.CELLS + 2
        # The cells span the inner edges: the outer ones (the reference's minimum and maximum, often far out on
        # a long tail) then sit alone in the cells below and above, and the cells stay fine where edges crowd.
        inner = [e[1:-1] if len(e) >= 4 else e for e in edges]
        first = np.array([e[0] for e in inner], dtype=np.float64)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            # (CELLS - 1: the last inner edge falls in the last cell, not with the maximum in the one above)
            scale = (self.CELLS - 1) / (np.array([e[-1] for e in inner], dtype=np.float64) - first)
        usable = np.isfinite(scale) & (scale > 0)
        self.first = np.where(usable, first, 0.0)[:, None]
        self.scale = np.where(usable, scale, 0.0)[:, None]
        self.below = np.zeros((f, width), dtype=np.int16)  # (a reference has at most NUMERIC_SLOTS edges)
        self.edge = np.full((f, width), np.nan)  # the one edge of a cell; NaN (never <=) for none or several
        self.crowded = np.ones((f, width), dtype=bool)  # two edges or more: searchsorted decides
        for j, e in enumerate(edges):
            if not usable[j]:
                continue
            cells = self._cells(e[None, :], self.first[j : j + 1], self.scale[j : j + 1])[0]
            count = np.bincount(cells, minlength=width)
            self.below[j, 1:] = np.cumsum(count)[:-1]
            single = count[cells] == 1
            self.edge[j, cells[single]] = e[single]
            self.crowded[j] = count >= 2
        self.offsets = (np.arange(f, dtype=np.int64) * width)[:, None]  # each feature's row in the flat tables
        self.below, self.edge, self.crowded = self.below.ravel(), self.edge.ravel(), self.crowded.ravel()

    def _cells(self, values: np.ndarray, first: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """Each value's cell (0-based from the cell below the range), as the table was built."""
        t = np.subtract(values, first)
        with np.errstate(over="ignore", invalid="ignore"):
            t *= scale
        np.fmax(t, -1.0, out=t)  # (fmax/fmin, not clip: a NaN from inf * 0 goes below, searchsorted decides)
        np.fmin(t, self.CELLS, out=t)
        return t.astype(np.int64) + 1

    def bins(self, values: np.ndarray, edges: list[np.ndarray]) -> np.ndarray:
        """``values``: features x events, finite (a batch without missing values)."""
        index = self._cells(values, self.first, self.scale)
        index += self.offsets
        bins = self.below.take(index)
        bins += values >= self.edge.take(index)
        crowded = self.crowded.take(index)
        if crowded.any():
            for j in np.flatnonzero(crowded.any(axis=1)):
                pick = crowded[j]
                bins[j, pick] = np.searchsorted(edges[j], values[j, pick], side="right")
        return bins


def add_to_slot(array: np.ndarray, slot: int, sums: np.ndarray) -> None:
    """Add ``sums`` (one per flat index, as np.bincount gives them) into slot ``slot`` of a ring's array."""
    target = array.reshape(len(array), -1)[slot]  # a view of the slot, also where a slot holds one number
    target[: sums.size] += sums.astype(target.dtype, copy=False)


def scatter(array: np.ndarray, slots: np.ndarray, ev: np.ndarray, idx: np.ndarray, weights) -> None:
    """Add 1 (or ``weights``) at flat index ``idx`` of the slot of each event ``ev`` (skipping slot -1). A batch
    within one bucket (the common case) takes a shorter way: its bincount, once, :func:`add_to_slot` of each
    ring (exporter/engine/state.py ``_scatter_at``)."""
    s = slots[ev]
    keep = s >= 0
    if not keep.any():
        return
    flat = s[keep] * array[0].size + idx[keep]
    # np.bincount over the span the batch touches, then one vectorised add: np.add.at did the same about ten
    # times slower (3.8 ms of a batch of 1000 events x 30 features against a reference; docs/performance.md).
    lo = int(flat.min())
    counts = np.bincount(flat - lo, weights=None if weights is None else weights[keep])
    target = array.reshape(-1)  # a view: the ring's arrays are contiguous
    target[lo : lo + counts.size] += counts.astype(target.dtype, copy=False)


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
    # Multivariate drift: the window's mean reconstruction error of its rows, and how many (None: not published)
    multivariate: float | None = None
    multivariate_rows: int = 0


NUMERIC_DISTRIBUTION_BINS = ["below_min", *(f"q{i:02d}" for i in range(1, 11)), "above_max"]


def distribution_bins(ref) -> list[str]:
    """Names of the coarse bins in which a feature's distribution is published: for numeric features the
    reference deciles (q01..q10) between below_min and above_max; for categorical ones the tracked
    categories and other."""
    if isinstance(ref, NumericRef):
        return NUMERIC_DISTRIBUTION_BINS
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


@dataclass(frozen=True)
class _NumericTable:
    """The reference side of a model's numeric features as rows padded to NUMERIC_SLOTS bins, for
    :func:`_numeric_drift` (built once per profile)."""

    names: list[str]
    lengths: np.ndarray  # bins of each feature
    valid: np.ndarray  # features x NUMERIC_SLOTS: True on a feature's own bins
    ref: np.ndarray  # reference counts, zero on the padding
    groups: np.ndarray  # PSI group of each bin (0 on the padding, where the counts are zero)
    ref_coarse: np.ndarray  # reference counts per PSI group
    mids: np.ndarray  # Wasserstein points of the inside bins (the outer two and the padding are set per window)
    low: np.ndarray  # reference minimum and maximum
    high: np.ndarray
    scale: np.ndarray  # the Wasserstein scale: reference standard deviation (or range)

    @staticmethod
    def of(profile: Profile, names: list[str]) -> _NumericTable:
        cache = profile.__dict__.setdefault("_numeric_tables", {})  # derived from a frozen profile: not state
        table = cache.get(tuple(names))
        if table is None:
            table = cache[tuple(names)] = _NumericTable.build(profile, names)
        return table

    def feature_of_rows(self, windows: int) -> np.ndarray:
        """The feature (row of this table) of each row of ``windows`` windows' rows one after the other."""
        cache = self.__dict__.setdefault("_feature_of_rows", {})  # derived, like the table itself
        rows = cache.get(windows)
        if rows is None:
            rows = cache[windows] = np.tile(np.arange(len(self.names)), windows)
        return rows

    @staticmethod
    def build(profile: Profile, names: list[str]) -> _NumericTable:
        refs = [profile.features[name] for name in names]
        f = len(refs)
        lengths = np.array([len(r.counts) for r in refs])
        valid = np.arange(NUMERIC_SLOTS)[None, :] < lengths[:, None]
        ref, groups, mids = (
            np.zeros((f, NUMERIC_SLOTS)),
            np.zeros((f, NUMERIC_SLOTS), np.int64),
            np.zeros((f, NUMERIC_SLOTS)),
        )
        for j, r in enumerate(refs):
            ref[j, : lengths[j]] = r.counts
            groups[j, : lengths[j]] = r.psi_groups()
            mids[j, : lengths[j]] = r.points(r.edges[0], r.edges[-1])
        return _NumericTable(
            names,
            lengths,
            valid,
            ref,
            groups,
            _coarse(groups, ref),
            mids,
            np.array([r.edges[0] for r in refs]),
            np.array([r.edges[-1] for r in refs]),
            np.array([r.std if r.std > 0 else max(r.edges[-1] - r.edges[0], 1.0) for r in refs]),
        )


def _coarse(groups: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Counts per PSI group (below_min, ten reference deciles, above_max), row by row."""
    flat = (np.arange(len(groups))[:, None] * 12 + groups).ravel()
    return np.bincount(flat, counts.ravel(), 12 * len(groups)).reshape(len(groups), 12)


def _numeric_drift(model: ModelConfig, table: _NumericTable, totals: dict, result: WindowDrift) -> None:
    """Out-of-range shares and drift of every numeric feature of one window (:func:`_numeric_drifts`)."""
    _numeric_drifts(model, table, [totals], [result])


def _numeric_drifts(model: ModelConfig, table: _NumericTable, windows: list[dict], results: list[WindowDrift]) -> None:
    """Out-of-range shares and drift of every numeric feature of several windows at once: one row per window
    and feature (the first window's features, then the next window's...), each window's figures put in its
    result.

    The same figures as :func:`_numeric` feature by feature, up to rounding; tests/stats/test_drift.py compares
    them. Every operation works row by row (reductions along a row's contiguous bins, element-wise
    arithmetic), so a row's figures are the same bits whether its window is computed alone or beside others
    (tests/stats/test_drift_windows.py checks that too).
    """
    f, w = len(table.names), len(windows)
    counts = windows[0]["num_counts"] if w == 1 else np.stack([t["num_counts"] for t in windows])
    cur = np.where(table.valid, counts, 0).astype(np.float64).reshape(w * f, NUMERIC_SLOTS)
    n = cur.sum(axis=1)
    feature = table.feature_of_rows(w)  # the feature of each row
    lengths = table.lengths[feature]
    first, last = cur[:, 0], cur[np.arange(w * f), lengths - 1]
    seen = n > 0
    shares = np.zeros(w * f)
    shares[seen] = (first[seen] + last[seen]) / n[seen]
    seen_by_window, shares_by_window = seen.reshape(w, f).tolist(), shares.reshape(w, f).tolist()
    for result, seen_row, share_row in zip(results, seen_by_window, shares_by_window):
        out_of_range = result.quality["out_of_range"]
        for name, present, share in zip(table.names, seen_row, share_row):
            if present:
                out_of_range[name] = share
    drifting = np.flatnonzero(seen & (n >= model.drift_min_samples))
    if not len(drifting):
        return
    rows = feature[drifting]  # each drifting row's feature: its reference row
    ref, cur, lengths = table.ref[rows], cur[drifting], lengths[drifting]
    out = (windows[0]["num_out"] if w == 1 else np.concatenate([t["num_out"] for t in windows]))[drifting]
    first, last = first[drifting], last[drifting]
    low, high = table.low[rows], table.high[rows]
    r = np.arange(len(drifting))
    # Where each bin's mass sits: the current window's mean below and above the reference range when it
    # has values there; the padding at the largest point of the row, where it moves nothing.
    with np.errstate(divide="ignore", invalid="ignore"):
        below = np.where(first > 0, out[:, 0] / first, low)
        above = np.where(last > 0, out[:, 1] / last, high)
    top = np.maximum(above, high)
    pad = ~table.valid[rows]
    points_ref = np.where(pad, top[:, None], table.mids[rows])
    points_cur = points_ref.copy()
    points_cur[:, 0], points_cur[r, lengths - 1] = below, above
    coarse = _coarse(table.groups[rows], cur)
    d, p = drift.ks_rows(ref, cur)
    # One row of figures per drifting row, in the order of drift.NUMERIC_METHODS.
    figures = np.column_stack(
        [
            drift.psi_rows(table.ref_coarse[rows], coarse),
            d,
            p,
            drift.js_distance_rows(ref, cur),
            drift.wasserstein_rows(ref, cur, points_ref, points_cur, table.scale[rows]),
        ]
    ).tolist()
    names = table.names
    for i, (row, values) in enumerate(zip(drifting.tolist(), figures)):
        result, name = results[row // f], names[row % f]
        result.features[name] = dict(zip(drift.NUMERIC_METHODS, values))
        if model.drift_bins:
            total = coarse[i].sum()
            result.distribution[name] = dict(zip(NUMERIC_DISTRIBUTION_BINS, (coarse[i] / total).tolist()))


def _categorical(ref: CategoricalRef, cur: np.ndarray) -> dict[str, float]:
    stat, p = drift.chi2(ref.counts, cur)
    return {"psi": drift.psi(ref.counts, cur), "js": drift.js_distance(ref.counts, cur), "chi2": stat, "chi2_pvalue": p}


def _categorical_rows(ref: CategoricalRef, cur: np.ndarray) -> list[dict[str, float]]:
    """:func:`_categorical` of each row of ``cur`` (one feature's counts in several windows), bit for bit.

    When the rows leave the same bins empty, the statistics are computed for all rows at once
    (drift.categorical_rows); otherwise row by row, since JS and chi-square drop empty bins before summing and
    a row's sum must see exactly the terms it sees alone."""
    empty = cur == 0
    if len(cur) > 1 and not (empty != empty[0]).any():
        psi, js, stat, p = drift.categorical_rows(ref.counts, cur)
        return [
            {"psi": a, "js": b, "chi2": c, "chi2_pvalue": d} for a, b, c, d in zip(psi, js, stat.tolist(), p.tolist())
        ]
    return [_categorical(ref, row) for row in cur]


def decision_method(model: ModelConfig, feature: str | None) -> str:
    """The method that says whether a feature (None: the predictions) drifted: ``drift.method`` where it
    applies, PSI where it does not (ks and wasserstein need numbers; classes and categories are not)."""
    numeric = model.task == "regression" if feature is None else model.feature_types.get(feature) == "numeric"
    method = model.drift_method
    return method if numeric or method in drift.CATEGORICAL_METHODS else "psi"


def _decisions(model: ModelConfig) -> dict[str, tuple[str, float]]:
    """Per feature: its decision method and that method's threshold; derived from the frozen config once, not
    looked up per feature at every window of every scrape."""
    decisions = model.__dict__.get("_drift_decisions")
    if decisions is None:
        decisions = {}
        for f in model.features:
            method = decision_method(model, f.name)
            decisions[f.name] = (method, model.drift_threshold(f.name, method))
        model.__dict__["_drift_decisions"] = decisions  # a frozen dataclass: derived, not state
    return decisions


def window_drift(
    model: ModelConfig, profile: Profile | None, totals: dict[str, np.ndarray], exclude: tuple[str, ...] = ()
) -> WindowDrift:
    """Drift and data quality of one window (``totals``: the ring's sums) against ``profile``.

    ``exclude`` names features left out of the drift (a segment's own feature: it trivially drifts there).
    """
    return windows_drift(model, profile, [totals], exclude)[0]


def windows_drift(
    model: ModelConfig, profile: Profile | None, windows: list[dict[str, np.ndarray]], exclude: tuple[str, ...] = ()
) -> list[WindowDrift]:
    """:func:`window_drift` of each of ``windows`` (a version's windows, or a segment's), computed together:
    the numeric features of every window in one pass of row-wise statistics, and each categorical feature's
    windows together. Each window's figures are the ones it would get alone, bit for bit."""
    results = [
        WindowDrift({}, {"missing": {}, "type_error": {}, "out_of_range": {}, "unseen": {}}, {}, {}, None)
        for _ in windows
    ]
    names = [f.name for f in model.features]
    for result, totals in zip(results, windows):
        events = float(totals["predictions"])
        if events > 0:
            # Element-wise, the same division of the same doubles as float(count) / events.
            result.quality["missing"].update(zip(names, (totals["missing"][: len(names)] / events).tolist()))
            if model.invalid_features == "count":
                result.quality["type_error"].update(zip(names, (totals["type_errors"][: len(names)] / events).tolist()))
    if profile is None:
        return results
    minimum = model.drift_min_samples
    numeric = [f.name for f in model.features if f.type == "numeric"]
    categorical = [f.name for f in model.features if f.type == "categorical"]
    if numeric:
        _numeric_drifts(model, _NumericTable.of(profile, numeric), windows, results)
    if profile.reconstruction is not None:
        for result, totals in zip(results, windows):
            if "mv_n" in totals:
                rows = int(totals["mv_n"])
                result.multivariate_rows = rows
                # Not noisier than the reference's chunks the thresholds come from: at least a chunk's rows.
                if rows >= max(minimum, profile.reconstruction.chunk):
                    result.multivariate = float(totals["mv_sum"]) / rows
    if categorical:
        cat_counts = np.stack([t["cat_counts"] for t in windows])
        unseen_counts = np.stack([t["cat_unseen"] for t in windows])
    for j, name in enumerate(categorical):
        ref = profile.features[name]
        cur = np.ascontiguousarray(cat_counts[:, j, : len(ref.counts)], dtype=np.float64)  # one row per window
        n = cur.sum(axis=1)  # each row's sum: the same as the row's alone
        drifting = []
        for k, (result, total) in enumerate(zip(results, n.tolist())):
            if total == 0:
                continue
            unseen = float(unseen_counts[k, j]) / total
            result.quality["unseen"][name] = unseen
            if total >= minimum and name not in exclude:
                drifting.append((k, unseen))
        if not drifting:
            continue
        rows = [k for k, _ in drifting]
        figures = _categorical_rows(ref, cur[rows] if len(rows) < len(cur) else cur)
        for (k, unseen), values in zip(drifting, figures):
            values["unseen"] = unseen
            results[k].features[name] = values
            if model.drift_bins:
                results[k].distribution[name] = distribution(ref, cur[k])
    decisions = _decisions(model)
    for result, totals in zip(results, windows):
        if result.features:
            result.drifted = sum(
                drift.over_threshold(method, values[method], threshold)
                for name, values in result.features.items()
                for method, threshold in (decisions[name],)
            )
        result.prediction = _outcome(profile.prediction, totals["pred_bins"], totals.get("pred_out"), minimum)
        if model.is_classification and "confusion" in totals:
            result.label = _outcome(profile.label, totals["confusion"].sum(axis=1), None, minimum)
    return results


def _outcome(ref, cur: np.ndarray, out_sums, minimum: int) -> dict[str, float]:
    if ref is None:
        return {}
    cur = cur[: len(ref.counts)].astype(np.float64)
    if cur.sum() < minimum:
        return {}
    if isinstance(ref, NumericRef):
        return _numeric(ref, cur, out_sums)
    return _categorical(ref, np.concatenate([cur, np.zeros(len(ref.counts) - len(cur))]))


_TEXT = {str, type(None)}


class _Categories:
    """One categorical feature's look-up table: a value's entry gives at once its slot in the bins (as
    ``Binner.cat_codes`` has it: -1 - slot when unseen) and its share in multivariate drift's encoding
    (exporter/stats/multivariate.py ``Reconstruction.matrix``). A value is matched as its category's text;
    None and "" are missing; a value neither knows is unknown (unseen, in the "other" slot; the rare share)."""

    __slots__ = ("index", "unknown", "missing", "slots", "shares")

    def __init__(self, codes: dict[str, int] | None, unseen: int, shares: dict[str, float] | None, rare: float):
        keys = list(dict.fromkeys([*(codes or ()), *(shares or ())]))
        self.unknown, self.missing = len(keys), len(keys) + 1
        self.index: dict = {c: k for k, c in enumerate(keys)}
        self.index[None] = self.index[""] = self.missing
        self.slots = None
        if codes is not None:
            self.slots = np.array([codes.get(c, unseen) for c in keys] + [unseen, 0], dtype=np.int64)
        self.shares = None
        if shares is not None:
            self.shares = np.array([shares.get(c, rare) for c in keys] + [rare, np.nan], dtype=np.float64)

    def entries(self, column: list | Coded) -> np.ndarray:
        if type(column) is Coded:  # each distinct value looked up once
            return column.spread(self.entries(column.words))
        get, unknown = self.index.get, self.unknown
        if set(map(type, column)) <= _TEXT:  # text and missing values only (the common case): looked up in C
            return np.fromiter(map(get, column, itertools.repeat(unknown)), np.intp, len(column))
        # numbers and booleans are matched as their text, as the profile matches them
        keys = (v if v is None or type(v) is str else category(v) for v in column)
        return np.fromiter(map(get, keys, itertools.repeat(unknown)), np.intp, len(column))
