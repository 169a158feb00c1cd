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
  DataFrames to the computed snapshot's `dict()`), one fresh process per feature count, the window sizes
  in turn, with the peak RSS growth of each size's runs (VmHWM reset through /proc/self/clear_refs).

Modes. Default: 3 runs of everything; each Evidently run stopped at 3 s and each exact run after the
first at 3 s (SIGALRM). A stopped run took at least the cap, so once more than half of a measurement's
runs took that long its median is at least the cap: reported as a lower bound (the targets are minimum
speed-ups, which a lower bound proves), and the remaining runs are skipped. With 20 features (the memory
comparison) the first Evidently run of each size is never stopped, so its peak memory is a whole
refresh's. --full: every run to its end, 5 exact runs, and one Evidently run at 10^7 events for its
memory when the growth measured at 10^6, extrapolated, fits in half of the available memory.

Memory: 3 fresh processes each fill one model's window (20 features, a reference, 1h of 60 buckets)
through `ModelState.add_predictions` in batches of 1,000, the ring arrays made resident first, and
measure their RSS growth as the window reaches 10^4, 10^5, 10^6 events (default: one of them goes on to
10^7, about 35 s; --full: all three); the median per size. Evidently's beside it, from its timing
process.

Run: python bench/bench_peers.py [--full] [--no-evidently]   (prints a JSON summary; bench/run.py writes
docs/benchmarks.md from it)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
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
# Runs per measurement (the median is reported) and, in the default mode, a cap on each Evidently run: a run
# stopped at the cap took at least that long, so the median is a lower bound once most runs reach the cap
# (enough to prove a minimum speed-up). --full runs every Evidently run to its end.
MLMON_RUNS = 20
MODES = {
    "default": {
        "exact_runs": 3,
        "exact_cap": 3.0,  # seconds for one exact run after the first (which gives the errors, never capped)
        "evidently_runs": 3,
        "evidently_cap": 3.0,  # seconds for one Evidently run (drift + quality report)
        "memory_processes": 3,
        "memory_10m_processes": 1,  # of which fill the window on to 10^7 events (about 35 s each)
        "evidently_10m": False,
    },
    "full": {
        "exact_runs": 5,
        "exact_cap": None,
        "evidently_runs": 3,
        "evidently_cap": None,
        "memory_processes": 3,
        "memory_10m_processes": 3,
        "evidently_10m": True,  # one run at 10^7 events, 20 features, for its memory (when it fits)
    },
}
EVIDENTLY_PROCESS_TIMEOUT = 3600.0  # seconds for one Evidently process in the full mode (import, data, runs)
START = 1_800_000_000.0
PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------------------------------------
# Data: the same in every process (fixed seeds).


def reference_rows(features: int) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(REF_ROWS, features))


