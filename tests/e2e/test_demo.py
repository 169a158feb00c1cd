"""`mlmon demo` tells its story: a short, fast run, read from the exporter's /metrics while it plays."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import requests

from tests.conftest import Metrics
from tests.serve.test_server import free_port

LAG = 1.0  # seconds after a phase starts before its labels dominate (labels arrive 0.25 s late on average)


class DemoRun:
    """The demo as a subprocess; records its phase lines, its children and /metrics snapshots."""

    def __init__(self, *args: str):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "demo", "--port", str(self.port), "--plain", "--quiet", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.phases: dict[str, float] = {}
        self.children: set[int] = set()
        self.prometheus: str | None = None
        self.target_up = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            prom = re.search(r"Prometheus +(http://127\.0\.0\.1:\d+)/targets", line)
            if prom:
                self.prometheus = prom.group(1)
            m = re.search(r"phase=(\w+) cycle=0", line)
            if m:
                self.phases[m.group(1)] = time.monotonic()

    def watch(self) -> list[tuple[float, Metrics]]:
        """Scrape the exporter until the demo exits; remember every process it started."""
        snapshots = []
        while self.proc.poll() is None:
            try:
                self.children |= {p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)}
                text = requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text
                snapshots.append((time.monotonic(), Metrics(text)))
                if self.prometheus and not self.target_up:
                    result = requests.get(
                        f"{self.prometheus}/api/v1/query", params={"query": 'up{job="mlmon"}'}, timeout=2
                    ).json()["data"]["result"]
                    self.target_up = any(r["value"][1] == "1" for r in result)
            except (requests.RequestException, psutil.Error):
                pass
            time.sleep(0.3)
        return snapshots

    def survivors(self) -> list[int]:
        time.sleep(0.2)
        return [pid for pid in self.children if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]


def totals(m: Metrics, model: str) -> tuple[float, float, float]:
    """(correct, labelled, absolute error) summed over versions, from the counters."""
    correct = sum(
        s.value for s in m.all("mlmon_outcomes_total", model=model) if s.labels["actual"] == s.labels["predicted"]
    )
    labelled = sum(s.value for s in m.all("mlmon_labels_total", model=model))
    abs_error = sum(s.value for s in m.all("mlmon_absolute_error_total", model=model))
    return correct, labelled, abs_error


def phase_quality(snapshots, phases: dict[str, float], model: str) -> dict[str, float]:
    """Accuracy (or MAE) of the labels joined during each phase, from counter deltas."""
    order = ["healthy", "covariate_drift", "concept_drift", "recovery"]
    out = {}
    for i, phase in enumerate(order):
        start = phases[phase] + LAG
        end = phases[order[i + 1]] + LAG if i + 1 < len(order) else snapshots[-1][0]
        inside = [m for t, m in snapshots if start <= t <= end]
        assert len(inside) >= 2, f"too few scrapes in {phase}"
        c0, n0, e0 = totals(inside[0], model)
        c1, n1, e1 = totals(inside[-1], model)
        assert n1 - n0 >= 20, f"too few labels in {phase} for {model}: {n1 - n0}"
        out[phase] = (e1 - e0) / (n1 - n0) if model == "diabetes" else (c1 - c0) / (n1 - n0)
    return out


def phase_max(snapshots, phases: dict[str, float], model: str, metric: str) -> dict[str, float]:
    """The largest value of a window gauge (1m window, any version) seen during each phase."""
    order = ["healthy", "covariate_drift", "concept_drift", "recovery"]
    out = {}
    for i, phase in enumerate(order):
        end = phases[order[i + 1]] if i + 1 < len(order) else snapshots[-1][0]
        values = [
            s.value for t, m in snapshots if phases[phase] <= t <= end for s in m.all(metric, model=model, window="1m")
        ]
        out[phase] = max(values, default=0.0)
    return out


def phase_estimate(snapshots, phases: dict[str, float], model: str) -> dict[str, float]:
    """Accuracy the calibrated scores promised for the predictions made during each phase: deltas of the 1h
    span's sums (by prediction time; nothing leaves it within the run), summed over versions, from 1.5 LAG after
    the phase starts (the client sends in batches of up to a second) to its end: the phase's own predictions."""
    order = ["healthy", "covariate_drift", "concept_drift", "recovery"]

    def sums(m: Metrics) -> tuple[float, float]:
        n = sum(s.value for s in m.all("mlmon_span_estimated", model=model, span="1h"))
        return n, sum(s.value for s in m.all("mlmon_span_estimated_correct", model=model, span="1h"))

    out = {}
    for i, phase in enumerate(order[:-1]):
        inside = [m for t, m in snapshots if phases[phase] + 1.5 * LAG <= t <= phases[order[i + 1]]]
        (n0, c0), (n1, c1) = sums(inside[0]), sums(inside[-1])
        assert n1 - n0 >= 50, f"too few scored predictions in {phase} for {model}: {n1 - n0}"
        out[phase] = (c1 - c0) / (n1 - n0)
    return out


