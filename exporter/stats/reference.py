"""Reference profiles: what "no drift" looks like, frozen into bins once, so raw reference rows are never kept.

A profile holds, per feature: numeric bin edges from reference quantiles with the reference counts per
bin (plus a bin below the reference minimum and one above its maximum), summary statistics and the
missing count; categorical: the most frequent categories with their counts, an "other" bucket, and the
set of categories seen. Optionally the same for the model's predictions and labels, and the calibration of
its scores against the labels (exporter/stats/estimate.py). Built from a CSV
(`mlmon reference build`, a `reference:` CSV in the config, or an upload), stored as JSON.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass

import numpy as np

from exporter.config import ModelConfig
from exporter.stats import attribution, estimate, multivariate

FORMAT = "mlmon-reference/1"
NUMERIC_BINS = 40  # interior quantile bins; PSI merges them into deciles
NUMERIC_SLOTS = NUMERIC_BINS + 2  # with the bins below the minimum and above the maximum
TOP_CATEGORIES = 20  # categories tracked one by one; the rest share the "other" bucket
MAX_KNOWN_CATEGORIES = 10_000  # categories remembered to tell "unseen" from "rare"
MIN_ROWS = 20
EXTRA_COLUMNS = ("id", "timestamp", "prediction", "label")


class ReferenceError(ValueError):
    """A reference that does not fit the model; the message names the column, row or field."""


@dataclass(frozen=True)
class NumericRef:
    edges: np.ndarray  # m + 1 increasing edges: the minimum, quantiles, the maximum
    counts: np.ndarray  # m + 2 bins: below the minimum, m inside, above the maximum
    mean: float
    std: float
    missing: int

    kind = "numeric"

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def bins(self, x: np.ndarray) -> np.ndarray:
        """Bin of each value (NaN values get a bin too; callers drop them first)."""
        b = np.searchsorted(self.edges, x, side="right")
        b[x == self.edges[-1]] = len(self.edges) - 1  # the maximum belongs to the last inside bin
        return b

    def psi_groups(self) -> np.ndarray:
        """PSI bucket of each bin: 0 below, 1-10 the reference deciles, 11 above (computed once per profile:
        every scrape asks for it, per feature and window)."""
        cached = self.__dict__.get("_psi_groups")
        if cached is None:
            cached = self._groups()
            object.__setattr__(self, "_psi_groups", cached)  # a frozen dataclass: derived, not state
        return cached

    def _groups(self) -> np.ndarray:
        inside = self.counts[1:-1].astype(np.float64)
        before = (np.cumsum(inside) - inside) / max(inside.sum(), 1.0)
        deciles = 1 + np.minimum(np.floor(before * 10 + 1e-9), 9).astype(np.int64)
        return np.concatenate([[0], deciles, [11]])

    def points(self, below_mean: float, above_mean: float) -> np.ndarray:
        """Where each bin's mass sits, for the Wasserstein distance."""
        mids = (self.edges[:-1] + self.edges[1:]) / 2
        return np.concatenate([[below_mean], mids, [above_mean]])

    def as_json(self) -> dict:
        return {
            "type": "numeric",
            "edges": self.edges.tolist(),
            "counts": self.counts.tolist(),
            "mean": self.mean,
            "std": self.std,
            "missing": self.missing,
        }


@dataclass(frozen=True)
class CategoricalRef:
    categories: tuple[str, ...]  # the most frequent, tracked one by one
    counts: np.ndarray  # len(categories) + 1: the last counts every other category
    known: frozenset[str]  # every category of the reference (up to MAX_KNOWN_CATEGORIES)
    missing: int

    kind = "categorical"

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def as_json(self) -> dict:
        return {
            "type": "categorical",
            "categories": list(self.categories),
            "counts": self.counts.tolist(),
            "known": sorted(self.known),
            "missing": self.missing,
        }


Ref = NumericRef | CategoricalRef


