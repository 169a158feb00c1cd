"""Estimated quality beside NannyML's CBPE, chunk by chunk, with the realized quality (`make bench-estimate`).

Both estimators see the same reference (the model's scores, its predictions and the true labels) and the same
analysis rows, cut into chunks of 5,000 rows; neither sees the analysis labels, which give the realized
figures (scikit-learn's ``accuracy_score``, ``precision_score``, ``recall_score``, ``f1_score`` and
``roc_auc_score``, for the positive class of a binary model, macro-averaged over the classes of a multiclass one).

- NannyML (bench-only dependency, ``.venv-bench``): ``CBPE(chunk_size=5000)``, fitted on the reference and run
  on the analysis rows; its chunk ``k`` is rows ``5000 k`` to ``5000 (k + 1) - 1``, which is checked.
- mlmon: the exporter's WSGI app (``create_app``) on a config with one window of 1 h, driven through its HTTP API
  with Flask's test client: the reference goes in as CSV (``PUT /api/v1/models/<model>/reference``), the chunks as
  prediction batches (``POST /api/v1/predictions``, 1,000 a request, without labels), and the figures are read
  from the ``/metrics`` exposition: ``mlmon_estimated_accuracy``, ``mlmon_estimated_precision``, ``_recall``,
  ``_f1`` (``class`` the positive class; for a multiclass model their mean over the classes, as NannyML's macro
  average) and ``mlmon_estimated_roc_auc``. One exporter serves every chunk of a data set: chunk ``k`` is sent at
  ``T0 + 2 k`` hours of an injected clock and scraped then, so the 1 h window holds that chunk alone (checked
  with ``mlmon_estimated_samples``). That is the exporter's real streaming path, windows rolling over as in
  production, with a single calibration for the whole run, as NannyML fits one; a fresh exporter per chunk
  would refit the same calibration ten times and prove less.

The data sets:

- NannyML's synthetic binary classification data (``nannyml.load_synthetic_binary_classification_dataset``,
  shipped inside the package; work from home or not): 50,000 reference rows, 50,000 analysis rows in time order
  (its second half drawn from a shifted population), 10 chunks.
- scikit-learn's breast cancer data (bundled), the positive class ``malignant``: a logistic regression on the ten
  "mean" features, trained on 40 % of the rows; 30 % (scores and labels) are the reference and the other 30 %
  the pool the analysis chunks are drawn from, with replacement, 5,000 rows each. Chunk ``k`` draws a row with a
  weight ``exp(-lambda_k * margin)``, ``margin`` the model's absolute log-odds, ``lambda_k`` rising from 0: the
  inputs move towards the model's decision boundary, where it is less sure, while each drawn row keeps its
  true label, so the relation between inputs and outcome is unchanged (a covariate shift) and the realized
  accuracy falls chunk by chunk.
- scikit-learn's digits (bundled, 10 classes), the same way (logistic regression on the 64 pixels; the margin
  is the log-ratio of the two highest probabilities): the multiclass case, each class's scores calibrated one
  against the rest and renormalised by both. mlmon publishes no estimated AUC for multiclass models, so that
  table has none.

Run: ``python bench/bench_estimate.py`` (prints the tables and writes them into docs/estimation.md between the
``bench-estimate`` markers); ``--no-write`` only prints; ``--only breast`` runs the data sets whose key starts so.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import sys
import textwrap
import time
import warnings
from dataclasses import dataclass, field
from unittest import mock

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

CHUNK = 5000
CHUNKS = 10  # of the scikit-learn data sets (NannyML's has 50,000 analysis rows: 10 chunks too)
TOLERANCE = 0.01
WINDOW = "1h"
GAP = 2 * 3600.0  # seconds between two chunks' sending times: more than the window, so it holds one chunk
T0 = 1_800_000_000.0
BATCH = 1000  # predictions per request
SPLIT_SEED = 0
SAMPLE_SEED = 1
MAX_SHIFT = {"breast": 0.5, "digits": 0.5}  # lambda of the last chunk (see the module docstring)
BINARY_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")
MULTICLASS_METRICS = ("accuracy", "precision", "recall", "f1")
TITLES = {"accuracy": "accuracy", "precision": "precision", "recall": "recall", "f1": "F1", "roc_auc": "ROC AUC"}
DOC = os.path.join(ROOT, "docs", "estimation.md")
BEGIN, END = "<!-- bench-estimate:start -->", "<!-- bench-estimate:end -->"
SECTION_INTRO = (
    "The estimate is checked against NannyML's CBPE on the same data: the same reference rows and the same "
    "analysis rows for both, cut into chunks of 5,000 rows, mlmon's figures read from its `/metrics` after "
    "each chunk has gone through its API alone in the window, NannyML's from its results, and the realized "
    "quality from the labels that neither was given. Each cell reads realized / NannyML / mlmon."
)
SHORT = {"nannyml": "NannyML's synthetic binary data", "breast": "breast cancer", "digits": "digits (multiclass)"}


@dataclass
class Case:
    """One data set: the model's config, the reference and the analysis chunks, in mlmon's column names
    (features, ``prediction``, ``label``, ``score`` or ``scores.<class>``); ``label`` of the chunks is the truth,
    sent to neither estimator."""

    key: str
    title: str
    about: str  # a paragraph for the docs
    classes: list[str]
    positive: str | None  # binary: the positive class; multiclass: None
    features: dict[str, str]  # name -> numeric | categorical
    reference: pd.DataFrame
    chunks: list[pd.DataFrame]
    notes: list[str]  # per chunk: what it is
    note_title: str = "rows"
    calibration: dict = field(default_factory=dict)  # filled in by the runs

    @property
    def binary(self) -> bool:
        return self.positive is not None

    @property
    def score_columns(self) -> list[str]:
        return ["score"] if self.binary else [f"scores.{c}" for c in self.classes]

    @property
    def metrics(self) -> tuple[str, ...]:
        return BINARY_METRICS if self.binary else MULTICLASS_METRICS


# ---------------------------------------------------------------------------------------------------------
# Data sets


def nannyml_synthetic() -> Case:
    import nannyml

    reference, analysis, targets = nannyml.load_synthetic_binary_classification_dataset()
    analysis = analysis.merge(targets, on="id", how="left", validate="one_to_one")
    features = {
        "distance_from_office": "numeric",
        "salary_range": "categorical",
        "gas_price_per_litre": "numeric",
        "public_transportation_cost": "numeric",
        "wfh_prev_workday": "categorical",
        "workday": "categorical",
        "tenure": "numeric",
    }
    classes = ["office", "home"]  # work_home_actual 0 and 1

    def frame(df: pd.DataFrame) -> pd.DataFrame:
        out = df[list(features)].copy()
        out["wfh_prev_workday"] = out["wfh_prev_workday"].astype(str)
        out["prediction"] = np.array(classes)[df["y_pred"].to_numpy()]
        out["label"] = np.array(classes)[df["work_home_actual"].to_numpy()]
        out["score"] = df["y_pred_proba"].to_numpy(dtype=np.float64)
        return out

    ref, ana = frame(reference), frame(analysis)
    if len(ana) != CHUNKS * CHUNK:
        raise SystemExit(f"NannyML's analysis set has {len(ana)} rows, not {CHUNKS * CHUNK}")
    stamps = pd.to_datetime(analysis["timestamp"])
    chunks, notes = [], []
    for k in range(CHUNKS):
        rows = slice(k * CHUNK, (k + 1) * CHUNK)
        chunks.append(ana.iloc[rows].reset_index(drop=True))
        notes.append(f"{stamps.iloc[rows].min():%Y-%m-%d} to {stamps.iloc[rows].max():%Y-%m-%d}")
    about = (
        "NannyML's synthetic binary classification data, shipped in the `nannyml` package (a model predicting "
        "whether an employee works from home the next day; scores given to two decimals): its 50,000 reference "
        "rows, and its 50,000 analysis rows in time order, 10 chunks of 5,000 (the second half comes from a "
        "shifted population)."
    )
    return Case(
        "nannyml", "NannyML's synthetic binary data", about, classes, "home", features, ref, chunks, notes, "period"
    )


def _split(x: np.ndarray, y: np.ndarray):
    """Train 40 %, reference 30 %, analysis pool 30 %, stratified."""
    from sklearn.model_selection import train_test_split

    x_train, x_rest, y_train, y_rest = train_test_split(x, y, train_size=0.4, stratify=y, random_state=SPLIT_SEED)
    x_ref, x_pool, y_ref, y_pool = train_test_split(
        x_rest, y_rest, train_size=0.5, stratify=y_rest, random_state=SPLIT_SEED
    )
    return x_train, y_train, x_ref, y_ref, x_pool, y_pool


def _margin(proba: np.ndarray) -> np.ndarray:
    """How sure the model is of each row: the log-ratio of its two highest probabilities (binary: |log-odds|)."""
    top = np.sort(np.clip(proba, 1e-12, 1.0), axis=1)[:, -2:]
    return np.log(top[:, 1]) - np.log(top[:, 0])


def _shifted_chunks(pool: pd.DataFrame, margin: np.ndarray, max_shift: float) -> tuple[list, list]:
    """CHUNKS resamples of the pool with replacement, chunk k weighting a row by exp(-lambda_k * margin)."""
    rng = np.random.default_rng(SAMPLE_SEED)
    chunks, notes = [], []
    for k in range(CHUNKS):
        shift = max_shift * k / (CHUNKS - 1)
        weight = np.exp(-shift * (margin - margin.min()))
        weight /= weight.sum()
        rows = rng.choice(len(pool), size=CHUNK, replace=True, p=weight)
        chunks.append(pool.iloc[rows].reset_index(drop=True))
        notes.append(f"{shift:.2f} ({1.0 / float(np.sum(weight**2)):.0f})")  # Kish's effective sample size
    return chunks, notes


def _sklearn_case(key: str, loader, feature_names: list[str], columns, classes: list[str], positive, about, title):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = loader()
    x = data.data[:, columns]
    y = data.target if positive is None else (data.target == 0).astype(np.int64)  # breast cancer: 0 = malignant
    x_train, y_train, x_ref, y_ref, x_pool, y_pool = _split(x, y)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x_train, y_train)

    def frame(xs: np.ndarray, ys: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
        proba = model.predict_proba(xs)
        out = pd.DataFrame(xs, columns=feature_names)
        out["prediction"] = np.array(classes)[proba.argmax(axis=1)]
        out["label"] = np.array(classes)[ys]
        if positive is not None:
            out["score"] = proba[:, 1]
        else:
            for j, c in enumerate(classes):
                out[f"scores.{c}"] = proba[:, j]
        return out, proba

    ref, _ = frame(x_ref, y_ref)
    pool, pool_proba = frame(x_pool, y_pool)
    chunks, notes = _shifted_chunks(pool, _margin(pool_proba), MAX_SHIFT[key])
    features = dict.fromkeys(feature_names, "numeric")
    about = about.format(train=len(x_train), ref=len(ref), pool=len(pool))
    return Case(key, title, about, classes, positive, features, ref, chunks, notes, "λ (effective rows)")


def breast_cancer() -> Case:
    from sklearn.datasets import load_breast_cancer

    names = [n.replace(" ", "_") for n in load_breast_cancer().feature_names[:10]]
    about = (
        "scikit-learn's breast cancer data (bundled), positive class `malignant`: a logistic regression on the "
        'ten "mean" features trained on {train} rows; {ref} other rows with their scores and labels are the '
        "reference, and the analysis chunks (5,000 rows each) are drawn with replacement from the remaining {pool} "
        "with weights exp(−λ · margin), the margin being the model's absolute log-odds: as λ rises the inputs "
        "move towards the decision boundary, each row keeping its true label (a covariate shift, the relation "
        "between inputs and outcome unchanged), and the realized accuracy falls. The effective rows (Kish's "
        "effective sample size of the weights) say how many distinct pool rows a chunk is worth: its realized "
        "figures are those of so few rows, repeated, and the reference is as small, so the estimates and the "
        "realized figures can be far apart here; the comparison of the two estimators, which read the same scores, "
        "is not affected."
    )
    return _sklearn_case(
        "breast",
        load_breast_cancer,
        names,
        slice(0, 10),
        ["benign", "malignant"],
        "malignant",
        about,
        "Breast cancer (scikit-learn), binary, with a covariate shift",
    )


def digits() -> Case:
    from sklearn.datasets import load_digits

    names = [f"pixel_{i}" for i in range(64)]
    about = (
        "scikit-learn's digits (bundled, 10 classes), the multiclass case: a logistic regression on the 64 pixels "
        "trained on {train} rows, {ref} rows as the reference, and chunks of 5,000 drawn from the remaining {pool} "
        "as above, the margin being the log-ratio of the two highest probabilities. Both tools calibrate each "
        "class's score one against the rest and renormalise; precision, recall and F1 are the means over the "
        "classes (mlmon's per-class gauges averaged here). mlmon has no estimated AUC for multiclass models."
    )
    return _sklearn_case(
        "digits",
        load_digits,
        names,
        slice(0, 64),
        [str(d) for d in range(10)],
        None,
        about,
        "Digits (scikit-learn), multiclass, with a covariate shift",
    )


CASES = {"nannyml": nannyml_synthetic, "breast": breast_cancer, "digits": digits}


# ---------------------------------------------------------------------------------------------------------
# Realized quality, from the labels


def realized(case: Case, chunk: pd.DataFrame) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    y, pred = chunk["label"].to_numpy(), chunk["prediction"].to_numpy()
    out = {"accuracy": accuracy_score(y, pred)}
    if case.binary:
        kw = {"pos_label": case.positive, "zero_division": 0}
        out["roc_auc"] = roc_auc_score(y == case.positive, chunk["score"].to_numpy())
    else:
        kw = {"average": "macro", "labels": case.classes, "zero_division": 0}
    out["precision"] = precision_score(y, pred, **kw)
    out["recall"] = recall_score(y, pred, **kw)
    out["f1"] = f1_score(y, pred, **kw)
    return {k: float(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------------
# NannyML


def run_nannyml(case: Case, calibrate: bool | None = None) -> tuple[list[dict[str, float]], list[bool]]:
    """NannyML's estimates per chunk, and whether it calibrated each score column. ``calibrate`` True or False
    overrides its decision to calibrate (for every column), to see what the estimates are with mlmon's."""
    import nannyml
    from nannyml.calibration import NoopCalibrator
    from nannyml.performance_estimation.confidence_based import cbpe

    ref, ana = case.reference, pd.concat(case.chunks, ignore_index=True)
    if case.binary:

        def frame(df: pd.DataFrame) -> pd.DataFrame:
            return pd.DataFrame(
                {
                    "y_pred_proba": df["score"].to_numpy(),
                    "y_pred": (df["prediction"] == case.positive).astype(np.int64).to_numpy(),
                    "y_true": (df["label"] == case.positive).astype(np.int64).to_numpy(),
                }
            )

        proba: str | dict = "y_pred_proba"
        problem = "classification_binary"
    else:

        def frame(df: pd.DataFrame) -> pd.DataFrame:
            out = pd.DataFrame({f"proba_{c}": df[f"scores.{c}"].to_numpy() for c in case.classes})
            out["y_pred"], out["y_true"] = df["prediction"].to_numpy(), df["label"].to_numpy()
            return out

        proba = {c: f"proba_{c}" for c in case.classes}
        problem = "classification_multiclass"
    estimator = nannyml.CBPE(
        y_pred_proba=proba,
        y_pred="y_pred",
        y_true="y_true",
        problem_type=problem,
        metrics=list(case.metrics),
        chunk_size=CHUNK,
    )
    analysis = frame(ana).drop(columns="y_true")  # the estimate never sees the analysis labels
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        warnings.simplefilter("ignore")
        if calibrate is not None:
            stack.enter_context(mock.patch.object(cbpe, "needs_calibration", lambda *a, **k: calibrate))
        estimator.fit(frame(ref))
        result = estimator.estimate(analysis).filter(period="analysis").to_df()
    if case.binary:
        decisions = [bool(estimator.needs_calibration)]
    else:  # one calibrator per class: a NoopCalibrator where NannyML found calibration unhelpful
        decisions = [not isinstance(estimator._calibrators[c], NoopCalibrator) for c in case.classes]
    starts = result[("chunk", "start_index")].tolist()
    ends = result[("chunk", "end_index")].tolist()
    if starts != [k * CHUNK for k in range(CHUNKS)] or ends != [(k + 1) * CHUNK - 1 for k in range(CHUNKS)]:
        raise SystemExit(f"NannyML's chunks are not the bench's: {list(zip(starts, ends))}")
    return [{m: float(result[(m, "value")].iloc[k]) for m in case.metrics} for k in range(CHUNKS)], decisions


