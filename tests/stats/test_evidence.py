"""The evidence the quality alerts decide on: the spans the exporter publishes, and the statistics the
recording rules compute from them.

- mlmon_span_* equal numpy's (and scikit-learn's accuracy) over the labels whose join time falls in each
  span, for labels sent at random times over a day: counts exact, error sums within 1e-9 (float sums).
- The recorded Wilson upper bound equals scipy's (binomtest(...).proportion_ci(method="wilson")), the
  recorded z-scores decide exactly where scipy's Wilson interval crosses the threshold, and the MAE z-score
  equals numpy's (limit - mean|e|) / (std(|e|) / sqrt(n)), on generated counts, through promtool: within
  1e-6 (promtool compares after rounding the expression to 1e-6).
"""

from __future__ import annotations

import math
import subprocess

import numpy as np
import pytest
import yaml
from scipy import stats
from sklearn.metrics import accuracy_score

from exporter.stats.window import spans
from tests.bundle.test_rules import PROMTOOL, ROOT, needs_promtool
from tests.conftest import T0, make_app, scrape

FLOAT_SUMS = 1e-9
CONFIG = """
models:
  - name: churn
    task: binary
    classes: ["stay", "churn"]
  - name: price
    task: regression
"""


def test_default_spans_are_each_window_and_its_recent_parts():
    got = [(s.name, s.seconds) for s in spans(("5m", "1h", "1d"), (300, 3600, 86400), 60)]
    # Halvings of 5m (to an eighth) and of 1h (down to 5m); steps of sqrt(2) in 1d, the longest (down to 1h).
    assert got == [
        ("40s", 40),
        ("1m15s", 75),
        ("2m30s", 150),
        ("5m", 300),
        ("8m", 480),
        ("15m", 900),
        ("30m", 1800),
        ("1h", 3600),
        ("1h12m", 4320),
        ("1h36m", 5760),
        ("2h", 7200),
        ("3h12m", 11520),
        ("4h24m", 15840),
        ("6h", 21600),
        ("8h24m", 30240),
        ("12h", 43200),
        ("16h48m", 60480),
        ("1d", 86400),
    ]


@pytest.mark.parametrize(
    "names, seconds, buckets",
    [(("1d", "5m", "1h"), (86400, 300, 3600), 60), (("10s",), (10,), 7), (("2h", "90m"), (7200, 5400), 12)],
)
def test_spans_are_whole_buckets_in_order_and_include_every_window(names, seconds, buckets):
    got = spans(names, seconds, buckets)
    assert [s.seconds for s in got] == sorted({s.seconds for s in got})
    assert {s.name for s in got if s.buckets == buckets} == set(names)
    for s in got:
        width = seconds[s.window] / buckets
        assert 1 <= s.buckets <= buckets and s.seconds == pytest.approx(s.buckets * width)


def _send(client, model: str, pairs: list, clock) -> None:
    items = [{"model": model, "version": "v1", "prediction": p, "label": y} for p, y in pairs]
    response = client.post("/api/v1/predictions", json={"predictions": items})
    assert response.status_code == 202, response.get_json()


def test_span_sums_equal_numpy_over_the_labels_joined_in_each_span():
    rng = np.random.default_rng(7)
    app, clock = make_app(CONFIG)
    client = app.test_client()
    start = T0 - 86400  # a day of labels, in 400 arrivals at random times
    times = np.sort(rng.uniform(start, T0, 400))
    joined = []  # (time, predicted class, actual class, prediction, label)
    for t in times:
        clock.now = float(t)
        k = int(rng.integers(1, 6))
        actual = rng.integers(0, 2, k)
        predicted = np.where(rng.random(k) < 0.8, actual, 1 - actual)
        y = rng.normal(50, 10, k)
        yhat = y + rng.normal(0, 3, k)
        classes = np.array(["stay", "churn"])
        _send(client, "churn", list(zip(classes[predicted].tolist(), classes[actual].tolist())), clock)
        _send(client, "price", list(zip(yhat.tolist(), y.tolist())), clock)
        joined += [(t, p, a, yh, yy) for p, a, yh, yy in zip(predicted, actual, yhat, y)]
    clock.now = T0
    m = scrape(client)
    at = np.array([j[0] for j in joined])
    pred, act = np.array([j[1] for j in joined]), np.array([j[2] for j in joined])
    err = np.array([j[3] - j[4] for j in joined])
    for span in spans(("5m", "1h", "1d"), (300, 3600, 86400), 60):
        width = span.seconds / span.buckets
        current = math.floor(T0 / width)
        inside = np.floor(at / width) > current - span.buckets  # the span's newest `buckets` buckets
        labels = {"version": "v1", "span": span.name}
        assert m.get("mlmon_span_labeled", model="churn", **labels) == inside.sum(), span.name
        correct = m.get("mlmon_span_correct", model="churn", **labels)
        if inside.any():
            assert correct / inside.sum() == pytest.approx(accuracy_score(act[inside], pred[inside]), abs=1e-12)
        else:
            assert correct == 0
        assert m.get("mlmon_span_labeled", model="price", **labels) == inside.sum()
        assert m.get("mlmon_span_absolute_error", model="price", **labels) == pytest.approx(
            np.abs(err[inside]).sum(), abs=FLOAT_SUMS
        )
        assert m.get("mlmon_span_squared_error", model="price", **labels) == pytest.approx(
            (err[inside] ** 2).sum(), abs=FLOAT_SUMS
        )