@dataclass(frozen=True)
class Profile:
    model: str
    rows: int
    features: dict[str, Ref]
    prediction: Ref | None = None
    label: Ref | None = None
    # How scores become probabilities for the estimated quality (exporter/stats/estimate.py); None: the
    # reference had no scores and labels to calibrate against (``calibration_note`` says which was missing).
    calibration: estimate.Calibration | None = None
    calibration_note: str = ""
    # The frozen PCA of the numeric features for multivariate drift (exporter/stats/multivariate.py); None
    # with fewer than two numeric features or too few rows.
    reconstruction: multivariate.Reconstruction | None = None
    # The mean absolute attribution of each feature (the model's features in order; NaN: no value), from the
    # reference's attributions.<feature> columns (exporter/stats/attribution.py); None without them.
    attributions: np.ndarray | None = None

    def as_json(self) -> dict:
        out = {
            "format": FORMAT,
            "model": self.model,
            "rows": self.rows,
            "features": {k: v.as_json() for k, v in self.features.items()},
        }
        for key in ("prediction", "label"):
            ref = getattr(self, key)
            if ref is not None:
                out[key] = ref.as_json()
        if self.calibration is not None:
            out["calibration"] = self.calibration.as_json()
        elif self.calibration_note:
            out["calibration_note"] = self.calibration_note
        if self.reconstruction is not None:
            out["reconstruction"] = self.reconstruction.as_json()
        if self.attributions is not None:
            names = list(self.features)
            out["attributions"] = {n: float(v) for n, v in zip(names, self.attributions) if not np.isnan(v)}
        return out

    def calibration_summary(self) -> dict:
        """What the estimated quality rests on, for the answer to an upload and for check-config."""
        c = self.calibration
        if c is None:
            return {"method": None, "note": self.calibration_note or "no calibration"}
        return {
            "method": c.method,
            "rows": c.rows,
            "ece_raw": round(c.ece_raw, 4),
            "ece_calibrated": round(c.ece_calibrated, 4),
        }

    def dumps(self) -> str:
        return json.dumps(self.as_json(), indent=1)


