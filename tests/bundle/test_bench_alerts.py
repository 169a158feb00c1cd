"""The alert replay harness (bench/bench_alerts.py, `make bench-alerts`) can fail: a rule made slower or
noisier shows in its table. Short scenarios, through the exporter's code and the real promtool."""

from __future__ import annotations

import shutil

import pytest
import yaml

from bench import bench_alerts
from bench.bench_alerts import HOUR, OPPORTUNITY, PARITY, Group, Scenario, replay, report, rule_groups, run_one
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

# Two equal groups, 30% selected and 30% truly positive; after 15 minutes the second group's true positive
# rate falls from 0.8 to 0.55 (the 5m window holds some 450 positives a group: proven at once).
TPR_DROP = Scenario(
    "fairness: minority TPR 0.8 to 0.55, 10/s (short)",
    "fairness",
    "tpr_drop",
    10.0,
    1.0,
    change=0.25,
    record_from=0.2,
    target="measured",
    watch=(OPPORTUNITY, PARITY),
    groups=(Group("a", 0.5, 0.3, 0.3), Group("b", 0.5, 0.3, 0.3)),
)


# Ten correlated features against a reference of 5,000 rows; after 30 minutes f1 turns sign, so its correlation
# with f0 goes from 0.8 to -0.8 while every feature keeps its own distribution (the 5m window holds 3000 rows).
MULTIVARIATE = ("MlmonModelMultivariateDrift", "MlmonModelFeatureDrift")
FLIP = Scenario(
    "multivariate: correlation of f0 and f1 0.8 to -0.8, 10/s (short)",
    "multivariate",
    "correlation_flip",
    10.0,
    1.0,
    change=0.5,
    record_from=0.4,
    target="measured",
    watch=MULTIVARIATE,
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


def test_a_fairness_replay_publishes_the_counts_the_rules_read():
    """The fairness rules read the exporter's per-group counts: the replay publishes every one of them, per
    window and group, and the groups behave as the scenario says (the minority's true positive rate falls)."""
    wanted = bench_alerts.wanted_metrics(rule_groups(bench_alerts.RULES_DIR, "fairness"))
    assert {"mlmon_fairness_group_samples", "mlmon_fairness_group_outcomes", "mlmon_fairness_reference_group"} <= wanted
    short = Scenario("short", "fairness", "tpr_drop", 10.0, 0.5, change=0.25, record_from=0.25, groups=TPR_DROP.groups)
    _, series = replay(short, 0, wanted)
    assert {key.split("{")[0] for key in series} == wanted
    assert (
        'mlmon_fairness_reference_group{job="mlmon", instance="replica-a:8490", model="m", feature="group", group="a"}'
        in series
    )

    def last(name: str, group: str, extra: str) -> float:
        labels = f'model="m", version="v1", window="5m", feature="group", group="{group}"{extra}'
        return series[f'{name}{{job="mlmon", instance="replica-a:8490", {labels}}}'][-1]

    for group, tpr in (("a", 0.8), ("b", 0.55)):
        tp = last("mlmon_fairness_group_outcomes", group, ', outcome="tp"')
        fn = last("mlmon_fairness_group_outcomes", group, ', outcome="fn"')
        selected = last("mlmon_fairness_group_predicted_positive", group, "")
        predictions = last("mlmon_fairness_group_samples", group, ', kind="predictions"')
        assert tp / (tp + fn) == pytest.approx(tpr, abs=0.08)
        assert selected / predictions == pytest.approx(0.3, abs=0.05)


@needs_promtool
def test_a_fairness_break_fires_its_criterion_only():
    result = run_one((TPR_DROP, 0, bench_alerts.RULES_DIR))
    assert PARITY not in result["alerts"], result
    delay = result["alerts"][OPPORTUNITY]["delay_minutes"]
    assert 30 <= delay <= 40, result  # for: 30m, once the 5m window holds the change
    assert f"| {OPPORTUNITY} (warning) | {delay:.1f} min | 0 | measured |" in table(TPR_DROP, result)


def test_a_criterion_is_an_alert_of_its_own():
    output = """    expr: "count_over_time(harness:alert_started[3600s])", time: 1h,
        exp: nil
        got: {alertname="MlmonModelFairnessDisparity", criterion="equal_opportunity", severity="warning"} 1E+00
"""
    timeline = bench_alerts.parse_promtool(output, 15)
    assert list(timeline.starts) == [(OPPORTUNITY, "warning")]


def test_a_table_is_written_between_its_own_markers(tmp_path, monkeypatch):
    doc = tmp_path / "alerts.md"
    blocks = "".join(f"<!-- {b}:begin -->\nold {b}\n<!-- {b}:end -->\ntext\n" for b in bench_alerts.BLOCKS)
    doc.write_text(blocks)
    monkeypatch.setattr(bench_alerts, "DOC", str(doc))
    bench_alerts.write_doc(["new"], "bench-alerts-fairness")
    text = doc.read_text()
    assert (
        "old bench-alerts\n" in text
        and "<!-- bench-alerts-fairness:begin -->\nnew\n<!-- bench-alerts-fairness:end -->" in text
    )


def test_a_multivariate_replay_publishes_the_reconstruction_error():
    """The reference goes through build_profile, so the profile fits its reconstruction: the replay publishes
    the error per window and the reference's bounds, and the flip takes the error over the upper bound."""
    wanted = bench_alerts.wanted_metrics(rule_groups(bench_alerts.RULES_DIR, "multivariate"))
    assert {
        "mlmon_multivariate_drift",
        "mlmon_multivariate_drift_samples",
        "mlmon_multivariate_drift_threshold",
    } <= wanted
    steps, series = replay(FLIP, 0, wanted)
    instance = 'job="mlmon", instance="replica-a:8490", model="m"'
    upper = series[f'mlmon_multivariate_drift_threshold{{{instance}, bound="upper"}}'][-1]
    error = series[f'mlmon_multivariate_drift{{{instance}, version="v1", window="5m"}}']
    change = int((FLIP.change - FLIP.record_from) * HOUR / FLIP.step)
    assert max(error[:change]) < upper < error[-1], (upper, error)
    assert series[f'mlmon_multivariate_drift_samples{{{instance}, version="v1", window="5m"}}'][-1] >= 2500


@needs_promtool
def test_a_correlation_flip_fires_the_multivariate_alert_alone():
    result = run_one((FLIP, 0, bench_alerts.RULES_DIR))
    assert "MlmonModelFeatureDrift" not in result["alerts"], result  # every marginal is kept
    delay = result["alerts"]["MlmonModelMultivariateDrift"]["delay_minutes"]
    assert 15 <= delay <= 20, result  # for: 15m, once the 5m window's mean error is over the bound
    assert f"| MlmonModelMultivariateDrift (warning) | {delay:.1f} min | 0 | measured |" in table(FLIP, result)


def test_the_multivariate_table_names_its_settings():
    header = table(FLIP, {"scenario": FLIP.name, "seed": 0, "alerts": {}}).splitlines()[0]
    assert "the default settings (`drift.min_samples` 100, `drift.multivariate.variance` 0.65, " in header
    assert "chunks of a tenth of the reference's rows (500 of 5,000)" in header
    assert "`drift.thresholds.psi` 0.25)" in header
