"""Drift: false alarms and detection at the default thresholds, binned figures against the exact ones on
raw rows, and what drift costs at ingest and at scrape time.

Everything goes through the exporter's own code: a profile from `exporter.stats.reference.build_profile`, each
window binned by `exporter.stats.binning.Binner` and summed with `exporter.stats.binning.scatter` into the arrays of
one window slot, and its figures from `exporter.stats.binning.window_drift` (min_samples and all), decided with
the model's default thresholds. So the rates below are what a user gets with the defaults.

Run: python bench/bench_drift.py [--full]   (prints a JSON summary; bench/run.py writes docs/benchmarks.md from
it); the default mode draws 200 seeds and runs the HTTP ingest comparison for 1 s a run, --full 400
seeds and 5 s, and the KS p-value formula on 50 statistics per n (--full 100). One part alone:
python bench/bench_drift.py statistics | ingest | scrape | ks_cost | ks_formula
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.common import config_text, events  # noqa: E402

REF_ROWS = 10_000
WINDOW_SIZES = (100, 1_000, 10_000)
SEEDS = 400
SHIFTS = (0.5, 1.0)  # numeric shifts of the mean, in reference standard deviations
CONDITIONS = ("none", "shift_0.5", "shift_1")
NUMERIC = ("normal", "lognormal", "poisson")
CATEGORICAL = ("zipf",)
NUMERIC_METHODS = ("psi", "ks", "ks_pvalue", "js", "wasserstein")
CATEGORICAL_METHODS = ("psi", "js", "chi2_pvalue", "unseen")
CATEGORIES = 10
ZIPF = (1.0 / np.arange(1, CATEGORIES + 1)) / (1.0 / np.arange(1, CATEGORIES + 1)).sum()
LABELS = np.array([f"c{k}" for k in range(CATEGORIES)], dtype=object)

MODEL_YAML = """
windows: [1h]
models:
  - name: bench
    task: regression
    features:
      - {name: normal, type: numeric}
      - {name: lognormal, type: numeric}
      - {name: poisson, type: numeric}
      - {name: zipf, type: categorical}
