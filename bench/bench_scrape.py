"""/metrics time with every model's windows full of data and a reference loaded, so drift and data quality
are computed at every scrape: 10 models x 30 features x 3 windows (the scrape target), then a grid of
models x features (1 to 20 models, 10 to 100 features, 3 windows) for how the time grows.

Run: python bench/bench_scrape.py            (everything, JSON on stdout)
     python bench/bench_scrape.py grid       (the grid alone)
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import requests  # noqa: E402

from bench.common import ROOT, Served, config_text, events, scratch_dir, write_reference  # noqa: E402

GRID_MODELS = (1, 5, 10, 20)
GRID_FEATURES = (10, 30, 100)
GRID_WINDOWS = ("5m", "1h", "1d")
GRID_EVENTS = 2_000  # per model, in one batch
GRID_SPAN = 1_200.0  # the batch's timestamps cover the 20 minutes before the scrape: every window holds some
GRID_RUNS = 5  # each time is the median of this many scrapes, after one untimed
# Cells also scraped over HTTP (`mlmon serve`): every cell (about 25 s more than the corners alone on 2 cores).
GRID_HTTP = tuple((m, f) for m in GRID_MODELS for f in GRID_FEATURES)
JSON = {"Content-Type": "application/json"}
# Functions of the exporter that find a feature by scanning the model's features, called per feature and window.
LOOKUPS = (("config", "drift_threshold"), ("binning", "decision_method"))
TARGET = (10, 30)  # the target: at most 50 ms for 10 models x 30 features x 3 windows (bench/run.py SCRAPE_TARGET)


def in_process(models: int = 10, events_per_model: int = 20_000, runs: int = 20) -> dict:
    """The exposition as /metrics builds it (exposition.text_exposition); beside it, client_python's own
    writer (generate_latest) on the same registry, which writes the same bytes."""
    from prometheus_client import generate_latest

    from exporter.config import parse_config
    from exporter.serve.app import create_app
    from exporter.serve.exposition import text_exposition

    start = 1_800_000_000.0
    clock = [start]
    refs = tempfile.mkdtemp()
    app = create_app(parse_config(config_text(models=models, features=30, reference_dir=refs)), clock=lambda: clock[0])
    client = app.test_client()
    for m in range(models):
        body = json.dumps({"predictions": events(1000, model=f"model{m}", seed=m)})  # encoded once, posted 20 times
        clock[0] = start  # every model's batches a minute apart over the same 20 minutes: all windows hold some
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


# -- the grid: models x features ----------------------------------------------------------------------------


def _profile(features: int, directory: str) -> str:
    """A reference of 10,000 rows (common.write_reference) profiled once, written as `mlmon reference build`
    writes it; every model of a grid cell with this many features names it (profiling the CSV again for each
    of 20 models would take most of the grid's time, and the scrape only reads the profile)."""
    from exporter.config import parse_config
    from exporter.stats import reference

    csv = os.path.join(directory, f"reference-{features}.csv")
    write_reference(csv, features, seed=1000)
    model = parse_config(config_text(models=1, features=features)).models[0]
    path = os.path.join(directory, f"reference-{features}.json")
    with open(path, "w") as fh:
        fh.write(reference.load(csv, model).dumps())
    return path


def _cell_config(models: int, features: int, profile: str) -> str:
    text = config_text(models=models, features=features, windows=GRID_WINDOWS)
    for m in range(models):
        text = text.replace(f"  - name: model{m}\n", f"  - name: model{m}\n    reference: {profile}\n")
    assert text.count("reference:") == models
    return text


def _body(features: int, now: float) -> str:
    """One labelled batch of model0, its timestamps spread over the GRID_SPAN seconds before `now` (in the
    5m window's 60 buckets, 20 of the 1h window's, 1 or 2 of the 1d window's); renamed for each model."""
    return json.dumps(
        {"predictions": events(GRID_EVENTS, features=features, seed=7, start=now - GRID_SPAN, span=GRID_SPAN)}
    )


def _for_model(body: str, m: int) -> str:
    return body.replace('"model": "model0"', f'"model": "model{m}"')


def _median_run(fn, runs: int) -> tuple[float, object]:
    result = fn()  # untimed: the first scrape after ingest
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def grid_in_process(
    models: int, features: int, profile: str, body: str, now: float, runs: int, explain: bool = False
) -> dict:
    """One cell in process (create_app, default storage): the batch posted for every model through the API,
    then the exposition /metrics writes (exposition.text_exposition), and apart the collect alone
    (registry.collect(): snapshots, drift, quality, the metric families) to see where the time goes.
    With `explain`: the exposition again with the cyclic garbage collector off, and a cProfile of one."""
    from exporter.config import parse_config
    from exporter.serve.app import create_app
    from exporter.serve.exposition import text_exposition

    app = create_app(parse_config(_cell_config(models, features, profile)), clock=lambda: now)
    client = app.test_client()
    for m in range(models):
        response = client.post("/api/v1/predictions", data=_for_model(body, m), content_type="application/json")
        assert response.status_code == 202, response.get_data(as_text=True)[:500]
    registry = app.extensions["mlmon"].registry
    # The benchmark process holds other parts' data (run.py runs them all in one process): frozen out of the
    # cyclic collector, whose full collections would otherwise walk them too, and land in random timings.
    gc.collect()
    gc.freeze()
    try:
        seconds, text = _median_run(lambda: text_exposition(registry), runs)
        collect_seconds, _ = _median_run(lambda: sum(1 for _ in registry.collect()), runs)
    finally:
        gc.unfreeze()
    series = sum(1 for line in text.decode().splitlines() if line and not line.startswith("#"))
    out = {"median_seconds": seconds, "collect_median_seconds": collect_seconds, "series": series, "bytes": len(text)}
    if explain:
        gc.collect()
        gc.disable()
        try:
            out["gc_off_median_seconds"], _ = _median_run(lambda: text_exposition(registry), runs)
        finally:
            gc.enable()
        out["profile"] = _profile_exposition(lambda: text_exposition(registry))
    return out


def _profile_exposition(fn, top: int = 8) -> dict:
    """cProfile of one exposition (which slows the many small calls more than the few large ones): the
    functions with the most time of their own, and the whole time (callees included) of the per-feature
    look-ups, as shares of the profiled time."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(fn)
    stats = pstats.Stats(profiler).stats
    total = sum(tottime for _, _, tottime, _, _ in stats.values())

    def where(path: str, line: int, name: str) -> str:
        if "site-packages" + os.sep in path:
            path = path.split("site-packages" + os.sep, 1)[1]
        elif path.startswith(ROOT):
            path = os.path.relpath(path, ROOT)
        return f"{path}:{line}({name})" if line else name

    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    lookups = {}
    for (path, _, name), (_, _, _, cumtime, _) in stats.items():
        for module, function in LOOKUPS:
            if name == function and path.endswith(os.path.join("exporter", module + ".py")):
                lookups[f"{module}.{function}"] = lookups.get(f"{module}.{function}", 0.0) + cumtime / total
    return {
        "top": [
            {"function": where(*key), "calls": calls, "share": tottime / total}
            for key, (_, calls, tottime, _, _) in rows
        ],
        "lookups": lookups,
    }


def grid_http(models: int, features: int, profile: str, runs: int) -> dict:
    """One cell over HTTP: `mlmon serve` on loopback, the batch posted for every model, then `GET /metrics`
    from a requests session (which asks for gzip, as Prometheus does)."""
    with Served(_cell_config(models, features, profile)) as server:
        body = _body(features, time.time())
        s = requests.Session()
        for m in range(models):
            data = _for_model(body, m)
            s.post(server.url + "/api/v1/predictions", data=data, headers=JSON).raise_for_status()
        seconds, response = _median_run(lambda: s.get(server.url + "/metrics"), runs)
        response.raise_for_status()
        assert response.headers.get("Content-Encoding") == "gzip"
        return {"median_seconds": seconds, "gzip_bytes": int(response.headers["Content-Length"])}


def grid(runs: int = GRID_RUNS, http_cells=GRID_HTTP) -> dict:
    started = time.perf_counter()
    directory = scratch_dir("mlmon-bench-scrape-")
    now = 1_800_000_000.0
    largest = (max(GRID_MODELS), max(GRID_FEATURES))
    cells = []
    for features in GRID_FEATURES:
        profile = _profile(features, directory)
        body = _body(features, now)
        for models in GRID_MODELS:
            t = time.perf_counter()
            cell = {"models": models, "features": features, "windows": len(GRID_WINDOWS)}
            explain = (models, features) == largest
            cell["in_process"] = grid_in_process(models, features, profile, body, now, runs, explain)
            gc.collect()  # the cell's app is not collected during the next cell's timings
            if (models, features) in http_cells:
                cell["http"] = grid_http(models, features, profile, runs)
            cell["seconds"] = time.perf_counter() - t
            cells.append(cell)
            print(
                f"bench_scrape: {models} x {features}: {cell['in_process']['series']:,} series, "
                f"{cell['in_process']['median_seconds'] * 1000:.1f} ms in process"
                + (f", {cell['http']['median_seconds'] * 1000:.1f} ms over HTTP" if "http" in cell else "")
                + f" ({cell['seconds']:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    return {
        "models": list(GRID_MODELS),
        "features": list(GRID_FEATURES),
        "windows": list(GRID_WINDOWS),
        "events_per_model": GRID_EVENTS,
        "span_seconds": GRID_SPAN,
        "runs": runs,
        "cells": cells,
        "fit": fit(cells),
        "seconds": time.perf_counter() - started,
    }


def fit(cells: list[dict]) -> dict:
    """Time per series in each cell (in process, and over HTTP where measured): its median over the cells,
    lowest and highest; and how the series count follows models and features (least squares)."""
    import numpy as np

    out = {}
    for key in ("in_process", "http"):
        ratios = [c[key]["median_seconds"] / c["in_process"]["series"] for c in cells if key in c]
        if ratios:
            out[key] = {"per_series_seconds": statistics.median(ratios), "lowest": min(ratios), "highest": max(ratios)}
    # series = fixed + models * (per_model + per_model_feature * features)
    a = np.array([[1.0, c["models"], c["models"] * c["features"]] for c in cells])
    x = np.array([c["in_process"]["series"] for c in cells], dtype=float)
    (s0, s1, s2), *_ = np.linalg.lstsq(a, x, rcond=None)
    out["series"] = {"fixed": float(s0), "per_model": float(s1), "per_model_feature": float(s2)}
    return out


def run() -> dict:
    return {"in_process": in_process(), "http": over_http(), "grid": grid()}


if __name__ == "__main__":
    print(json.dumps(grid() if sys.argv[1:] == ["grid"] else run(), indent=2))
