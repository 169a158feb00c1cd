"""End to end: exporter -> Prometheus -> Alertmanager -> Slack and PagerDuty, all real, all on loopback.

Prometheus and Alertmanager run with copies of the committed prometheus/ and alertmanager/ files in which
only targets, URLs, intervals and for:/group timings are rewritten. Slack and PagerDuty are a local HTTP
receiver, so nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager")

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None or ALERTMANAGER is None,
    reason="needs /usr/bin/prometheus and /usr/bin/prometheus-alertmanager (Debian packages prometheus, "
    "prometheus-alertmanager; `make test` installs them)",
)

ALERT = "MlmonModelAccuracyLow"
RUNBOOK = "https://github.com/mlmon/mlmon/blob/main/docs/runbooks.md#mlmonmodelaccuracylow"
ROUTING_KEY = "test-routing-key-0123456789abcdef"

EXPORTER_CONFIG = """
windows: ["5m", "1h", "1d"]
# Low enough for a test; traffic and label staleness far beyond the test's runtime.
thresholds: {accuracy_min: 0.7, traffic_stale_seconds: 3600, labels_stale_seconds: 86400}
models:
  - name: churn
    task: binary
    classes: [stay, churn]
    positive_class: churn
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout: float):
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Receiver:
    """Stands in for Slack (POST /slack) and PagerDuty (POST /pagerduty); records every JSON body."""

    def __init__(self):
        self.bodies: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.bodies.append((self.path, body))
                self.send_response(202)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"status": "success"}')

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def received(self, path: str) -> list[dict]:
        with self.lock:
            return [body for p, body in self.bodies if p == path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def slack_message(receiver: Receiver, status: str):
    for body in receiver.received("/slack"):
        attachment = body["attachments"][0]
        if attachment["title"].startswith(f"[{status.upper()}") and ALERT in attachment["title"]:
            return body
    return None


def pagerduty_event(receiver: Receiver, action: str):
    for body in receiver.received("/pagerduty"):
        if body["event_action"] == action and ALERT in body["payload"]["summary"]:
            return body
    return None


# Rewriting the committed files: targets, URLs, intervals and timings only.


def write_scrape_secrets(folder: Path) -> None:
    """The files the committed `mlmon` job reads (tls_config.ca_file, basic_auth.password_file): a throwaway CA."""
    trustme = pytest.importorskip("trustme")
    folder.mkdir(parents=True, exist_ok=True)
    trustme.CA().cert_pem.write_to_path(str(folder / "mlmon_ca.crt"))
    (folder / "mlmon_scrape_password").write_text("not-used-over-plain-http")


def write_prometheus_config(tmp: Path, exporter: str, prometheus: str, alertmanager: str) -> Path:
    src = ROOT / "prometheus"
    config = yaml.safe_load((src / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [alertmanager]}]
    own_targets = {"prometheus": prometheus, "alertmanager": alertmanager}
    for job in config["scrape_configs"]:
        if job["job_name"] in own_targets:
            job["static_configs"] = [{"targets": [own_targets[job["job_name"]]]}]
    assert config["rule_files"] == ["rules/*.yml"]
    dst = tmp / "prometheus"
    (dst / "targets").mkdir(parents=True)
    (dst / "rules").mkdir()
    targets = yaml.safe_load((src / "targets" / "mlmon.yml").read_text())
    targets[0]["targets"] = [exporter]
    # This exporter runs without a web config: plain HTTP, chosen per target as targets/README.md says. The
    # job's TLS and basic-auth settings stay as committed, so their files must exist (tests/security/test_webconfig.py
    # scrapes a protected exporter with them).
    targets[0].setdefault("labels", {})["__scheme__"] = "http"
    (dst / "targets" / "mlmon.yml").write_text(yaml.safe_dump(targets))
    write_scrape_secrets(dst / "secrets")
    for rule_file in (src / "rules").glob("*.yml"):
        rules = yaml.safe_load(rule_file.read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    # Prometheus applies discovered targets at most every 5 s, so up{job="mlmon"} is absent
                    # for the first seconds: the absent alert gets more than that.
                    rule["for"] = "30s" if rule.get("alert") == "MlmonExporterAbsent" else "2s"
                # keep_firing_for would hold the alert for minutes after it recovered.
                rule.pop("keep_firing_for", None)
        (dst / "rules" / rule_file.name).write_text(yaml.safe_dump(rules, sort_keys=False))
    (dst / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dst / "prometheus.yml"


def write_alertmanager_config(tmp: Path, receiver_url: str, webhooks: dict[str, str] | None = None) -> Path:
    """`webhooks`: the URL of each receiver's webhook_configs (the retraining hook); by default the local
    receiver, on a path of its own."""
    src = ROOT / "alertmanager"
    config = yaml.safe_load((src / "alertmanager.yml").read_text())

    def fast(route: dict) -> None:
        for key in ("group_wait", "group_interval"):
            if key in route or route is config["route"]:
                route[key] = "1s"
        for child in route.get("routes", []):
            fast(child)

    fast(config["route"])
    secrets = tmp / "secrets"
    secrets.mkdir()
    (secrets / "slack_webhook_url").write_text(f"{receiver_url}/slack\n")
    (secrets / "pagerduty_routing_key").write_text(f"{ROUTING_KEY}\n")
    # Never let a default endpoint be used: every integration is pointed at the receiver.
    config.setdefault("global", {})["pagerduty_url"] = f"{receiver_url}/pagerduty"
    for rcv in config["receivers"]:
        for slack in rcv.get("slack_configs", []):
            slack["api_url_file"] = str(secrets / "slack_webhook_url")
        for pagerduty in rcv.get("pagerduty_configs", []):
            pagerduty["routing_key_file"] = str(secrets / "pagerduty_routing_key")
            pagerduty["url"] = f"{receiver_url}/pagerduty"
        for webhook in rcv.get("webhook_configs", []):
            webhook["url"] = (webhooks or {}).get(rcv["name"], f"{receiver_url}/webhook/{rcv['name']}")
        assert set(rcv) <= {"name", "slack_configs", "pagerduty_configs", "webhook_configs"}, (
            f"unexpected integration in {rcv}"
        )
    dst = tmp / "alertmanager"
    shutil.copytree(src / "templates", dst / "templates")
    (dst / "alertmanager.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dst / "alertmanager.yml"


class Processes:
    """Starts processes with their output in files, and stops every one of them."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "w")
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        out.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()[-3000:]

    def wait_ready(self, name: str, url: str, timeout: float = 20) -> None:
        def ready():
            if self.procs[name].poll() is not None:
                raise AssertionError(f"{name} exited: {self.log(name)}")
            try:
                return requests.get(url, timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(f"{name} to be ready", ready, timeout)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def stack(tmp_path):
    ports = {name: free_port() for name in ("exporter", "prometheus", "alertmanager")}
    addr = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    receiver = Receiver()
    procs = Processes(tmp_path)
    try:
        exporter_config = tmp_path / "mlmon.yml"
        exporter_config.write_text(EXPORTER_CONFIG)
        prometheus_config = write_prometheus_config(
            tmp_path, addr["exporter"], addr["prometheus"], addr["alertmanager"]
        )
        alertmanager_config = write_alertmanager_config(tmp_path, receiver.url)

        procs.start(
            "exporter",
            [
                sys.executable,
                "-m",
                "exporter",
                "serve",
                "--config",
                str(exporter_config),
                "--port",
                str(ports["exporter"]),
            ],
        )
        # The exporter first, so that Prometheus's first scrape finds it.
        procs.wait_ready("exporter", f"http://{addr['exporter']}/readyz")
        procs.start(
            "alertmanager",
            [
                ALERTMANAGER,
                f"--config.file={alertmanager_config}",
                f"--storage.path={tmp_path / 'alertmanager-data'}",
                f"--web.listen-address={addr['alertmanager']}",
                "--cluster.listen-address=",  # empty: no HA gossip on 0.0.0.0:9094
            ],
        )
        procs.start(
            "prometheus",
            [
                PROMETHEUS,
                f"--config.file={prometheus_config}",
                f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
                f"--web.listen-address={addr['prometheus']}",
            ],
        )
        procs.wait_ready("alertmanager", f"http://{addr['alertmanager']}/-/ready")
        procs.wait_ready("prometheus", f"http://{addr['prometheus']}/-/ready")
        yield {
            "exporter": f"http://{addr['exporter']}",
            "prometheus": f"http://{addr['prometheus']}",
            "receiver": receiver,
            "procs": procs,
        }
    finally:
        procs.stop_all()
        receiver.close()


def predict_then_label(exporter: str, ids: list[str], predicted: str, actual: str) -> None:
    """Post predictions of churn v1 with these ids, then their labels, as a model server would."""
    batches = {
        "predictions": [{"model": "churn", "version": "v1", "id": i, "prediction": predicted} for i in ids],
        "labels": [{"model": "churn", "id": i, "label": actual} for i in ids],
    }
    for kind, items in batches.items():
        response = requests.post(f"{exporter}/api/v1/{kind}", json={kind: items}, timeout=5)
        assert response.status_code == 202, response.text


def test_accuracy_collapse_pages_and_resolves(stack):
    exporter, receiver = stack["exporter"], stack["receiver"]
    started = time.monotonic()

    # 100 predictions of churn v1, all "churn", labelled "stay": accuracy 0 over 100 labelled samples.
    predict_then_label(exporter, [f"w{i}" for i in range(100)], predicted="churn", actual="stay")

    slack = wait_for("the firing Slack message", lambda: slack_message(receiver, "firing"), 30)
    page = wait_for("the PagerDuty trigger", lambda: pagerduty_event(receiver, "trigger"), 10)

    attachment = slack["attachments"][0]
    assert slack["channel"] == "#mlmon-alerts"
    assert attachment["title"] == f"[FIRING:1] {ALERT} churn"
    assert attachment["color"] == "danger"
    text = attachment["text"]
    assert "*Model accuracy is below its floor.*" in text
    assert "*churn v1* (critical, firing)" in text
    assert "Accuracy of model churn version v1 is below its floor of 70% (threshold accuracy_min)" in text
    # Every span holds the same 100 labels here, so any of them may be the one named.
    assert re.search(
        r": 0% over the last \w+, from 100 labels \(z = -15\.28\); at most \d+(\.\d+)?% with 99% confidence", text
    )
    assert f"<{RUNBOOK}|Runbook>" in text
    assert "<http://localhost:3000/d/mlmon-model?var-model=churn&var-version=v1|Dashboard>" in text

    assert page["routing_key"] == ROUTING_KEY
    assert page["payload"]["summary"] == f"[FIRING:1] {ALERT} churn: Model accuracy is below its floor."
    assert page["payload"]["severity"] == "critical"
    details = page["payload"]["custom_details"]
    assert details["model"] == "churn" and details["version"] == "v1"
    assert "version v1" in details["alerts"] and RUNBOOK in details["alerts"]
    assert {"href": RUNBOOK, "text": "Runbook"} in page["links"]

    # Every rule evaluates against the real exporter's series: a failing join would show here.
    rules = requests.get(f"{stack['prometheus']}/api/v1/rules", timeout=5).json()["data"]["groups"]
    broken = [(r["name"], r.get("lastError")) for g in rules for r in g["rules"] if r["health"] == "err"]
    assert not broken, broken

    # 400 right ones: accuracy 400 / 500 = 80%, above the floor again.
    predict_then_label(exporter, [f"r{i}" for i in range(400)], predicted="stay", actual="stay")

    resolved = wait_for("the resolved Slack message", lambda: slack_message(receiver, "resolved"), 30)
    resolve = wait_for("the PagerDuty resolve", lambda: pagerduty_event(receiver, "resolve"), 10)
    assert resolved["attachments"][0]["title"] == f"[RESOLVED] {ALERT} churn"
    assert resolved["attachments"][0]["color"] == "good"
    assert resolve["dedup_key"] == page["dedup_key"]

    # Nothing but this alert went to PagerDuty or Slack (the watchdog goes to the silent heartbeat).
    sent = {b["payload"]["summary"].split()[1] for b in receiver.received("/pagerduty")}
    sent |= {b["attachments"][0]["title"].split()[1] for b in receiver.received("/slack")}
    assert sent == {ALERT}
    # The retraining route is off in the committed file: the quality alert did not reach its webhook.
    assert receiver.received("/webhook/retrain") == []
    assert time.monotonic() - started < 60