"""

DESCRIPTION = {
    "normal": "Normal(0, 1)",
    "lognormal": "LogNormal(0, 1) (skewed)",
    "poisson": "Poisson(3) (discrete)",
    "zipf": f"{CATEGORIES} categories, shares proportional to 1/k",
}


# ---------------------------------------------------------------------------------------------------------
# Statistics: false alarms, detection, binned vs exact.


def _draw(rng: np.random.Generator, n: int, condition: str, std: dict[str, float]) -> dict[str, np.ndarray]:
    """n rows of every feature; a shift moves numeric means by k reference standard deviations (Poisson:
    Poisson(3 + k * std), which stays discrete) and swaps the shares of the two most frequent categories."""
    k = {"none": 0.0, "shift_0.5": 0.5, "shift_1": 1.0}[condition]
    p = ZIPF.copy()
    if k:
        p[[0, 1]] = p[[1, 0]]
    return {
        "normal": rng.normal(0.0, 1.0, n) + k * std.get("normal", 0.0),
        "lognormal": rng.lognormal(0.0, 1.0, n) + k * std.get("lognormal", 0.0),
        "poisson": rng.poisson(3.0 + k * std.get("poisson", 0.0), n).astype(np.float64),
        "zipf": LABELS[rng.choice(CATEGORIES, n, p=p)],
    }


def _window(model, profile, binner, cols: dict[str, np.ndarray], n: int):
    """Bin one window of raw rows the way ingest does, sum it like a window, and compute its figures."""
    from exporter.ingest.columns import bin_rows
    from exporter.stats.binning import drift_schema, scatter, window_drift

    names = binner.names
    feats = [dict(zip(names, row)) for row in zip(*(cols[k].tolist() for k in names))]
    binned = bin_rows(binner, feats, [0.0] * n)
    arrays = {k: np.zeros((1, *shape), dtype) for k, (shape, dtype) in drift_schema(model).items()}
    slots = np.zeros(n, dtype=np.int64)
    for name, (ev, idx, weights) in binned.scatter.items():
        scatter(arrays[name], slots, ev, idx, weights)
    totals = {k: a[0] for k, a in arrays.items()}
    totals["predictions"] = float(n)
    return window_drift(model, profile, totals), totals


def _seeds(seeds: list[int]) -> dict:
    """The statistics part for some seeds (one process)."""
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import chi2_contingency, ks_2samp, wasserstein_distance

    from exporter.config import parse_config
    from exporter.stats import drift
    from exporter.stats.binning import Binner
    from exporter.stats.reference import build_profile

    model = parse_config(MODEL_YAML).models[0]
    alarms: dict[str, int] = {}  # "feature|condition|n|method" -> windows over threshold
    windows: dict[str, int] = {}  # "feature|condition|n" -> windows with figures
    values: dict[str, list[float]] = {}  # "feature|n|method" -> figures without drift
    errors: dict[str, list[float]] = {}  # "feature|method|n|drift" -> binned - exact (drift: none, shifted)
    # Checks of the documented bounds: KS binned <= exact <= binned + the largest share of one bin;
    # |Wasserstein binned - exact| <= what moving every value to its bin's point can cost.
    bounds = {"ks_above_exact": 0, "ks_gap_over_bound": 0, "wasserstein_over_bound": 0, "checked": 0}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        ref_cols = _draw(rng, REF_ROWS, "none", {})
        profile = build_profile({k: v.tolist() for k, v in ref_cols.items()}, model)
        std = {k: profile.features[k].std for k in NUMERIC}
        binner = Binner(model, profile)
        ref_sorted: dict[str, np.ndarray] = {}
        checked_scipy: dict[str, bool] = {}
        for n in WINDOW_SIZES:
            for condition in CONDITIONS:
                cols = _draw(rng, n, condition, std)
                result, totals = _window(model, profile, binner, cols, n)
                for j, name in enumerate(NUMERIC + CATEGORICAL):
                    figures = result.features.get(name)
                    if figures is None:
                        continue
                    # Both shifted conditions swap the categories: pooled as one condition, "swap".
                    label = condition if name in NUMERIC or condition == "none" else "swap"
                    key = f"{name}|{label}|{n}"
                    windows[key] = windows.get(key, 0) + 1
                    for method in NUMERIC_METHODS if name in NUMERIC else CATEGORICAL_METHODS:
                        v = figures[method]
                        if drift.over_threshold(method, v, model.drift_threshold(name, method)):
                            alarms[f"{key}|{method}"] = alarms.get(f"{key}|{method}", 0) + 1
                        if condition == "none":
                            values.setdefault(f"{name}|{n}|{method}", []).append(v)
                    # The exact computation on the raw rows of the same window.
                    ref_raw, cur_raw = ref_cols[name], cols[name]
                    exact: dict[str, float] = {}
                    if name in NUMERIC:
                        ref = profile.features[name]
                        cur = totals["num_counts"][j, : len(ref.counts)].astype(np.float64)
                        ks = ks_2samp(ref_raw, cur_raw, method="asymp")
                        exact["ks"], exact["ks_pvalue"] = float(ks.statistic), float(ks.pvalue)
                        if name not in ref_sorted:
                            ref_sorted[name] = np.sort(ref_raw)
                        w = _wasserstein(ref_sorted[name], cur_raw)
                        if not checked_scipy.get(name):  # the first window of each seed: the same as scipy's
                            expected = wasserstein_distance(ref_raw, cur_raw)
                            if not np.isclose(w, expected, rtol=1e-9, atol=1e-12):
                                raise RuntimeError(f"Wasserstein {w} != scipy's {expected}")
                            checked_scipy[name] = True
                        exact["wasserstein"] = w / ref.std
                        p, q = ref.counts / ref.counts.sum(), cur / cur.sum()
                        bounds["checked"] += 1
                        bounds["ks_above_exact"] += figures["ks"] > exact["ks"] + 1e-12
                        bounds["ks_gap_over_bound"] += exact["ks"] - figures["ks"] > np.max(np.maximum(p, q)) + 1e-12
                        bounds["wasserstein_over_bound"] += (
                            abs(figures["wasserstein"] - exact["wasserstein"])
                            > _wasserstein_bound(ref, p, q, cur_raw) + 1e-12
                        )
                        exact["js"] = float(jensenshannon(ref.counts, cur, base=2))  # same bins
                    else:
                        both = np.concatenate([ref_raw, cur_raw])
                        codes = np.unique(both, return_inverse=True)[1]
                        table = np.vstack(
                            [
                                np.bincount(codes[:REF_ROWS], minlength=codes.max() + 1),
                                np.bincount(codes[REF_ROWS:], minlength=codes.max() + 1),
                            ]
                        )
                        test = chi2_contingency(table, correction=False)
                        exact["chi2"], exact["chi2_pvalue"] = float(test.statistic), float(test.pvalue)
                        exact["js"] = float(jensenshannon(table[0], table[1], base=2))  # every category
                    for method, v in exact.items():
                        group = "none" if condition == "none" else "shifted"
                        errors.setdefault(f"{name}|{method}|{n}|{group}", []).append(figures[method] - v)
    return {"alarms": alarms, "windows": windows, "values": values, "errors": errors, "bounds": bounds}


def _wasserstein(u_sorted: np.ndarray, v: np.ndarray) -> float:
    """scipy.stats.wasserstein_distance(u, v) for unweighted samples, the same formula (the integral of
    |U - V| over the pooled sorted values), with u sorted once per reference: scipy's own spends most of
    its time in a generic dot product, and this part computes thousands of them."""
    v_sorted = np.sort(v)
    pooled = np.concatenate((u_sorted, v_sorted))
    pooled.sort(kind="mergesort")
    u_cdf = np.searchsorted(u_sorted, pooled[:-1], side="right") / u_sorted.size
    v_cdf = np.searchsorted(v_sorted, pooled[:-1], side="right") / v_sorted.size
    return float(np.sum(np.abs(u_cdf - v_cdf) * np.diff(pooled)))  # no BLAS dot: its threads cost more here


def _wasserstein_bound(ref, p: np.ndarray, q: np.ndarray, cur_raw: np.ndarray) -> float:
    """Bound on |binned - exact| Wasserstein (in reference std): each inside bin's mass moves at most half
    the bin's width to its midpoint, on both sides; the window's values outside the reference range move
    to their mean (their mean absolute deviation); the reference has no values outside its range."""
    half = np.diff(ref.edges) / 2
    cost = float(np.sum((p[1:-1] + q[1:-1]) * half))
    for outside in (cur_raw[cur_raw < ref.edges[0]], cur_raw[cur_raw > ref.edges[-1]]):
        if outside.size:
            cost += outside.size / cur_raw.size * float(np.mean(np.abs(outside - outside.mean())))
    return cost / ref.std


def statistics_run(seeds: int = SEEDS, workers: int | None = None) -> dict:
    workers = workers or os.cpu_count() or 1
    chunks = [list(range(w, seeds, workers)) for w in range(workers)]
    started = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(_seeds, chunks))
    alarms, windows, values, errors = {}, {}, {}, {}
    for part in parts:
        for target, source in ((alarms, part["alarms"]), (windows, part["windows"])):
            for k, v in source.items():
                target[k] = target.get(k, 0) + v
        for target, source in ((values, part["values"]), (errors, part["errors"])):
            for k, v in source.items():
                target.setdefault(k, []).extend(v)
    rates: dict = {}  # feature -> condition -> n -> method -> share of windows over threshold
    for key, total in windows.items():
        name, condition, n = key.split("|")
        methods = NUMERIC_METHODS if name in NUMERIC else CATEGORICAL_METHODS
        rates.setdefault(name, {}).setdefault(condition, {})[n] = {
            m: alarms.get(f"{key}|{m}", 0) / total for m in methods
        }
    null_values: dict = {}  # feature -> n -> method -> {median, p95} without drift
    for key, vs in values.items():
        name, n, method = key.split("|")
        null_values.setdefault(name, {}).setdefault(n, {})[method] = {
            "median": float(np.median(vs)),
            "p95": float(np.quantile(vs, 0.95)),
        }
    approx: dict = {}  # feature -> method -> drift (none, shifted) -> n -> |binned - exact| median, max; mean signed
    for key, vs in errors.items():
        name, method, n, group = key.split("|")
        signed = np.asarray(vs)
        approx.setdefault(name, {}).setdefault(method, {}).setdefault(group, {})[n] = {
            "median": float(np.median(np.abs(signed))),
            "max": float(np.max(np.abs(signed))),
            "mean_signed": float(signed.mean()),
            "windows": len(vs),
        }
    from exporter.config import DRIFT_THRESHOLDS, parse_config

    model = parse_config(MODEL_YAML).models[0]
    return {
        "seeds": seeds,
        "reference_rows": REF_ROWS,
        "window_sizes": list(WINDOW_SIZES),
        "min_samples": model.drift_min_samples,
        "thresholds": dict(DRIFT_THRESHOLDS),
        "features": DESCRIPTION,
        "rates": rates,
        "null_values": null_values,
        "approximation": approx,
        "bound_checks": {k: int(sum(p["bounds"][k] for p in parts)) for k in parts[0]["bounds"]},
        "seconds": time.perf_counter() - started,
        "workers": workers,
    }


# ---------------------------------------------------------------------------------------------------------
# Cost: ingest with 50 features and a reference, scrape time as the windows fill.


def reference_csv(path: str, features: int, rows: int = REF_ROWS, seed: int = 12345) -> None:
    """Reference rows drawn like bench.common.events (every tenth feature categorical), with predictions
    and labels, so prediction and label drift are computed too."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).round(4)
    p = rng.uniform(size=rows)
    y = rng.uniform(size=rows) < p
    with open(path, "w") as fh:
        fh.write(",".join([f"f{f}" for f in range(features)] + ["prediction", "label"]) + "\n")
        for i in range(rows):
            cells = [f"c{int(abs(x[i, f]) * 3)}" if f % 10 == 9 else repr(float(x[i, f])) for f in range(features)]
            cells += ["yes" if p[i] >= 0.5 else "no", "yes" if y[i] else "no"]
            fh.write(",".join(cells) + "\n")