# ---------------------------------------------------------------------------------------------------------
# mlmon, through its HTTP API and /metrics


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def config_text(case: Case) -> str:
    lines = [
        f'windows: ["{WINDOW}"]',
        "storage: {backend: memory}",  # nothing to keep: the run is one process from start to end
        "limits: {max_batch_size: 10000, max_body_bytes: 67108864}",
        "models:",
        "  - name: model",
        f"    task: {'binary' if case.binary else 'multiclass'}",
        f"    classes: [{', '.join(repr(c) for c in case.classes)}]",
    ]
    if case.binary:
        lines.append(f"    positive_class: {case.positive!r}")
    lines.append("    features:")
    lines += [f"      - {{name: {n}, type: {t}}}" for n, t in case.features.items()]
    return "\n".join(lines) + "\n"


def _csv(df: pd.DataFrame) -> str:
    out = io.StringIO()
    df.to_csv(out, index=False, quoting=csv.QUOTE_MINIMAL, float_format="%.17g")
    return out.getvalue()


def _predictions(case: Case, chunk: pd.DataFrame) -> list[dict]:
    features = chunk[list(case.features)].to_dict(orient="records")
    predicted = chunk["prediction"].tolist()
    if case.binary:
        scores = [{"score": s} for s in chunk["score"].tolist()]
    else:
        table = chunk[case.score_columns].to_numpy()
        scores = [{"scores": dict(zip(case.classes, row))} for row in table.tolist()]
    return [{"model": "model", "prediction": p, "features": f, **s} for p, f, s in zip(predicted, features, scores)]


