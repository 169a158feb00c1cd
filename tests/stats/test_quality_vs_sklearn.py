"""Every published quality figure equals scikit-learn's on the same labelled window.

Real models on scikit-learn's bundled data sets; predictions and labels go through the HTTP API in every
order a model server produces (label with the prediction, label before it, label hours after it), and
the scrape is compared with scikit-learn. Tolerances: counts and ratios of counts exact (1e-12, float
rounding only); log loss, Brier and ECE 1e-9 (sums of floats); AUC within the binning bound of
docs/metrics.md, computed here from the raw scores.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from exporter.stats import quality
from exporter.stats.quality import SCORE_EDGES
from tests.conftest import make_app, scrape

EXACT = 1e-12
FLOAT_SUMS = 1e-9

CONFIG = """
windows: ["5m", "1h"]
models:
  - name: cancer
    task: binary
    classes: [malignant, benign]
    positive_class: malignant
  - name: digits
    task: multiclass
    classes: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
  - name: diabetes
    task: regression
"""


def _auc_bound(scores: np.ndarray, positive: np.ndarray) -> float:
    """0.5 * sum_b pos_b * neg_b / (P * N) over the exporter's score bins, from the raw scores."""
    bins = np.searchsorted(SCORE_EDGES, scores, side="right")
    pos = np.bincount(bins[positive], minlength=len(SCORE_EDGES) + 1).astype(float)
    neg = np.bincount(bins[~positive], minlength=len(SCORE_EDGES) + 1).astype(float)
    return 0.5 * float(pos @ neg) / (pos.sum() * neg.sum())


def _ece(y: np.ndarray, proba: np.ndarray) -> float:
    """Top-label ECE over ten equal-width bins, straight from the definition."""
    conf, top = proba.max(axis=1), proba.argmax(axis=1)
    total = 0.0
    for lo in np.arange(10) / 10:
        inside = (conf >= lo) & (conf < lo + 0.1) if lo < 0.9 else (conf >= lo)
        if inside.any():
            total += inside.sum() / len(y) * abs((top[inside] == y[inside]).mean() - conf[inside].mean())
    return total


def _send(client, model: str, y_pred, y_true, scores, *, order_seed: int = 0, version: str = "v1"):
    """Send predictions and labels: 10% labelled inline, 20% labels first, the rest labels after."""
    rng = np.random.default_rng(order_seed)
    n = len(y_true)
    kind = rng.choice(3, size=n, p=[0.1, 0.2, 0.7])
    early = [{"model": model, "id": f"{model}-{i}", "label": y_true[i]} for i in range(n) if kind[i] == 1]
    if early:
        assert client.post("/api/v1/labels", json={"labels": early}).status_code == 202
    preds = []
    for i in range(n):
        item = {"model": model, "version": version, "id": f"{model}-{i}", "prediction": y_pred[i]}
        if scores is not None:
            item.update(scores[i])
        if kind[i] == 0:
            item["label"] = y_true[i]
        preds.append(item)
    r = client.post("/api/v1/predictions", json={"predictions": preds})
    assert r.status_code == 202, r.get_json()
    assert r.get_json() == {"accepted": n, "duplicates": 0}
    late = [{"model": model, "id": f"{model}-{i}", "label": y_true[i]} for i in range(n) if kind[i] == 2]
    assert client.post("/api/v1/labels", json={"labels": late}).status_code == 202


@pytest.fixture(scope="module")
def binary_data():
    X, y = load_breast_cancer(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.5, random_state=0)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=1000)).fit(Xtr, ytr)
    names = np.array(["malignant", "benign"])  # the data set's class 0 is malignant
    return names[yte], names[model.predict(Xte)], model.predict_proba(Xte)[:, 0]  # P(malignant)


