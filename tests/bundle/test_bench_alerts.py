"""The alert replay harness (bench/bench_alerts.py, `make bench-alerts`) can fail: a rule made slower or
noisier shows in its table. Short scenarios, through the exporter's code and the real promtool."""

from __future__ import annotations

import shutil

import pytest
import yaml

from bench import bench_alerts
from bench.bench_alerts import HOUR, Scenario, report, run_one
from tests.bundle.test_rules import ROOT, needs_promtool

COLLAPSE = Scenario(
    "collapse 10/s (short)",
    "quality",
    "collapse",
    10.0,
    3.0,
    change=2.0,
    record_from=1.5,
    target="critical within 10 min",
    watch=("MlmonModelAccuracyLow",),
    within=10,
)
HEALTHY = Scenario(
    "healthy 0.2/s (12 h)",
    "quality",
    "healthy",
    0.2,
    12.0,
    step=60,
    target="no page",
    watch=("MlmonModelAccuracyLow",),
    chunk=6 * HOUR,
    quiet=True,
)


def rules_copy(tmp_path, change) -> str:
    """A copy of the bundled rules with MlmonModelAccuracyLow changed by ``change(rule)``."""
    folder = tmp_path / "rules"
    shutil.copytree(ROOT / "prometheus" / "rules", folder)
    path = folder / "quality.yml"
    rules = yaml.safe_load(path.read_text())
    for rule in rules["groups"][0]["rules"]:
        if rule.get("alert") == "MlmonModelAccuracyLow":
            change(rule)
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return str(folder)


def slower(rule: dict) -> None:
    rule["for"] = "30m"


def noisier(rule: dict) -> None:
    """The naive rule: accuracy under the floor in any span, with no evidence asked, and a short for."""
    rule["expr"] = (
        "min without (span) (model_version_span:mlmon_span_correct_per_labeled:ratio)"
        ' < on (job, model) group_left model_threshold:mlmon_alert_threshold:max{threshold="accuracy_min"}'
    )
    rule["for"] = "1m"


def table(scenario: Scenario, result: dict) -> str:
    return "\n".join(report({scenario.name: [result]}, [scenario], 1.0, "test"))


@needs_promtool
def test_a_slower_rule_shows_a_longer_delay(tmp_path):
    bundled = run_one((COLLAPSE, 0, bench_alerts.RULES_DIR))
    slow = run_one((COLLAPSE, 0, rules_copy(tmp_path, slower)))
    fast_delay = bundled["alerts"]["MlmonModelAccuracyLow"]["delay_minutes"]
    slow_delay = slow["alerts"]["MlmonModelAccuracyLow"]["delay_minutes"]
    assert fast_delay < 10, bundled
    assert slow_delay >= fast_delay + 25, (bundled, slow)
    assert f"| {fast_delay:.1f} min | 0 | critical within 10 min | yes |" in table(COLLAPSE, bundled)
    assert f"| {slow_delay:.1f} min | 0 | critical within 10 min | **no** (1 of 1 runs) |" in table(COLLAPSE, slow)


@needs_promtool
def test_a_noisier_rule_shows_episodes_without_cause(tmp_path):
    bundled = run_one((HEALTHY, 0, bench_alerts.RULES_DIR))
    noisy = run_one((HEALTHY, 0, rules_copy(tmp_path, noisier)))
    assert "MlmonModelAccuracyLow" not in bundled["alerts"], bundled
    episodes = noisy["alerts"]["MlmonModelAccuracyLow"]["episodes_without_cause"]
    assert episodes >= 3, noisy
    assert "| MlmonModelAccuracyLow | - | 0 | no page | yes |" in table(HEALTHY, bundled)
    assert f"| MlmonModelAccuracyLow (critical) | - | {episodes} | no page | **no** (1 of 1 runs) |" in table(
        HEALTHY, noisy
    )


def test_promtool_report_is_read_back():
    """The harness reads its queries' results from promtool's report of a failed expectation."""
    output = """Unit Testing:  replay_test.yml
  FAILED:
    expr: "count_over_time(harness:alert_started[3600s])", time: 2h,
        exp: nil
        got: {alertname="MlmonModelAccuracyLow", severity="critical"} 2E+00, {alertname="X", severity="warning"} 1E+00
    expr: "min_over_time(harness:alert_started[3600s])", time: 2h,
        exp: nil
        got: {alertname="MlmonModelAccuracyLow", severity="critical"} 4.5e+03
    expr: "count_over_time(harness:alerts_firing[3600s])", time: 1h1m,
        exp: nil
        got: {alertname="X", severity="warning"} 3E+00
"""
    timeline = bench_alerts.parse_promtool(output, 15)
    assert timeline.starts[("MlmonModelAccuracyLow", "critical")] == [(7200.0, 2, 4500.0)]
    assert timeline.starts[("X", "warning")] == [(7200.0, 1, None)]
    assert timeline.firing[("X", "warning")] == pytest.approx(45.0)
