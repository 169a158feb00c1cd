"""Drift and data quality against exact computations on the raw rows (scipy, numpy).

Tolerances: PSI, JS and chi-square are exact on the same bins (1e-9, float sums only); the binned KS
statistic is never above scipy's and below it by at most the largest bin share; the binned Wasserstein
distance is within the distance each unit of mass was moved to its bin's point (computed here from the
raw rows). docs/drift.md states the same bounds.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, ks_2samp, wasserstein_distance

from exporter.config import parse_config
from exporter.ingest.columns import bin_rows
from exporter.stats import drift
from exporter.stats.binning import Binner, window_drift
from exporter.stats.reference import (
    CategoricalRef,
    NumericRef,
    ReferenceError,
    build_profile,
    categorical_profile,
    from_json,
    numeric_profile,
)
from tests.conftest import make_app, scrape

SUMS = 1e-9


def binned(ref: NumericRef, x: np.ndarray) -> np.ndarray:
    return np.bincount(ref.bins(x), minlength=len(ref.counts)).astype(float)


@pytest.mark.parametrize("shift", [0.0, 0.3, 1.5])
@pytest.mark.parametrize("dist", ["normal", "lognormal", "poisson"])
def test_numeric_statistics_match_scipy_on_the_raw_rows(dist, shift):
    rng = np.random.default_rng(7)
    draw = {
        "normal": lambda n: rng.normal(size=n),
        "lognormal": lambda n: rng.lognormal(size=n),
        "poisson": lambda n: rng.poisson(3, size=n).astype(float),
    }[dist]
    ref_x, cur_x = draw(5000), draw(2000) + shift
    ref = numeric_profile(ref_x)
    cur = binned(ref, cur_x)

    # JS and PSI: exact on the same bins.
    assert drift.js_distance(ref.counts, cur) == pytest.approx(
        jensenshannon(ref.counts / ref.n, cur / cur.sum(), base=2), abs=SUMS
    )
    groups = ref.psi_groups()
    p = np.maximum(np.bincount(groups, ref.counts, 12) / ref.n, drift.PSI_EPSILON)
    q = np.maximum(np.bincount(groups, cur, 12) / cur.sum(), drift.PSI_EPSILON)
    assert drift.psi(np.bincount(groups, ref.counts, 12), np.bincount(groups, cur, 12)) == pytest.approx(
        float(np.sum((q - p) * np.log(q / p))), abs=SUMS
    )

    # KS: the binned statistic is a lower bound, short by at most one bin's mass.
    d, pvalue = drift.ks(ref.counts, cur)
    exact = ks_2samp(ref_x, cur_x)
    max_bin_share = max((ref.counts / ref.n).max(), (cur / cur.sum()).max())
    assert d <= exact.statistic + SUMS
    assert exact.statistic - d <= max_bin_share + SUMS
    assert 0 <= pvalue <= 1

    # Wasserstein: within the distance the binning moved the mass.
    below = cur_x[cur_x < ref.edges[0]]
    above = cur_x[cur_x > ref.edges[-1]]
    points_cur = ref.points(below.mean() if len(below) else ref.edges[0], above.mean() if len(above) else ref.edges[-1])
    points_ref = ref.points(ref.edges[0], ref.edges[-1])
    got = drift.wasserstein(ref.counts, cur, points_ref, points_cur, ref.std)
    moved = np.abs(ref_x - points_ref[ref.bins(ref_x)]).mean() + np.abs(cur_x - points_cur[ref.bins(cur_x)]).mean()
    assert abs(got - wasserstein_distance(ref_x, cur_x) / ref.std) <= moved / ref.std + SUMS


def test_categorical_statistics_match_scipy_on_the_raw_rows():
    rng = np.random.default_rng(3)
    cats = [f"c{i}" for i in range(8)]
    ref_x = rng.choice(cats, size=4000, p=np.arange(8, 0, -1) / 36)
    cur_x = np.concatenate([rng.choice(cats, size=1500), ["new"] * 30])
    ref = categorical_profile(list(ref_x))
    index = {c: i for i, c in enumerate(ref.categories)}
    cur = np.bincount([index.get(c, len(ref.categories)) for c in cur_x], minlength=len(ref.counts)).astype(float)

    table = np.array(
        [
            [np.sum(ref_x == c) for c in ref.categories] + [0],
            [np.sum(cur_x == c) for c in ref.categories] + [np.sum(~np.isin(cur_x, ref.categories))],
        ]
    )
    table = table[:, table.sum(axis=0) > 0]
    expected = chi2_contingency(table, correction=False)
    stat, p = drift.chi2(ref.counts, cur)
    assert stat == pytest.approx(expected.statistic, rel=SUMS)
    assert p == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-300)
    assert drift.js_distance(ref.counts, cur) == pytest.approx(
        jensenshannon(ref.counts / ref.n, cur / cur.sum(), base=2), abs=SUMS
    )


# ---------------------------------------------------------------------------------------------------
# Through the app: reference in the config, events over HTTP, figures from /metrics.

FEATURES = ["a", "b", "c", "d", "e"]


def reference_csv(tmp_path, rng, n=3000):
    rows = ["a,b,c,d,e,plan,prediction,label"]
    for _ in range(n):
        x = rng.normal(size=5)
        plan = rng.choice(["basic", "pro", "team"], p=[0.6, 0.3, 0.1])
        pred = "yes" if x[0] > 0 else "no"
        rows.append(",".join(f"{v:.5f}" for v in x) + f",{plan},{pred},{pred}")
    path = tmp_path / "ref.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def config(path) -> str:
    feats = "\n".join(f"      - {{name: {f}, type: numeric}}" for f in FEATURES)
    return f"""
