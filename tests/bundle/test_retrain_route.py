"""The retraining route of alertmanager/alertmanager.yml (docs/retraining.md): off as committed, and once its one
matcher names models, it sends their quality and drift alerts, and nothing else, to the hook as well."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from exporter import retrain
from tests.bundle.test_rules import AMTOOL, ROOT, needs_amtool, run

ALERTMANAGER_CONFIG = ROOT / "alertmanager" / "alertmanager.yml"
# The switch: the one line ops edit to turn retraining on.
SWITCH = re.compile(r'^(\s*- )model=~""$', re.M)


def opened(tmp_path: Path, models: str) -> Path:
    """A copy of the committed file with the retraining route opened for `models` (a regex)."""
    text = ALERTMANAGER_CONFIG.read_text()
    assert len(SWITCH.findall(text)) == 1, 'the retraining route needs exactly one `- model=~""` matcher'
    path = tmp_path / "alertmanager.yml"
    path.write_text(SWITCH.sub(lambda m: f'{m.group(1)}model=~"{models}"', text))
    (tmp_path / "templates").symlink_to(ROOT / "alertmanager" / "templates")
    return path


def receivers_of(config: Path, labels: list[str]) -> str:
    result = run(AMTOOL, "config", "routes", "test", f"--config.file={config}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


QUALITY = ["alertname=MlmonModelAccuracyLow", "severity=critical", "job=mlmon", "model=churn", "version=v1"]
DRIFT = [
    "alertname=MlmonModelFeatureDrift",
    "severity=warning",
    "job=mlmon",
    "model=churn",
    "version=v1",
    "feature=tenure",
]


@needs_amtool
@pytest.mark.parametrize(
    "labels",
    [
        QUALITY,
        DRIFT,
        ["alertname=MlmonModelCalibrationGap", "severity=warning", "model=fraud", "version=v3"],
        # A quality alert without a model label (no rule makes one) does not slip through either.
        ["alertname=MlmonModelAccuracyLow", "severity=critical"],
    ],
)
def test_by_default_no_alert_reaches_the_retraining_hook(labels):
    assert "retrain" not in receivers_of(ALERTMANAGER_CONFIG, labels).split(",")


@needs_amtool
@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        (QUALITY, "retrain,pagerduty,slack"),
        (DRIFT, "retrain,slack"),
        (["alertname=MlmonModelPredictionDrift", "severity=warning", "model=fraud", "version=v2"], "retrain,slack"),
        # A model not named, a model alert retraining cannot fix, the exporter's own alerts, the heartbeat.
        (["alertname=MlmonModelAccuracyLow", "severity=critical", "model=iris", "version=v1"], "pagerduty,slack"),
        (["alertname=MlmonModelLatencyHigh", "severity=warning", "model=churn", "version=v1"], "slack"),
        (["alertname=MlmonExporterDown", "severity=critical", "job=mlmon", "instance=a:8490"], "pagerduty,slack"),
        (["alertname=MlmonWatchdog", "severity=none"], "heartbeat"),
        (["alertname=MlmonModelAccuracyLow", "severity=critical"], "pagerduty,slack"),
    ],
)
def test_opened_for_some_models_it_takes_their_quality_and_drift_alerts_only(tmp_path, labels, receivers):
    config = opened(tmp_path, "churn|fraud")
    assert run(AMTOOL, "check-config", str(config)).returncode == 0
    assert receivers_of(config, labels) == receivers


@needs_amtool
def test_opened_for_every_model(tmp_path):
    config = opened(tmp_path, ".+")
    assert receivers_of(config, [*QUALITY[:3], "model=anything"]) == "retrain,pagerduty,slack"
    assert receivers_of(config, ["alertname=MlmonExporterAbsent", "severity=critical", "job=mlmon"]) == (
        "pagerduty,slack"
    )


def retrain_route() -> dict:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    (route,) = [r for r in config["route"]["routes"] if r.get("receiver") == "retrain"]
    return route


def test_the_route_names_the_hooks_default_alerts_and_every_one_is_a_rule():
    route = retrain_route()
    (names,) = [m for m in route["matchers"] if m.startswith("alertname=~")]
    listed = re.fullmatch(r'alertname=~"([^"]+)"', names).group(1).split("|")
    assert listed == list(retrain.DEFAULT_ALERTS)
    rules = {
        rule["alert"]
        for path in (ROOT / "prometheus" / "rules").glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert set(listed) <= rules, sorted(set(listed) - rules)
    assert {"model", "version"} <= set(route["group_by"])


def test_the_retraining_route_comes_first_and_lets_the_alerts_go_on():
    routes = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["route"]["routes"]
    assert routes[0].get("receiver") == "retrain" and routes[0]["continue"] is True


def test_the_webhook_is_where_the_hook_listens_by_default():
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    (receiver,) = [r for r in config["receivers"] if r["name"] == "retrain"]
    (webhook,) = receiver["webhook_configs"]
    url = urlsplit(webhook["url"])
    assert f"{url.hostname}:{url.port}" == retrain.DEFAULT_LISTEN
    assert url.path == "/alerts"
