"""Side by side: refreshing drift + classification quality with mlmon, with Evidently, and exactly on raw rows.

The same generated data for the three: a reference of 100,000 rows and a window of 10^4, 10^5 or 10^6
events of a binary classifier (numeric features, a score and a label), with drift injected in three
features. For each window:

- mlmon: the window's events go once, untimed, through `ModelState.add_predictions` (binning and rings,
  as ingest does; validation skipped, the events are built as the validator would build them); timed is
  what a scrape computes for that window from the rings: `ModelState.snapshot` (the ring totals) and the
  drift (`binning.window_drift`: PSI, KS, JS, Wasserstein per feature) and quality math
  (`quality.classification`, `quality.roc_auc`); the whole collect of the model (every metric family,
  `collector._families`) is timed beside it;
- exact: numpy/scipy/scikit-learn on the raw rows: `scipy.stats.ks_2samp`, `wasserstein_distance` (over
  the reference standard deviation), PSI on the reference deciles and JS on its 40 quantile bins (the
  bins mlmon uses; the reference's bin edges and counts are computed once, untimed), `accuracy_score`,
  `precision_score`, `recall_score`, `f1_score`, `roc_auc_score`;
- Evidently (benchmark-only dependency, `.venv-bench`): a `Report` of `ValueDrift(column, method)` for
  every feature and method psi, ks, jensenshannon, wasserstein, and `Accuracy`, `Precision`, `Recall`,
  `F1Score`, `RocAuc`, run on `Dataset.from_pandas` of the reference and window DataFrames (timed from the
  DataFrames to the computed snapshot's `dict()`), each size in a fresh process, which also gives its
  peak memory.

Memory: each window size in a fresh process, one model with a reference, its rings filled through
`ModelState.add_predictions` in batches of 1,000 at every size, ring arrays made resident first (RSS
growth of the process); Evidently's from the same
processes as its timing.

Run: python bench/bench_peers.py   (prints a JSON summary; bench/run.py writes docs/benchmarks.md from it)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.common import ROOT  # noqa: E402

REF_ROWS = 100_000
WINDOWS = (10_000, 100_000, 1_000_000)
FEATURES = (20, 50)
MEMORY_SIZES = (10_000, 100_000, 1_000_000, 10_000_000)
MEMORY_FEATURES = 20
BATCH = 10_000
EVENTS_PER_ROUND = 1_000  # memory: events per add_predictions call, the same at every window size
DRIFTED = {0: ("shift", 0.5), 1: ("scale", 1.5), 2: ("shift", 0.1)}  # feature -> injected drift
METHODS = ("psi", "ks", "js", "wasserstein")
QUALITY = ("accuracy", "precision", "recall", "f1", "roc_auc")
# Runs per measurement (the median is reported); Evidently fewer where one run takes tens of seconds.
MLMON_RUNS = 20
EXACT_RUNS = {10_000: 5, 100_000: 3, 1_000_000: 3}
EVIDENTLY_RUNS = {10_000: 3, 100_000: 1, 1_000_000: 1}
EVIDENTLY_TIMEOUT = 240.0  # seconds for one Evidently process (import, data, all its runs)
START = 1_800_000_000.0
PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------------------------------------
# Data: the same in every process (fixed seeds).


def reference_rows(features: int) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(REF_ROWS, features))


def window_rows(features: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first n events of the window: features (n x F) with drift in three features, score, label."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(max(WINDOWS), features))[:n].copy()
    for j, (kind, k) in DRIFTED.items():
        x[:, j] = x[:, j] + k if kind == "shift" else x[:, j] * k
    w = np.random.default_rng(3).normal(size=features) / np.sqrt(features) * 2
    logit = x @ w
    score = 1.0 / (1.0 + np.exp(-logit))
    label = (np.random.default_rng(4).uniform(size=max(WINDOWS))[:n] < score).astype(np.int64)
    return x, score, label


def config_text(features: int) -> str:
    lines = ["windows: [1h]", "models:", "  - name: model0", "    task: binary", '    classes: ["no", "yes"]']
    lines.append("    features:")
    lines += [f"      - {{name: f{j}, type: numeric}}" for j in range(features)]
    return "\n".join(lines) + "\n"


def _mlmon_state(features: int):
    from exporter.config import parse_config
    from exporter.reference import build_profile
    from exporter.state import ModelState

    config = parse_config(config_text(features))
    model = config.models[0]
    ref = reference_rows(features)
    profile = build_profile({f"f{j}": ref[:, j].tolist() for j in range(features)}, model)
    return config, model, profile, ModelState


def _events(x: np.ndarray, score: np.ndarray, label: np.ndarray, now: float) -> list:
    """Events as the validator builds them (class indices: no = 0, yes = 1; the score of "yes")."""
    from exporter.validation import Prediction

    names = [f"f{j}" for j in range(x.shape[1])]
    pred = (score >= 0.5).astype(np.int64).tolist()
    return [
        Prediction("model0", "default", None, now, p, (s,), None, y, dict(zip(names, row)))
        for row, p, s, y in zip(x.tolist(), pred, score.tolist(), label.tolist())
    ]


# ---------------------------------------------------------------------------------------------------------
# The three refreshes.


def mlmon_refresh(state, now: float) -> dict:
    """What a scrape computes for the model's window: ring totals, drift and quality figures."""
    from exporter import quality
    from exporter.binning import window_drift

    snap = state.snapshot(now)
    totals = snap.versions[0].windows["1h"]
    d = window_drift(snap.config, snap.profile, totals)
    q = quality.classification(totals["confusion"])
    auc = quality.roc_auc(totals["hist_pos"], totals["hist_all"])
    return {
        "drift": d.features,
        "accuracy": q["accuracy"],
        "precision": q["precision"][1],
        "recall": q["recall"][1],
        "f1": q["f1"][1],
        "roc_auc": auc[0],
        "roc_auc_bound": auc[1],
    }


