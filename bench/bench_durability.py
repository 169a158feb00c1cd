"""What durability costs, and the limits of one replica.

1. HTTP ingest through `mlmon serve` (batches of 1000, and single events) with each storage backend:
   memory, SQLite with sync normal (the default), SQLite with sync full, and the default storage with
   the join store on a real Redis (redis-server started here on a free loopback port, no persistence).
2. Checkpoint: its duration, how long ingest is stalled (the ingest lock is held while every model's
   state is exported), and the snapshot size, as the pending store holds more predictions.
3. Restart: the time to come back (snapshot load + journal replay) with a journal of n predictions and
   no checkpoint; journal bytes per prediction.
4. The RSS of the serve process while the journal is checkpointed again and again.

Every data directory and the Redis working directory are temporary. The data: one binary model with 30
features (every tenth categorical), every prediction with a new id, a third of them with their label.

Run: python bench/bench_durability.py (about 40 s; --full, with 1,000,000 predictions: about 3 minutes)
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import requests  # noqa: E402

from bench.common import ROOT, Served, config_text, events, free_port  # noqa: E402

BATCH = 1000
SLOT = b"@@@@@@@@"  # in each template id; replaced by a fresh 8-digit number per request
_request_numbers = itertools.count()  # next() on a count is atomic under the GIL: unique across threads

BACKENDS = {
    "memory": {"storage": {"backend": "memory"}},
    "sqlite_normal": {"storage": {}},  # the default: sqlite, sync normal
    "sqlite_full": {"storage": {"sync": "full"}},
    "sqlite_normal_redis": {"storage": {}, "joins": {"backend": "redis"}},
}


def templates(size: int, count: int = 1) -> list[bytes]:
    """`count` request bodies of `size` predictions (the same generated data for every backend): every
    prediction with an id (the slot makes it unique per request), every third with its label."""
    out = []
    for k in range(count):
        evs = events(size, seed=k, labelled=True)
        for i, e in enumerate(evs):
            e["id"] = f"{SLOT.decode()}-{i}"
            if (i + k) % 3:
                del e["label"]
        out.append(json.dumps({"predictions": evs} if size > 1 else evs[0]).encode())
    return out


def body(template: bytes) -> bytes:
    return template.replace(SLOT, b"%08d" % next(_request_numbers))


def post_rate(url: str, bodies: list[bytes], per_body: int, clients: int, seconds: float) -> float:
    """Predictions acknowledged per second by `clients` threads, each request with new prediction ids."""
    done = [0] * clients
    errors: list = []
    stop = time.monotonic() + seconds

    def worker(k: int) -> None:
        s = requests.Session()
        i = k
        while time.monotonic() < stop:
            r = s.post(
                url + "/api/v1/predictions",
                data=body(bodies[i % len(bodies)]),
                headers={"Content-Type": "application/json"},
            )
            if r.status_code != 202:
                errors.append((r.status_code, r.text[:200]))
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
        raise RuntimeError(f"ingest errors: {errors[:3]}")
    return sum(done) / (time.monotonic() - started)


@contextlib.contextmanager
def redis_server():
    """redis-server from the Debian package on a free loopback port, no persistence, in a temporary
    directory; yields its URL, or None when the binary is missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    import redis

    workdir = tempfile.mkdtemp(prefix="mlmon-bench-redis-")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {port}") from None
                time.sleep(0.02)
        client.close()
        yield url
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def ingest(clients: int = 4, seconds: float = 1.5, single_seconds: float = 1.0, runs: int = 3) -> dict:
    """Predictions/s per backend: the median of `runs` runs, the servers alternating run by run."""
    out: dict = {"clients": clients, "seconds": seconds, "single_seconds": single_seconds, "runs": runs}
    batches = templates(BATCH, 3)
    singles = templates(1, 3)
    out["batch_body_bytes"] = len(batches[0])
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(redis_server())
        servers = {}
        for name, spec in BACKENDS.items():
            if "joins" in spec:
                if redis_url is None:
                    out["redis_skipped"] = "redis-server is not installed (apt-get install redis-server)"
                    continue
                spec = {**spec, "joins": {**spec["joins"], "redis_url": redis_url}}
            servers[name] = stack.enter_context(Served(config_text(models=1, features=30, **spec)))
        for server in servers.values():
            post_rate(server.url, batches, BATCH, clients, 0.5)  # warm up
        batch_runs: dict = {name: [] for name in servers}
        single_runs: dict = {name: [] for name in ("memory", "sqlite_normal")}
        for _ in range(runs):
            for name, server in servers.items():
                batch_runs[name].append(post_rate(server.url, batches, BATCH, clients, seconds))
            for name in single_runs:
                single_runs[name].append(post_rate(servers[name].url, singles, 1, clients, single_seconds))
        out["batch"] = {name: statistics.median(r) for name, r in batch_runs.items()}
        out["batch_runs"] = batch_runs
        out["single"] = {name: statistics.median(r) for name, r in single_runs.items()}
        out["single_runs"] = single_runs
    return out