def category(value) -> str:
    """The label value of a categorical feature value: JSON true/false as written, numbers as text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def numeric_profile(values: np.ndarray) -> NumericRef:
    present = values[~np.isnan(values)]
    if len(present) < MIN_ROWS:
        raise ReferenceError(f"needs at least {MIN_ROWS} values, got {len(present)}")
    edges = np.unique(np.quantile(present, np.linspace(0, 1, NUMERIC_BINS + 1)))
    if len(edges) == 1:  # a constant: one bin of zero width
        edges = np.array([edges[0], edges[0]])
    ref = NumericRef(
        edges,
        np.zeros(len(edges) + 1, dtype=np.int64),
        float(present.mean()),
        float(present.std()),
        int(len(values) - len(present)),
    )
    counts = np.bincount(ref.bins(present), minlength=len(edges) + 1)
    return NumericRef(edges, counts.astype(np.int64), ref.mean, ref.std, ref.missing)


def categorical_profile(values: list) -> CategoricalRef:
    present = [category(v) for v in values if v is not None and v != ""]
    if len(present) < MIN_ROWS:
        raise ReferenceError(f"needs at least {MIN_ROWS} values, got {len(present)}")
    uniq, counts = np.unique(np.asarray(present, dtype=object), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    top = [str(uniq[i]) for i in order[:TOP_CATEGORIES]]
    top_counts = [int(counts[i]) for i in order[:TOP_CATEGORIES]]
    other = int(counts.sum()) - sum(top_counts)
    known = frozenset(str(uniq[i]) for i in order[:MAX_KNOWN_CATEGORIES])
    return CategoricalRef(
        tuple(top), np.asarray(top_counts + [other], dtype=np.int64), known, len(values) - len(present)
    )


def _floats(column: list, name: str, first_row: int = 2) -> np.ndarray:
    out = np.empty(len(column))
    for i, v in enumerate(column):
        if v is None or v == "":
            out[i] = np.nan
            continue
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise ReferenceError(f"column {name!r}, row {i + first_row}: {v!r} is not a number") from None
        if not math.isfinite(out[i]):
            raise ReferenceError(f"column {name!r}, row {i + first_row}: {v!r} is not a finite number")
    return out


def build_profile(columns: dict[str, list], model: ModelConfig) -> Profile:
    """A profile from columns of raw values (CSV text or JSON values; "" and None are missing)."""
    names = {f.name: f.type for f in model.features}
    if not names:
        raise ReferenceError(f"model {model.name!r} has no features in the config: nothing to profile")
    scores = score_columns(model)
    attributed = {attribution.REFERENCE_PREFIX + n for n in names} if model.attributions else set()
    unknown = [
        c for c in columns if c not in names and c not in EXTRA_COLUMNS and c not in scores and c not in attributed
    ]
    if unknown:
        allowed = ", ".join([*EXTRA_COLUMNS, *scores, *(["attributions.<feature>"] if attributed else [])])
        if any(c.startswith(attribution.REFERENCE_PREFIX) for c in unknown) and not model.attributions:
            allowed += " (attributions.<feature> columns need attributions: true in the model's config)"
        raise ReferenceError(
            f"unknown columns {unknown[:10]}: the model's features are {sorted(names)}; {allowed} are allowed besides"
        )
    missing = [f for f in names if f not in columns]
    if missing:
        raise ReferenceError(f"missing feature columns {missing[:10]}")
    rows = len(next(iter(columns.values())))
    features: dict[str, Ref] = {}
    for name, kind in names.items():
        try:
            features[name] = (
                numeric_profile(_floats(columns[name], name))
                if kind == "numeric"
                else categorical_profile(columns[name])
            )
        except ReferenceError as exc:
            raise ReferenceError(f"column {name!r}: {exc}") if "column" not in str(exc) else exc from None
    outcomes: dict[str, Ref | None] = {"prediction": None, "label": None}
    for key in outcomes:
        if key not in columns:
            continue
        values = columns[key]
        if model.task == "regression":
            outcomes[key] = numeric_profile(_floats(values, key))
        else:
            bad = {category(v) for v in values if v not in (None, "")} - set(model.classes)
            if bad:
                raise ReferenceError(f"column {key!r}: {sorted(bad)[:5]} are not classes of {model.name!r}")
            outcomes[key] = _class_profile(values, model)
    calibration, note = _calibration(columns, model, _score_columns_used(columns, model))
    reconstruction = _reconstruction(columns, model, rows) if model.multivariate else None
    attributions = None
    if model.attributions:
        try:
            found = attribution.reference_profile(columns, list(names))
        except ValueError as exc:
            raise ReferenceError(f"attributions columns must hold numbers: {exc}") from None
        attributions = None if found is None else found[0]
    return Profile(
        model.name,
        rows,
        features,
        outcomes["prediction"],
        outcomes["label"],
        calibration,
        note,
        reconstruction,
        attributions,
    )


def _reconstruction(columns: dict[str, list], model: ModelConfig, rows: int) -> multivariate.Reconstruction | None:
    """The frozen fit of multivariate drift on the reference's feature columns (None: too few)."""
    numeric = [f.name for f in model.features if f.type == "numeric"]
    categorical = {
        f.name: [None if v in (None, "") else category(v) for v in columns[f.name]]
        for f in model.features
        if f.type == "categorical"
    }
    matrix = np.column_stack([_floats(columns[name], name) for name in numeric]) if numeric else np.empty((rows, 0))
    return multivariate.fit(numeric, matrix, model.multivariate_variance, model.multivariate_chunk, categorical)


def score_columns(model: ModelConfig) -> list[str]:
    """The reference columns that may hold the model's scores: ``score`` (the positive class's probability) or
    ``scores.<class>`` for a binary model, ``scores.<class>`` for each class of a multiclass one; none for
    regression."""
    if model.task == "binary":
        return ["score", *(f"scores.{c}" for c in model.classes)]
    if model.task == "multiclass":
        return [f"scores.{c}" for c in model.classes]
    return []


def _score_columns_used(columns: dict[str, list], model: ModelConfig) -> list[str]:
    """The columns calibrated: one per score column of the API (binary: the positive class's)."""
    positive = f"scores.{model.positive_class}"
    if model.task == "binary":
        return [positive] if positive in columns and "score" not in columns else ["score"]
    return score_columns(model)


