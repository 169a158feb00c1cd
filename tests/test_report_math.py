"""The report's arithmetic, checked against independent references: the Wilson interval against scipy, firing
episodes from ALERTS points, the period's plan, and PromQL strings quoted safely."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from exporter.report.gather import Period, episodes, growth, quote, wilson
from exporter.report.prom import Series


@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 1), (7, 10), (93, 100), (0, 250), (4999, 5000), (1234, 4321)])
def test_wilson_interval_matches_scipy(k, n):
    lo, hi = wilson(np.array([float(k)]), np.array([float(n)]))
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert lo[0] == pytest.approx(ci.low, abs=1e-6) and hi[0] == pytest.approx(ci.high, abs=1e-6)


def test_episodes_from_alerts_points():
    step = 60.0
    t = np.array([600, 660, 720, 1200, 1260, 2940, 3000], dtype=float)
    s = Series({"alertname": "MlmonModelAccuracyLow", "severity": "critical", "version": "v2"}, t, np.ones(len(t)))
    found = episodes([s], step, start=0.0, end=3000.0)
    assert [(e.start, e.end, e.ongoing) for e in found] == [
        (540, 720, False),  # it may have started up to a step before the first point that saw it
        (1140, 1260, False),
        (2880, 3000, True),  # still firing at the end of the period
    ]
    assert {(e.alertname, e.severity, e.version) for e in found} == {("MlmonModelAccuracyLow", "critical", "v2")}
    # NaN points are gaps, and an episode never starts before the period.
    s2 = Series({"alertname": "X"}, np.array([0.0, 60, 120]), np.array([1.0, np.nan, 1.0]))
    assert [(e.start, e.end) for e in episodes([s2], step, 0.0, 3000.0)] == [(0, 0), (60, 120)]
    # With a lookback longer than the step, a point is present for a lookback after the alert stopped: the
    # episode ends that much earlier (here it fired from about 540 to 600; points to 720 with a 180 s lookback).
    (e,) = episodes([Series({"alertname": "X"}, t[:3], np.ones(3))], step, 0.0, 3000.0, lookback=180.0)
    assert (e.start, e.end, e.ongoing) == (540, 600, False)


def test_period_plans_for_short_and_long_periods():
    short = Period.plan(10_000.0, 300, scrape_interval=2)
    assert short.step == 1 and short.rate == 8 and short.bucket == 10 and short.recent == 60
    year = Period.plan(10_000_000.0, 365 * 86400, scrape_interval=15)
    # Prometheus answers at most 11,000 points a series.
    assert year.seconds / year.step <= 11_000 and year.recent <= year.seconds


def test_label_values_are_quoted_for_promql():
    assert quote('a"b\\c') == '"a\\"b\\\\c"'


def test_counter_growth_between_readings():
    nan = np.nan
    # Steady growth, a gap (the last reading carries over), a restart (a drop: the new value is the growth).
    values = np.array([10.0, 15, nan, 22, 3, 8])
    assert growth(values).tolist() == [5, 0, 7, 3, 5]
    # A series first read after the first edge grew from 0 (the exporter's counters start at 0).
    assert growth(np.array([nan, nan, 4.0, 9])).tolist() == [0, 4, 5]
    # The growths add up to the last value minus the first, when nothing restarted.
    rng = np.random.default_rng(1)
    steady = np.cumsum(rng.integers(0, 50, 100)).astype(float)
    assert growth(steady).sum() == steady[-1] - steady[0]


def _model(name: str, info: dict) -> tuple:
    from exporter.report.gather import FeatureDrift, ModelReport, Quality, Report

    end = 1_796_000_000.0
    p = Period.plan(end, 600, 2.0)
    t = np.arange(p.start, p.end, p.step)
    rng = np.random.default_rng(0)
    q = Quality("accuracy")
    q.t["v1"] = p.edges[1:]
    q.value["v1"] = rng.uniform(0.8, 0.9, len(q.t["v1"]))
    q.low["v1"], q.high["v1"], q.labels["v1"] = q.value["v1"] - 0.05, q.value["v1"] + 0.05, np.full(len(q.t["v1"]), 50)
    q.period, q.recent = 0.85, 0.8
    drift = FeatureDrift(
        "x", "psi", 0.25, 0.5, 0.1, version="v1", series={"v1": Series({}, t, rng.uniform(0, 1, len(t)))}
    )
    m = ModelReport(
        name=name, task="binary", versions=["v1"], info=info, first_seen={"v1": p.start + 5}, current="v1",
        predictions={"v1": 1000.0}, labels={"v1": 900.0}, traffic=[Series({"version": "v1"}, t, np.ones(len(t)))],
        quality=q, estimated=[], estimate_now=float("nan"), window="1m", drift=[drift], drifted=1, drift_watched=4,
        prediction_drift=None, data_quality=[], missing_max=0.1, errors={"bad_value": 3.0}, latency={},
        latency_p95=float("nan"), label_delay={}, label_delay_median=float("nan"),
        alerts=episodes([Series({"alertname": "MlmonModelAccuracyLow", "severity": "critical"}, t[:5], np.ones(5))],
                        p.step, p.start, p.end),
    )  # fmt: skip
    return Report("http://127.0.0.1:9090", p, "", [m], [], end), m


def test_the_page_escapes_what_it_shows_and_links_the_registry_run():
    from exporter.report.render import render

    name = 'fraud<script>alert("x")</script>'
    url = "http://mlflow.example:5000/#/experiments/3/runs/abc123"
    report, m = _model(name, {"v1": {"run_id": "abc123", "run_url": url, "model_uri": "models:/fraud/4"}})
    page = render(report)
    assert "<script" not in page and "fraud&lt;script&gt;" in page
    assert f'<a href="{url}">run</a>' in page and "run_id=<code>abc123</code>" in page
    # The summary's verdict: a critical alert fired.
    assert "Needs attention" in page and "MlmonModelAccuracyLow (critical" in page
    assert "3 <code>bad_value</code>" in page