def _scrape(client) -> list:
    response = client.get("/metrics")
    if response.status_code != 200:
        raise SystemExit(f"/metrics answered {response.status_code}")
    return [s for fam in text_string_to_metric_families(response.get_data(as_text=True)) for s in fam.samples]


def _value(samples: list, name: str, **labels) -> float | None:
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    if len(found) > 1:
        raise SystemExit(f"{name}{labels} matches {len(found)} samples")
    return found[0] if found else None


def run_mlmon(case: Case) -> list[dict[str, float]]:
    clock = Clock(T0)
    app = create_app(parse_config(config_text(case)), clock=clock)
    client = app.test_client()
    columns = [*case.features, "prediction", "label", *case.score_columns]
    answer = client.put("/api/v1/models/model/reference", data=_csv(case.reference[columns]), content_type="text/csv")
    if answer.status_code != 200:
        raise SystemExit(f"the reference was refused: {answer.get_json()}")
    cal = answer.get_json()["calibration"]
    case.calibration["mlmon"] = cal["method"]
    case.calibration["mlmon_ece"] = (cal["ece_raw"], cal["ece_calibrated"])
    out = []
    for k, chunk in enumerate(case.chunks):
        clock.now = T0 + k * GAP
        items = _predictions(case, chunk)
        for b in range(0, len(items), BATCH):
            r = client.post("/api/v1/predictions", json={"predictions": items[b : b + BATCH]})
            if r.status_code != 202:
                raise SystemExit(f"predictions refused: {r.get_json()}")
        samples = _scrape(client)
        w = {"model": "model", "version": "default", "window": WINDOW}
        scored = _value(samples, "mlmon_estimated_samples", kind="scored", **w)
        if scored != CHUNK:
            raise SystemExit(f"chunk {k}: the window holds {scored} scored predictions, not {CHUNK}")
        figures = {"accuracy": _value(samples, "mlmon_estimated_accuracy", **w)}
        for name in ("precision", "recall", "f1"):
            if case.binary:
                figures[name] = _value(samples, f"mlmon_estimated_{name}", **w, **{"class": case.positive})
            else:  # the macro average, as NannyML's; a class without a figure counts as 0, as there
                per_class = [_value(samples, f"mlmon_estimated_{name}", **w, **{"class": c}) for c in case.classes]
                figures[name] = float(np.mean([v or 0.0 for v in per_class]))
        if case.binary:
            figures["roc_auc"] = _value(samples, "mlmon_estimated_roc_auc", **w)
        out.append({m: float("nan") if v is None else float(v) for m, v in figures.items()})
    return out


