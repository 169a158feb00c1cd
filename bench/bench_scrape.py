"""/metrics time for 10 models x 30 features x 3 windows, with every model's windows full of data and a
reference loaded, so drift and data quality are computed at every scrape.

Run: python bench/bench_scrape.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import requests  # noqa: E402

from bench.common import Served, config_text, events  # noqa: E402


def in_process(models: int = 10, events_per_model: int = 20_000, runs: int = 20) -> dict:
    """The exposition as /metrics builds it (collector.text_exposition); beside it, client_python's own
    writer (generate_latest) on the same registry, which writes the same bytes."""
    from prometheus_client import generate_latest

    from exporter.app import create_app
    from exporter.collector import text_exposition
    from exporter.config import parse_config

    clock = [1_800_000_000.0]
    refs = tempfile.mkdtemp()
    app = create_app(parse_config(config_text(models=models, features=30, reference_dir=refs)), clock=lambda: clock[0])
    client = app.test_client()
    for m in range(models):
        body = json.dumps({"predictions": events(1000, model=f"model{m}", seed=m)})  # encoded once, posted 20 times
        for _ in range(events_per_model // 1000):
            clock[0] += 60
            response = client.post("/api/v1/predictions", data=body, content_type="application/json")
            assert response.status_code == 202
    registry = app.extensions["mlmon"].registry

    def median_time(write) -> tuple[float, bytes]:
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            text = write(registry)
            times.append(time.perf_counter() - t)
        return statistics.median(times), text

    seconds, text = median_time(text_exposition)
    client_python, _ = median_time(generate_latest)
    series = sum(1 for line in text.decode().splitlines() if line and not line.startswith("#"))
    return {
        "median_seconds": seconds,
        "generate_latest_median_seconds": client_python,
        "series": series,
        "bytes": len(text),
    }


def over_http(models: int = 10, runs: int = 20) -> dict:
    with Served(config_text(models=models, features=30, reference_dir=tempfile.mkdtemp())) as server:
        for m in range(models):
            body = json.dumps({"predictions": events(2000, model=f"model{m}", seed=m)})
            requests.post(
                server.url + "/api/v1/predictions", data=body, headers={"Content-Type": "application/json"}
            ).raise_for_status()
        s = requests.Session()
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            s.get(server.url + "/metrics").raise_for_status()
            times.append(time.perf_counter() - t)
        return {"median_seconds": statistics.median(times)}


def run() -> dict:
    return {"in_process": in_process(), "http": over_http()}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