def window_rows(features: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first n events of the window: features (n x F) with drift in three features, score, label.

    The generators fill row by row, so the first n rows are the same whatever the largest window."""
    x = np.random.default_rng(2).normal(size=(n, features))
    for j, (kind, k) in DRIFTED.items():
        x[:, j] = x[:, j] + k if kind == "shift" else x[:, j] * k
    w = np.random.default_rng(3).normal(size=features) / np.sqrt(features) * 2
    logit = x @ w
    score = 1.0 / (1.0 + np.exp(-logit))
    label = (np.random.default_rng(4).uniform(size=n) < score).astype(np.int64)
    return x, score, label


def config_text(features: int) -> str:
    lines = ["windows: [1h]", "models:", "  - name: model0", "    task: binary", '    classes: ["no", "yes"]']
    lines.append("    features:")
    lines += [f"      - {{name: f{j}, type: numeric}}" for j in range(features)]
    return "\n".join(lines) + "\n"


def _mlmon_state(features: int):
    from exporter.config import parse_config
    from exporter.engine.state import ModelState
    from exporter.stats.reference import build_profile

    config = parse_config(config_text(features))
    model = config.models[0]
    ref = reference_rows(features)
    profile = build_profile({f"f{j}": ref[:, j].tolist() for j in range(features)}, model)
    return config, model, profile, ModelState


def _events(x: np.ndarray, score: np.ndarray, label: np.ndarray, now: float) -> list:
    """Events as the validator builds them (class indices: no = 0, yes = 1; the score of "yes")."""
    from exporter.ingest.validation import Prediction

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
    from exporter.stats import quality
    from exporter.stats.binning import window_drift

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
    from exporter.serve.collector import _families

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

        from exporter.stats.drift import psi

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


class _Capped(BaseException):
    """Raised by the alarm in an Evidently run that reached the cap (a BaseException, so that no
    ``except Exception`` inside Evidently swallows it)."""


def _on_alarm(signum, frame) -> None:
    raise _Capped()


def evidently_child(features: int, sizes: list[int], runs: int, cap: float | None, first_full: bool = False) -> None:
    """Evidently's refresh of each window size, ``runs`` times, in this process, with its peak memory.

    Sizes in order, one window DataFrame at a time (the previous one dropped first), the peak resident set
    (VmHWM) reset before each size's runs. Each run is stopped at ``cap`` seconds when given (an alarm):
    its time is then a lower bound; with ``first_full`` the first run of each size is never stopped, so
    that its peak memory is that of a whole refresh. Once more than half of a size's runs took at least
    the cap its median is at least the cap whatever the others take, and the rest are not run. After each
    run the results so far go to stdout as one JSON line, so a process stopped from outside still reports
    what it finished."""
    import gc
    import signal
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
    signal.signal(signal.SIGALRM, _on_alarm)
    results: dict = {}
    for n in sizes:
        current = None
        gc.collect()
        current = frame(*window_rows(features, n))
        out = results[str(n)] = {
            "seconds": [],
            "capped": [],
            "window_frame_bytes": int(current.memory_usage(deep=True).sum()),
            "reference_frame_bytes": int(reference.memory_usage(deep=True).sum()),
            "window_raw_bytes": int(n * (features + 3) * 8),
        }
        gc.collect()
        before = out["rss_before_bytes"] = _rss()
        if not _reset_peak():
            out["peak_unavailable"] = "/proc/self/clear_refs is not writable: VmHWM cannot be reset"
        for k in range(runs):
            t = time.perf_counter()
            try:
                if cap and not (first_full and k == 0):
                    signal.setitimer(signal.ITIMER_REAL, cap)
                drift = Report(drift_metrics).run(
                    Dataset.from_pandas(current[names], data_definition=drift_definition),
                    Dataset.from_pandas(reference, data_definition=drift_definition),
                )
                drift.dict()
                quality = Report(quality_metrics).run(
                    Dataset.from_pandas(current, data_definition=quality_definition), None
                )
                result = quality.dict()
                capped = False
            except _Capped:
                capped = True
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            out["seconds"].append(time.perf_counter() - t)
            out["capped"].append(capped)
            out["first_full"] = first_full
            if not capped:
                values = {m["metric_name"].split("(")[0]: m["value"] for m in result["metrics"]}
                out["roc_auc"], out["accuracy"] = values.get("RocAuc"), values.get("Accuracy")
            if "peak_unavailable" not in out:
                out["peak_growth_bytes"] = _peak() - before
            print(json.dumps(results), flush=True)
            if cap and sum(x >= cap for x in out["seconds"]) > runs // 2:
                break
            drift = quality = None


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


def _reset_peak() -> bool:
    """Reset VmHWM, the peak resident set size, to the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


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


def evidently(
    features: int, sizes: list[int], runs: int, cap: float | None, first_full: bool = False
) -> dict[int, dict]:
    """Evidently's refresh of each window size, in one fresh process: per size the median of ``runs``
    runs (a lower bound when most runs reached ``cap``), the window DataFrame's bytes and the peak RSS
    growth during its runs."""
    cmd = [sys.executable, os.path.abspath(__file__), "--evidently", str(features)]
    cmd += [",".join(map(str, sizes)), str(runs), str(cap or 0), str(int(first_full))]
    timeout = (
        EVIDENTLY_PROCESS_TIMEOUT if cap is None or first_full else 60.0 + len(sizes) * (30.0 + runs * (cap + 10.0))
    )
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, text=True)
        try:
            proc.wait(timeout)
            stopped = None
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            stopped = f"process stopped after {timeout:.0f} s"
        out.seek(0)
        lines = [line for line in out.read().splitlines() if line.startswith("{")]
        err.seek(0)
        stderr = err.read()
    done = json.loads(lines[-1]) if lines else {}
    failed = stopped or (f"exit {proc.returncode}: {stderr[-2000:]}" if proc.returncode else None)
    results = {}
    for n in sizes:
        res = done.get(str(n))
        if res is None:
            results[n] = {"error": failed or "not run", "runs": runs}
            continue
        times = res["seconds"]
        res["runs"], res["runs_done"], res["cap"] = runs, len(times), cap
        if cap and sum(x >= cap for x in times) > runs // 2:
            # More than half of the runs took at least the cap: so does the median, whatever the others take.
            res["lower_bound"] = True
            res["median_seconds"] = cap
        else:
            # The middle run finished (a capped run is longer than every finished one): the median is exact.
            res["median_seconds"] = statistics.median(times)
        if len(times) < runs and not res.get("lower_bound"):
            res["error"] = failed or "fewer runs than asked"
        results[n] = res
    results_seconds = time.perf_counter() - t
    for res in results.values():
        res["process_seconds"] = results_seconds
    return results


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