def test_binary_metrics_equal_sklearn(binary_data):
    y_true, y_pred, p_malignant = binary_data
    app, clock = make_app(CONFIG)
    client = app.test_client()
    _send(client, "cancer", y_pred.tolist(), y_true.tolist(), [{"score": float(p)} for p in p_malignant])
    clock.advance(90)
    m = scrape(client)
    w = {"model": "cancer", "version": "v1", "window": "5m"}
    labels = ["malignant", "benign"]
    positive = y_true == "malignant"

    assert m.get("mlmon_window_samples", kind="labeled", **w) == len(y_true)
    assert m.get("mlmon_accuracy", **w) == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=EXACT)
    assert m.get("mlmon_balanced_accuracy", **w) == pytest.approx(
        skm.balanced_accuracy_score(y_true, y_pred), abs=EXACT
    )
    for name, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
        expected = fn(y_true, y_pred, labels=labels, average=None, zero_division=np.nan)
        for cls, value in zip(labels, expected):
            assert m.get(f"mlmon_{name}", **w, **{"class": cls}) == pytest.approx(value, abs=EXACT), (name, cls)
    cm = skm.confusion_matrix(y_true, y_pred, labels=labels)
    for a, actual in enumerate(labels):
        for p, pred in enumerate(labels):
            assert m.get("mlmon_confusion_matrix", actual=actual, predicted=pred, **w) == cm[a, p]
            assert (
                m.get("mlmon_outcomes_total", model="cancer", version="v1", actual=actual, predicted=pred) == cm[a, p]
            )

    proba = np.column_stack([p_malignant, 1 - p_malignant])  # columns in class order: malignant, benign
    assert m.get("mlmon_log_loss", **w) == pytest.approx(skm.log_loss(positive, p_malignant), abs=FLOAT_SUMS)
    assert m.get("mlmon_brier_score", **w) == pytest.approx(skm.brier_score_loss(positive, p_malignant), abs=FLOAT_SUMS)
    y_index = np.where(positive, 0, 1)
    assert m.get("mlmon_expected_calibration_error", **w) == pytest.approx(_ece(y_index, proba), abs=FLOAT_SUMS)

    exact_auc = skm.roc_auc_score(positive, p_malignant)
    bound = _auc_bound(p_malignant, positive)
    assert bound < 0.01, "the bound must be tight enough to mean something"
    assert abs(m.get("mlmon_roc_auc", **w) - exact_auc) <= bound + EXACT


def test_multiclass_metrics_equal_sklearn():
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.4, random_state=1)
    model = GaussianNB(var_smoothing=0.1).fit(Xtr, ytr)
    y_pred, proba = model.predict(Xte), model.predict_proba(Xte)
    classes = [str(c) for c in range(10)]
    app, clock = make_app(CONFIG)
    client = app.test_client()
    scores = [{"scores": {c: float(p) for c, p in zip(classes, row)}} for row in proba]
    _send(client, "digits", [int(c) for c in y_pred], [str(c) for c in yte], scores, order_seed=1)
    m = scrape(client)
    w = {"model": "digits", "version": "v1", "window": "1h"}

    assert m.get("mlmon_accuracy", **w) == pytest.approx(skm.accuracy_score(yte, y_pred), abs=EXACT)
    assert m.get("mlmon_balanced_accuracy", **w) == pytest.approx(skm.balanced_accuracy_score(yte, y_pred), abs=EXACT)
    for name, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
        expected = fn(yte, y_pred, labels=range(10), average=None, zero_division=np.nan)
        for cls, value in zip(classes, expected):
            got = m.get(f"mlmon_{name}", **w, **{"class": cls})
            if np.isnan(value):
                assert got is None, (name, cls)
            else:
                assert got == pytest.approx(value, abs=EXACT), (name, cls)
    assert m.get("mlmon_log_loss", **w) == pytest.approx(skm.log_loss(yte, proba, labels=range(10)), abs=FLOAT_SUMS)
    assert m.get("mlmon_brier_score", **w) == pytest.approx(
        skm.brier_score_loss(yte, proba, labels=range(10)), abs=FLOAT_SUMS
    )
    assert m.get("mlmon_expected_calibration_error", **w) == pytest.approx(_ece(yte, proba), abs=FLOAT_SUMS)
    exact_auc = skm.roc_auc_score(yte, proba, multi_class="ovr", average="macro")
    bound = float(np.mean([_auc_bound(proba[:, k], yte == k) for k in range(10)]))
    assert bound < 0.02
    assert abs(m.get("mlmon_roc_auc", **w) - exact_auc) <= bound + EXACT


