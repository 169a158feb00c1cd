"""Ingest rate: predictions per second through the HTTP API (batches and single events, concurrent
clients on loopback) and in process (validation + window update, and the window update alone).

Run: python bench/bench_ingest.py            (the figures of docs/benchmarks.md)
     python bench/bench_ingest.py stages     (where the time of one batch goes, docs/performance.md)
     python bench/bench_ingest.py formats 1  (rows, columnar JSON and Arrow alone, 1 s per HTTP phase)
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orjson  # noqa: E402
import requests  # noqa: E402

from bench.common import (  # noqa: E402
    ROOT,
    Served,
    config_text,
    cpu_ticks,
    events,
    free_port,
    machine_probe,
    median_of,
    steal_share,
    wait_ready,
)

# Ids of the format benchmark's bodies start with this placeholder; each request gets its own number in its
# place (the same length, so a JSON body and an Arrow stream stay valid): every prediction is new, as in
# production, instead of a repeat the join store answers at once.
ID_PLACEHOLDER = b"#######"


def http_rate(
    url: str,
    bodies: list[bytes],
    per_body: int,
    clients: int,
    seconds: float,
    content_type: str = "application/json",
    fresh_ids: bool = False,
) -> float:
    """Predictions acknowledged per second with `clients` threads posting pre-encoded bodies; ``fresh_ids``:
    each request's ids made new (ID_PLACEHOLDER replaced by a request number)."""
    done = [0] * clients
    stop = time.monotonic() + seconds
    errors = []
    numbers = itertools.count()

    def worker(k: int) -> None:
        s = requests.Session()
        i = k
        while time.monotonic() < stop:
            body = bodies[i % len(bodies)]
            if fresh_ids:
                body = body.replace(ID_PLACEHOLDER, b"%07d" % next(numbers))
            r = s.post(url + "/api/v1/predictions", data=body, headers={"Content-Type": content_type})
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