def mlmon_collect(state, now: float) -> int:
    """The whole collect of the model: every metric family of a scrape (without the text exposition)."""
    from exporter.collector import _families

    return sum(len(f.samples) for f in _families([state.snapshot(now)], {}, {}))


class Exact:
    """Drift and quality on raw rows; the reference's sorted values, bins and counts are prepared once."""

    def __init__(self, ref: np.ndarray):
        self.ref = ref
        self.std = ref.std(axis=0)
        self.psi_edges = [np.quantile(ref[:, j], np.linspace(0, 1, 11)) for j in range(ref.shape[1])]
        self.js_edges = [np.quantile(ref[:, j], np.linspace(0, 1, 41)) for j in range(ref.shape[1])]
        self.psi_ref = [_bincount(e, ref[:, j]) for j, e in enumerate(self.psi_edges)]
        self.js_ref = [_bincount(e, ref[:, j]) for j, e in enumerate(self.js_edges)]

    def refresh(self, x: np.ndarray, score: np.ndarray, label: np.ndarray) -> dict:
        from scipy.spatial.distance import jensenshannon
        from scipy.stats import ks_2samp, wasserstein_distance
        from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

        from exporter.drift import psi

        drift = {}
        for j in range(x.shape[1]):
            col, ref = x[:, j], self.ref[:, j]
            drift[f"f{j}"] = {
                "psi": psi(self.psi_ref[j], _bincount(self.psi_edges[j], col)),
                "ks": float(ks_2samp(ref, col).statistic),
                "js": float(jensenshannon(self.js_ref[j], _bincount(self.js_edges[j], col), base=2)),
                "wasserstein": float(wasserstein_distance(ref, col)) / self.std[j],
            }
        pred = (score >= 0.5).astype(np.int64)
        return {
            "drift": drift,
            "accuracy": accuracy_score(label, pred),
            "precision": precision_score(label, pred),
            "recall": recall_score(label, pred),
            "f1": f1_score(label, pred),
            "roc_auc": roc_auc_score(label, score),
        }