def test_regression_metrics_equal_sklearn():
    X, y = load_diabetes(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.5, random_state=2)
    pred = Ridge(alpha=0.1).fit(Xtr, ytr).predict(Xte)
    app, clock = make_app(CONFIG)
    client = app.test_client()
    _send(client, "diabetes", pred.tolist(), yte.tolist(), None, order_seed=2)
    m = scrape(client)
    w = {"model": "diabetes", "version": "v1", "window": "5m"}
    assert m.get("mlmon_mae", **w) == pytest.approx(skm.mean_absolute_error(yte, pred), rel=FLOAT_SUMS)
    assert m.get("mlmon_rmse", **w) == pytest.approx(skm.root_mean_squared_error(yte, pred), rel=FLOAT_SUMS)
    assert m.get("mlmon_r2", **w) == pytest.approx(skm.r2_score(yte, pred), abs=FLOAT_SUMS)
    assert m.get("mlmon_mean_error", **w) == pytest.approx(float(np.mean(pred - yte)), abs=FLOAT_SUMS)
    assert m.get("mlmon_absolute_error_total", model="diabetes", version="v1") == pytest.approx(
        float(np.abs(pred - yte).sum()), rel=FLOAT_SUMS
    )


def test_window_holds_only_recent_labels(binary_data):
    """Labels 10 minutes apart: the 5m window holds the second half only, the 1h window both."""
    y_true, y_pred, p = binary_data
    half = len(y_true) // 2
    app, clock = make_app(CONFIG)
    client = app.test_client()
    first = slice(0, half)
    second = slice(half, None)
    _send(client, "cancer", y_pred[first].tolist(), y_true[first].tolist(), [{"score": float(s)} for s in p[first]])
    clock.advance(600)
    preds = [
        {"model": "cancer", "version": "v1", "prediction": a, "label": b, "score": float(s)}
        for a, b, s in zip(y_pred[second], y_true[second], p[second])
    ]
    assert client.post("/api/v1/predictions", json={"predictions": preds}).status_code == 202
    m = scrape(client)
    five = {"model": "cancer", "version": "v1", "window": "5m"}
    hour = {**five, "window": "1h"}
    assert m.get("mlmon_window_samples", kind="labeled", **five) == len(y_true) - half
    assert m.get("mlmon_accuracy", **five) == pytest.approx(
        skm.accuracy_score(y_true[second], y_pred[second]), abs=EXACT
    )
    assert m.get("mlmon_accuracy", **hour) == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=EXACT)
    assert m.get("mlmon_log_loss", **five) == pytest.approx(
        skm.log_loss(y_true[second] == "malignant", p[second]), abs=FLOAT_SUMS
    )


def test_reliability_diagram_equals_sklearn_calibration_curve(binary_data):
    """Per confidence bin: accuracy and mean confidence, as calibration_curve computes them on top labels."""
    from sklearn.calibration import calibration_curve

    y_true, y_pred, p = binary_data
    app, _ = make_app(CONFIG)
    client = app.test_client()
    _send(client, "cancer", y_pred.tolist(), y_true.tolist(), [{"score": float(s)} for s in p])
    m = scrape(client)
    proba = np.column_stack([p, 1 - p])
    conf = proba.max(axis=1)
    correct = proba.argmax(axis=1) == np.where(y_true == "malignant", 0, 1)
    # calibration_curve bins [0, 1] uniformly; top-label confidences are >= 0.5, so bins 6..10 hold them.
    acc, mean_conf = calibration_curve(correct, conf, n_bins=10, strategy="uniform")
    got = {s.labels["bin"]: s.value for s in m.all("mlmon_reliability_accuracy", model="cancer", window="5m")}
    got_conf = {s.labels["bin"]: s.value for s in m.all("mlmon_reliability_confidence", model="cancer", window="5m")}
    edges = sorted(got, key=float)  # calibration_curve returns the non-empty bins in increasing order
    assert [got[e] for e in edges] == pytest.approx(list(acc), abs=EXACT)
    assert [got_conf[e] for e in edges] == pytest.approx(list(mean_conf), abs=FLOAT_SUMS)