# ---------------------------------------------------------------------------------------------------------
# Tables


def table(case: Case, real: list, nanny: list, ours: list) -> tuple[str, dict[str, float]]:
    worst = _worst(case, ours, nanny)
    head = f"| chunk | {case.note_title} | " + " | ".join(TITLES[m] for m in case.metrics) + " |"
    lines = [head, "|" + "---|" * (2 + len(case.metrics))]
    for k in range(CHUNKS):
        cells = [f"{real[k][m]:.4f} / {nanny[k][m]:.4f} / {ours[k][m]:.4f}" for m in case.metrics]
        lines.append(f"| {k + 1} | {case.notes[k]} | " + " | ".join(cells) + " |")
    lines.append("| **largest \\|mlmon − NannyML\\|** | | " + " | ".join(_diff(worst[m]) for m in case.metrics) + " |")
    return "\n".join(lines), worst


def _wrap(text: str) -> str:
    """A paragraph wrapped as the docs are (110 columns)."""
    return textwrap.fill(text, width=110, break_long_words=False, break_on_hyphens=False)


def _worst(case: Case, a: list, b: list) -> dict[str, float]:
    return {m: max(abs(x[m] - y[m]) for x, y in zip(a, b)) for m in case.metrics}


def _diff(d: float) -> str:
    if not np.isfinite(d):
        return "n/a"
    return f"**{d:.4f}**" if d > TOLERANCE else (f"{d:.1e}" if d >= 1e-12 else "< 1e-12")