def config_with_reference(features: int, reference: str | None) -> str:
    text = config_text(models=1, features=features)
    if reference is None:
        return text
    return text.replace("    features:\n", f"    reference: {json.dumps(reference)}\n    features:\n", 1)


def ingest(features: int = 50, clients=(1, 4), seconds: float = 5.0, repeats: int = 3) -> dict:
    """Predictions/s through the HTTP batch API (batches of 1000), with and without a reference: the median
    of ``repeats`` runs of ``seconds`` per number of clients, the two servers alternating."""
    from bench.bench_ingest import http_rate
    from bench.common import Served

    out: dict = {"features": features, "batch": 1000, "seconds": seconds, "repeats": repeats}
    runs: dict = {"with_reference": {c: [] for c in clients}, "without_reference": {c: [] for c in clients}}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "reference.csv")
        reference_csv(path, features)
        bodies = [json.dumps({"predictions": events(1000, features=features, seed=s)}).encode() for s in range(8)]
        out["batch_body_bytes"] = len(bodies[0])
        with (
            Served(config_with_reference(features, path)) as with_ref,
            Served(config_with_reference(features, None)) as without,
        ):
            for server in (with_ref, without):
                http_rate(server.url, bodies, 1000, 1, 1.0)  # warm up
            for _ in range(repeats):
                for label, server in (("with_reference", with_ref), ("without_reference", without)):
                    for c in clients:
                        runs[label][c].append(http_rate(server.url, bodies, 1000, c, seconds))
    for label, by_clients in runs.items():
        out[label] = {c: statistics.median(rates) for c, rates in by_clients.items()}
        out[label + "_runs"] = by_clients
    out["in_process"] = _ingest_in_process(features)
    return out


