"""End to end: alerts pushed to the real Alertmanager, routed by the committed alertmanager.yml (its retraining
route opened, as docs/retraining.md says), reach the real `mlmon retrain-hook`, which runs a command or POSTs to
a local endpoint standing in for Airflow. Everything on loopback.

The Alertmanager file is rewritten as tests/e2e/test_alerting_e2e.py does (receivers to loopback, 1s group
timings), plus the one matcher that turns retraining on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
import yaml

from tests.e2e.test_alerting_e2e import (
    ALERTMANAGER,
    Processes,
    Receiver,
    free_port,
    wait_for,
    write_alertmanager_config,
)
from tests.test_retrain import Endpoint

pytestmark = pytest.mark.skipif(
    ALERTMANAGER is None,
    reason="needs /usr/bin/prometheus-alertmanager (Debian package prometheus-alertmanager; `make test` installs it)",
)

# Writes the environment it was started with to OUT/<request id>.json: the stand-in for a retraining job.
JOB_SCRIPT = """
import json, os, sys
env = {k: v for k, v in os.environ.items() if k.startswith("MLMON_")}
with open(os.path.join(sys.argv[1], env["MLMON_REQUEST_ID"] + ".json"), "w") as fh:
    json.dump(env, fh)
print("retraining", env["MLMON_MODEL"], env["MLMON_VERSION"])
"""


def now_iso(offset: float = 0) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=offset)).isoformat(timespec="milliseconds")


def alert(alertname: str, severity: str, ends: bool = False, **labels: str) -> dict:
    body = {
        "labels": {"alertname": alertname, "severity": severity, "job": "mlmon", **labels},
        "annotations": {"summary": f"{alertname} in a test"},
        # Now, not earlier: Alertmanager then waits group_wait (1s) and sends alerts pushed together in one
        # notification (a group whose first alert started group_wait ago or more is sent at once).
        "startsAt": now_iso(),
        "generatorURL": "http://127.0.0.1:9090/graph",
    }
    if ends:  # resolved: it ended a second ago
        body["startsAt"], body["endsAt"] = now_iso(-60), now_iso(-1)
    return body


def push(alertmanager: str, *alerts: dict) -> None:
    response = requests.post(f"{alertmanager}/api/v2/alerts", json=list(alerts), timeout=5)
    assert response.status_code == 200, response.text


def audit_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def open_retraining(config_path: Path, models: str) -> None:
    """Turn retraining on in the test's copy: the one matcher docs/retraining.md says to edit."""
    config = yaml.safe_load(config_path.read_text())
    (route,) = [r for r in config["route"]["routes"] if r.get("receiver") == "retrain"]
    assert route["matchers"].count('model=~""') == 1, route
    route["matchers"] = [f'model=~"{models}"' if m == 'model=~""' else m for m in route["matchers"]]
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture
def stack(tmp_path):
    """start(hook_config_text) -> the Alertmanager URL, with the hook behind its retraining route."""
    receiver = Receiver()
    procs = Processes(tmp_path)

    def start(hook_config: str) -> dict:
        hook_port, am_port = free_port(), free_port()
        (tmp_path / "retrain.yml").write_text(hook_config)
        procs.start(
            "retrain-hook",
            [
                sys.executable,
                "-m",
                "exporter",
                "retrain-hook",
                "--config",
                str(tmp_path / "retrain.yml"),
                "--listen",
                f"127.0.0.1:{hook_port}",
            ],
        )
        config = write_alertmanager_config(
            tmp_path, receiver.url, webhooks={"retrain": f"http://127.0.0.1:{hook_port}/alerts"}
        )
        open_retraining(config, ".+")
        check = subprocess.run(["amtool", "check-config", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        procs.start(
            "alertmanager",
            [
                ALERTMANAGER,
                f"--config.file={config}",
                f"--storage.path={tmp_path / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
        )
        procs.wait_ready("retrain-hook", f"http://127.0.0.1:{hook_port}/healthz")
        procs.wait_ready("alertmanager", f"http://127.0.0.1:{am_port}/-/ready")
        return {"alertmanager": f"http://127.0.0.1:{am_port}", "hook": f"http://127.0.0.1:{hook_port}"}

    try:
        yield start, receiver, procs
    finally:
        procs.stop_all()
        receiver.close()


def test_command_mode_triggers_once_per_model_version_and_ignores_the_rest(stack, tmp_path):
    start, receiver, procs = stack
    started = time.monotonic()
    runs = tmp_path / "runs"
    runs.mkdir()
    (tmp_path / "job.py").write_text(JOB_SCRIPT)
    audit = tmp_path / "audit.log"
    urls = start(
        textwrap.dedent(
            f"""
            command: [{json.dumps(sys.executable)}, {json.dumps(str(tmp_path / "job.py"))}, {json.dumps(str(runs))}]
            timeout: 20s
            cooldown: 1h
            max_per_hour: 10
            audit_log: audit.log
            state_file: state.json
            """
        )
    )
    am = urls["alertmanager"]

    def actions() -> list[tuple[str, str, str, str]]:
        return [(a["action"], a["alertname"], a["model"], a["version"]) for a in audit_lines(audit)]

    # 1. A quality alert of churn v1: one retraining request.
    low_v1 = alert("MlmonModelAccuracyLow", "critical", model="churn", version="v1")
    push(am, low_v1)
    wait_for("the first trigger", lambda: len(list(runs.glob("*.json"))) == 1, 20)
    wait_for("its audit line", lambda: ("triggered", "MlmonModelAccuracyLow", "churn", "v1") in actions(), 10)

    # 2. The same alert again, and two drift alerts of the same version (one group, one notification): the hook
    # hears of the drift and skips both as duplicates.
    push(
        am,
        low_v1,
        alert("MlmonModelFeatureDrift", "warning", model="churn", version="v1", feature="tenure", method="psi"),
        alert("MlmonModelFeatureDrift", "warning", model="churn", version="v1", feature="plan", method="psi"),
    )

    def duplicates() -> set[str]:
        return {a["fingerprint"] for a in audit_lines(audit) if a["action"] == "skipped-duplicate"}

    # Each of the two drift alerts is skipped (Alertmanager may send the group more than once: each time, each
    # alert of it is a duplicate).
    wait_for("the two drift alerts skipped as duplicates", lambda: len(duplicates()) == 2, 20)
    assert {a[1:] for a in actions() if a[0] == "skipped-duplicate"} == {("MlmonModelFeatureDrift", "churn", "v1")}

    # 3. Another version triggers; alerts that are no model's quality or drift never reach the hook.
    push(
        am,
        alert("MlmonExporterDown", "critical", instance="127.0.0.1:8490"),
        alert("MlmonModelLatencyHigh", "warning", model="churn", version="v1"),
        alert("MlmonModelAccuracyLow", "critical", model="churn", version="v2"),
    )
    wait_for("the second trigger", lambda: len(list(runs.glob("*.json"))) == 2, 20)
    # Alertmanager has routed the others by now (the same 1s group_wait): Slack got them, the hook did not.
    wait_for(
        "the exporter-down notification",
        lambda: any("MlmonExporterDown" in b["attachments"][0]["title"] for b in receiver.received("/slack")),
        20,
    )
    wait_for(
        "the latency notification",
        lambda: any("MlmonModelLatencyHigh" in b["attachments"][0]["title"] for b in receiver.received("/slack")),
        20,
    )

    # 4. churn v1 resolves: Alertmanager tells the hook, which does nothing but say so.
    push(am, alert("MlmonModelAccuracyLow", "critical", ends=True, model="churn", version="v1"))
    wait_for(
        "the resolved alert", lambda: ("ignored-resolved", "MlmonModelAccuracyLow", "churn", "v1") in actions(), 20
    )

    requests_made = sorted((json.loads(p.read_text()) for p in runs.glob("*.json")), key=lambda r: r["MLMON_VERSION"])
    assert [(r["MLMON_MODEL"], r["MLMON_VERSION"]) for r in requests_made] == [("churn", "v1"), ("churn", "v2")]
    for env in requests_made:
        assert env["MLMON_ALERTNAME"] == "MlmonModelAccuracyLow" and env["MLMON_SEVERITY"] == "critical"
        alert_json = json.loads(env["MLMON_ALERT_JSON"])
        assert alert_json["status"] == "firing" and alert_json["labels"]["model"] == "churn"
        assert alert_json["fingerprint"]

    lines = audit_lines(audit)
    triggered = [line for line in lines if line["action"] == "triggered"]
    assert sorted(line["version"] for line in triggered) == ["v1", "v2"]
    assert all(line["exit_code"] == 0 and line["mode"] == "command" for line in triggered)
    assert {line["request_id"] for line in triggered} == {r["MLMON_REQUEST_ID"] for r in requests_made}
    assert not [line for line in lines if line["alertname"] in ("MlmonExporterDown", "MlmonModelLatencyHigh")]
    assert {line["action"] for line in lines} == {"triggered", "skipped-duplicate", "ignored-resolved"}
    assert "retraining churn v1" in procs.log("retrain-hook")  # the command's output, in the hook's log

    state = json.loads((tmp_path / "state.json").read_text())
    assert sorted((e["model"], e["version"]) for e in state["last"]) == [("churn", "v1"), ("churn", "v2")]
    health = requests.get(f"{urls['hook']}/healthz", timeout=5).json()
    assert health["triggers_last_hour"] == 2 and health["queued"] == 0
    assert time.monotonic() - started < 60


def test_url_mode_posts_an_airflow_dag_run_and_holds_the_rate_limit(stack, tmp_path):
    start, _, _ = stack
    started = time.monotonic()
    airflow = Endpoint()
    try:
        (tmp_path / "airflow_token").write_text("airflow-test-token\n")
        audit = tmp_path / "audit.log"
        urls = start(
            textwrap.dedent(
                f"""
                url: {airflow.url}/api/v1/dags/retrain_model/dagRuns
                bearer_token_file: airflow_token
                body:
                  dag_run_id: "{{request_id}}"
                  conf: {{model: "{{model}}", version: "{{version}}", alertname: "{{alertname}}"}}
                max_per_hour: 1
                audit_log: audit.log
                """
            )
        )
        # Two models break: one request an hour is allowed, so the second waits.
        push(
            urls["alertmanager"],
            alert("MlmonModelAccuracyLow", "critical", model="churn", version="v1"),
            alert("MlmonModelPredictionDrift", "warning", model="fraud", version="v3"),
        )
        wait_for("both decisions", lambda: len(audit_lines(audit)) == 2, 20)
        time.sleep(1)  # nothing more comes
        lines = audit_lines(audit)
        assert sorted(line["action"] for line in lines) == ["skipped-rate-limit", "triggered"]
        (triggered,) = [line for line in lines if line["action"] == "triggered"]
        (limited,) = [line for line in lines if line["action"] == "skipped-rate-limit"]
        assert triggered["http_status"] == 200 and triggered["mode"] == "url"
        assert "max_per_hour 1" in limited["reason"]

        ((path, headers, body),) = airflow.requests
        assert path == "/api/v1/dags/retrain_model/dagRuns"
        assert headers["Authorization"] == "Bearer airflow-test-token"
        assert headers["Content-Type"] == "application/json"
        assert body == {
            "dag_run_id": triggered["request_id"],
            "conf": {"model": triggered["model"], "version": triggered["version"], "alertname": triggered["alertname"]},
        }
        assert time.monotonic() - started < 60
    finally:
        airflow.close()