def _mean_error(case: Case, estimates: list, real: list) -> float:
    return float(np.mean([abs(e[m] - r[m]) for e, r in zip(estimates, real) for m in case.metrics]))


def _decisions_text(case: Case, decisions: list[bool]) -> str:
    if case.binary:
        return "isotonic" if decisions[0] else "none (raw scores)"
    kept = [c for c, d in zip(case.classes, decisions) if d]
    return f"isotonic for {len(kept)} of the {len(case.classes)} classes ({', '.join(kept) or 'none'})"


def _easy_classes(case: Case, decisions: list[bool]) -> list[str]:
    """The classes NannyML left uncalibrated whose one-vs-rest ROC AUC on the reference is over 0.999."""
    from sklearn.metrics import roc_auc_score

    y = case.reference["label"].to_numpy()
    return [
        c
        for c, d in zip(case.classes, decisions)
        if not d and roc_auc_score(y == c, case.reference[f"scores.{c}"].to_numpy()) > 0.999
    ]


def section(case: Case, real: list, nanny: list, ours: list, decisions: list[bool], seconds: float) -> tuple:
    """The docs' part for one data set, and whether every estimate is within the tolerance of NannyML's."""
    text, worst = table(case, real, nanny, ours)
    ece_raw, ece_cal = case.calibration["mlmon_ece"]
    method = case.calibration["mlmon"]
    within = all(v <= TOLERANCE for v in worst.values())
    largest = max(worst, key=worst.get)
    if within:
        verdict = (
            f"**Within {TOLERANCE} of NannyML on every chunk and metric** (largest difference {worst[largest]:.1e}, "
            f"{TITLES[largest]})."
        )
    else:
        verdict = (
            f"**Not within {TOLERANCE} of NannyML everywhere**: "
            + ", ".join(f"{TITLES[m]} by up to {v:.4f}" for m, v in worst.items() if v > TOLERANCE)
            + "."
        )
    notes = []
    same = all(d == (method == "isotonic") for d in decisions)
    if not same:
        # The two decide differently whether calibration helps: run NannyML again with mlmon's decision.
        forced, _ = run_nannyml(case, calibrate=method == "isotonic")
        again = _worst(case, ours, forced)
        mlmon_rule = (
            "mlmon decides once for all the score columns (their mean out-of-fold ECE)"
            if not case.binary
            else "mlmon decides on its 3-fold out-of-fold ECE"
        )
        easy = _easy_classes(case, decisions) if not case.binary else []
        nanny_rule = "NannyML decides per class, on its own cross-validated ECE" + (
            f", and leaves a class uncalibrated when its one-vs-rest ROC AUC on the reference is over 0.999 "
            f"({', '.join(easy)} here)"
            if easy
            else ""
        )
        notes.append(
            f"The difference is the decision to calibrate: {mlmon_rule}, {nanny_rule}. With NannyML's decision set "
            f"to mlmon's ({'calibrate every' if method == 'isotonic' else 'calibrate no'} score column), the "
            f"largest difference is {max(again.values()):.1e}."
        )
    if case.binary and worst["roc_auc"] > 1e-9:
        notes.append(
            "mlmon's ROC AUC comes from its score histogram, in which two scores of one bin count as a tie "
            "([metrics.md](metrics.md#roc-auc-and-its-error-bound)): that is its difference."
        )
    notes.append(
        f"Mean absolute error of the estimates against the realized figures: NannyML "
        f"{_mean_error(case, nanny, real):.4f}, mlmon {_mean_error(case, ours, real):.4f}."
    )
    calibration = (
        f"Calibration: mlmon `{method}` (out-of-fold ECE {ece_cal:.4f} against {ece_raw:.4f} raw), NannyML "
        f"{_decisions_text(case, decisions)}. {seconds:.0f} s."
    )
    part = (
        f"### {case.title}\n\n{_wrap(case.about)}\n\n{_wrap(calibration)}\n\n{text}\n\n"
        + _wrap(" ".join([verdict, *notes]))
        + "\n"
    )
    return part, within


