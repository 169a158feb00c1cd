"""Shared pieces of the benchmarks: configs, generated events, a served exporter, timing helpers."""

from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine_probe() -> float:
    """Milliseconds a fixed piece of pure-Python work takes (a loop, then inserting and popping 200,000 string
    keys in a dict: the kind of work a request does between C calls), the best of three. The machines these
    benchmarks run on change speed by tens of percent within a minute; timed beside a benchmark's phases, the
    probe tells a slow moment from a slow change."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        sum(i * i for i in range(300_000))
        d = {}
        for i in range(100_000):
            d[str(i)] = i
        for i in range(100_000):
            d.pop(str(i))
        best = min(best, time.perf_counter() - start)
    return best * 1000


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) clock ticks of the machine's CPUs so far (/proc/stat; (0, 0) where there is none). Steal is
    time the hypervisor gave this virtual machine's CPUs to others: between two readings, the share of it is
    how much of the machine a benchmark did not have, which a slow phase can then be told by."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of CPU time stolen between two :func:`cpu_ticks` readings (0 when none passed)."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


def scratch_dir(prefix: str = "mlmon-bench-") -> str:
    """A fresh temporary directory, removed when the benchmark process exits (never inside the repo)."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def config_text(
    models: int = 1,
    features: int = 30,
    windows=("5m", "1h", "1d"),
    task: str = "binary",
    reference_dir: str | None = None,
    limits: dict | None = None,
    storage: dict | None = None,
    joins: dict | None = None,
    scored_reference: bool = False,
    multivariate: bool = True,
) -> str:
    """A config of `models` models; with `reference_dir`, each gets a reference CSV written there (drift on),
    with `scored_reference` one that also carries the model's scores and the true labels (estimated quality on).

    Storage is the default (SQLite, sync normal) unless `storage` says otherwise, always with its data
    directory in a fresh temporary directory: `mlmon serve` (Served) and `create_app` on the parsed text
    would otherwise write `data/` into the working directory, the repo. `limits` and `joins` add settings;
    ``multivariate=False`` turns multivariate drift off (on by default, as in mlmon).
    """
    limit = {"max_batch_size": 10000, "max_body_bytes": 67108864, **(limits or {})}
    store = {"path": scratch_dir("mlmon-bench-data-"), **(storage or {})}
    lines = [f"windows: {list(windows)}", f"limits: {json.dumps(limit)}", f"storage: {json.dumps(store)}"]
    if joins:
        lines.append(f"joins: {json.dumps(joins)}")
    lines.append("models:")
    for m in range(models):
        lines.append(f"  - name: model{m}")
        lines.append(f"    task: {task}")
        if reference_dir:
            path = os.path.join(reference_dir, f"model{m}.csv")
            write_reference(path, features, seed=1000 + m, scored=scored_reference)
            lines.append(f"    reference: {path}")
        if not multivariate:
            lines.append("    drift: {multivariate: false}")
        if task != "regression":
            lines.append('    classes: ["no", "yes"]')
        lines.append("    features:")
        for f in range(features):
            kind = "categorical" if f % 10 == 9 else "numeric"
            lines.append(f"      - {{name: f{f}, type: {kind}}}")
    return "\n".join(lines) + "\n"


def write_reference(path: str, features: int = 30, rows: int = 10_000, seed: int = 0, scored: bool = False) -> None:
    """Reference rows from the same distribution as `events` (so drift figures stay small); `scored`: with
    the positive class's score and the true label drawn as `events` draws them (the scores calibrate)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).round(4)
    p = rng.uniform(size=rows).round(4)
    y = rng.uniform(size=rows) < p
    with open(path, "w") as fh:
        fh.write(",".join([f"f{f}" for f in range(features)] + (["score", "label"] if scored else [])) + "\n")
        for i in range(rows):
            row = [f"c{int(abs(x[i, f]) * 3)}" if f % 10 == 9 else str(x[i, f]) for f in range(features)]
            fh.write(",".join(row + ([str(p[i]), "yes" if y[i] else "no"] if scored else [])) + "\n")


def events(
    n: int,
    model: str = "model0",
    features: int = 30,
    seed: int = 0,
    labelled: bool = True,
    ids: bool = False,
    start: float | None = None,
    span: float = 0.0,
) -> list[dict]:
    """Binary-classifier predictions with 30 features (every tenth categorical)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).round(4)
    p = rng.uniform(size=n).round(4)
    y = rng.uniform(size=n) < p
    out = []
    for i in range(n):
        feats = {f"f{f}": (f"c{int(abs(x[i, f]) * 3)}" if f % 10 == 9 else float(x[i, f])) for f in range(features)}
        item = {
            "model": model,
            "prediction": "yes" if p[i] >= 0.5 else "no",
            "score": float(p[i]),
            "features": feats,
            "latency_seconds": 0.003,
        }
        if labelled:
            item["label"] = "yes" if y[i] else "no"
        if ids:
            item["id"] = f"{seed}-{i}"
        if start is not None:
            item["timestamp"] = start + span * i / max(n, 1)
        out.append(item)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """`mlmon serve` in a subprocess on loopback, for as long as the with-block lasts; its data directory
    (`--storage.path`) is in the temporary directory that also holds the config, removed at the end."""

    def __init__(self, config: str, threads: int = 8, env: dict[str, str] | None = None):
        self.config = config
        self.threads = threads
        self.env = {**os.environ, **env} if env else None  # None: this process's environment

    def __enter__(self) -> Served:
        self.dir = tempfile.TemporaryDirectory()
        path = os.path.join(self.dir.name, "config.yml")
        with open(path, "w") as fh:
            fh.write(self.config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                "serve",
                "--config",
                path,
                "--port",
                str(self.port),
                "--threads",
                str(self.threads),
                "--storage.path",
                os.path.join(self.dir.name, "data"),
                "--log.level",
                "warn",
            ],
            cwd=ROOT,
            env=self.env,
        )
        wait_ready(self.url, "exporter")
        return self

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self.dir.cleanup()


def wait_ready(url: str, what: str, seconds: float = 30) -> None:
    """Until ``url``/readyz answers OK (a server started in a subprocess); RuntimeError after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/readyz", timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start")


def median_of(fn, runs: int = 5) -> float:
    return statistics.median(fn() for _ in range(runs))


def machine() -> str:
    from importlib.metadata import version

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    libs = ", ".join(f"{name} {version(name)}" for name in ("numpy", "flask", "waitress", "prometheus-client"))
    return f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, {libs}"


def fill_markers(path: str, begin: str, end: str, body: str) -> None:
    """Replace what lies between the markers ``begin`` and ``end`` of the file at ``path`` (each there once, in
    that order) with ``body``, leaving the rest of the file as it is: how a benchmark writes its table into
    the docs."""
    with open(path) as fh:
        doc = fh.read()
    if doc.count(begin) != 1 or doc.count(end) != 1 or doc.index(begin) > doc.index(end):
        raise SystemExit(f"{path} must hold {begin} and then {end}, once each")
    start, stop = doc.index(begin) + len(begin), doc.index(end)
    with open(path, "w") as fh:
        fh.write(doc[:start] + "\n" + body.strip() + "\n" + doc[stop:])
