"""From decoded items to the plain columns the statistics take (exporter/stats/binning.py: ``Binner.bin``).

A batch's feature rows are dicts (the general validation path) or the fast decoder's structs; the statistics
never see either, only a float array of the numeric features and a list of values per categorical one.
"""

from __future__ import annotations

import contextlib
import itertools
import operator

import numpy as np

from exporter.ingest import fastpath
from exporter.stats.binning import Binned, Binner


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