def _ks_bound(scores: np.ndarray, positive: np.ndarray) -> float:
    """max_b max(pos_b / P, neg_b / N) over the exporter's score bins, from the raw scores."""
    bins = np.searchsorted(SCORE_EDGES, scores, side="right")
    pos = np.bincount(bins[positive], minlength=len(SCORE_EDGES) + 1) / positive.sum()
    neg = np.bincount(bins[~positive], minlength=len(SCORE_EDGES) + 1) / (~positive).sum()
    return float(np.maximum(pos, neg).max())


@pytest.mark.parametrize("data", ["breast_cancer", "generated"])
def test_score_separation_equals_sklearn_and_scipy(binary_data, data):
    """Gini = 2 AUC - 1 (scikit-learn's roc_auc_score) and KS separation (scipy's ks_2samp on the scores of the
    two classes), within the binning bounds of docs/metrics.md."""
    if data == "breast_cancer":
        y_true, y_pred, p_malignant = binary_data
    else:  # 8,000 predictions whose scores overlap, a fifth of them positive
        rng = np.random.default_rng(3)
        positive = rng.random(8_000) < 0.2
        p_malignant = np.where(positive, rng.beta(4, 2, positive.size), rng.beta(2, 4, positive.size))
        y_true = np.where(positive, "malignant", "benign")
        y_pred = np.where(p_malignant >= 0.5, "malignant", "benign")
    app, clock = make_app(CONFIG)
    client = app.test_client()
    _send(client, "cancer", y_pred.tolist(), y_true.tolist(), [{"score": float(p)} for p in p_malignant])
    clock.advance(90)
    m = scrape(client)
    w = {"model": "cancer", "version": "v1", "window": "5m"}
    positive = y_true == "malignant"

    exact_gini = 2 * skm.roc_auc_score(positive, p_malignant) - 1
    assert abs(m.get("mlmon_gini", **w) - exact_gini) <= 2 * _auc_bound(p_malignant, positive) + EXACT

    exact_ks = stats.ks_2samp(p_malignant[positive], p_malignant[~positive]).statistic
    bound = _ks_bound(p_malignant, positive)
    # A bin holds at most this share of a class (the 285 test rows of breast_cancer crowd a few bins).
    assert bound < (0.12 if data == "breast_cancer" else 0.04), "the bound must be tight enough to mean something"
    ks = m.get("mlmon_ks_separation", **w)
    # The binned statistic is the gap at the bin edges: never above the exact one, at most the bound below it.
    assert ks - EXACT <= exact_ks <= ks + bound + EXACT


def test_score_separation_is_binary_only():
    app, clock = make_app(CONFIG)
    client = app.test_client()
    classes = [str(d) for d in range(10)]
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(10), size=200)
    y_true = [classes[i] for i in rng.integers(0, 10, 200)]
    y_pred = [classes[i] for i in proba.argmax(axis=1)]
    scores = [{"scores": dict(zip(classes, map(float, row)))} for row in proba]
    _send(client, "digits", y_pred, y_true, scores)
    clock.advance(90)
    m = scrape(client)
    assert m.get("mlmon_roc_auc", model="digits", version="v1", window="5m") is not None
    assert m.all("mlmon_gini", model="digits") == [] and m.all("mlmon_ks_separation", model="digits") == []


def test_scores_given_to_two_decimals_get_the_exact_auc():
    """Many model servers round scores to two decimals. Each such value has a bin of its own (the edges are the
    doubles nearest k / 100, as parsed), so ties within a bin are true ties and the binned AUC equals
    scikit-learn's to rounding."""
    rng = np.random.default_rng(5)
    positive = rng.random(20_000) < 0.3
    score = np.round(np.clip(np.where(positive, rng.beta(3, 2, positive.size), rng.beta(2, 3, positive.size)), 0, 1), 2)
    score = np.array([float(f"{s:.2f}") for s in score])  # as a JSON decoder reads "0.05"
    assert np.all(np.diff(quality.score_bin(np.arange(1, 100) / 100)) == 1)
    bins = quality.score_bin(score)
    pos = np.bincount(bins[positive], minlength=quality.SCORE_BINS)
    neg = np.bincount(bins[~positive], minlength=quality.SCORE_BINS)
    auc, bound = quality.binned_auc(pos, neg)
    assert auc == pytest.approx(skm.roc_auc_score(positive, score), abs=1e-12)