windows: ["5m", "1h"]
models:
  - name: m
    task: binary
    classes: ["no", "yes"]
    reference: {path}
    features:
{feats}
      - {{name: plan, type: categorical}}
"""


def send(client, rng, n, shift=(), missing_b=0.0, plans=("basic", "pro", "team", "enterprise")):
    items = []
    for _ in range(n):
        x = rng.normal(size=5)
        for j in shift:
            x[j] += 1.0
        feats = {f: round(float(v), 5) for f, v in zip(FEATURES, x)}
        if rng.uniform() < missing_b:
            feats["b"] = None
        feats["plan"] = str(rng.choice(plans, p=[0.5, 0.3, 0.1, 0.1]))
        items.append({"model": "m", "prediction": "yes" if x[0] > 0 else "no", "features": feats})
    r = client.post("/api/v1/predictions", json={"predictions": items})
    assert r.status_code == 202, r.get_json()
    return items


def test_published_drift_equals_the_computation_on_the_raw_rows(tmp_path):
    rng = np.random.default_rng(11)
    path = reference_csv(tmp_path, rng)
    app, clock = make_app(config(path))
    client = app.test_client()
    items = send(client, rng, 1500, shift=(1,), missing_b=0.1)
    m = scrape(client)
    w = {"model": "m", "version": "default", "window": "5m"}

    cfg = parse_config(config(path))
    columns = _columns(path)
    profile = build_profile(columns, cfg.models[0])
    for feature in FEATURES:
        ref = profile.features[feature]
        raw = np.array([i["features"][feature] for i in items if i["features"][feature] is not None])
        cur = binned(ref, raw)
        js = m.get("mlmon_feature_drift", feature=feature, method="js", **w)
        assert js == pytest.approx(jensenshannon(ref.counts / ref.n, cur / cur.sum(), base=2), abs=SUMS)
        ks = m.get("mlmon_feature_drift", feature=feature, method="ks", **w)
        exact = ks_2samp(np.array(columns[feature], dtype=float), raw).statistic
        assert ks <= exact + SUMS and exact - ks <= (ref.counts / ref.n).max() + (cur / cur.sum()).max()
        out = np.mean((raw < ref.edges[0]) | (raw > ref.edges[-1]))
        assert m.get("mlmon_feature_out_of_range_ratio", feature=feature, **w) == pytest.approx(out, abs=SUMS)
    missing = np.mean([i["features"]["b"] is None for i in items])
    assert m.get("mlmon_feature_missing_ratio", feature="b", **w) == pytest.approx(missing, abs=SUMS)
    assert m.get("mlmon_feature_missing_ratio", feature="a", **w) == 0
    assert m.get("mlmon_feature_missing_total", model="m", version="default", feature="b") == round(missing * 1500)

    unseen = np.mean([i["features"]["plan"] == "enterprise" for i in items])
    assert m.get("mlmon_feature_unseen_ratio", feature="plan", **w) == pytest.approx(unseen, abs=SUMS)
    plans = [i["features"]["plan"] for i in items]
    ref_plans = columns["plan"]
    cats = sorted(set(ref_plans) | set(plans))
    table = np.array([[ref_plans.count(c) for c in cats], [plans.count(c) for c in cats]])
    expected = chi2_contingency(table, correction=False)
    assert m.get("mlmon_feature_drift", feature="plan", method="chi2", **w) == pytest.approx(
        expected.statistic, rel=SUMS
    )

    # Only the shifted feature and the plan (a tenth of it now an unseen category) drift (PSI over 0.25);
    # predictions follow feature a, which did not move.
    assert m.get("mlmon_drifted_features", **w) == 2
    assert m.get("mlmon_feature_drift", feature="b", method="psi", **w) > 0.25
    assert m.get("mlmon_feature_drift", feature="plan", method="psi", **w) > 0.25
    assert all(m.get("mlmon_feature_drift", feature=f, method="psi", **w) < 0.1 for f in "acde")
    assert m.get("mlmon_prediction_drift", method="psi", **w) < 0.1
    assert m.get("mlmon_drift_threshold", model="m", feature="b", method="psi") == 0.25
    assert m.get("mlmon_reference_rows", model="m") == 3000


def _columns(path) -> dict[str, list]:
    from exporter.stats.reference import read_csv

    return read_csv(path.read_text())


def test_drift_is_absent_below_the_minimum_sample(tmp_path):
    rng = np.random.default_rng(1)
    app, _ = make_app(config(reference_csv(tmp_path, rng)))
    client = app.test_client()
    send(client, rng, 50)
    m = scrape(client)
    assert m.get("mlmon_feature_drift", model="m", window="5m", feature="a", method="psi") is None
    assert m.get("mlmon_feature_missing_ratio", model="m", window="5m", feature="a") == 0  # quality is still there


def test_uploading_a_reference_restarts_the_drift_windows(tmp_path):
    rng = np.random.default_rng(2)
    app, _ = make_app(config(reference_csv(tmp_path, rng)))
    client = app.test_client()
    send(client, rng, 300, shift=(0, 1, 2))
    assert scrape(client).get("mlmon_drifted_features", model="m", window="5m") >= 3
    csv_text = reference_csv(tmp_path, rng, 500).read_text()
    r = client.put("/api/v1/models/m/reference", data=csv_text, content_type="text/csv")
    assert r.status_code == 200 and r.get_json()["rows"] == 500
    m = scrape(client)
    assert m.get("mlmon_drifted_features", model="m", window="5m") is None  # no binned data under the new edges
    assert m.get("mlmon_reference_rows", model="m") == 500


@pytest.mark.parametrize(
    "csv_text, message",
    [
        ("a,b,c,d,plan\n1,2,3,4,x\n", "missing feature columns ['e']"),
        ("a,b,c,d,e,plan,colour\n" + "1,2,3,4,5,x,red\n" * 30, "unknown columns ['colour']"),
        ("a,b,c,d,e,plan\n" + "1,2,3,4,5,x\n" * 5, "needs at least 20 values"),
        ("a,b,c,d,e,plan\n" + "1,two,3,4,5,x\n" * 30, "column 'b', row 2: 'two' is not a number"),
        ("a,b,c,d,e,plan,label\n" + "1,2,3,4,5,x,maybe\n" * 30, "are not classes"),
    ],
)
def test_bad_reference_uploads_are_400_naming_the_problem(tmp_path, csv_text, message):
    rng = np.random.default_rng(4)
    app, _ = make_app(config(reference_csv(tmp_path, rng)))
    client = app.test_client()
    r = client.put("/api/v1/models/m/reference", data=csv_text, content_type="text/csv")
    assert r.status_code == 400
    assert message in r.get_json()["error"]["message"]
    assert scrape(client).get("mlmon_ingest_errors_total", model="m", reason="invalid_reference") == 1
    assert scrape(client).get("mlmon_reference_rows", model="m") == 3000  # the old reference stays


def test_profile_json_round_trip_and_validation(tmp_path):
    rng = np.random.default_rng(5)
    cfg = parse_config(config(reference_csv(tmp_path, rng)))
    model = cfg.models[0]
    profile = build_profile(_columns(tmp_path / "ref.csv"), model)
    again = from_json(profile.as_json(), model)
    assert isinstance(again.features["a"], NumericRef) and isinstance(again.features["plan"], CategoricalRef)
    assert np.array_equal(again.features["a"].edges, profile.features["a"].edges)
    assert again.label.counts.tolist() == profile.label.counts.tolist()
    broken = profile.as_json()
    broken["features"]["a"]["edges"] = [3, 2, 1]
    with pytest.raises(ReferenceError, match="features.a"):
        from_json(broken, model)
    for feature in ("a", "plan"):  # a count of missing values that is none (or past int64, unwritable)
        for missing in (-1, 2**63, -(2**70)):
            broken = profile.as_json()
            broken["features"][feature]["missing"] = missing
            with pytest.raises(ReferenceError, match=f"features.{feature}.*'missing' must be a count"):
                from_json(broken, model)


def test_reference_build_cli_writes_a_profile_the_exporter_loads(tmp_path):
    import subprocess
    import sys

    rng = np.random.default_rng(6)
    csv_path = reference_csv(tmp_path, rng)
    cfg_path = tmp_path / "mlmon.yml"
    cfg_path.write_text(config("ref.csv"))  # relative to the config file's folder
    out = tmp_path / "profile.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "reference",
            "build",
            str(csv_path),
            "--model",
            "m",
            "--config",
            str(cfg_path),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "3000 rows" in r.stdout
    cfg_path.write_text(config("profile.json"))
    r = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", str(cfg_path)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def test_missing_reference_file_is_a_config_error(tmp_path):
    with pytest.raises(Exception, match="models\\[0\\].reference: no such file"):
        parse_config(config(tmp_path / "nope.csv"))


def test_binner_without_reference_counts_missing_only():
    cfg = parse_config(config("x.csv").replace("    reference: x.csv\n", ""))
    b = bin_rows(Binner(cfg.models[0], None), [{"a": 1.0}, {"a": None, "plan": "x"}], [0, 1])
    assert b.missing.tolist() == [1, 2, 2, 2, 2, 1]
    assert "num_counts" not in b.scatter
    d = window_drift(cfg.models[0], None, {"predictions": 2.0, "missing": b.missing})
    assert d.quality["missing"]["a"] == 0.5 and d.drifted is None


def test_segments_split_quality_and_drift_with_bounded_values(tmp_path):
    from sklearn.metrics import accuracy_score

    rng = np.random.default_rng(8)
    text = config(reference_csv(tmp_path, rng)) + "    segments: {features: [plan], top: 2}\n"
    app, clock = make_app(text)
    client = app.test_client()
    items, truths = [], []
    for i in range(3000):
        plan = str(rng.choice(["basic", "pro", "team", "enterprise"], p=[0.5, 0.3, 0.15, 0.05]))
        x = rng.normal(size=5)
        if plan == "pro":
            x[1] += 1.5  # feature b drifts in the "pro" segment only
        truth = "yes" if rng.uniform() < (0.9 if plan == "basic" else 0.6) else "no"
        feats = {f: round(float(v), 5) for f, v in zip(FEATURES, x)}
        feats["plan"] = plan
        items.append({"model": "m", "id": f"r{i}", "prediction": "yes", "features": feats})
        truths.append(truth)
    assert client.post("/api/v1/predictions", json={"predictions": items}).status_code == 202
    labels = [{"model": "m", "id": f"r{i}", "label": t} for i, t in enumerate(truths)]
    assert client.post("/api/v1/labels", json={"labels": labels}).status_code == 202  # joined later: segment kept
    m = scrape(client)
    w = {"model": "m", "version": "default", "window": "5m", "segment_feature": "plan"}
    plans = np.array([i["features"]["plan"] for i in items])
    truths = np.array(truths)
    segment_of = np.where(np.isin(plans, ["basic", "pro"]), plans, "other")  # the reference's top 2
    assert {s.labels["segment"] for s in m.all("mlmon_segment_window_samples", **w)} == {"basic", "pro", "other"}
    for segment in ("basic", "pro", "other"):
        inside = segment_of == segment
        assert m.get("mlmon_segment_window_samples", segment=segment, kind="labeled", **w) == inside.sum()
        expected = accuracy_score(truths[inside], np.full(inside.sum(), "yes"))
        assert m.get("mlmon_segment_accuracy", segment=segment, **w) == pytest.approx(expected, abs=1e-12)
    assert m.get("mlmon_segment_feature_drift", segment="pro", feature="b", method="psi", **w) > 0.25
    assert m.get("mlmon_segment_feature_drift", segment="basic", feature="b", method="psi", **w) < 0.1
    assert m.get("mlmon_segment_drifted_features", segment="basic", **w) == 0


def test_segments_without_reference_take_the_first_values_seen():
    text = """