def _calibration(columns: dict[str, list], model: ModelConfig, scores: list[str]):
    """The calibration of the model's scores against the reference's labels, or None and why not."""
    if not scores:
        return None, "regression models have no estimated quality"
    present = [c for c in scores if c in columns]
    if "label" not in columns or not present:
        missing = [c for c in ["label", *scores] if c not in columns]
        return None, f"no estimated quality: the reference lacks the columns {missing[:5]} to calibrate the scores"
    if len(present) != len(scores):
        return (
            None,
            f"no estimated quality: the reference lacks the score columns {sorted(set(scores) - set(present))[:5]}",
        )
    table = np.column_stack([_floats(columns[c], c) for c in scores])
    bad = ~np.isnan(table) & ((table < 0) | (table > 1))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ReferenceError(
            f"column {scores[col]!r}, row {row + 2}: {table[row, col]!r} is not a probability from 0 to 1"
        )
    labels = [category(v) if v not in (None, "") else None for v in columns["label"]]
    keep = np.array([lab is not None for lab in labels]) & ~np.isnan(table).any(axis=1)
    if keep.sum() < estimate.MIN_ROWS:
        return None, (
            f"no estimated quality: {int(keep.sum())} reference rows have a label and every score; "
            f"calibration needs {estimate.MIN_ROWS}"
        )
    index = {c: i for i, c in enumerate(model.classes)}
    y = np.array([index[lab] for lab, k in zip(labels, keep) if k], dtype=np.int64)
    score_class = (
        [model.classes.index(model.positive_class)] if model.task == "binary" else list(range(len(model.classes)))
    )
    outcomes = np.column_stack([(y == k).astype(np.float64) for k in score_class])
    return estimate.fit(table[keep], outcomes), ""


def _class_profile(values: list, model: ModelConfig) -> CategoricalRef:
    """Classes in config order, so bin i is class i (the windows count predictions and labels that way)."""
    present = [category(v) for v in values if v not in (None, "")]
    counts = [present.count(c) for c in model.classes] + [0]
    return CategoricalRef(
        tuple(model.classes), np.asarray(counts, dtype=np.int64), frozenset(model.classes), len(values) - len(present)
    )


def read_csv(text: str) -> dict[str, list]:
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise ReferenceError("the CSV is empty") from None
    except csv.Error as exc:
        raise ReferenceError(f"the CSV header is malformed: {exc}") from None
    if len(set(header)) != len(header):
        raise ReferenceError("the CSV header has duplicate columns")
    columns: dict[str, list] = {h: [] for h in header}
    line = 1
    try:
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise ReferenceError(f"row {line}: {len(row)} fields, the header has {len(header)}")
            for h, v in zip(header, row):
                columns[h].append(v)
    except csv.Error as exc:  # a lone carriage return in a field, a field over the csv module's limit...
        raise ReferenceError(f"the CSV is malformed near row {line + 1}: {exc}") from None
    return columns


def from_csv(text: str, model: ModelConfig) -> Profile:
    return build_profile(read_csv(text), model)


def _count(value) -> int:
    """A profile's count (of missing values) as the int64 it is kept and written back as."""
    n = int(value)
    if not 0 <= n <= np.iinfo(np.int64).max:
        raise ValueError(f"'missing' must be a count from 0 to 2**63-1, not {n}")
    return n


def _ref_from_json(data, where: str, model: ModelConfig, kind: str | None) -> Ref:
    if not isinstance(data, dict) or data.get("type") not in ("numeric", "categorical"):
        raise ReferenceError(f"{where}: needs 'type' numeric or categorical")
    if kind is not None and data["type"] != kind:
        raise ReferenceError(f"{where}: is {data['type']} in the profile but {kind} in the config")
    try:
        counts = np.asarray(data["counts"], dtype=np.int64)
        if (counts < 0).any():
            raise ValueError("negative counts")
        if data["type"] == "numeric":
            edges = np.asarray(data["edges"], dtype=np.float64)
            if len(edges) < 2 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) < 0):
                raise ValueError("edges must be finite and increasing")
            if len(counts) != len(edges) + 1 or len(edges) > NUMERIC_BINS + 1:
                raise ValueError(f"{len(edges)} edges need {len(edges) + 1} counts, at most {NUMERIC_BINS + 1} edges")
            return NumericRef(edges, counts, float(data["mean"]), float(data["std"]), _count(data["missing"]))
        categories = tuple(str(c) for c in data["categories"])
        if len(counts) != len(categories) + 1 or len(categories) > TOP_CATEGORIES:
            raise ValueError(f"needs one count per category plus 'other', at most {TOP_CATEGORIES} categories")
        return CategoricalRef(categories, counts, frozenset(str(c) for c in data["known"]), _count(data["missing"]))
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ReferenceError(f"{where}: {exc}") from None