def write_doc(body: str) -> None:
    with open(DOC) as fh:
        doc = fh.read()
    if BEGIN not in doc or END not in doc:
        anchor = "\n## Limits\n"
        if anchor not in doc:
            raise SystemExit(f"{DOC} has neither the {BEGIN} markers nor a '## Limits' section to put them before")
        section = f"## Side by side with NannyML\n\n{_wrap(SECTION_INTRO)}\n\n{BEGIN}\n{END}\n"
        with open(DOC, "w") as fh:
            fh.write(doc.replace(anchor, f"\n{section}{anchor}", 1))
    fill_markers(DOC, BEGIN, END, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-write", action="store_true", help="print the tables; leave docs/estimation.md alone")
    parser.add_argument("--only", default="", help="run the data sets whose key (nannyml, breast, digits) starts so")
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
        real = [realized(case, c) for c in case.chunks]
        nanny, decisions = run_nannyml(case)
        ours = run_mlmon(case)
        part, within = section(case, real, nanny, ours, decisions, time.perf_counter() - t)
        print(part, flush=True)
        parts.append(part)
        verdicts[key] = within
    seconds = time.perf_counter() - started
    head = (
        f"Generated by `make bench-estimate` (bench/bench_estimate.py; {seconds:.0f} s on this machine) with "
        f"mlmon {MLMON_VERSION}, NannyML {nannyml.__version__} and scikit-learn {sklearn.__version__}. Chunks of "
        f"{CHUNK:,} rows; mlmon's window holds one chunk at a time. "
        + (
            f"Every estimate is within {TOLERANCE} of NannyML's."
            if all(verdicts.values())
            else f"Within {TOLERANCE} of NannyML's on every chunk and metric: "
            + (", ".join(SHORT[k] for k, ok in verdicts.items() if ok) or "none")
            + "; not: "
            + ", ".join(SHORT[k] for k, ok in verdicts.items() if not ok)
            + " (see why below)."
        )
    )
    body = _wrap(head) + "\n\n" + "\n".join(parts)
    print(head)
    if not args.no_write and not args.only:
        write_doc(body)
        print(f"wrote {os.path.relpath(DOC, ROOT)}")


if __name__ == "__main__":
    main()