def _ingest_in_process(features: int, batch: int = 1000, rounds: int = 10) -> dict:
    """Predictions/s in process, median of 5: JSON parse + validation + window update, and the window
    update alone (binning included), with and without a reference."""
    import orjson

    from bench.common import median_of
    from exporter.config import parse_config
    from exporter.serve.app import create_app

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "reference.csv")
        reference_csv(path, features)
        body = json.dumps({"predictions": events(batch, features=features)}).encode()
        for label, ref in (("with_reference", path), ("without_reference", None)):
            clock = [1_800_000_000.0]
            app = create_app(parse_config(config_with_reference(features, ref)), clock=lambda c=clock: c[0])
            m = app.extensions["mlmon"]
            state = m.models["model0"]
            validated = m.validator.predictions(orjson.loads(body))

            def full(m=m, state=state, clock=clock) -> float:
                t = time.perf_counter()
                for _ in range(rounds):
                    clock[0] += 1
                    state.add_predictions(m.validator.predictions(orjson.loads(body)), clock[0])
                return rounds * batch / (time.perf_counter() - t)

            def update(state=state, clock=clock, validated=validated) -> float:
                t = time.perf_counter()
                for _ in range(rounds):
                    clock[0] += 1
                    state.add_predictions(validated, clock[0])
                return rounds * batch / (time.perf_counter() - t)

            out[label] = {"parse_validate_update": median_of(full), "window_update": median_of(update)}
    return out