def speed(features: int, settings: dict, with_evidently: bool) -> list[dict]:
    started = time.perf_counter()
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
        exact_figures = exact.refresh(x, score, label)  # the first run, never capped: its figures give the errors
        exact_times = _capped_times(
            lambda a=(x, score, label): exact.refresh(*a),
            settings["exact_runs"],
            settings["exact_cap"],
            [time.perf_counter() - t],
        )
        row = {
            "features": features,
            "events": n,
            "mlmon_seconds": _median_time(lambda s=state, t=now: mlmon_refresh(s, t), MLMON_RUNS),
            "mlmon_collect_seconds": _median_time(lambda s=state, t=now: mlmon_collect(s, t), MLMON_RUNS),
            **exact_times,
            "errors": _errors(binned, exact_figures),
            "roc_auc_bound": binned["roc_auc_bound"],
            "exact_roc_auc": exact_figures["roc_auc"],
            "exact_accuracy": exact_figures["accuracy"],
            "window_raw_bytes": int(x.nbytes + score.nbytes + label.nbytes),
        }
        rows.append(row)
        print(f"peers: {features} features, {n:,} events: {json.dumps(_brief(row))}", file=sys.stderr)
    rows[-1]["mlmon_fill_rate"] = fed / fill_seconds
    if with_evidently:
        t = time.perf_counter()
        results = evidently(
            features,
            list(WINDOWS),
            settings["evidently_runs"],
            settings["evidently_cap"],
            first_full=features == MEMORY_FEATURES,  # its memory table wants the peak of a whole refresh
        )
        for row in rows:
            row["evidently"] = results[row["events"]]
            print(f"peers: {features} features, {row['events']:,} events: {json.dumps(_brief(row))}", file=sys.stderr)
        rows[-1]["evidently_process_seconds"] = time.perf_counter() - t
    rows[-1]["part_seconds"] = time.perf_counter() - started  # this feature count: fill, refreshes, Evidently
    return rows