models:
  - name: m
    task: regression
    features: [{name: country, type: categorical}]
    segments: {features: [country], top: 2}
"""
    app, _ = make_app(text)
    client = app.test_client()
    items = [
        {"model": "m", "prediction": 1.0, "label": 2.0, "features": {"country": c}}
        for c in ["de", "fr", "it", "es", "de", None]
    ]
    assert client.post("/api/v1/predictions", json={"predictions": items}).status_code == 202
    m = scrape(client)
    seg = {
        s.labels["segment"]: s.value
        for s in m.all("mlmon_segment_window_samples", model="m", window="5m", kind="labeled")
    }
    assert seg == {"de": 2, "fr": 1, "other": 3}
    assert m.get("mlmon_segment_mae", model="m", window="5m", segment="de") == 1.0


def test_invalid_features_counted_instead_of_rejected_when_configured(tmp_path):
    rng = np.random.default_rng(9)
    text = config(reference_csv(tmp_path, rng)) + "    invalid_features: count\n"
    app, _ = make_app(text)
    client = app.test_client()
    items = [
        {"model": "m", "prediction": "yes", "features": {"a": 1.0, "b": "oops", "plan": "pro", "zzz": 3}},
        {"model": "m", "prediction": "no", "features": {"a": None, "b": 2.0, "plan": {"x": 1}}},
        {"model": "m", "prediction": "no", "features": {"a": 0.5, "b": 1.0}},
    ]
    r = client.post("/api/v1/predictions", json={"predictions": items})
    assert r.status_code == 202, r.get_json()
    m = scrape(client)
    w = {"model": "m", "version": "default", "window": "5m"}
    assert m.get("mlmon_feature_errors_total", model="m", feature="b", reason="type_error") == 1
    assert m.get("mlmon_feature_errors_total", model="m", feature="plan", reason="type_error") == 1
    assert m.get("mlmon_feature_errors_total", model="m", feature="", reason="unknown_feature") == 1
    assert m.get("mlmon_feature_type_error_ratio", feature="b", **w) == pytest.approx(1 / 3)
    # A value of the wrong type is an error, not a missing value; an absent or null one is missing.
    assert m.get("mlmon_feature_missing_ratio", feature="b", **w) == 0
    assert m.get("mlmon_feature_missing_ratio", feature="a", **w) == pytest.approx(1 / 3)
    assert m.get("mlmon_feature_missing_ratio", feature="plan", **w) == pytest.approx(1 / 3)
    assert m.get("mlmon_predictions_total", model="m", version="default") == 3


def test_invalid_features_are_rejected_by_default(tmp_path):
    rng = np.random.default_rng(10)
    app, _ = make_app(config(reference_csv(tmp_path, rng)))
    client = app.test_client()
    r = client.post("/api/v1/predictions", json={"model": "m", "prediction": "yes", "features": {"b": "oops"}})
    assert r.status_code == 400 and r.get_json()["error"]["details"][0]["field"] == "features.b"


@pytest.mark.parametrize("n, m, d", [(200, 100, 0.1), (5000, 2000, 0.03), (10000, 1000, 0.05), (50, 50, 0.3)])
def test_ks_pvalue_agrees_with_scipy_kstwo(n, m, d):
    """The asymptotic p-value (with Stephens' correction) against scipy's exact distribution of the statistic."""
    from scipy.stats import kstwo

    ref = np.zeros(100)
    cur = np.zeros(100)
    ref[0], ref[1] = n * 0.5, n * 0.5
    cur[0], cur[1] = m * (0.5 + d), m * (0.5 - d)
    got, p = drift.ks(ref, cur)
    assert got == pytest.approx(d)
    assert p == pytest.approx(kstwo.sf(d, round(n * m / (n + m))), abs=0.02)


def test_an_empty_categorical_value_is_missing_as_in_the_reference_csv(tmp_path):
    rng = np.random.default_rng(12)
    app, _ = make_app(config(reference_csv(tmp_path, rng)))
    client = app.test_client()
    items = [
        {"model": "m", "prediction": "no", "features": {"a": 0.1, "plan": "" if i % 4 == 0 else "basic"}}
        for i in range(200)
    ]
    assert client.post("/api/v1/predictions", json={"predictions": items}).status_code == 202
    m = scrape(client)
    w = {"model": "m", "version": "default", "window": "5m"}
    assert m.get("mlmon_feature_missing_ratio", feature="plan", **w) == 0.25
    assert m.get("mlmon_feature_unseen_ratio", feature="plan", **w) == 0


def test_window_and_reference_distributions_are_published_per_bin(tmp_path):
    rng = np.random.default_rng(13)
    path = reference_csv(tmp_path, rng)
    app, _ = make_app(config(path) + "    drift: {bins: true}\n")
    client = app.test_client()
    items = send(client, rng, 1000, shift=(1,))
    m = scrape(client)
    profile = build_profile(_columns(path), parse_config(config(path)).models[0])
    ref = profile.features["b"]
    raw = np.array([i["features"]["b"] for i in items])
    expected = np.bincount(ref.psi_groups(), binned(ref, raw), 12) / len(raw)
    w = {"model": "m", "version": "default", "window": "5m", "feature": "b"}
    names = ["below_min", *(f"q{i:02d}" for i in range(1, 11)), "above_max"]
    got = [m.get("mlmon_feature_bin_ratio", bin=b, **w) for b in names]
    assert got == pytest.approx(expected.tolist(), abs=SUMS)
    deciles = [m.get("mlmon_reference_bin_ratio", model="m", feature="b", bin=f"q{i:02d}") for i in range(1, 11)]
    assert deciles == pytest.approx([0.1] * 10, abs=0.01)  # deciles of the reference hold a tenth each
    plans = {s.labels["bin"]: s.value for s in m.all("mlmon_reference_bin_ratio", model="m", feature="plan")}
    assert plans["basic"] == pytest.approx(np.mean(np.array(_columns(path)["plan"]) == "basic"), abs=SUMS)


def test_distributions_are_off_by_default(tmp_path):
    rng = np.random.default_rng(14)
    app, _ = make_app(config(reference_csv(tmp_path, rng)))
    client = app.test_client()
    send(client, rng, 300)
    m = scrape(client)
    assert m.all("mlmon_feature_bin_ratio") == [] and m.all("mlmon_reference_bin_ratio") == []
    assert m.all("mlmon_feature_drift")  # drift itself is there


def test_drift_of_many_features_at_once_equals_feature_by_feature():
    """A scrape computes the numeric drift of every feature of a window in one pass over padded rows
    (binning._numeric_drift); each row must be the one-feature computation, whatever its number of bins."""
    from exporter.stats.binning import _numeric, _numeric_drift, _NumericTable
    from exporter.stats.reference import NUMERIC_SLOTS, Profile

    rng = np.random.default_rng(11)
    ref_rows = {
        "a": rng.normal(size=4000),
        "b": rng.lognormal(size=4000),
        "c": rng.poisson(2, size=4000).astype(float),  # discrete: fewer bins than the others
        "d": rng.normal(size=4000),
    }
    cur_rows = {
        "a": rng.normal(0.4, 1.2, size=1500),
        "b": rng.lognormal(0.3, size=1500),
        "c": rng.poisson(3, size=1500).astype(float),
        "d": rng.normal(size=50),  # below min_samples: out of range only
    }
    profile = Profile("m", 4000, {k: numeric_profile(v) for k, v in ref_rows.items()})
    assert len({len(r.counts) for r in profile.features.values()}) > 1
    names = list(ref_rows)
    cfg = parse_config(config("x.csv").replace("    reference: x.csv\n", ""))
    model = cfg.models[0]
    counts, out_sums = np.zeros((len(names), NUMERIC_SLOTS), np.int32), np.zeros((len(names), 2))
    for j, name in enumerate(names):
        ref, x = profile.features[name], cur_rows[name]
        b = ref.bins(x)
        counts[j, : len(ref.counts)] = np.bincount(b, minlength=len(ref.counts))
        out_sums[j] = x[b == 0].sum(), x[b == len(ref.counts) - 1].sum()
    result = window_drift(model, None, {"predictions": 0.0})
    _numeric_drift(model, _NumericTable.of(profile, names), {"num_counts": counts, "num_out": out_sums}, result)

    assert set(result.features) == {"a", "b", "c"}
    for j, name in enumerate(names):
        ref = profile.features[name]
        cur = counts[j, : len(ref.counts)].astype(float)
        assert result.quality["out_of_range"][name] == pytest.approx((cur[0] + cur[-1]) / cur.sum(), abs=1e-15)
        if name in result.features:
            expected = _numeric(ref, cur, out_sums[j])
            assert result.features[name] == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_binner_counts_every_feature_missing_for_an_event_without_features():
    cfg = parse_config(config("x.csv").replace("    reference: x.csv\n", ""))
    full = {**{f: 1.0 for f in FEATURES}, "plan": "x"}
    b = bin_rows(Binner(cfg.models[0], None), [None, full, {**full, "a": None, "plan": ""}], [0, 1, 0])
    assert b.missing.tolist() == [2, 1, 1, 1, 1, 2]
    assert sorted(zip(*(x.tolist() for x in b.scatter["missing"][:2]))) == [(0, c) for c in range(6)] + [(2, 0), (2, 5)]
