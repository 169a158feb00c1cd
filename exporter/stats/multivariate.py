"""Multivariate drift by PCA reconstruction error (docs/drift.md, "Multivariate drift").

At reference time the numeric features are imputed (reference means) and standardised, and a PCA keeping a
share of their variance is fitted: the reference's structure, frozen with the profile. A row that follows
that structure is rebuilt from its principal components with a small error; when features move together
otherwise (a correlation that flips, many small shifts at once) the error grows, even where every feature's
own distribution stays put. At ingest each row's error is computed for the whole batch at once, and only
sums are kept per time bucket (rows, errors, squared errors): a window's figure is its rows' mean error.

The thresholds come from the reference itself: its rows cut into chunks of ``chunk`` rows (a tenth of the
reference unless configured), the mean and standard deviation of the chunks' mean errors, and mean +- 3
standard deviations. A window's figure is published once it holds at least a chunk's rows, so that it is never
noisier than the chunks its thresholds were drawn from.

Categorical features are taken as NannyML takes them (bench/NANNYML_RECONSTRUCTION.md): imputed with the
reference's most frequent category and encoded as each category's share of the reference rows (0 for an
unseen one), then standardised with the numeric columns.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from itertools import repeat

import numpy as np

DEFAULT_VARIANCE = 0.65  # the share of the standardised variance the kept components explain (NannyML's)
DEFAULT_CHUNKS = 10  # without a configured chunk size, the reference is cut into 10 chunks (as NannyML's default)
MIN_ROWS = 200  # fewer reference rows: no fit


_TEXT = {str, type(None)}
MAX_ENCODED = 1000  # categories per categorical feature whose share is kept; the rarer ones share one value


@dataclass(frozen=True)
class Reconstruction:
    """The frozen fit: per column (the numeric features, then the categorical ones as their categories'
    shares of the reference rows) its imputation value, centre and scale; the kept components (rows of unit
    length); and the reference's chunk statistics."""

    features: tuple[str, ...]  # numeric features, then categorical ones
    impute: np.ndarray
    centre: np.ndarray
    scale: np.ndarray
    components: np.ndarray  # k x d
    reference_mean: float  # mean of the reference chunks' mean errors
    reference_std: float  # their standard deviation
    # per categorical feature: category -> its share of the reference rows (missing ones counted as the most
    # frequent category, which imputes them); and the share of a category beyond the MAX_ENCODED kept
    encodings: tuple[dict[str, float], ...] = ()
    rare: tuple[float, ...] = ()
    chunk: int = 1  # reference rows per chunk of the thresholds: a window's figure needs at least as many rows
    variance: float = DEFAULT_VARIANCE  # the share of the variance the components were chosen to explain

    def matrix(self, numeric: np.ndarray, categorical: list[list]) -> np.ndarray:
        """The columns the fit reads: ``numeric`` (rows x numeric features, NaN missing) beside each
        categorical column encoded as its categories' shares (NaN missing, 0 for a category the reference
        never had). Values are matched as the profile matches them (exporter/stats/reference.py: category)."""
        if not self.encodings:
            return numeric
        from exporter.stats.reference import category  # a cycle at import time: reference imports this module

        rows = numeric.shape[0]
        out = np.empty((rows, numeric.shape[1] + len(self.encodings)))
        out[:, : numeric.shape[1]] = numeric
        for j, (lookup, rare, column) in enumerate(zip(self._lookups, self.rare, categorical, strict=True)):
            if set(map(type, column)) <= _TEXT:  # text and missing values only (the common case): looked up in C
                out[:, numeric.shape[1] + j] = np.fromiter(map(lookup.get, column, repeat(rare)), np.float64, rows)
            else:  # numbers and booleans are matched as their text, as the profile matches them
                out[:, numeric.shape[1] + j] = [
                    np.nan if v is None or v == "" else lookup.get(v if type(v) is str else category(v), rare)
                    for v in column
                ]
        return out

    @functools.cached_property
    def _lookups(self) -> tuple[dict, ...]:
        """Per categorical feature: its categories' shares, and NaN for a missing value (None or "")."""
        return tuple({**shares, None: np.nan, "": np.nan} for shares in self.encodings)

    @property
    def lower(self) -> float | None:
        """None when mean - 3 sd is not above 0 (an error is never negative: no lower bound), as NannyML."""
        low = self.reference_mean - 3 * self.reference_std
        return low if low > 0 else None

    @property
    def upper(self) -> float:
        return self.reference_mean + 3 * self.reference_std

    def errors(self, values: np.ndarray) -> np.ndarray:
        """Each row's reconstruction error (Euclidean, in standardised units); ``values``: rows x features,
        NaN where missing (imputed)."""
        z = values - self.centre
        np.multiply(z, self._inverse_scale, out=z)
        missing = np.isnan(z)
        if missing.any():
            z[missing] = np.broadcast_to(self._imputed, z.shape)[missing]
        # The components are orthonormal rows, so the part the projection p = z C^T leaves out has squared
        # length |z|^2 - |p|^2: one product instead of projecting back and subtracting (2.6 times faster; the
        # rounding is about 1e-15 of |z|^2, nothing against the errors' spread).
        p = z @ self.components.T
        squared = np.einsum("ij,ij->i", z, z) - np.einsum("ij,ij->i", p, p)
        return np.sqrt(np.maximum(squared, 0.0))

    @functools.cached_property
    def _inverse_scale(self) -> np.ndarray:
        return 1.0 / self.scale

    @functools.cached_property
    def _imputed(self) -> np.ndarray:
        """A missing value's standardised column value: its imputation value, centred and scaled."""
        return (self.impute - self.centre) * self._inverse_scale

    def as_json(self) -> dict:
        return {
            "features": list(self.features),
            "encodings": [sorted(e.items()) for e in self.encodings],
            "rare": list(self.rare),
            "impute": self.impute.tolist(),
            "centre": self.centre.tolist(),
            "scale": self.scale.tolist(),
            "components": self.components.tolist(),
            "reference_mean": self.reference_mean,
            "reference_std": self.reference_std,
            "chunk": self.chunk,
            "variance": self.variance,
        }

    @staticmethod
    def from_json(data: dict) -> Reconstruction:
        return Reconstruction(
            tuple(data["features"]),
            np.asarray(data["impute"], dtype=np.float64),
            np.asarray(data["centre"], dtype=np.float64),
            np.asarray(data["scale"], dtype=np.float64),
            np.asarray(data["components"], dtype=np.float64).reshape(-1, len(data["features"])),
            float(data["reference_mean"]),
            float(data["reference_std"]),
            tuple({str(k): float(v) for k, v in pairs} for pairs in data.get("encodings", ())),
            tuple(float(v) for v in data.get("rare", ())),
            int(data["chunk"]),
            float(data["variance"]),
        )


