"""The real thing: `mlmon serve` as a process on loopback, fed by the Python client, scraped, stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from exporter.client import Client
from tests.conftest import Metrics

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exporter exited early: {proc.stderr.read()}")
        try:
            if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise AssertionError("exporter did not become ready")


@pytest.fixture
def exporter(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            "serve",
            "--config",
            "examples/config.yml",
            "--port",
            str(port),
            "--log.format",
            "json",
            "--storage.path",
            str(tmp_path / "data"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_client_to_served_exporter_to_metrics(exporter):
    url, _ = exporter
    with Client(url, flush_interval=0.05, report_resources_every=0.2, server="model-server-1") as mon:
        for i in range(200):
            mon.log_prediction(
                "churn",
                "churn" if i % 4 == 0 else "stay",
                id=f"r{i}",
                score=0.9 if i % 4 == 0 else 0.1,
                features={"tenure": i, "plan": "basic"},
                latency_seconds=0.004,
                version="v1",
            )
        for i in range(0, 200, 2):
            mon.log_label("churn", f"r{i}", "stay")
        assert mon.flush(10)
        deadline = time.monotonic() + 10
        while mon.stats().get("resource_reports", 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    m = Metrics(requests.get(f"{url}/metrics", timeout=5).text)
    assert m.get("mlmon_predictions_total", model="churn", version="v1") == 200
    assert m.get("mlmon_labels_total", model="churn", version="v1") == 100
    assert m.get("mlmon_pending_labels", model="churn") == 100
    # labels "stay" for even ids; ids divisible by 4 were predicted churn: 50 wrong of 100
    assert m.get("mlmon_accuracy", model="churn", version="v1", window="5m") == 0.5
    assert m.get("mlmon_prediction_latency_seconds_count", model="churn", version="v1") == 200
    assert m.get("mlmon_model_server_cpu_seconds_total", model="churn", server="model-server-1") > 0
    assert m.get("mlmon_model_server_resident_memory_bytes", model="churn", server="model-server-1") > 1e6


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is installed by `make test`")
def test_live_scrape_passes_promtool_check_metrics(exporter):
    url, _ = exporter
    requests.post(
        f"{url}/api/v1/predictions",
        json={
            "predictions": [
                {
                    "model": "churn",
                    "id": "a",
                    "prediction": "churn",
                    "score": 0.8,
                    "label": "stay",
                    "latency_seconds": 0.1,
                },
                {
                    "model": "iris",
                    "prediction": "setosa",
                    "scores": {"setosa": 0.8, "versicolor": 0.1, "virginica": 0.1},
                    "label": "setosa",
                },
                {"model": "diabetes", "prediction": 120.0, "label": 100.0},
            ]
        },
        timeout=5,
    ).raise_for_status()
    text = requests.get(f"{url}/metrics", timeout=5).text
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "_created" not in text


def test_metrics_negotiate_openmetrics_and_gzip(exporter):
    url, _ = exporter
    r = requests.get(
        f"{url}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"},
        timeout=5,
    )
    assert r.headers["Content-Type"].startswith("application/openmetrics-text")
    assert r.headers.get("Content-Encoding") == "gzip"
    assert r.text.rstrip().endswith("# EOF")


def test_served_by_a_production_server_not_flask_dev(exporter):
    url, _ = exporter
    r = requests.get(f"{url}/healthz", timeout=5)
    assert r.headers.get("Server") == "mlmon"
    assert "Werkzeug" not in r.headers.get("Server", "")


def test_sigterm_stops_gracefully_with_structured_logs(exporter):
    url, proc = exporter
    requests.get(f"{url}/metrics", timeout=5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    lines = [json.loads(line) for line in proc.stderr.read().splitlines() if line.strip()]
    messages = [e["msg"] for e in lines]
    assert messages[:2] == ["state restored", "listening"] and "stopping" in messages and messages[-1] == "stopped"
    restored = lines[0]
    assert restored["replayed"] == 0 and restored["snapshot_seq"] == 0  # a first start on an empty directory
    assert all({"ts", "level", "logger", "msg"} <= set(e) for e in lines)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthz", timeout=2)


def test_python_dash_m_and_console_script_agree():
    script = os.path.join(os.path.dirname(sys.executable), "mlmon")
    out = subprocess.run([script, "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("mlmon ")
    out2 = subprocess.run([sys.executable, "-m", "exporter", "--version"], capture_output=True, text=True)
    assert out2.stdout == out.stdout


def test_client_drops_only_the_bad_events_of_a_rejected_batch(exporter):
    url, _ = exporter
    with Client(url, flush_interval=0.05, report_resources_every=None, batch_size=100) as mon:
        for i in range(10):
            mon.log_prediction("churn", "maybe" if i == 3 else "stay", id=f"b{i}", score=0.2)
        assert mon.flush(10)
        stats = mon.stats()
    assert stats["dropped_rejected"] == 1 and stats["sent"] == 9
    m = Metrics(requests.get(f"{url}/metrics", timeout=5).text)
    assert m.get("mlmon_predictions_total", model="churn", version="default") == 9
    assert m.get("mlmon_ingest_errors_total", model="churn", reason="unknown_class") == 1


BLAS_PROBE = """
import sys
import threadpoolctl
from exporter import cli

def blas_threads(*_):
    print(max(i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"))
    return 0

if sys.argv[1] == "serve":
    cli._serve = blas_threads  # what the server would run with, without binding a port
    sys.exit(cli.main(["serve", "--config", "unused.yml"]))
import numpy  # noqa: F401  (numpy's own default, for comparison)
blas_threads()
"""


def test_serve_runs_numpy_with_one_blas_thread():
    """A BLAS thread pool spins on a busy host; `mlmon serve` asks for one thread before numpy is loaded, which
    the subcommands' modules do while the command line is parsed."""
    from exporter import cli

    env = {k: v for k, v in os.environ.items() if k not in cli.BLAS_THREADS}

    def probe(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", BLAS_PROBE, mode], env=env, cwd=ROOT, capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip())

    if probe("plain") < 2:
        pytest.skip("numpy's BLAS runs one thread here anyway (one core)")
    assert probe("serve") == 1