def scrape(features: int = 30, sizes=(10_000, 100_000, 1_000_000), batch: int = 10_000, runs: int = 20) -> dict:
    """In-process exposition time of one model with a reference as its windows fill; a model without
    reference at the first size for comparison."""
    from prometheus_client import generate_latest

    from exporter.config import parse_config
    from exporter.serve.app import create_app

    def exposition(registry) -> tuple[float, int, int]:
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            text = generate_latest(registry)
            times.append(time.perf_counter() - t)
        series = sum(1 for line in text.decode().splitlines() if line and not line.startswith("#"))
        return statistics.median(times), series, len(text)

    def window_events(text: str, window: str) -> float:
        for line in text.splitlines():
            if line.startswith("mlmon_window_samples{") and f'window="{window}"' in line and "predictions" in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    out: dict = {"features": features, "runs": runs, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "reference.csv")
        reference_csv(path, features)
        for ref in (path, None):
            clock = [1_800_000_000.0]
            app = create_app(parse_config(config_with_reference(features, ref)), clock=lambda c=clock: c[0])
            m = app.extensions["mlmon"]
            state = m.models["model0"]
            validated = m.validator.predictions({"predictions": events(batch, features=features, labelled=True)})
            rounds = sizes[-1] // batch if ref else sizes[0] // batch
            step = 3000.0 / (sizes[-1] // batch)  # all events within 50 minutes: inside the 1h and 1d windows
            fed, ingest_seconds = 0, 0.0
            for _ in range(rounds):
                clock[0] += step
                for e in validated:
                    e.timestamp = clock[0]
                t = time.perf_counter()
                state.add_predictions(validated, clock[0])
                ingest_seconds += time.perf_counter() - t
                fed += batch
                if fed in sizes:
                    median, series, size = exposition(m.registry)
                    text = generate_latest(m.registry).decode()
                    out["rows"].append(
                        {
                            "reference": ref is not None,
                            "events": fed,
                            "events_in_1h": window_events(text, "1h"),
                            "drift_series": sum(
                                1 for line in text.splitlines() if line.startswith("mlmon_feature_drift{")
                            ),
                            "median_seconds": median,
                            "series": series,
                            "bytes": size,
                            **_drift_time(state, clock[0]),
                        }
                    )
            if ref:
                out["direct_update_rate"] = fed / ingest_seconds  # ModelState.add_predictions alone
    return out


def _drift_time(state, now: float) -> dict:
    """Where a scrape's drift time goes: window_drift over every window of the snapshot, and within it the
    KS statistic with its p-value (drift.ks) of every numeric feature."""
    from exporter.stats import drift
    from exporter.stats.binning import window_drift

    snap = state.snapshot(now)
    model = snap.config
    if snap.profile is None:
        return {"window_drift_seconds": 0.0, "ks_seconds": 0.0, "ks_calls": 0}
    numeric = [f.name for f in model.features if f.type == "numeric"]
    total = ks_total = 0.0
    calls = 0
    for v in snap.versions:
        for totals in v.windows.values():
            t = time.perf_counter()
            window_drift(model, snap.profile, totals)
            total += time.perf_counter() - t
            for j, name in enumerate(numeric):
                ref = snap.profile.features[name]
                cur = totals["num_counts"][j, : len(ref.counts)].astype(np.float64)
                if cur.sum() >= model.drift_min_samples:
                    t = time.perf_counter()
                    drift.ks(ref.counts, cur)
                    ks_total += time.perf_counter() - t
                    calls += 1
    return {"window_drift_seconds": total, "ks_seconds": ks_total, "ks_calls": calls}


KS_GAPS = tuple(np.geomspace(0.002, 0.2, 15))


def ks_cost(
    pairs=((10_000, 10_000), (10_000, 1_000_000), (100_000, 1_000_000), (1_000_000, 1_000_000)), gaps=KS_GAPS
) -> list[dict]:
    """Time of one drift.ks call (statistic + p-value) by reference rows and window events: the slowest
    over KS gaps from 0.002 to 0.2 (the window's mass moved from the lowest bins above the range)."""
    from exporter.stats import drift

    rows = []
    drift.ks(np.ones(42), np.ones(42))  # warm up (first-call imports)
    for n_ref, n_win in pairs:
        ref = np.concatenate([[0.0], np.full(40, n_ref / 40), [0.0]])
        worst = {"seconds": 0.0}
        for gap in gaps:
            share = ref / n_ref
            move = gap
            for i in range(1, 41):
                take = min(move, share[i])
                share[i] -= take
                move -= take
                if move <= 0:
                    break
            share[-1] += gap
            times = []
            for _ in range(5):  # each call's time: the median of 5
                t = time.perf_counter()
                d, p = drift.ks(ref, share * n_win)
                times.append(time.perf_counter() - t)
            seconds = statistics.median(times)
            if seconds > worst["seconds"]:
                worst = {"seconds": seconds, "statistic": d, "pvalue": p}
        rows.append(
            {
                "reference_rows": n_ref,
                "window_events": n_win,
                "effective_n": round(n_ref * n_win / (n_ref + n_win)),
                **worst,
            }
        )
    return rows


def ks_formula(effective=(10, 30, 100, 1_000, 10_000, 100_000), points: int = 100) -> list[dict]:
    """The exporter's KS p-value for a given statistic against scipy's exact one (kstwo.sf, what
    ks_2samp(method="asymp") uses), at the same statistic: the largest difference over a grid of statistics."""
    from scipy.stats import kstwo

    from exporter.stats import drift

    rows = []
    for en in effective:
        worst = {"difference": 0.0}
        for d in np.linspace(0.5 / np.sqrt(en) / 10, min(1.0, 3.0 / np.sqrt(en)), points):
            ref = np.array([1.0 - d, d]) * (2 * en)  # two samples of 2 en values each: n m / (n + m) = en
            cur = np.array([1.0, 0.0]) * (2 * en)
            stat, p = drift.ks(ref, cur)
            exact = float(kstwo.sf(stat, int(round(en))))
            if abs(p - exact) > worst["difference"]:
                worst = {"difference": abs(p - exact), "statistic": stat, "pvalue": p, "exact": exact}
        rows.append({"effective_n": en, "points": points, **worst})
    return rows


def run(seeds: int | None = None, full: bool = False) -> dict:
    """Every part, each timed. The default mode draws 200 seeds for the statistics (a 5% rate known to
    about +/-3 points), runs each HTTP ingest phase for 1 s and checks the KS p-value formula at 50
    statistics per n; --full: 400 seeds (+/-2 points), 5 s, 100 statistics."""
    seeds = seeds or (SEEDS if full else SEEDS // 2)
    out: dict = {"seconds": {}}
    for name, fn in (
        ("statistics", lambda: statistics_run(seeds)),
        ("ingest", lambda: ingest(seconds=5.0 if full else 1.0)),
        ("scrape", scrape),
        ("ks_cost", ks_cost),
        ("ks_formula", lambda: ks_formula(points=100 if full else 50)),
    ):
        t = time.perf_counter()
        out[name] = fn()
        out["seconds"][name] = time.perf_counter() - t
    return out


if __name__ == "__main__":
    only = sys.argv[1] if len(sys.argv) > 1 else None
    if only == "statistics":
        print(json.dumps(statistics_run(int(sys.argv[2]) if len(sys.argv) > 2 else SEEDS), indent=1))
    elif only == "ingest":
        print(json.dumps(ingest(), indent=1))
    elif only == "scrape":
        print(json.dumps(scrape(), indent=1))
    elif only == "ks_cost":
        print(json.dumps(ks_cost(), indent=1))
    elif only == "ks_formula":
        print(json.dumps(ks_formula(), indent=1))
    else:
        print(json.dumps(run(full="--full" in sys.argv), indent=1))
