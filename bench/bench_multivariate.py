"""Multivariate drift beside NannyML's data reconstruction drift, chunk by chunk (`make bench-multivariate`).

Both sides see the same reference rows and the same analysis rows, cut into the same chunks of 1,500 rows, and
both keep the reference's last, partial chunk when they draw the thresholds from the reference's chunks.

- NannyML (bench-only dependency, ``.venv-bench``): ``DataReconstructionDriftCalculator(column_names=<the
  features>, chunk_size=1500)``, fitted on the reference and run on the analysis rows (every option at its
  default: 0.65 of the variance, mean and most-frequent imputation, count encoding, 3 standard deviations). Its
  analysis chunk ``k`` is rows ``1500 k`` to ``1500 (k + 1) - 1`` and its reference chunks are the
  reference's rows in order, the last one partial: both are checked.
- mlmon: the exporter's WSGI app (``create_app``) on a config with one window of 1 h and
  ``drift.multivariate.chunk_size: 1500``, driven through its HTTP API with Flask's test client: the reference
  goes in as CSV (``PUT /api/v1/models/<model>/reference``), the chunks as prediction batches (``POST
  /api/v1/predictions``, 1,000 a request; a missing value is ``null``), and every figure is read from the
  ``/metrics`` exposition: ``mlmon_multivariate_drift`` (the window's mean reconstruction error),
  ``mlmon_multivariate_drift_samples`` (checked to be the chunk's rows), ``mlmon_multivariate_drift_threshold``
  (``lower``, absent when not above 0, and ``upper``), and, for what the per-feature methods see,
  ``mlmon_feature_drift{method="psi"}`` against ``mlmon_drift_threshold{method="psi"}`` and
  ``mlmon_drifted_features``. One exporter serves every chunk of a data set: chunk ``k`` is sent at ``T0 + 2 k``
  hours of an injected clock and scraped then, so that the 1 h window holds that chunk alone.

An mlmon alert is a value outside its range (over ``upper``, or under ``lower`` when there is one), as the
bundled alert MlmonModelMultivariateDrift reads it; NannyML's is its result's ``alert`` column (``not lower <
value < upper``: a value on a bound alerts there and not in mlmon; none falls on one here).

The data sets (no download):

- ``gaussian``: 10 correlated Gaussian features (f0 and f1 a pair with correlation 0.9, f2 to f9 a three-factor
  structure, random means and scales); 20,000 reference rows (13 chunks of 1,500 and one of 500). Chunks like the
  reference, then the sign of corr(f0, f1) flipped (each marginal kept), every feature shifted by +0.3 standard
  deviations, 10 % of f0 missing, and every feature's spread around its mean shrunk to 0.8 (under the lower
  bound).
- ``breast``: scikit-learn's breast cancer data (bundled, 569 rows, 30 numeric features), rows as
  examples/scenario.py sends them: drawn with replacement and jittered by 0.05 of each feature's standard
  deviation. The reference is 20 jittered copies of every row in random order (11,380 rows: 7 chunks and one
  of 880). Chunks drawn as the reference, then with malignant rows weighted up (37 % to 70 % of the rows: the
  inputs move along the data's main structure), then mean area shuffled between the chunk's rows (its marginal
  kept, its tie to radius and perimeter broken), then the demo's covariate drift (the first three features up by
  2 standard deviations).
- ``mixed``: the Gaussian features with two categorical ones in between (cat_a, 4 categories following f2, 2 %
  missing; cat_b, 3 categories following f0) and 5 % of f3 and f7 missing, in the reference too (so the fit's
  imputation and count encoding are exercised); 20,000 reference rows. Chunks like the reference, then cat_a
  shuffled between rows (its shares kept, its tie to f2 broken), 10 % of cat_b a category the reference never
  had, 30 % of cat_a missing, and every numeric feature +0.3 standard deviations.

The script exits non-zero when a chunk's value or a threshold differs by more than ``TOLERANCE`` (relative) or
an alert flag differs.

Run: ``python bench/bench_multivariate.py`` (prints the tables and writes them into docs/drift.md between the
``nannyml-side-by-side`` markers); ``--no-write`` only prints; ``--only breast`` runs the data sets whose key
starts so (and writes nothing).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import math
import os
import sys
import textwrap
import time
import warnings
from dataclasses import dataclass

# NannyML reports usage statistics to a remote service unless this is set; the benchmark sends nothing out.
os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from bench.common import ROOT, fill_markers  # noqa: E402
from exporter import __version__ as MLMON_VERSION  # noqa: E402
from exporter.config import parse_config  # noqa: E402
from exporter.serve.app import create_app  # noqa: E402

CHUNK = 1500  # rows per chunk on both sides (NannyML's chunk_size, mlmon's drift.multivariate.chunk_size)
TOLERANCE = 1e-9  # relative: |mlmon - NannyML| <= TOLERANCE * |NannyML|, for every value and threshold
WINDOW = "1h"
GAP = 2 * 3600.0  # seconds between two chunks' sending times: more than the window, so it holds one chunk
T0 = 1_800_000_000.0
BATCH = 1000  # predictions per request
SEED = 20240611
DOC = os.path.join(ROOT, "docs", "drift.md")
BEGIN, END = "<!-- nannyml-side-by-side:begin -->", "<!-- nannyml-side-by-side:end -->"


@dataclass
class Case:
    """One data set: its features (name -> numeric | categorical, in the order NannyML is given them), the
    reference and the analysis chunks (missing values NaN), and per chunk what it is."""

    key: str
    title: str
    about: str
    features: dict[str, str]
    reference: pd.DataFrame
    chunks: list[pd.DataFrame]
    notes: list[str]


@dataclass
class Side:
    """One tool's figures for a data set."""

    values: list[float]  # per analysis chunk (NaN: none)
    alerts: list[bool]
    lower: float | None
    upper: float
    components: int