def _bincount(edges: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Counts below the first edge, in each interval (the last edge inside), above the last edge."""
    b = np.searchsorted(edges, x, side="right")
    b[x == edges[-1]] = len(edges) - 1
    return np.bincount(b, minlength=len(edges) + 1).astype(np.float64)


def evidently_child(features: int, n: int, runs: int) -> dict:
    """Evidently's refresh of one window, ``runs`` times, in this (fresh) process; with its peak memory."""
    import warnings

    warnings.filterwarnings("ignore")
    import pandas as pd
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.metrics import Accuracy, F1Score, Precision, Recall, RocAuc, ValueDrift

    names = [f"f{j}" for j in range(features)]

    def frame(x, score, label) -> pd.DataFrame:
        df = pd.DataFrame(x, columns=names)
        df["score"], df["target"], df["prediction"] = score, label, (score >= 0.5).astype(np.int64)
        return df

    reference = pd.DataFrame(reference_rows(features), columns=names)
    current = frame(*window_rows(features, n))
    drift_definition = DataDefinition(numerical_columns=names)
    quality_definition = DataDefinition(
        numerical_columns=[*names, "score"],
        categorical_columns=["target", "prediction"],
        classification=[
            BinaryClassification(
                target="target", prediction_labels="prediction", prediction_probas="score", pos_label=1
            )
        ],
    )
    drift_metrics = [
        ValueDrift(column=c, method=m) for c in names for m in ("psi", "ks", "jensenshannon", "wasserstein")
    ]
    quality_metrics = [Accuracy(), Precision(), Recall(), F1Score(), RocAuc()]
    frames_bytes = int(current.memory_usage(deep=True).sum())
    reference_bytes = int(reference.memory_usage(deep=True).sum())
    before = _rss()
    _reset_peak()
    times, result = [], None
    for _ in range(runs):
        t = time.perf_counter()
        drift = Report(drift_metrics).run(
            Dataset.from_pandas(current[names], data_definition=drift_definition),
            Dataset.from_pandas(reference, data_definition=drift_definition),
        )
        result = drift.dict()
        quality = Report(quality_metrics).run(Dataset.from_pandas(current, data_definition=quality_definition), None)
        result = quality.dict()
        times.append(time.perf_counter() - t)
    values = {m["metric_name"].split("(")[0]: m["value"] for m in result["metrics"]}
    return {
        "seconds": times,
        "window_frame_bytes": frames_bytes,
        "reference_frame_bytes": reference_bytes,
        "rss_before_bytes": before,
        "peak_growth_bytes": _peak() - before,
        "roc_auc": values.get("RocAuc"),
        "accuracy": values.get("Accuracy"),
    }


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM, the peak resident set size (Linux >= 4.0)
    except OSError:
        pass


def _peak() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def evidently_available() -> str | None:
    """None when Evidently can be imported here, else why not (it lives in .venv-bench only)."""
    try:
        import evidently  # noqa: F401
        import pandas  # noqa: F401
    except ImportError as exc:
        return f"not installed in this Python ({exc}); run `make bench`, which uses .venv-bench"
    return None


def evidently(features: int, n: int) -> dict:
    runs = EVIDENTLY_RUNS[n]
    cmd = [sys.executable, os.path.abspath(__file__), "--evidently", str(features), str(n), str(runs)]
    t = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=EVIDENTLY_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"timeout": EVIDENTLY_TIMEOUT, "runs": runs}
    except subprocess.CalledProcessError as exc:
        return {"error": exc.stderr[-2000:], "runs": runs}
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["median_seconds"] = statistics.median(res["seconds"])
    res["runs"] = runs
    res["process_seconds"] = time.perf_counter() - t
    return res


# ---------------------------------------------------------------------------------------------------------
# Speed and error, side by side.


def _median_time(fn, runs: int, times: list[float] | None = None) -> float:
    times = list(times or [])
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _errors(binned: dict, exact: dict) -> dict:
    """Largest |mlmon - exact| over the features per drift method, and per quality figure."""
    out = {m: max(abs(binned["drift"][f][m] - exact["drift"][f][m]) for f in exact["drift"]) for m in METHODS}
    out["ks_drifted"] = max(abs(binned["drift"][f"f{j}"]["ks"] - exact["drift"][f"f{j}"]["ks"]) for j in DRIFTED)
    for q in QUALITY:
        out[q] = abs(binned[q] - exact[q])
    return out


