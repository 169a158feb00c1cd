"""`mlmon demo` as a subprocess for the live tests: the exporter, the example model server, traffic with drift,
late labels and a v2 deployment, and a real Prometheus scraping them every 2 s."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 75  # seconds for the demo to reach the state the dashboards need


def prom_query(prom: str, expr: str) -> dict:
    r = requests.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    assert r.status_code == 200, (expr, r.status_code, r.text)
    body = r.json()
    assert body["status"] == "success", (expr, body)
    return body["data"]


class Demo:
    """`mlmon demo` as a subprocess; it stops everything it started after `duration` seconds, or on SIGINT."""

    def __init__(self, duration: float = 32, linger: bool = False) -> None:
        from tests.serve.test_server import free_port

        self.port = free_port()
        self.exporter = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "exporter", "demo", "--port", str(self.port), "--plain", "--quiet",
                "--duration", str(duration), "--speed", "10", "--rate", "20", "--label-delay", "1",
                "--status-every", "60", *(["--linger"] if linger else []),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.prometheus: str | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            m = re.search(r"Prometheus +(http://127\.0\.0\.1:\d+)/targets", line)
            if m:
                self.prometheus = m.group(1)

    def stop(self) -> None:
        # The demo stops everything it started on SIGINT (Ctrl-C).
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def ready(prom: str) -> bool:
    """Labels joined, drift computed, v2 deployed and its traffic rated: what every panel needs."""
    checks = [
        'count by (version) (mlmon_model_info{job="mlmon",version="v2"})',
        'rate(mlmon_predictions_total{job="mlmon",version="v2"}[20s]) > 0',
        "mlmon_feature_drift",
        "mlmon_prediction_drift",
        "mlmon_label_drift",
        "mlmon_accuracy",
        "mlmon_mae",
        "rate(mlmon_label_delay_seconds_count[20s]) > 0",
        "mlmon_model_server_resident_memory_bytes",
    ]
    try:
        return all(prom_query(prom, q)["result"] for q in checks)
    except (requests.RequestException, AssertionError):
        return False