def server_cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def in_process(batch_size: int = 1000, rounds: int = 20, text: str | None = None) -> dict:
    """With one BLAS thread, as `mlmon serve` runs (exporter/cli.py single_threaded_blas)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return _in_process(batch_size, rounds, text)


def _in_process(batch_size: int, rounds: int, text: str | None) -> dict:
    from exporter.config import parse_config
    from exporter.engine.state import ModelState
    from exporter.ingest.fastpath import FastDecoder
    from exporter.ingest.validation import Validator
    from exporter.stats import reference

    config = parse_config(text or config_text(models=1, features=30))
    clock = [1_800_000_000.0]
    validator = Validator(config, lambda: clock[0])
    fast = FastDecoder(validator)
    raw = events(batch_size)
    body = json.dumps({"predictions": raw}).encode()
    state = ModelState(config.models[0], config)
    for profile in reference.load_all(config).values():
        state.set_reference(profile)

    def rate(step) -> float:
        t = time.perf_counter()
        for _ in range(rounds):
            clock[0] += 1
            step()
        return rounds * batch_size / (time.perf_counter() - t)

    validated = fast.predictions(body, clock[0])  # what ingest hands to the windows
    return {
        # What a request does in process: decode and check (the fast path), then the window update.
        "parse_validate_update": median_of(
            lambda: rate(lambda: state.add_predictions(fast.predictions(body, clock[0]), clock[0]))
        ),
        "window_update": median_of(lambda: rate(lambda: state.add_predictions(validated, clock[0]))),
        "decode": median_of(lambda: rate(lambda: fast.predictions(body, clock[0]))),
        # The general path (orjson + Python validation): what invalid bodies and labels go through.
        "general_parse_validate": median_of(lambda: rate(lambda: validator.predictions(orjson.loads(body), clock[0]))),
        "json_parse": median_of(lambda: rate(lambda: orjson.loads(body))),
    }


def paired_cost(text_on: str, text_off: str, pairs: int = 60, batch_size: int = 1000, rounds: int = 5) -> dict:
    """What a part of the window update costs in process, measured in pairs: the same batches decoded, checked
    and counted (``parse_validate_update``) by a model with the part on (``text_on``) and one without it
    (``text_off``), alternately, ``pairs`` times; each pair's cost is 1 - rate on / rate off, and the figure is
    the median of the pairs. Two medians taken minutes apart on a shared machine differ by more than the
    costs measured (+-20%); a pair shares the machine's state of the moment, and many short pairs leave a
    burst of another process's work to a few of them (60 pairs of 5 batches: the medians of three calls
    within 2 points of each other, where 15 pairs of 10 batches spread over 10). With one BLAS thread, as
    `mlmon serve` runs."""
    import statistics

    from threadpoolctl import threadpool_limits

    from exporter.config import parse_config
    from exporter.engine.state import ModelState
    from exporter.ingest.fastpath import FastDecoder
    from exporter.ingest.validation import Validator
    from exporter.stats import reference

    clock = [1_800_000_000.0]
    body = json.dumps({"predictions": events(batch_size)}).encode()

    def model(text: str):
        config = parse_config(text)
        fast = FastDecoder(Validator(config, lambda: clock[0]))
        state = ModelState(config.models[0], config)
        for profile in reference.load_all(config).values():
            state.set_reference(profile)
        return lambda: state.add_predictions(fast.predictions(body, clock[0]), clock[0])

    def seconds(step) -> float:  # CPU time: a pause of the process (another one on its core) is left out
        t = time.process_time()
        for _ in range(rounds):
            clock[0] += 1
            step()
        return time.process_time() - t

    with threadpool_limits(1):
        on, off = model(text_on), model(text_off)
        seconds(on), seconds(off)  # warm-up
        costs = []
        for _ in range(pairs):
            t_on, t_off = seconds(on), seconds(off)
            costs.append(1 - t_off / t_on)
    return {"median": statistics.median(costs), "pairs": costs}


def stages(batch_size: int = 1000, rounds: int = 100) -> dict:
    """Median milliseconds per batch of each stage of an ingest request, in process, on the default storage
    (what the request path does after the body is read: decode, journal, apply), with the garbage collector
    tuned as `mlmon serve` tunes it; then, in a loop of their own, the digest an Idempotency-Key costs and
    the general path's parse and validation (what invalid bodies go through)."""
    import statistics

    from exporter.config import parse_config
    from exporter.engine import storage
    from exporter.serve.app import create_app, tune_gc

    tune_gc()
    clock = [1_800_000_000.0]
    m = create_app(parse_config(config_text(models=1, features=30)), clock=lambda: clock[0]).extensions["mlmon"]
    bodies = [json.dumps({"predictions": events(batch_size, seed=s)}).encode() for s in range(8)]
    names = ("decode", "journal", "apply")
    times: dict[str, list[float]] = {k: [] for k in (*names, "digest", "general_parse", "general_validate")}
    for i in range(rounds + 5):
        raw, clock[0] = bodies[i % len(bodies)], clock[0] + 1
        t0 = time.perf_counter()
        items = m.fast.predictions(raw, clock[0])  # the fast path: what a valid batch goes through
        t1 = time.perf_counter()
        m.store.append("predictions", clock[0], raw)
        t2 = time.perf_counter()
        m._apply("predictions", items, clock[0], f"s:{i}")
        t3 = time.perf_counter()
        if i >= 5:  # warm-up rounds left out
            for name, a, b in zip(names, (t0, t1, t2), (t1, t2, t3)):
                times[name].append(b - a)
    m.store.close()
    for i in range(rounds):
        raw = bodies[i % len(bodies)]
        t0 = time.perf_counter()
        storage.digest(raw)  # only requests with an Idempotency-Key (the Python client's) pay this
        t1 = time.perf_counter()
        body = orjson.loads(raw)
        t2 = time.perf_counter()
        m.validator.predictions(body, clock[0])
        t3 = time.perf_counter()
        for name, a, b in zip(("digest", "general_parse", "general_validate"), (t0, t1, t2), (t1, t2, t3)):
            times[name].append(b - a)
    out = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    out["total"] = out["decode"] + out["journal"] + out["apply"]
    return out