def from_json(data, model: ModelConfig) -> Profile:
    """Validate a profile (as written by :meth:`Profile.as_json`) against the model's config."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ReferenceError(f"not an mlmon reference profile: 'format' must be {FORMAT!r}")
    features = data.get("features")
    if not isinstance(features, dict):
        raise ReferenceError("'features' must be an object of feature name to profile")
    names = {f.name: f.type for f in model.features}
    unknown = sorted(set(features) - set(names))
    missing = sorted(set(names) - set(features))
    if unknown or missing:
        raise ReferenceError(
            f"features do not match model {model.name!r}: unknown {unknown[:10]}, missing {missing[:10]}"
        )
    refs = {n: _ref_from_json(features[n], f"features.{n}", model, names[n]) for n in names}
    outcome_kind = "numeric" if model.task == "regression" else "categorical"
    extra = {k: _ref_from_json(data[k], k, model, outcome_kind) for k in ("prediction", "label") if data.get(k)}
    for key, ref in extra.items():
        if isinstance(ref, CategoricalRef) and ref.categories != model.classes:
            raise ReferenceError(f"{key}: categories must be the model's classes {list(model.classes)}")
    rows = data.get("rows", 0)
    if isinstance(rows, bool) or not isinstance(rows, int) or not 0 <= rows < 2**62:
        raise ReferenceError("'rows' must be a whole number of rows")
    calibration = None
    if data.get("calibration") is not None:
        try:
            calibration = estimate.Calibration.from_json(data["calibration"], len(model.score_classes))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ReferenceError(f"calibration: {exc}") from None
    note = data.get("calibration_note", "")
    reconstruction = None
    if data.get("reconstruction") is not None and model.multivariate:
        columns = tuple(
            [f.name for f in model.features if f.type == "numeric"]
            + [f.name for f in model.features if f.type == "categorical"]
        )
        try:
            reconstruction = multivariate.Reconstruction.from_json(data["reconstruction"])
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ReferenceError(f"reconstruction: {exc}") from None
        if reconstruction.features != columns:
            raise ReferenceError(f"reconstruction: its features must be the model's, numeric first {list(columns)}")
    attributions = None
    if data.get("attributions") is not None and model.attributions:
        given = data["attributions"]
        if not isinstance(given, dict) or set(given) - set(names):
            raise ReferenceError("attributions: must be an object of the model's feature names to a number")
        try:
            attributions = np.array([float(given.get(n, np.nan)) for n in names])
        except (TypeError, ValueError) as exc:
            raise ReferenceError(f"attributions: {exc}") from None
        given_values = attributions[~np.isnan(attributions)]
        if not np.isfinite(given_values).all() or (given_values < 0).any():
            raise ReferenceError("attributions: mean absolute attributions are finite numbers, 0 or more")
    return Profile(
        model.name,
        rows,
        refs,
        extra.get("prediction"),
        extra.get("label"),
        calibration,
        note if isinstance(note, str) else "",
        reconstruction,
        attributions,
    )


def load_all(config) -> dict[str, Profile]:
    """The profiles named by the config's ``reference:`` keys; a bad one is a config error naming the model."""
    from exporter.config import ConfigError

    profiles, problems = {}, []
    for i, model in enumerate(config.models):
        if model.reference:
            try:
                profiles[model.name] = load(model.reference, model)
            except ReferenceError as exc:
                problems.append(f"models[{i}].reference: {exc}")
    if problems:
        raise ConfigError(problems)
    return profiles


def load(path: str, model: ModelConfig) -> Profile:
    """A profile from a file: JSON written by `mlmon reference build`, or a CSV of raw rows."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ReferenceError(f"cannot read {path}: {exc.strerror}") from None
    if path.endswith(".json"):
        try:
            return from_json(json.loads(text), model)
        except json.JSONDecodeError as exc:
            raise ReferenceError(f"{path}: not valid JSON: {exc}") from None
    return from_csv(text, model)