def _capped_times(fn, runs: int, cap: float | None, times: list[float]) -> dict:
    """Run ``fn`` until ``runs`` times are known, each stopped at ``cap`` seconds (an alarm) when given;
    once more than half of them took at least the cap, the median is at least the cap and the rest are
    not run. The median, whether it is a lower bound, and the runs."""
    import signal

    previous = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        while len(times) < runs and not (cap and sum(t >= cap for t in times) > runs // 2):
            t = time.perf_counter()
            try:
                if cap:
                    signal.setitimer(signal.ITIMER_REAL, cap)
                fn()
            except _Capped:
                pass
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            times.append(time.perf_counter() - t)
    finally:
        signal.signal(signal.SIGALRM, previous)
    bound = bool(cap) and sum(t >= cap for t in times) > runs // 2
    return {
        "exact_seconds": cap if bound else statistics.median(times),
        "exact_lower_bound": bound,
        "exact_runs": runs,
        "exact_times": times,
    }


def _brief(row: dict) -> dict:
    ev = row.get("evidently", {})
    return {
        "mlmon_ms": round(row["mlmon_seconds"] * 1000, 2),
        "exact_ms": round(row["exact_seconds"] * 1000, 1),
        "exact_lower_bound": row["exact_lower_bound"],
        "evidently_s": ev.get("median_seconds"),
        "evidently_lower_bound": ev.get("lower_bound", False),
        "evidently_peak_mib": round(ev.get("peak_growth_bytes", 0) / 2**20),
        "evidently_process_s": round(ev.get("process_seconds", 0), 1),
    }


# ---------------------------------------------------------------------------------------------------------
# Memory per model as the window grows.


def mlmon_memory_child(sizes: list[int], features: int) -> list[dict]:
    """One model's RSS growth as its window fills: measured when it holds each of ``sizes`` events."""
    import gc

    config, model, profile, ModelState = _mlmon_state(features)
    x, score, label = window_rows(features, EVENTS_PER_ROUND)
    part = _events(x, score, label, START)
    gc.collect()
    before = _rss()
    state = ModelState(model, config)
    state.set_reference(profile)
    now = START
    # The same batch at every size (the allocator keeps freed buffers of the largest batch it saw), and
    # the ring arrays made resident up front (numpy's zeros are lazily mapped pages; which buckets get
    # written must not depend on the window): a first batch written, then every ring array zeroed.
    for e in part:
        e.timestamp = now
    state.add_predictions(part, now)
    for version in state.versions.values():
        for ring in version.rings:
            for a in ring.arrays.values():
                a[...] = 0
    step = 3000.0 / (max(sizes) // EVENTS_PER_ROUND)  # every event within 50 minutes: inside the 1h window
    rows, fed = [], 0
    for n in sorted(sizes):
        while fed < n:
            now += step
            for e in part:
                e.timestamp = now
            state.add_predictions(part, now)
            fed += len(part)
        gc.collect()
        after = _rss()
        in_window = int(state.snapshot(now).versions[0].windows["1h"]["predictions"])
        if in_window != fed:
            raise RuntimeError(f"{in_window:,} events in the window, {fed:,} fed after the warm-up batch")
        rows.append(
            {
                "events": in_window,
                "rss_growth_bytes": after - before,
                "ring_bytes": sum(r.nbytes() for v in state.versions.values() for r in v.rings),
            }
        )
    return rows


def memory(
    processes: int = 3, large_processes: int = 3, sizes=MEMORY_SIZES, features: int = MEMORY_FEATURES
) -> list[dict]:
    """RSS growth per window size: the median over ``processes`` fresh processes, each filling one window
    and measuring it at every size on the way; ``large_processes`` of them go on to the largest size (all
    runs kept)."""
    runs = []
    for k in range(processes):
        upto = sizes if k < large_processes else sizes[:-1]
        cmd = [sys.executable, os.path.abspath(__file__), "--memory", ",".join(map(str, upto)), str(features)]
        res = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    out = []
    for i, row in enumerate(runs[0]):
        growth = [r[i]["rss_growth_bytes"] for r in runs if i < len(r)]
        out.append({**row, "rss_growth_bytes": statistics.median(growth), "rss_growth_runs": growth})
    print(f"peers: memory: {json.dumps(out)}", file=sys.stderr)
    return out


def _mem_available() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def evidently_large(speed_rows: list[dict], n: int, features: int = MEMORY_FEATURES) -> dict:
    """One Evidently run at n events (10^7), for its memory, when the growth measured from 10^5 to 10^6,
    extrapolated, fits in half of the memory available; else why not."""
    by_n = {
        r["events"]: r["evidently"]
        for r in speed_rows
        if r["features"] == features and "peak_growth_bytes" in r.get("evidently", {})
    }
    one = by_n.get(1_000_000)
    if one is None or one.get("lower_bound"):
        return {"skipped": "no complete run at 10^6 to extrapolate from"}
    per_event = (one["window_frame_bytes"] + one["peak_growth_bytes"]) / 1_000_000
    need, available = per_event * n + one["reference_frame_bytes"], _mem_available()
    if need > available / 2:
        return {
            "skipped": f"it would need about {need / 2**30:.1f} GiB (the 10^6 run's frame and peak, times "
            f"{n // 1_000_000}), over half of the {available / 2**30:.1f} GiB available",
            "estimated_bytes": need,
        }
    res = evidently(features, [n], 1, None)[n]
    res["estimated_bytes"] = need
    return res


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("numpy", "scipy", "scikit-learn", "pandas", "evidently", "matplotlib"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def run(full: bool = False, features=FEATURES, with_evidently: bool = True) -> dict:
    """The side-by-side benchmark; ``full`` runs every Evidently run to its end (and one at 10^7 events)."""
    t = time.perf_counter()
    mode = "full" if full else "default"
    settings = MODES[mode]
    skipped = evidently_available() if with_evidently else "left out (--no-evidently)"
    out: dict = {
        "mode": mode,
        "reference_rows": REF_ROWS,
        "windows": list(WINDOWS),
        "drifted": {f"f{j}": f"{kind} {k:g}" for j, (kind, k) in DRIFTED.items()},
        "mlmon_runs": MLMON_RUNS,
        "exact_runs": settings["exact_runs"],
        "exact_cap": settings["exact_cap"],
        "evidently_runs": settings["evidently_runs"],
        "evidently_cap": settings["evidently_cap"],
        "evidently_skipped": skipped,
        "versions": versions(),
        "speed": [row for f in features for row in speed(f, settings, skipped is None)],
        "memory_features": MEMORY_FEATURES,
    }
    m = time.perf_counter()
    out["memory"] = memory(settings["memory_processes"], settings["memory_10m_processes"])
    out["memory_seconds"] = time.perf_counter() - m
    large = max(MEMORY_SIZES)
    if skipped is not None:
        out["evidently_memory_large"] = {"events": large, "skipped": f"Evidently {skipped}"}
    elif settings["evidently_10m"]:
        out["evidently_memory_large"] = {"events": large, **evidently_large(out["speed"], large)}
    else:
        out["evidently_memory_large"] = {
            "events": large,
            "skipped": "left to `make bench-full`, which runs it once when it fits in half the memory",
        }
    out["seconds"] = time.perf_counter() - t
    return out


if __name__ == "__main__":
    if "--evidently" in sys.argv:
        i = sys.argv.index("--evidently")
        evidently_child(
            int(sys.argv[i + 1]),
            [int(n) for n in sys.argv[i + 2].split(",")],
            int(sys.argv[i + 3]),
            float(sys.argv[i + 4]) or None,
            sys.argv[i + 5] == "1",
        )
    elif "--memory" in sys.argv:
        i = sys.argv.index("--memory")
        print(json.dumps(mlmon_memory_child([int(n) for n in sys.argv[i + 1].split(",")], int(sys.argv[i + 2]))))
    else:
        print(json.dumps(run(full="--full" in sys.argv, with_evidently="--no-evidently" not in sys.argv), indent=1))