def served_batches(text: str, clients: tuple, seconds: float, singles: bool = False) -> dict:
    """HTTP rates of `mlmon serve` with the config `text`: batches of 1000 with each number of `clients`,
    the exporter's CPU per batch, its RSS after each phase, and (``singles``) one prediction per request."""
    out: dict = {"http_batch_1000": {}, "server_cpu_ms_per_batch": {}}
    with Served(text) as server:
        batches = [json.dumps({"predictions": events(1000, seed=s)}).encode() for s in range(8)]
        rss = [server.rss_bytes()]  # at start, then after each load phase: growth would show here
        for c in clients:
            cpu = server_cpu_seconds(server.proc.pid)
            rate = out["http_batch_1000"][c] = http_rate(server.url, batches, 1000, c, seconds)
            # CPU time of the exporter process (every thread) per batch of 1000: what bounds the rate when
            # the machine has no core to spare for it (docs/performance.md).
            out["server_cpu_ms_per_batch"][c] = (server_cpu_seconds(server.proc.pid) - cpu) / (rate * seconds) * 1e6
            rss.append(server.rss_bytes())
        if singles:
            one_each = [json.dumps(e).encode() for e in events(2000, seed=99)]
            out["http_single"] = {c: http_rate(server.url, one_each, 1, c, seconds) for c in (1, 4)}
            rss.append(server.rss_bytes())
        out["server_rss_bytes"] = rss
        out["batch_body_bytes"] = len(batches[0])
    return out


# -- the body formats: rows, columnar JSON, Arrow (docs/api.md#columnar-batches) ----------------------------------

FORMATS = {
    "rows": "application/json",
    "columns": "application/vnd.mlmon.columns+json",
    "arrow": "application/vnd.apache.arrow.stream",
}


def format_bodies(n: int = 1000, count: int = 8) -> dict[str, list[bytes]]:
    """``count`` batches of ``n`` predictions with ids (ID_PLACEHOLDER-<i>) and no label (the labels come
    later, as usual), each in the three formats."""
    import pyarrow as pa

    out: dict[str, list[bytes]] = {name: [] for name in FORMATS}
    for seed in range(count):
        items = events(n, seed=seed, labelled=False)
        for i, item in enumerate(items):
            item["id"] = f"{ID_PLACEHOLDER.decode()}-{seed}-{i}"
        out["rows"].append(json.dumps({"predictions": items}).encode())
        columns = {
            "model": items[0]["model"],
            "ids": [e["id"] for e in items],
            "predictions": [e["prediction"] for e in items],
            "score": [e["score"] for e in items],
            "latency_seconds": [e["latency_seconds"] for e in items],
            "features": {f: [e["features"][f] for e in items] for f in items[0]["features"]},
        }
        out["columns"].append(orjson.dumps(columns))
        arrays = {k: v for k, v in columns.items() if k not in ("model", "features")}
        arrays |= {f"features.{f}": v for f, v in columns["features"].items()}
        table = pa.table(arrays).replace_schema_metadata({"model": columns["model"]})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        out["arrow"].append(sink.getvalue().to_pybytes())
    return out


def formats_in_process(text: str, bodies: dict[str, list[bytes]], rounds: int = 30) -> dict:
    """Per format, in process on the default storage (SQLite): the decode and check alone, the window update
    alone (``ModelState.add_columns`` or ``add_predictions``), and a request's whole work after its body is
    read (decode, journal, apply: ``Mlmon.ingest``); every batch with ids never seen before. With one BLAS
    thread, as `mlmon serve` runs (exporter/cli.py single_threaded_blas)."""
    from threadpoolctl import threadpool_limits

    numbers = itertools.count()
    with threadpool_limits(1):
        return {name: _format_in_process(text, name, bodies[name], rounds, numbers) for name in FORMATS}