def test_demo_story_shows_in_the_metrics_and_nothing_is_left_behind():
    run = DemoRun("--duration", "28", "--speed", "4", "--rate", "10", "--label-delay", "1", "--status-every", "5")
    snapshots = run.watch()
    output = "\n".join(run.lines)
    assert run.proc.wait(30) == 0, output
    assert set(run.phases) == {"healthy", "covariate_drift", "concept_drift", "recovery"}, output
    for model in ("cancer", "wine"):
        acc = phase_quality(snapshots, run.phases, model)
        assert acc["concept_drift"] < acc["healthy"] - 0.1, (model, acc)
        assert acc["recovery"] > acc["concept_drift"] + 0.1, (model, acc)
    for model in ("cancer", "wine", "diabetes"):  # the first three features of every model shift
        drifted = phase_max(snapshots, run.phases, model, "mlmon_drifted_features")
        assert drifted["covariate_drift"] >= 3 and drifted["healthy"] <= 1, (model, drifted)
    mae = phase_quality(snapshots, run.phases, "diabetes")
    assert mae["concept_drift"] > mae["healthy"] * 1.2, mae
    versions = {s.labels["version"] for s in snapshots[-1][1].all("mlmon_model_info", model="cancer")}
    assert versions == {"v1", "v2"}
    assert "stopped everything it started" in output
    if shutil.which("prometheus") and shutil.which("prometheus-alertmanager"):
        assert run.prometheus and run.target_up, "the demo's Prometheus never saw the exporter up"
    assert len(run.children) >= 2 and run.survivors() == [], output


def test_ctrl_c_stops_the_demo_and_everything_it_started():
    run = DemoRun("--duration", "600", "--no-prometheus")
    deadline = time.monotonic() + 60
    while "healthy" not in run.phases and time.monotonic() < deadline and run.proc.poll() is None:
        run.children |= {p.pid for p in psutil.Process(run.proc.pid).children(recursive=True)}
        time.sleep(0.2)
    assert "healthy" in run.phases, "\n".join(run.lines)
    run.children |= {p.pid for p in psutil.Process(run.proc.pid).children(recursive=True)}
    run.proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    try:
        code = run.proc.wait(60)  # its children get 10 s together to stop, then are killed
    except subprocess.TimeoutExpired:
        run.proc.kill()
        raise AssertionError("the demo did not stop within 60 s of Ctrl-C:\n" + "\n".join(run.lines)) from None
    assert code == 130, "\n".join(run.lines)
    assert time.monotonic() - sent < 30, ("slow to stop", time.monotonic() - sent, "\n".join(run.lines))
    assert len(run.children) >= 2 and run.survivors() == []


@pytest.mark.skipif(
    not (shutil.which("prometheus") and shutil.which("prometheus-alertmanager")),
    reason="needs Prometheus and Alertmanager (Debian packages prometheus, prometheus-alertmanager)",
)
def test_demo_pages_during_the_concept_drift_phase():
    """The critical page comes while the models are wrong, not after: the quality alerts decide on evidence."""
    run = DemoRun("--duration", "160", "--speed", "4", "--rate", "10", "--label-delay", "1")
    snapshots = run.watch()
    output = "\n".join(run.lines)
    assert run.proc.wait(30) == 0, output
    # Before any label: the cancer model's inputs move to where it is unsure, and its estimated accuracy falls
    # (0.95 to 0.90 on the demo's data; about 1,500 predictions a phase here). The estimate reads the scores
    # only: under the concept drift the inputs are as when healthy, and so is the estimate, while the labels
    # show the fall (the calibration gap).
    est = phase_estimate(snapshots, run.phases, "cancer")
    assert est["covariate_drift"] < est["healthy"] - 0.02, est
    assert abs(est["concept_drift"] - est["healthy"]) < 0.015, est
    phase, pages = None, {}
    for line in run.lines:
        m = re.search(r"phase=(\w+) cycle=0", line)
        if m:
            phase = m.group(1)
        m = re.search(r"notification: PagerDuty trigger: \[FIRING:\d+\] MlmonModelAccuracyLow (\w+)", line)
        if m:
            pages.setdefault(m.group(1), phase)
    # Pages start while the models are wrong, and nothing paged before.
    assert "concept_drift" in pages.values(), (pages, output)
    assert not set(pages.values()) & {"healthy", "covariate_drift", None}, (pages, output)