def test_evidence_z_is_the_normal_quantile_of_the_confidence():
    app, _ = make_app(CONFIG + "thresholds: {evidence_confidence: 0.975}\n")
    m = scrape(app.test_client())
    assert m.get("mlmon_alert_threshold", model="churn", threshold="evidence_confidence") == 0.975
    assert m.get("mlmon_alert_threshold", model="churn", threshold="evidence_z") == pytest.approx(
        stats.norm.ppf(0.975), abs=1e-9
    )


# -- the recording rules against scipy, through promtool ----------------------------------------------------


def _series(name: str, labels: dict, value: float) -> dict:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": f"{float(value)!r}x5"}


def _sample(labels: dict, value: float) -> dict:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"labels": f"{{{inner}}}", "value": round(float(value), 6)}


@needs_promtool
def test_recorded_evidence_equals_scipy_on_generated_counts(tmp_path):
    rng = np.random.default_rng(11)
    confidence = 0.99
    z = float(stats.norm.ppf(confidence))
    floor, drop, rise, minimum = 0.7, 0.1, 0.25, 30
    inputs, bounds, floor_z, decisive_low, mae_z = [], [], [], [], []
    for m in range(40):
        model = f"m{m}"
        base = {"job": "mlmon", "instance": "x:8490", "model": model}
        for key, value in (
            ("accuracy_min", floor),
            ("accuracy_drop", drop),
            ("error_rise", rise),
            ("min_labeled_samples", minimum),
            ("evidence_z", z),
        ):
            inputs.append(_series("mlmon_alert_threshold", {**base, "threshold": key}, value))
        # Nested spans, as the exporter's are: each longer span holds the shorter one's labels and more.
        n_spans = [int(rng.integers(5, 80)), 0, 0]
        n_spans[1] = n_spans[0] + int(rng.integers(0, 400))
        n_spans[2] = n_spans[1] + int(rng.integers(100, 5000))
        accuracy = rng.uniform(0.45, 0.95)
        older = [rng.binomial(b - a, 0.85) for a, b in zip(n_spans, n_spans[1:])]
        correct = np.cumsum([rng.binomial(n_spans[0], accuracy), *older])
        errors = np.abs(rng.normal(0, rng.uniform(1, 3), n_spans[2]))[::-1]  # newest first: a span is a prefix
        base_mae = errors[: n_spans[2]].mean()
        for span, n, c in zip(("5m", "1h", "1d"), n_spans, correct):
            labels = {**base, "version": "v1", "span": span}
            out = {"job": "mlmon", "model": model, "version": "v1", "span": span}
            e = errors[:n]
            inputs += [
                _series("mlmon_span_labeled", labels, n),
                _series("mlmon_span_correct", labels, int(c)),
                _series("mlmon_span_absolute_error", labels, float(e.sum())),
                _series("mlmon_span_squared_error", labels, float((e**2).sum())),
            ]
            ci = stats.binomtest(int(c), n).proportion_ci(confidence_level=1 - 2 * (1 - confidence), method="wilson")
            bounds.append(_sample(out, ci.high))
            if n >= minimum:
                floor_z.append(_sample(out, (c - n * floor) / math.sqrt(n * floor * (1 - floor))))
                # The score test and the Wilson interval are the same test: z < -z_c exactly when the
                # interval's upper end is under the floor.
                if ci.high < floor:
                    decisive_low.append(out)
                limit = (1 + rise) * base_mae
                mae_z.append(_sample(out, (limit - e.mean()) / (np.std(e) / math.sqrt(n))))
    tests = {
        "rule_files": [str(ROOT / "prometheus" / "rules" / "recording.yml")],
        "evaluation_interval": "1m",
        "group_eval_order": ["mlmon-pooled-shared", "mlmon-evidence"],
        "tests": [
            {
                "interval": "1m",
                "input_series": inputs,
                "promql_expr_test": [
                    {
                        "expr": "round(model_version_span:mlmon_span_correct_per_labeled:upper_bound, 0.000001)",
                        "eval_time": "2m",
                        "exp_samples": bounds,
                    },
                    {
                        "expr": "round(model_version_span:mlmon_accuracy_vs_floor:zscore, 0.000001)",
                        "eval_time": "2m",
                        "exp_samples": floor_z,
                    },
                    {
                        "expr": "round(model_version_span:mlmon_mae_vs_baseline:zscore, 0.000001)",
                        "eval_time": "2m",
                        "exp_samples": mae_z,
                    },
                    {
                        # Which spans prove accuracy under the floor (values zeroed: only the series count).
                        "expr": "0 * (model_version_span:mlmon_accuracy_vs_floor:zscore < on (job, model) "
                        'group_left () -model_threshold:mlmon_alert_threshold:max{threshold="evidence_z"})',
                        "eval_time": "2m",
                        "exp_samples": [_sample(labels, 0) for labels in decisive_low],
                    },
                ],
            }
        ],
    }
    assert decisive_low and len(decisive_low) < len(floor_z), "the generated counts should fall on both sides"
    path = tmp_path / "evidence_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False, width=1 << 20))
    done = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