def _format_in_process(text: str, name: str, bodies: list[bytes], rounds: int, numbers) -> dict:
    from exporter.config import parse_config
    from exporter.engine.core import Mlmon

    clock = [1_800_000_000.0]
    m = Mlmon(parse_config(text), lambda: clock[0])
    state = next(iter(m.models.values()))
    fmt = None if name == "rows" else name
    kind = "predictions" if fmt is None else f"predictions/{fmt}"

    def fresh(raw: bytes) -> bytes:
        return raw.replace(ID_PLACEHOLDER, b"%07d" % next(numbers))

    def decode(raw: bytes):
        return m.fast.predictions(raw, clock[0]) if fmt is None else m.columnar.predictions(fmt, raw, clock[0])

    def update(items) -> None:
        if isinstance(items, list):
            state.add_predictions(items, clock[0])
        else:
            state.add_columns(items, clock[0])

    def request(raw: bytes) -> None:
        m.ingest(kind, raw, decode(raw), clock[0], None, b"")

    def rate(step, prepare) -> float:
        inputs = [prepare(bodies[i % len(bodies)]) for i in range(rounds)]
        t = time.perf_counter()
        for x in inputs:
            clock[0] += 1
            step(x)
        return rounds * 1000 / (time.perf_counter() - t)

    try:
        return {
            "decode": median_of(lambda: rate(decode, fresh)),
            "window_update": median_of(lambda: rate(update, lambda raw: decode(fresh(raw)))),
            "request": median_of(lambda: rate(request, fresh)),
        }
    finally:
        m.store.close()


def formats_served(text: str, bodies: dict[str, list[bytes]], clients: tuple, seconds: float) -> dict:
    """HTTP rates of each format with each number of clients, every request's ids new; the exporter's CPU
    per batch of 1000."""
    out: dict = {"http_batch_1000": {}, "server_cpu_ms_per_batch": {}, "body_bytes": {}}
    with Served(text) as server:
        for name, content_type in FORMATS.items():
            out["body_bytes"][name] = len(bodies[name][0])
            rates, cpu_ms = {}, {}
            for c in clients:
                cpu = server_cpu_seconds(server.proc.pid)
                rates[c] = http_rate(server.url, bodies[name], 1000, c, seconds, content_type, fresh_ids=True)
                cpu_ms[c] = (server_cpu_seconds(server.proc.pid) - cpu) / (rates[c] * seconds) * 1e6
            out["http_batch_1000"][name] = rates
            out["server_cpu_ms_per_batch"][name] = cpu_ms
        out["server_rss_bytes"] = server.rss_bytes()
    return out


def blas_pool(text: str, bodies: dict[str, list[bytes]], seconds: float, clients: int = 2) -> dict:
    """Arrow batches served with numpy's BLAS thread pool at its default size (one thread per core) instead of
    the one thread `mlmon serve` asks for (exporter/cli.py single_threaded_blas): what the pool's threads,
    waiting for work in a spin, cost the exporter per batch when the clients keep the other core busy."""
    out = {}
    for label, env in (("one_thread", None), ("pool", {"OPENBLAS_NUM_THREADS": str(os.cpu_count())})):
        with Served(text, env=env) as server:
            cpu = server_cpu_seconds(server.proc.pid)
            rate = http_rate(server.url, bodies["arrow"], 1000, clients, seconds, FORMATS["arrow"], fresh_ids=True)
            cpu_ms = (server_cpu_seconds(server.proc.pid) - cpu) / (rate * seconds) * 1e6
        out[label] = {"http_batch_1000": rate, "server_cpu_ms_per_batch": cpu_ms}
    out["clients"] = clients
    return out