# ---------------------------------------------------------------------------------------------------------
# Data sets


class Gaussian:
    """10 numeric features: f0 and f1 a pair with correlation 0.9, independent of f2..f9, which follow a random
    three-factor structure; random means and scales. Flipping the sign of f1's standardised value flips
    corr(f0, f1) and nothing else (the pair is independent of the rest, and each marginal is symmetric)."""

    FEATURES = 10

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        a = rng.normal(size=(8, 3))
        cov = a @ a.T + np.diag(rng.uniform(0.2, 1.0, 8))
        d = np.sqrt(np.diag(cov))
        corr = np.zeros((self.FEATURES, self.FEATURES))
        corr[:2, :2] = [[1.0, 0.9], [0.9, 1.0]]
        corr[2:, 2:] = cov / np.outer(d, d)
        self.chol = np.linalg.cholesky(corr)
        self.means = rng.uniform(-5, 5, self.FEATURES)
        self.scales = rng.uniform(0.5, 3.0, self.FEATURES)

    def latent(self, n: int, scenario: str = "same") -> np.ndarray:
        """Standardised rows; ``scenario``: same, flip (corr(f0, f1) reversed), shift (+0.3 sd), shrink (0.8 sd)."""
        z = self.rng.standard_normal((n, self.FEATURES)) @ self.chol.T
        if scenario == "flip":
            z[:, 1] = -z[:, 1]
        elif scenario == "shift":
            z += 0.3
        elif scenario == "shrink":
            z *= 0.8
        return z

    def frame(self, z: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(self.means + z * self.scales, columns=[f"f{i}" for i in range(self.FEATURES)])


def gaussian() -> Case:
    gen = Gaussian(np.random.default_rng(SEED))
    reference = gen.frame(gen.latent(20_000))
    plan = [
        ("same", "as the reference", 4),
        ("flip", "corr(f0, f1) sign flipped, marginals kept", 3),
        ("shift", "every feature +0.3 sd", 3),
        ("missing", "10 % of f0 missing", 2),
        ("shrink", "every feature's spread ×0.8", 2),
    ]
    chunks, notes = [], []
    for scenario, note, count in plan:
        for _ in range(count):
            df = gen.frame(gen.latent(CHUNK, "same" if scenario == "missing" else scenario))
            if scenario == "missing":
                df.loc[gen.rng.random(CHUNK) < 0.10, "f0"] = np.nan
            chunks.append(df)
            notes.append(note)
    about = (
        "10 correlated Gaussian features (f0 and f1 a pair with correlation 0.9, f2 to f9 a three-factor "
        "structure); 20,000 reference rows, so 13 reference chunks of 1,500 rows and a partial one of 500. "
        "The correlation flip keeps every feature's distribution; the shrink brings every row closer to the "
        "mean (less variation than the reference: the lower bound)."
    )
    features = dict.fromkeys(reference.columns, "numeric")
    return Case("gaussian", "10 correlated Gaussian features", about, features, reference, chunks, notes)


def breast() -> Case:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x, malignant = data.data, data.target == 0
    names = [n.replace(" ", "_") for n in data.feature_names]
    scale = x.std(axis=0)
    rng = np.random.default_rng(SEED + 1)

    def rows(idx: np.ndarray) -> pd.DataFrame:  # as examples/scenario.py sends them: jittered by 0.05 sd
        return pd.DataFrame(x[idx] + rng.normal(0, 0.05, size=(len(idx), x.shape[1])) * scale, columns=names)

    reference = rows(rng.permutation(np.tile(np.arange(len(x)), 20)))
    # Malignant rows weighted up so that they make 70 % of the draws instead of 37 %.
    w_malignant = 0.7 * (~malignant).sum() / (0.3 * malignant.sum())
    weights = np.where(malignant, w_malignant, 1.0)
    weights /= weights.sum()
    area = names.index("mean_area")
    plan = [
        ("same", "as the reference", 4),
        ("malignant", "malignant rows 37 % → 70 %", 2),
        ("area", "mean_area shuffled between rows", 2),
        ("demo", "first 3 features +2 sd (the demo's drift)", 2),
    ]
    chunks, notes = [], []
    for scenario, note, count in plan:
        for _ in range(count):
            p = weights if scenario == "malignant" else None
            df = rows(rng.choice(len(x), size=CHUNK, replace=True, p=p))
            if scenario == "area":
                df[names[area]] = rng.permutation(df[names[area]].to_numpy())
            elif scenario == "demo":
                df[names[:3]] += 2.0 * scale[:3]
            chunks.append(df)
            notes.append(note)
    about = (
        "scikit-learn's breast cancer data (bundled: 569 rows, 30 numeric features), its rows as "
        "examples/scenario.py sends them (drawn with replacement, jittered by 0.05 of each feature's standard "
        f"deviation); the reference is 20 jittered copies of every row in random order ({len(reference):,} rows: "
        f"{len(reference) // CHUNK} chunks and a partial one of {len(reference) % CHUNK}). Weighting malignant rows "
        "up moves the inputs along the data's main direction (the first principal component is largely "
        "malignant against benign); shuffling mean area breaks its tie to radius and perimeter."
    )
    features = dict.fromkeys(names, "numeric")
    return Case("breast", "Breast cancer (scikit-learn), 30 features", about, features, reference, chunks, notes)


def mixed() -> Case:
    gen = Gaussian(np.random.default_rng(SEED + 2))
    rng = gen.rng

    def frame(z: np.ndarray, scenario: str = "same") -> pd.DataFrame:
        df = gen.frame(z)
        n = len(df)
        # cat_a follows f2 (4 categories), cat_b follows f0 (3 categories), both with noise
        cat_a = np.array(["a", "b", "c", "d"], dtype=object)[
            np.digitize(z[:, 2] + 0.5 * rng.standard_normal(n), [-0.8, 0.0, 0.9])
        ]
        cat_b = np.array(["x", "y", "z"], dtype=object)[
            np.digitize(z[:, 0] + 0.7 * rng.standard_normal(n), [-0.3, 0.8])
        ]
        for col in ("f3", "f7"):
            df.loc[rng.random(n) < 0.05, col] = np.nan
        cat_a[rng.random(n) < (0.30 if scenario == "cat_missing" else 0.02)] = np.nan
        if scenario == "cat_shuffle":
            cat_a = rng.permutation(cat_a)
        elif scenario == "unseen":
            cat_b[rng.random(n) < 0.10] = "w"
        # the categorical features between numeric ones: NannyML takes them in this order, mlmon numeric first
        df.insert(4, "cat_a", cat_a)
        df.insert(8, "cat_b", cat_b)
        return df

    reference = frame(gen.latent(20_000))
    plan = [
        ("same", "as the reference", 4),
        ("cat_shuffle", "cat_a shuffled between rows", 2),
        ("unseen", "10 % of cat_b unseen (w)", 2),
        ("cat_missing", "30 % of cat_a missing", 2),
        ("shift", "every numeric feature +0.3 sd", 2),
    ]
    chunks, notes = [], []
    for scenario, note, count in plan:
        for _ in range(count):
            chunks.append(frame(gen.latent(CHUNK, "shift" if scenario == "shift" else "same"), scenario))
            notes.append(note)
    about = (
        "The Gaussian features (another draw) with two categorical ones between them: cat_a (4 categories, "
        "following f2, 2 % missing) and cat_b (3 categories, following f0), and 5 % of f3 and f7 missing, in the "
        "reference too; 20,000 reference rows. NannyML takes the columns in this order, mlmon numeric features "
        "first: the error does not depend on the order. Missing values are imputed (the mean, the most frequent "
        "category), categories encoded as their share of the reference rows, an unseen one as 0. Encoded so, "
        "cat_a hardly moves with f2 (its shares do not follow f2's order of the categories: correlation "
        f"{_encoded_corr(reference, 'cat_a', 'f2'):.2f} in the reference), so the kept components hold no tie "
        "between them and shuffling cat_a goes unseen; cat_b's shares do follow f0 "
        f"({_encoded_corr(reference, 'cat_b', 'f0'):.2f})."
    )
    features = {c: ("categorical" if c.startswith("cat_") else "numeric") for c in reference.columns}
    return Case("mixed", "Numeric and categorical features, missing values", about, features, reference, chunks, notes)


def _encoded_corr(df: pd.DataFrame, categorical: str, numeric: str) -> float:
    """The correlation of a categorical feature, imputed and encoded as NannyML does (its categories' shares
    of the rows), with a numeric one (imputed with its mean)."""
    cat = df[categorical].fillna(df[categorical].mode()[0])
    num = df[numeric].fillna(df[numeric].mean())
    return float(np.corrcoef(cat.map(cat.value_counts(normalize=True)).to_numpy(float), num.to_numpy(float))[0, 1])


CASES = {"gaussian": gaussian, "breast": breast, "mixed": mixed}


# ---------------------------------------------------------------------------------------------------------
# NannyML


def run_nannyml(case: Case) -> Side:
    import nannyml

    calc = nannyml.DataReconstructionDriftCalculator(column_names=list(case.features), chunk_size=CHUNK)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calc.fit(case.reference)
        result = calc.calculate(pd.concat(case.chunks, ignore_index=True)).to_df()
    period = result[("chunk", "period")].to_numpy()
    starts = result[("chunk", "start_index")].to_numpy()
    ends = result[("chunk", "end_index")].to_numpy()
    rows = len(case.reference)
    want_ref = [(s, min(s + CHUNK, rows) - 1) for s in range(0, rows, CHUNK)]  # the last one partial, kept
    got_ref = list(zip(starts[period == "reference"].tolist(), ends[period == "reference"].tolist()))
    if got_ref != want_ref:
        raise SystemExit(f"{case.key}: NannyML's reference chunks are not the bench's: {got_ref}")
    ana = period == "analysis"
    want_ana = [(k * CHUNK, (k + 1) * CHUNK - 1) for k in range(len(case.chunks))]
    if list(zip(starts[ana].tolist(), ends[ana].tolist())) != want_ana:
        raise SystemExit(f"{case.key}: NannyML's analysis chunks are not the bench's")
    m = "reconstruction_error"
    lower = calc.lower_threshold_value
    return Side(
        [float(v) for v in result[(m, "value")][ana]],
        [bool(a) for a in result[(m, "alert")][ana]],
        None if lower is None else float(lower),
        float(calc.upper_threshold_value),
        int(calc._pca.n_components_),
    )


# ---------------------------------------------------------------------------------------------------------
# mlmon, through its HTTP API and /metrics


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def config_text(case: Case, chunk: int | None = CHUNK) -> str:
    """The exporter's config; ``chunk`` None: no ``drift.multivariate.chunk_size`` (a tenth of the reference)."""
    lines = [
        f'windows: ["{WINDOW}"]',
        "storage: {backend: memory}",  # nothing to keep: the run is one process from start to end
        "limits: {max_batch_size: 10000, max_body_bytes: 67108864}",
        "models:",
        "  - name: model",
        "    task: binary",
        "    classes: ['no', 'yes']",
        "    positive_class: 'yes'",
        "    features:",
    ]
    if chunk is not None:
        lines.insert(-1, f"    drift: {{multivariate: {{chunk_size: {chunk}}}}}")
    lines += [f"      - {{name: {n}, type: {t}}}" for n, t in case.features.items()]
    return "\n".join(lines) + "\n"


def _csv(df: pd.DataFrame) -> str:
    out = io.StringIO()  # a missing value is an empty field
    df.to_csv(out, index=False, quoting=csv.QUOTE_MINIMAL, float_format="%.17g")
    return out.getvalue()


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _predictions(case: Case, chunk: pd.DataFrame) -> list[dict]:
    rows = chunk[list(case.features)].to_dict(orient="records")
    return [
        {"model": "model", "prediction": "no", "features": {k: None if _missing(v) else v for k, v in row.items()}}
        for row in rows
    ]


def _scrape(client) -> list:
    response = client.get("/metrics")
    if response.status_code != 200:
        raise SystemExit(f"/metrics answered {response.status_code}")
    return [s for fam in text_string_to_metric_families(response.get_data(as_text=True)) for s in fam.samples]


def _values(samples: list, name: str, **labels) -> list:
    return [s for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def _value(samples: list, name: str, **labels) -> float | None:
    found = _values(samples, name, **labels)
    if len(found) > 1:
        raise SystemExit(f"{name}{labels} matches {len(found)} samples")
    return found[0].value if found else None


def _mlmon_app(case: Case, chunk: int | None = CHUNK):
    """An exporter with the case's reference; its clock; its test client."""
    clock = Clock(T0)
    app = create_app(parse_config(config_text(case, chunk)), clock=clock)
    client = app.test_client()
    answer = client.put(
        "/api/v1/models/model/reference", data=_csv(case.reference[list(case.features)]), content_type="text/csv"
    )
    if answer.status_code != 200:
        raise SystemExit(f"the reference was refused: {answer.get_json()}")
    return app, clock, client


def _bounds(samples: list) -> tuple[float | None, float | None]:
    return (
        _value(samples, "mlmon_multivariate_drift_threshold", model="model", bound="lower"),
        _value(samples, "mlmon_multivariate_drift_threshold", model="model", bound="upper"),
    )


def default_thresholds(case: Case) -> tuple[tuple, tuple]:
    """The thresholds without a chunk size on either side: NannyML's DefaultChunker (a tenth of the rows, the
    remainder a last chunk) and mlmon's default (a tenth of the reference); (lower, upper) of each."""
    import nannyml

    calc = nannyml.DataReconstructionDriftCalculator(column_names=list(case.features))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calc.fit(case.reference)
    lower = calc.lower_threshold_value
    nanny = (None if lower is None else float(lower), float(calc.upper_threshold_value))
    _, _, client = _mlmon_app(case, None)
    return nanny, _bounds(_scrape(client))


def run_mlmon(case: Case) -> tuple[Side, list[dict]]:
    """mlmon's side, and per chunk what the per-feature drift says (the largest PSI, its feature, whether
    it is over its threshold, and mlmon_drifted_features)."""
    app, clock, client = _mlmon_app(case)
    # The component count is not published: read from the profile the exporter built (for the docs only).
    components = int(app.extensions["mlmon"].models["model"].profile.reconstruction.components.shape[0])
    values, univariate, bounds = [], [], set()
    w = {"model": "model", "version": "default", "window": WINDOW}
    for k, chunk in enumerate(case.chunks):
        clock.now = T0 + k * GAP
        items = _predictions(case, chunk)
        for b in range(0, len(items), BATCH):
            r = client.post("/api/v1/predictions", json={"predictions": items[b : b + BATCH]})
            if r.status_code != 202:
                raise SystemExit(f"predictions refused: {r.get_json()}")
        samples = _scrape(client)
        rows = _value(samples, "mlmon_multivariate_drift_samples", **w)
        if rows != len(chunk):
            raise SystemExit(f"{case.key} chunk {k}: the window holds {rows} rows with an error, not {len(chunk)}")
        value = _value(samples, "mlmon_multivariate_drift", **w)
        values.append(float("nan") if value is None else value)
        bounds.add(_bounds(samples))
        psi = {s.labels["feature"]: s.value for s in _values(samples, "mlmon_feature_drift", method="psi", **w)}
        limit = {
            f: _value(samples, "mlmon_drift_threshold", model="model", feature=f, method="psi") for f in case.features
        }
        top = max(psi, key=psi.get)
        univariate.append(
            {
                "feature": top,
                "psi": psi[top],
                "over": psi[top] > limit[top],
                "drifted": _value(samples, "mlmon_drifted_features", **w),
                "features": len(psi),
            }
        )
    if len(bounds) != 1:
        raise SystemExit(f"{case.key}: the thresholds changed during the run: {bounds}")
    lower, upper = bounds.pop()
    alerts = [not (v <= upper and (lower is None or v >= lower)) for v in values]  # NaN: an alert
    return Side(values, alerts, lower, upper, components), univariate


# ---------------------------------------------------------------------------------------------------------
# Tables


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= TOLERANCE * abs(b)


def _abs(a: float | None, b: float | None) -> float:
    if a is None and b is None:
        return 0.0
    if a is None or b is None:
        return float("inf")
    return abs(a - b)


def _num(x: float | None, digits: int = 6) -> str:
    return "none" if x is None else f"{x:.{digits}f}"


def _diff(d: float) -> str:
    if not np.isfinite(d):
        return "**n/a**"
    return "0" if d == 0 else f"{d:.1e}"


def section(
    case: Case, nanny: Side, ours: Side, univariate: list[dict], defaults: tuple[tuple, tuple], seconds: float
) -> tuple[str, bool]:
    """The docs' part for one data set, and whether both sides agree within the tolerance."""
    head = (
        "| chunk | scenario | NannyML | mlmon | \\|diff\\| | NannyML alert | mlmon alert | max PSI (feature) "
        "| drifted features |"
    )
    lines = [head, "|---:|---|---:|---:|---:|:---:|:---:|---|---:|"]
    for k, note in enumerate(case.notes):
        u = univariate[k]
        psi = f"{u['psi']:.3f} ({u['feature']}){' **over**' if u['over'] else ''}"
        drifted = "–" if u["drifted"] is None else f"{u['drifted']:.0f} of {u['features']}"
        lines.append(
            f"| {k + 1} | {note} | {nanny.values[k]:.6f} | {ours.values[k]:.6f} "
            f"| {_diff(_abs(ours.values[k], nanny.values[k]))} | {'**alert**' if nanny.alerts[k] else '–'} "
            f"| {'**alert**' if ours.alerts[k] else '–'} | {psi} | {drifted} |"
        )
    worst_value = max(_abs(a, b) for a, b in zip(ours.values, nanny.values))
    worst_bound = max(_abs(ours.lower, nanny.lower), _abs(ours.upper, nanny.upper))
    flags = sum(a != b for a, b in zip(ours.alerts, nanny.alerts))
    agree = (
        all(_close(a, b) for a, b in zip(ours.values, nanny.values))
        and _close(ours.lower, nanny.lower)
        and _close(ours.upper, nanny.upper)
        and flags == 0
        and ours.components == nanny.components
        and all(_close(a, b) for a, b in zip(defaults[1], defaults[0]))
    )
    default_diff = max(_abs(a, b) for a, b in zip(defaults[1], defaults[0]))
    rows = len(case.reference)
    facts = (
        f"Reference: {rows:,} rows, {-(-rows // CHUNK)} chunks (the last of {rows - (rows - 1) // CHUNK * CHUNK:,} "
        f"rows); components kept: NannyML {nanny.components}, mlmon {ours.components}. Thresholds: NannyML "
        f"[{_num(nanny.lower)}, {_num(nanny.upper)}], mlmon [{_num(ours.lower)}, {_num(ours.upper)}]; without a chunk "
        f"size on either side (a tenth of the reference, {rows // 10:,} rows), NannyML [{_num(defaults[0][0])}, "
        f"{_num(defaults[0][1])}], mlmon [{_num(defaults[1][0])}, {_num(defaults[1][1])}] "
        f"(difference {_diff(default_diff)}). {seconds:.1f} s."
    )
    summary = (
        f"**Largest \\|mlmon − NannyML\\|: {_diff(worst_value)} of the values, {_diff(worst_bound)} of the "
        f"thresholds; alert flags that differ: {flags} of {len(case.chunks)}.** "
        + (
            f"Within {TOLERANCE:g} (relative) everywhere."
            if agree
            else f"**Not within {TOLERANCE:g} (relative) everywhere, or alerts differ.**"
        )
    )
    part = f"#### {case.title}\n\n{_wrap(case.about)}\n\n{_wrap(facts)}\n\n" + "\n".join(lines)
    return part + "\n\n" + _wrap(summary) + "\n", agree


def _wrap(text: str) -> str:
    """A paragraph wrapped as the docs are (110 columns)."""
    return textwrap.fill(text, width=110, break_long_words=False, break_on_hyphens=False)


def write_doc(body: str) -> None:
    fill_markers(DOC, BEGIN, END, body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-write", action="store_true", help="print the tables; leave docs/drift.md alone")
    parser.add_argument("--only", default="", help="run the data sets whose key (gaussian, breast, mixed) starts so")
    args = parser.parse_args()
    import nannyml
    import sklearn

    started = time.perf_counter()
    parts, verdicts = [], {}
    for key, make in CASES.items():
        if not key.startswith(args.only):
            continue
        t = time.perf_counter()
        case = make()
        nanny = run_nannyml(case)
        ours, univariate = run_mlmon(case)
        defaults = default_thresholds(case)
        part, agree = section(case, nanny, ours, univariate, defaults, time.perf_counter() - t)
        print(part, flush=True)
        parts.append(part)
        verdicts[key] = agree
    seconds = time.perf_counter() - started
    ok = all(verdicts.values())
    head = (
        f"Generated by `make bench-multivariate` (bench/bench_multivariate.py) on {datetime.date.today():%Y-%m-%d} "
        f"in {seconds:.0f} s, with mlmon {MLMON_VERSION}, NannyML {nannyml.__version__} and scikit-learn "
        f"{sklearn.__version__}. Chunks of {CHUNK:,} rows on both sides (NannyML's `chunk_size={CHUNK}`, mlmon's "
        f"`drift.multivariate.chunk_size: {CHUNK}`; both keep the reference's last, partial chunk); data sets: 10 "
        "correlated Gaussian features, scikit-learn's breast cancer data, and numeric with categorical features "
        "and missing values. Compared: each analysis chunk's mean reconstruction error (NannyML's `value`, "
        "mlmon's `mlmon_multivariate_drift` with the chunk alone in its 1 h window), the thresholds (NannyML's, "
        "`mlmon_multivariate_drift_threshold`) and the alerts (NannyML's `alert`; mlmon: the value outside "
        '[lower, upper]); beside them, the largest `mlmon_feature_drift{method="psi"}` of the chunk\'s features '
        "(**over**: above its threshold) and `mlmon_drifted_features`, what the per-feature methods see. "
        + (
            f"Every value and threshold agrees within {TOLERANCE:g} (relative) and every alert flag is the same."
            if ok
            else "**They do not agree everywhere (see below).**"
        )
    )
    body = _wrap(head) + "\n\n" + "\n".join(parts)
    print(head)
    if not args.no_write and not args.only:
        write_doc(body)
        print(f"wrote {os.path.relpath(DOC, ROOT)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
