"""A real exporter process: `kill -9` in the middle of concurrent ingest, and a bounded load test.

Both start `mlmon serve` on loopback with a data directory in tmp_path and drive it with the bundled
Python client (which retries with the same Idempotency-Key and honours Retry-After).
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import requests

from exporter.client import Client
from tests.conftest import Metrics
from tests.serve.test_server import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
# The load test's length; MLMON_LOAD_SECONDS=120 for a longer look at memory by hand.
LOAD_SECONDS = float(os.environ.get("MLMON_LOAD_SECONDS", "20"))

CONFIG = """
windows: ["5m", "1h"]
storage: {{checkpoint_interval: {checkpoint}}}
limits: {{ingest_queue_timeout: {queue_timeout}, max_pending_per_model: {max_pending}}}
models:
  - name: churn
    task: binary
    classes: ["stay", "churn"]
    positive_class: "churn"
    features:
      - {{name: tenure, type: numeric}}
      - {{name: plan, type: categorical}}
  - name: price
    task: regression
"""


class Exporter:
    def __init__(self, tmp_path: Path, checkpoint="1h", queue_timeout="2s", max_pending=100_000):
        self.config = tmp_path / "mlmon.yml"
        self.config.write_text(
            CONFIG.format(checkpoint=checkpoint, queue_timeout=queue_timeout, max_pending=max_pending)
        )
        self.data = tmp_path / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "exporter.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        args = [sys.executable, "-m", "exporter", "serve", "--config", str(self.config), "--port", str(self.port)]
        args += ["--storage.path", str(self.data), "--log.format", "json"]
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        self.proc.stderr = open(self.log)  # noqa: SIM115 - read by wait_ready if the process dies
        wait_ready(self.url, self.proc)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc is not None:
            self.proc.stderr.close()

    def metrics(self) -> Metrics:
        return Metrics(requests.get(f"{self.url}/metrics", timeout=10).text)

    def log_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]


def total(metrics: Metrics, name: str, **labels) -> float:
    return sum(s.value for s in metrics.all(name, **labels))


def test_kill_9_during_concurrent_ingest_loses_nothing_and_counts_nothing_twice(tmp_path):
    exporter = Exporter(tmp_path)
    exporter.start()
    workers, per_worker = 4, 2500
    expected_outcomes: Counter = Counter()
    labels_sent = 0
    lock = threading.Lock()
    clients = [
        Client(
            exporter.url,
            batch_size=50,
            flush_interval=0.02,
            max_retry_seconds=120,
            backoff_base=0.05,
            backoff_max=0.5,
            report_resources_every=None,
        )
        for _ in range(workers)
    ]

    def work(w: int) -> None:
        nonlocal labels_sent
        rng = random.Random(w)
        mon = clients[w]
        for i in range(per_worker):
            predicted = rng.choice(["stay", "churn"])
            mon.log_prediction(
                "churn",
                predicted,
                id=f"w{w}-{i}",
                version=f"v{w % 2}",
                score=rng.random(),
                features={"tenure": rng.gauss(10, 3), "plan": rng.choice("abc")},
            )
            mon.log_prediction("price", rng.gauss(100, 5), id=f"p{w}-{i}")
            if i % 2 == 0:
                actual = rng.choice(["stay", "churn"])
                mon.log_label("churn", f"w{w}-{i}", actual)
                mon.log_label("price", f"p{w}-{i}", 100.0)
                with lock:
                    expected_outcomes[actual, predicted] += 1
                    labels_sent += 2
            if i % 100 == 0:
                time.sleep(0.01)  # spread the traffic so the kill lands in the middle of it

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while total(exporter.metrics(), "mlmon_predictions_total") < workers * per_worker * 2 * 0.3:
            assert time.monotonic() < deadline, "ingest did not get going"
            time.sleep(0.02)
        exporter.kill()  # SIGKILL: no checkpoint, no flush, requests in flight cut off
        time.sleep(0.5)
        exporter.start()
        for t in threads:
            t.join(120)
        for mon in clients:
            assert mon.flush(timeout=120)
        stats = [mon.stats() for mon in clients]
        for s in stats:
            assert s["dropped_rejected"] == s["dropped_retries_exhausted"] == s["dropped_queue_full"] == 0, s
        assert sum(s["retries"] for s in stats) > 0, "the kill cut no request: the test proved nothing"

        metrics = exporter.metrics()
        assert total(metrics, "mlmon_predictions_total") == workers * per_worker * 2
        assert total(metrics, "mlmon_duplicates_total") == 0
        assert total(metrics, "mlmon_labels_total") == labels_sent
        for (actual, predicted), n in expected_outcomes.items():
            assert total(metrics, "mlmon_outcomes_total", model="churn", actual=actual, predicted=predicted) == n
        # The windows came back too, not just the counters.
        assert total(metrics, "mlmon_window_samples", model="churn", window="1h", kind="predictions") == (
            workers * per_worker
        )
        restored = [line for line in exporter.log_lines() if line.get("msg") == "state restored"]
        assert len(restored) == 2 and restored[1]["replayed"] > 0, restored
    finally:
        for mon in clients:
            mon.close(timeout=1)
        exporter.stop()


def test_load_concurrent_clients_zero_errors_and_flat_memory(tmp_path):
    """Eight clients for about 20 s with a short ingest queue timeout (429s happen and are honoured),
    checkpoints every second, and more distinct ids than the pending store holds (it evicts, bounded)."""
    exporter = Exporter(tmp_path, checkpoint="1s", queue_timeout="50ms", max_pending=20_000)
    exporter.start()
    process = psutil.Process(exporter.proc.pid)
    stop = threading.Event()
    results: Counter = Counter()
    lock = threading.Lock()

    def work(w: int) -> None:
        session = requests.Session()
        rng = random.Random(w)
        b = 0
        while not stop.is_set():
            preds = [
                {
                    "model": "churn",
                    "id": f"w{w}-{b}-{i}",
                    "prediction": rng.choice(["stay", "churn"]),
                    "scores": {"churn": rng.random()},
                    "features": {"tenure": rng.gauss(10, 3), "plan": rng.choice("abc")},
                }
                for i in range(200)
            ]
            labels = [{"model": "churn", "id": f"w{w}-{b}-{i}", "label": "churn"} for i in range(0, 200, 3)]
            for path, body in (("predictions", {"predictions": preds}), ("labels", {"labels": labels})):
                key = f"w{w}-{b}-{path}"
                while True:
                    r = session.post(f"{exporter.url}/api/v1/{path}", json=body, headers={"Idempotency-Key": key})
                    with lock:
                        results[r.status_code] += 1
                    if r.status_code != 429:
                        break
                    time.sleep(min(float(r.headers["Retry-After"]), 1.0) * rng.random())
            b += 1

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    rss = []
    try:
        for t in threads:
            t.start()
        started = time.monotonic()
        while time.monotonic() - started < LOAD_SECONDS:
            time.sleep(0.5)  # two samples a second: steadier medians
            rss.append(process.memory_info().rss)
        stop.set()
        for t in threads:
            t.join(30)
        metrics = exporter.metrics()
        errors = {code: n for code, n in results.items() if code not in (202, 429)}
        assert errors == {}, errors
        accepted = 200 * (results[202] // 2)  # every 202 pair is one prediction batch and one label batch
        assert abs(total(metrics, "mlmon_predictions_total") - accepted) <= 200
        assert total(metrics, "mlmon_storage_checkpoints_total") >= 5
        assert metrics.get("mlmon_pending_labels", model="churn") <= 20_000
        assert total(metrics, "mlmon_pending_dropped_total", model="churn", reason="evicted") > 0
        # Memory is flat once the stores are full: after the first half of the run (warm-up), the median of
        # the last quarter is within 8% of the median of the quarter before; checkpoints (a copy of the state,
        # then its pickle) make short peaks, bounded too. A 240 s run (MLMON_LOAD_SECONDS=240) showed RSS
        # rising 109 -> 122 MiB over the first 160 s as the allocator warms up, then flat to the end.
        steady = rss[len(rss) // 2 :]
        first = statistics.median(steady[: len(steady) // 2])
        last = statistics.median(steady[len(steady) // 2 :])
        growth, peak = last / first - 1, max(steady) / first - 1
        rate = total(metrics, "mlmon_predictions_total") / LOAD_SECONDS
        print(
            f"\nload: {rate:,.0f} predictions/s, {results[202]} accepted requests, {results[429]} answered 429; "
            f"RSS median {first / 2**20:.0f} -> {last / 2**20:.0f} MiB ({growth:+.1%}), peak {peak:+.1%}"
        )
        mib = [f"{x / 2**20:.0f}" for x in rss]
        if os.environ.get("MLMON_LOAD_SECONDS"):
            print("RSS MiB, every 0.5 s:", " ".join(mib))
        assert growth < 0.08, mib
        assert peak < 0.35, mib
    finally:
        stop.set()
        exporter.stop()
    assert os.path.exists(exporter.data / "mlmon.db")
