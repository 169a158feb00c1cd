"""From decoded items to the plain columns the statistics take (exporter/stats/binning.py: ``Binner.bin``).

A batch's feature rows are dicts (the general validation path) or the fast decoder's structs; the statistics
never see either, only a float array of the numeric features and a list of values per categorical one.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
from dataclasses import dataclass

import numpy as np

from exporter.config import ModelConfig
from exporter.ingest import fastpath
from exporter.stats.binning import Binned, Binner
from exporter.stats.coded import Coded


def bin_rows(binner: Binner, features: list, predictions: list, errors: list | None = None) -> Binned:
    """Bin a batch of feature rows (a prediction without features as one with every feature missing)."""
    numeric, categorical = feature_columns(features, binner.numeric, binner.categorical)
    return binner.bin(numeric, categorical, predictions, errors)


def feature_columns(features: list, numeric: list[str], categorical: list[str]) -> tuple[np.ndarray, list[list]]:
    """The ``numeric`` features as an events x features float array (NaN where missing), and the values of each
    of the ``categorical`` ones (None where missing)."""
    rows = _rows(features)
    values = numeric_columns(rows, numeric) if numeric else np.empty((len(rows), 0))
    return values, [column(rows, name) for name in categorical]


def _rows(features: list) -> list:
    """The feature rows of a batch, a prediction sent without features standing as one with every feature
    missing. A row is a dict (general validation path) or a features struct (the fast path, all of a batch)."""
    if None not in features:
        return features
    decoded = next((f for f in features if f is not None and not isinstance(f, dict)), None)
    blank = {} if decoded is None else fastpath.empty(decoded)
    return [blank if f is None else f for f in features]


def numeric_columns(rows: list, names: list[str]) -> np.ndarray:
    """The values of the numeric features ``names`` as an events x features float array, NaN where missing.

    Validation let only numbers and None through; the values are read by C-level getters (a Python
    generator per column cost about a quarter of ingest).
    """
    if rows and not isinstance(rows[0], dict):
        get = fastpath.getter(rows[0], names)
        if len(names) > 1:
            with contextlib.suppress(TypeError):  # a None (missing value) among them: the general way below
                # One pass in C, without the shape discovery np.array does over a list of tuples.
                flat = itertools.chain.from_iterable(map(get, rows))
                return np.fromiter(flat, dtype=np.float64, count=len(rows) * len(names)).reshape(len(rows), len(names))
        table = [get(row) for row in rows]
    else:
        get = operator.itemgetter(*names)
        try:
            table = [get(row) for row in rows]  # every feature present: the common case
        except KeyError:
            table = [tuple(map(row.get, names)) for row in rows]
    return np.array(table, dtype=np.float64).reshape(len(rows), len(names))


def column(rows: list, name: str) -> list:
    """One feature's values over the rows (None where missing)."""
    if rows and not isinstance(rows[0], dict):
        return list(map(fastpath.getter(rows[0], [name]), rows))
    return [row.get(name) for row in rows]