def http_floor(bodies: dict[str, list[bytes]], seconds: float, clients: int = 2) -> dict:
    """Columnar JSON and Arrow batches posted to the HTTP stack alone (bench/http_floor.py: Flask and waitress
    with mlmon's server settings, a route that reads the body and answers): the rate, and the server's CPU per
    batch, which every served batch pays before mlmon's own work."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", "http_floor.py"), str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, "the HTTP floor server")
        out: dict = {"clients": clients}
        for name in ("columns", "arrow"):
            cpu = server_cpu_seconds(proc.pid)
            rate = http_rate(url, bodies[name], 1000, clients, seconds, FORMATS[name], fresh_ids=True)
            out[name] = {
                "http_batch_1000": rate,
                "server_cpu_ms_per_batch": (server_cpu_seconds(proc.pid) - cpu) / (rate * seconds) * 1e6,
            }
        return out
    finally:
        proc.terminate()
        proc.wait(10)


def formats(seconds: float = 5.0) -> dict:
    """Rows, columnar JSON and Arrow side by side, as mlmon is normally run: a reference (drift on), the
    default SQLite storage, 30 features, batches of 1000 predictions with ids; and Arrow with numpy's default
    BLAS thread pool."""
    bodies = format_bodies()
    probes = [machine_probe()]  # the machine's speed beside each part (bench/common.py)
    with tempfile.TemporaryDirectory() as ref:
        text = config_text(models=1, features=30, reference_dir=ref)
        out = {"in_process": formats_in_process(text, bodies)}
        probes.append(machine_probe())
        ticks = cpu_ticks()
        out |= formats_served(text, bodies, (1, 2, 4), seconds)
        out["served_steal_share"] = steal_share(ticks, cpu_ticks())
        probes.append(machine_probe())
        out["blas_pool"] = blas_pool(text, bodies, seconds)
        out["http_floor"] = http_floor(bodies, seconds)
        probes.append(machine_probe())
        return out | {"machine_probe_ms": probes}


def run(seconds: float = 5.0) -> dict:
    """Without a reference (drift off: the window update only counts and looks for missing values), then with
    one (drift on: every feature binned against the reference's quantiles and each row's multivariate
    reconstruction error, as mlmon is normally run), the same with multivariate drift off (what it costs), then
    with one that calibrates the scores (drift and estimate on)."""
    out = {
        "in_process": in_process(),
        **served_batches(config_text(models=1, features=30), (1, 2, 4, 4, 4), seconds, True),
    }
    with tempfile.TemporaryDirectory() as ref:
        drift_on = config_text(models=1, features=30, reference_dir=ref)
        univariate = config_text(models=1, features=30, reference_dir=ref, multivariate=False)
        # ...and with a reference that also carries scores and labels: the estimated quality on as well (every
        # prediction's score calibrated, the expected confusion matrix and score bins summed; each inline label
        # adds to its prediction's bucket).
        scored = os.path.join(ref, "scored")
        os.mkdir(scored)
        estimate_on = config_text(models=1, features=30, reference_dir=scored, scored_reference=True)
        parts = {"with_reference": drift_on, "univariate_only": univariate, "with_estimate": estimate_on}
        for key, text in parts.items():
            out[key] = {"in_process": in_process(text=text), **served_batches(text, (1, 2, 4), seconds)}
        out["paired_costs"] = {
            "estimate": paired_cost(estimate_on, drift_on),
            "multivariate": paired_cost(drift_on, univariate),
        }
    out["formats"] = formats(seconds)
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["stages"]:
        print(json.dumps(stages(), indent=2))
    elif sys.argv[1:2] == ["formats"]:  # the formats alone: `formats [seconds per phase]`
        print(json.dumps(formats(float(sys.argv[2]) if sys.argv[2:] else 5.0), indent=2))
    else:
        print(json.dumps(run(), indent=2))