def encode(column: list[str | None]) -> tuple[dict[str, float], float]:
    """A categorical reference column's encoding: each category's share of the rows, the missing ones counted
    as the most frequent category (the smallest of equally frequent ones), as NannyML imputes and encodes;
    the MAX_ENCODED most frequent kept, the rest at their mean share."""
    present = [v for v in column if v is not None and v != ""]
    counts: dict[str, int] = {}
    for v in present:
        counts[v] = counts.get(v, 0) + 1
    if not counts:
        return {}, 0.0
    mode = min(counts, key=lambda c: (-counts[c], c))
    counts[mode] += len(column) - len(present)
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    kept, rest = ranked[:MAX_ENCODED], ranked[MAX_ENCODED:]
    rows = len(column)
    rare = sum(counts[c] for c in rest) / rows / len(rest) if rest else 0.0
    return {c: counts[c] / rows for c in kept}, rare


def fit(
    names: list[str],
    values: np.ndarray,
    variance: float = DEFAULT_VARIANCE,
    chunk: int = 0,
    categorical: dict[str, list[str | None]] | None = None,
) -> Reconstruction | None:
    """Fit on the reference's numeric columns (rows x features, NaN missing) and its ``categorical`` columns
    (feature -> values as text, None or "" missing); ``chunk``: rows per chunk of the thresholds (0: a tenth of
    the rows). None with fewer than two columns or ``MIN_ROWS`` rows (no structure to learn)."""
    categorical = categorical or {}
    encoded = [encode(column) for column in categorical.values()]
    rec0 = Reconstruction((), np.empty(0), np.empty(0), np.empty(0), np.empty((0, 0)), 0.0, 0.0,
                          tuple(e for e, _ in encoded), tuple(r for _, r in encoded))  # fmt: skip
    values = rec0.matrix(values, list(categorical.values()))
    names = [*names, *categorical]
    rows, d = values.shape
    if d < 2 or rows < MIN_ROWS:
        return None
    chunk = chunk or max(1, rows // DEFAULT_CHUNKS)
    impute = np.nanmean(values, axis=0)
    impute = np.where(np.isnan(impute), 0.0, impute)
    for j, (shares, _) in enumerate(encoded):  # a missing category is the most frequent one: its share
        impute[d - len(encoded) + j] = max(shares.values(), default=0.0)
    x = np.where(np.isnan(values), impute, values)
    centre = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    z = (x - centre) / scale
    # Principal axes by SVD of the standardised rows (sign and order as numpy gives them: the error does
    # not depend on either).
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    explained = s**2 / (s**2).sum() if s.any() else np.ones_like(s) / len(s)
    # The fewest components whose cumulative share is strictly above ``variance`` (scikit-learn's rule).
    k = int(np.searchsorted(np.cumsum(explained), variance, side="right") + 1)
    components = vt[: min(k, d)]
    encodings, rare = rec0.encodings, rec0.rare
    rec = Reconstruction(tuple(names), impute, centre, scale, components, 0.0, 0.0, encodings, rare, chunk, variance)
    errs = rec.errors(values)
    # Chunks of ``chunk`` rows in order, the last one partial (as NannyML chunks by size).
    means = np.array([errs[i : i + chunk].mean() for i in range(0, rows, chunk)])
    std = float(means.std(ddof=0)) if len(means) > 1 else 0.0
    return dataclasses.replace(rec, reference_mean=float(means.mean()), reference_std=std)