@dataclass(slots=True)
class Batch:
    """One version's batch of predictions as the window update reads it: columns, whatever the ingest format.

    Rows (decoded items) become one with :meth:`of_events`, a columnar batch with :meth:`of_columns`; both must
    give the same columns for the same predictions (tests/ingest/test_columnar.py compares the states)."""

    n: int
    timestamps: np.ndarray  # unix seconds
    predictions: np.ndarray  # class indices (int64) or values (float64)
    scored: np.ndarray  # the rows with scores
    scores: np.ndarray  # their scores (rows x score columns)
    latency: np.ndarray | None  # the latencies sent (only those)
    numeric: np.ndarray  # rows x Binner.numeric, NaN where missing
    categorical: list[list]  # per Binner.categorical feature, its values (None where missing): a list or a Coded
    errors: list | None  # per row, the (feature, reason) validation left out; None when no row has any
    attributions: np.ndarray | None  # rows with attributions x every feature, NaN where left out
    attributed: np.ndarray | None  # the indices of those rows

    @classmethod
    def of_events(cls, events: list, model: ModelConfig, binner: Binner) -> Batch:
        n = len(events)
        numeric, categorical = feature_columns([e.features for e in events], binner.numeric, binner.categorical)
        if model.is_classification:
            predictions = np.fromiter((e.prediction for e in events), dtype=np.int64, count=n)
            scored, scores = score_matrix([e.scores for e in events])
        else:
            predictions = np.fromiter((e.prediction for e in events), dtype=np.float64, count=n)
            scored, scores = np.empty(0, dtype=np.int64), np.empty((0, 0))
        latencies = [e.latency for e in events if e.latency is not None]
        attributions = attributed = None
        if model.attributions:
            carried = [i for i, e in enumerate(events) if e.attributions is not None]
            if carried:
                rows = [events[i].attributions for i in carried]
                attributions = numeric_columns(rows, [f.name for f in model.features])
                attributed = np.asarray(carried, dtype=np.int64)
        return cls(
            n,
            np.fromiter((e.timestamp for e in events), dtype=np.float64, count=n),
            predictions,
            scored,
            scores,
            np.asarray(latencies, dtype=np.float64) if latencies else None,
            numeric,
            categorical,
            [e.feature_errors for e in events] if any(e.feature_errors for e in events) else None,
            attributions,
            attributed,
        )

    @classmethod
    def of_columns(cls, cols, binner: Binner, rows: np.ndarray | None = None) -> Batch:
        """The batch of a columnar batch (exporter/ingest/columnar.py ``Columns``); ``rows``: only those rows."""
        latency = None
        if cols.latency is not None:
            latency = cols.latency[~np.isnan(cols.latency)]
        n = cols.n
        if cols.scores is not None:
            scored, scores = np.arange(n), cols.scores
        else:
            scored, scores = np.empty(0, dtype=np.int64), np.empty((0, 0))
        batch = cls(
            n,
            cols.timestamps,
            cols.predictions,
            scored,
            scores,
            latency,
            cols.numeric,
            [cols.categorical[name] for name in binner.categorical],
            None,
            cols.attributions,
            cols.attributed,
        )
        if rows is None:
            return batch
        batch = batch.take(rows)
        if cols.latency is not None:
            kept = cols.latency[rows]
            batch.latency = kept[~np.isnan(kept)]
        return batch

    def take(self, idx: np.ndarray) -> Batch:
        """The rows ``idx`` (increasing) of this batch, renumbered (latency is left as it is: a counter's)."""
        scored, scores = _subset(self.scored, self.scores, idx, self.n)
        attributed, attributions = None, None
        if self.attributed is not None:
            attributed, attributions = _subset(self.attributed, self.attributions, idx, self.n)
        return Batch(
            len(idx),
            self.timestamps[idx],
            self.predictions[idx],
            scored,
            scores,
            self.latency,
            self.numeric[idx],
            [column.take(idx) if type(column) is Coded else [column[i] for i in idx] for column in self.categorical],
            [self.errors[i] for i in idx] if self.errors is not None else None,
            attributions,
            attributed,
        )


def _subset(have: np.ndarray, values: np.ndarray, idx: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Of rows ``have`` (with ``values``, one row each), those among ``idx``, numbered as positions in ``idx``."""
    if have.size == n:  # every row: the common case
        return np.arange(len(idx)), values[idx]
    pos = np.full(n, -1, dtype=np.int64)
    pos[have] = np.arange(len(have))
    at = pos[idx]
    keep = at >= 0
    return np.flatnonzero(keep), values[at[keep]]


def score_matrix(scores: list) -> tuple[np.ndarray, np.ndarray]:
    """The indices of the rows that carry scores, and their scores as a (rows x score columns) matrix."""
    have = [i for i, sc in enumerate(scores) if sc is not None]
    if not have:
        return np.empty(0, dtype=np.int64), np.empty((0, 0))
    rows = scores if len(have) == len(scores) else [scores[i] for i in have]
    c = len(rows[0])  # validation gives every score tuple the model's score columns
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.float64, count=len(rows) * c)
    return np.asarray(have, dtype=np.int64), flat.reshape(len(rows), c)