class TimedLock:
    """The ingest lock, timing how long each holder keeps it (the stall a checkpoint causes)."""

    def __init__(self, lock):
        self.lock = lock
        self.held: list[float] = []

    def acquire(self, *args, **kwargs) -> bool:
        ok = self.lock.acquire(*args, **kwargs)
        if ok:
            self._since = time.perf_counter()
        return ok

    def release(self) -> None:
        self.held.append(time.perf_counter() - self._since)
        self.lock.release()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _validated(m, size: int, now: float) -> list:
    """One batch of `size` validated predictions of the generated data, all with ids and no labels."""
    return m.validator.predictions({"predictions": events(size, seed=7, labelled=False, ids=True)}, now)


def _restart(text: str) -> tuple[float, dict]:
    """`create_app` on the config's data directory in a fresh process, as a real restart is (a long-lived
    benchmark process replays slower): its seconds and what it restored. Nothing is checkpointed at the
    end, so the next restart finds the same snapshot and journal."""
    cmd = [sys.executable, os.path.abspath(__file__), "--restart"]
    out = json.loads(subprocess.run(cmd, input=text, cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    return out["seconds"], out["restored"]


@contextlib.contextmanager
def _directory_lent(store):
    """Hand the data directory to a restarting child for its run, then take it back: one process per data
    directory (the store's lock refuses a second), and the benchmark keeps its store open between sizes."""
    from exporter.engine import storage

    path = store._dir_lock.path
    store._dir_lock.release()
    try:
        yield
    finally:
        store._dir_lock = storage._DirLock.acquire(path)


def _restart_here(text: str) -> dict:
    from exporter.config import parse_config
    from exporter.serve.app import create_app

    config = parse_config(text)
    started = time.perf_counter()
    app = create_app(config)
    seconds = time.perf_counter() - started
    m = app.extensions["mlmon"]
    m.store.close()  # no final checkpoint
    return {"seconds": seconds, "restored": m.restored}


def _columns(m, size: int, now: float):
    """The same batch as a validated columnar batch (exporter/ingest/columnar.py ``Columns``)."""
    items = events(size, seed=7, labelled=False, ids=True)
    columns = {
        "model": items[0]["model"],
        "ids": [e["id"] for e in items],
        "predictions": [e["prediction"] for e in items],
        "score": [e["score"] for e in items],
        "features": {f: [e["features"][f] for e in items] for f in items[0]["features"]},
    }
    return m.columnar.predictions("columns", orjson.dumps(columns), now)


def checkpoints(
    sizes=(10_000, 100_000, 1_000_000),
    runs: int = 3,
    single_above: int = 100_000,
    chunk: int = 10_000,
    columnar: bool = False,
) -> list[dict]:
    """In process: fill the pending store with waiting predictions (no labels), then checkpoint `runs`
    times at each size (once above `single_above`); also the time of a restart from that snapshot (journal
    empty). The fill goes straight to the model state: the journal stays empty. ``columnar``: filled with
    columnar batches (whose predictions wait as blocks of columns) instead of rows."""
    from exporter.config import parse_config
    from exporter.serve.app import create_app

    text = config_text(models=1, features=30, limits={"max_pending_per_model": 2 * sizes[-1]})
    config = parse_config(text)
    clock = [1_800_000_000.0]
    app = create_app(config, clock=lambda: clock[0])
    m = app.extensions["mlmon"]
    state = m.models["model0"]
    lock = m.ingest_lock = TimedLock(m.ingest_lock)
    batch = _columns(m, chunk, clock[0]) if columnar else _validated(m, chunk, clock[0])
    step = 3000.0 / (sizes[-1] // chunk)  # every event within 50 minutes: inside the 1h and 1d windows
    rows, fed = [], 0
    for size in sizes:
        while fed < size:
            clock[0] += step
            if columnar:
                batch.ids = [f"{fed + i}" for i in range(chunk)]
                batch.timestamps = np.full(chunk, clock[0])
                state.add_columns(batch, clock[0])
            else:
                for i, e in enumerate(batch):
                    e.id, e.timestamp = f"{fed + i}", clock[0]
                state.add_predictions(batch, clock[0])
            fed += chunk
        durations, stalls = [], []
        for _ in range(runs if size <= single_above else 1):
            lock.held.clear()
            started = time.perf_counter()
            m.checkpoint()
            durations.append(time.perf_counter() - started)
            stalls.append(max(lock.held))
        snapshot = m.store.db.execute("SELECT LENGTH(state) FROM snapshot").fetchone()[0]
        with _directory_lent(m.store):
            restart, restored = _restart(text)
        rows.append(
            {
                "pending": state.joins.counts()[0],
                "runs": len(durations),
                "checkpoint_seconds": statistics.median(durations),
                "stall_seconds": statistics.median(stalls),
                "snapshot_bytes": snapshot,
                "restart_seconds": restart,
                "restored_models": restored["models_restored"],
            }
        )
    m.store.close()
    return rows


def restarts(sizes=(10_000, 100_000, 1_000_000), runs: int = 3, single_above: int = 100_000) -> list[dict]:
    """Restart time with a journal of n predictions and no snapshot (median of `runs` restarts, one run
    above `single_above`). The journal is written as ingest writes it (`Store.append` of the raw bodies)."""
    from exporter.config import parse_config
    from exporter.serve.app import create_app

    bodies = templates(BATCH, 3)
    rows = []
    for n in sizes:
        text = config_text(models=1, features=30)
        config = parse_config(text)
        m = create_app(config).extensions["mlmon"]
        at = time.time() - 600
        for r in range(n // BATCH):
            raw = body(bodies[r % len(bodies)])
            m.store.append("predictions", at + r * 0.001, raw)
        journal = m.store.journal_bytes
        m.store.close()
        on_disk = m.store.size_bytes()
        times, restored = [], {}
        for _ in range(runs if n <= single_above else 1):
            seconds, restored = _restart(text)
            times.append(seconds)
        if restored.get("replayed") != n // BATCH:
            raise RuntimeError(f"replayed {restored} of {n // BATCH} records")
        rows.append(
            {
                "predictions": n,
                "restart_seconds": statistics.median(times),
                "runs": len(times),
                "journal_bytes": journal,
                "disk_bytes": on_disk,
                "rate": n / statistics.median(times),
            }
        )
        shutil.rmtree(config.storage.path, ignore_errors=True)
    return rows


def rss_under_checkpoints(seconds: float = 8.0, clients: int = 2) -> dict:
    """`mlmon serve` (SQLite, sync normal) with storage.checkpoint_bytes of 4 MiB, so that a checkpoint
    follows every few batches, and the pending store capped at 10,000 (full within the first second):
    RSS sampled every half second."""
    spec = {"storage": {"checkpoint_bytes": 4 * 1024 * 1024}, "limits": {"max_pending_per_model": 10_000}}
    batches = templates(BATCH, 3)
    with Served(config_text(models=1, features=30, **spec)) as server:
        post_rate(server.url, batches, BATCH, clients, 1.0)  # warm up: fills the pending store to its cap
        samples = []
        result: dict = {}
        thread = threading.Thread(
            target=lambda: result.update(rate=post_rate(server.url, batches, BATCH, clients, seconds))
        )
        thread.start()
        while thread.is_alive():
            samples.append(server.rss_bytes())
            time.sleep(0.5)
        thread.join()
        metrics = requests.get(server.url + "/metrics").text
    values = {}
    for line in metrics.splitlines():
        for name in ("mlmon_storage_checkpoints_total", "mlmon_storage_checkpoint_duration_seconds"):
            if line.startswith(name + " "):
                values[name] = float(line.split()[1])
    return {
        "seconds": seconds,
        "rate": result.get("rate", 0.0),
        "rss_bytes": samples,
        "checkpoints": int(values.get("mlmon_storage_checkpoints_total", 0)),
        "last_checkpoint_seconds": values.get("mlmon_storage_checkpoint_duration_seconds", 0.0),
    }


def run(full: bool = False) -> dict:
    """Every part, each timed. The default mode stops the checkpoint and restart sizes at 100,000 and runs
    shorter ingest phases; --full goes to 1,000,000 (median of 3 there too) with the longer phases."""
    started = time.monotonic()
    sizes = (10_000, 100_000, 1_000_000) if full else (10_000, 100_000)
    out: dict = {"mode": "full" if full else "default", "part_seconds": {}}
    for name, fn in (
        (
            "ingest",
            lambda: ingest(seconds=1.5, single_seconds=1.0) if full else ingest(seconds=1.0, single_seconds=0.5),
        ),
        ("checkpoint", lambda: checkpoints(sizes, single_above=sizes[-1])),
        ("checkpoint_columnar", lambda: checkpoints(sizes, single_above=sizes[-1], columnar=True)),
        ("restart", lambda: restarts(sizes, single_above=sizes[-1])),
        ("rss", lambda: rss_under_checkpoints(8.0 if full else 5.0)),
    ):
        t = time.monotonic()
        out[name] = fn()
        out["part_seconds"][name] = time.monotonic() - t
    out["seconds"] = time.monotonic() - started
    return out


if __name__ == "__main__":
    if "--restart" in sys.argv:
        print(json.dumps(_restart_here(sys.stdin.read())))
    else:
        print(json.dumps(run(full="--full" in sys.argv), indent=2))
