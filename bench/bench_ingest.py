"""Ingest rate: predictions per second through the HTTP API (batches and single events, concurrent
clients on loopback) and in process (validation + window update, and the window update alone).

Run: python bench/bench_ingest.py
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orjson  # noqa: E402
import requests  # noqa: E402

from bench.common import Served, config_text, events, median_of  # noqa: E402


def http_rate(url: str, bodies: list[bytes], per_body: int, clients: int, seconds: float) -> float:
    """Predictions acknowledged per second with `clients` threads posting pre-encoded bodies."""
    done = [0] * clients
    stop = time.monotonic() + seconds
    errors = []

    def worker(k: int) -> None:
        s = requests.Session()
        i = k
        while time.monotonic() < stop:
            r = s.post(
                url + "/api/v1/predictions", data=bodies[i % len(bodies)], headers={"Content-Type": "application/json"}
            )
            if r.status_code != 202:
                errors.append(r.status_code)
                return
            done[k] += per_body
            i += clients

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"ingest errors: {errors[:5]}")
    return sum(done) / (time.monotonic() - started)


def in_process(batch_size: int = 1000, rounds: int = 20) -> dict:
    from exporter.config import parse_config
    from exporter.state import ModelState
    from exporter.validation import Validator

    config = parse_config(config_text(models=1, features=30))
    clock = [1_800_000_000.0]
    validator = Validator(config, lambda: clock[0])
    raw = events(batch_size)
    body = json.dumps({"predictions": raw}).encode()
    state = ModelState(config.models[0], config)

    def full() -> float:
        t = time.perf_counter()
        for _ in range(rounds):
            clock[0] += 1
            state.add_predictions(validator.predictions(orjson.loads(body)), clock[0])
        return rounds * batch_size / (time.perf_counter() - t)

    validated = validator.predictions(orjson.loads(body))

    def window_only() -> float:
        t = time.perf_counter()
        for _ in range(rounds):
            clock[0] += 1
            state.add_predictions(validated, clock[0])
        return rounds * batch_size / (time.perf_counter() - t)

    def parse_only() -> float:
        t = time.perf_counter()
        for _ in range(rounds):
            orjson.loads(body)
        return rounds * batch_size / (time.perf_counter() - t)

    return {
        "parse_validate_update": median_of(full),
        "window_update": median_of(window_only),
        "json_parse": median_of(parse_only),
    }


def run(seconds: float = 5.0) -> dict:
    out = {"in_process": in_process()}
    with Served(config_text(models=1, features=30)) as server:
        batches = [json.dumps({"predictions": events(1000, seed=s)}).encode() for s in range(8)]
        singles = [json.dumps(e).encode() for e in events(2000, seed=99)]
        rss = [server.rss_bytes()]  # at start, then after each load phase: growth would show here
        out["http_batch_1000"] = {}
        for c in (1, 2, 4, 4, 4):
            out["http_batch_1000"][c] = http_rate(server.url, batches, 1000, c, seconds)
            rss.append(server.rss_bytes())
        out["http_single"] = {c: http_rate(server.url, singles, 1, c, seconds) for c in (1, 4)}
        rss.append(server.rss_bytes())
        out["server_rss_bytes"] = rss
        out["batch_body_bytes"] = len(batches[0])
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