def speed(features: int, with_evidently: bool) -> list[dict]:
    config, model, profile, ModelState = _mlmon_state(features)
    state = ModelState(model, config)
    state.set_reference(profile)
    exact = Exact(reference_rows(features))
    x_all, s_all, y_all = window_rows(features, max(WINDOWS))
    xt = np.asfortranarray(x_all)  # column access for the exact computation
    rows, fed, now = [], 0, START
    step = 3000.0 / (max(WINDOWS) // BATCH)  # every event within 50 minutes: inside the 1h window
    fill_seconds = 0.0
    for n in WINDOWS:
        while fed < n:
            now += step
            t = time.perf_counter()
            state.add_predictions(
                _events(x_all[fed : fed + BATCH], s_all[fed : fed + BATCH], y_all[fed : fed + BATCH], now), now
            )
            fill_seconds += time.perf_counter() - t
            fed += BATCH
        binned = mlmon_refresh(state, now)
        x, score, label = xt[:n], s_all[:n], y_all[:n]
        t = time.perf_counter()
        exact_figures = exact.refresh(x, score, label)  # the first timed run: its figures give the errors
        first_exact = time.perf_counter() - t
        row = {
            "features": features,
            "events": n,
            "mlmon_seconds": _median_time(lambda s=state, t=now: mlmon_refresh(s, t), MLMON_RUNS),
            "mlmon_collect_seconds": _median_time(lambda s=state, t=now: mlmon_collect(s, t), MLMON_RUNS),
            "exact_seconds": _median_time(
                lambda a=(x, score, label): exact.refresh(*a), EXACT_RUNS[n] - 1, [first_exact]
            ),
            "exact_runs": EXACT_RUNS[n],
            "errors": _errors(binned, exact_figures),
            "roc_auc_bound": binned["roc_auc_bound"],
            "exact_roc_auc": exact_figures["roc_auc"],
            "exact_accuracy": exact_figures["accuracy"],
            "window_raw_bytes": int(x.nbytes + score.nbytes + label.nbytes),
        }
        if with_evidently:
            row["evidently"] = evidently(features, n)
        rows.append(row)
        print(f"peers: {features} features, {n:,} events: {json.dumps(_brief(row))}", file=sys.stderr)
    rows[-1]["mlmon_fill_rate"] = fed / fill_seconds
    return rows


def _brief(row: dict) -> dict:
    ev = row.get("evidently", {})
    return {
        "mlmon_ms": round(row["mlmon_seconds"] * 1000, 2),
        "exact_ms": round(row["exact_seconds"] * 1000, 1),
        "evidently_s": ev.get("median_seconds", ev.get("timeout")),
    }


# ---------------------------------------------------------------------------------------------------------
# Memory per model as the window grows.


def mlmon_memory_child(n: int, features: int) -> dict:
    import gc

    config, model, profile, ModelState = _mlmon_state(features)
    x, score, label = window_rows(features, BATCH)
    batch = _events(x, score, label, START)
    gc.collect()
    before = _rss()
    state = ModelState(model, config)
    state.set_reference(profile)
    now = START
    # The same batch size at every window size (the allocator keeps freed buffers of the largest batch it
    # saw, which must not depend on the window), and the ring arrays made resident up front (numpy's zeros
    # are lazily mapped pages; which buckets get written must not depend on the window either).
    first = batch[:EVENTS_PER_ROUND]
    for e in first:
        e.timestamp = now
    state.add_predictions(first, now)
    for version in state.versions.values():
        for ring in version.rings:
            for a in ring.arrays.values():
                a[...] = 0
    rounds = max(1, n // EVENTS_PER_ROUND)
    part = batch[:EVENTS_PER_ROUND]
    step = 3000.0 / rounds
    for _ in range(rounds):
        now += step
        for e in part:
            e.timestamp = now
        state.add_predictions(part, now)
    gc.collect()
    after = _rss()
    snap = state.snapshot(now)
    return {
        "events": (rounds + 1) * len(part),
        "in_window": int(snap.versions[0].windows["1h"]["predictions"]),
        "rss_growth_bytes": after - before,
        "ring_bytes": sum(r.nbytes() for v in state.versions.values() for r in v.rings),
    }


def memory(sizes=MEMORY_SIZES, features: int = MEMORY_FEATURES) -> list[dict]:
    out = []
    for n in sizes:
        cmd = [sys.executable, os.path.abspath(__file__), "--memory", str(n), str(features)]
        res = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("numpy", "scipy", "scikit-learn", "pandas", "evidently", "matplotlib"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def run(features=FEATURES, with_evidently: bool = True) -> dict:
    t = time.perf_counter()
    skipped = evidently_available() if with_evidently else "left out (--no-evidently)"
    out: dict = {
        "reference_rows": REF_ROWS,
        "windows": list(WINDOWS),
        "drifted": {f"f{j}": f"{kind} {k:g}" for j, (kind, k) in DRIFTED.items()},
        "mlmon_runs": MLMON_RUNS,
        "exact_runs": {str(k): v for k, v in EXACT_RUNS.items()},
        "evidently_runs": {str(k): v for k, v in EVIDENTLY_RUNS.items()},
        "evidently_timeout": EVIDENTLY_TIMEOUT,
        "evidently_skipped": skipped,
        "versions": versions(),
        "speed": [row for f in features for row in speed(f, skipped is None)],
        "memory_features": MEMORY_FEATURES,
        "memory": memory(),
    }
    out["seconds"] = time.perf_counter() - t
    return out


if __name__ == "__main__":
    if "--evidently" in sys.argv:
        i = sys.argv.index("--evidently")
        print(json.dumps(evidently_child(int(sys.argv[i + 1]), int(sys.argv[i + 2]), int(sys.argv[i + 3]))))
    elif "--memory" in sys.argv:
        i = sys.argv.index("--memory")
        print(json.dumps(mlmon_memory_child(int(sys.argv[i + 1]), int(sys.argv[i + 2]))))
    elif "--no-evidently" in sys.argv:
        print(json.dumps(run(with_evidently=False), indent=1))
    else:
        print(json.dumps(run(), indent=1))
