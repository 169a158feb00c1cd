"""PNG plots of the side-by-side benchmark (bench_peers) and of the scrape grid (bench_scrape), written to
docs/img/bench-*.png by bench/run.py."""

from __future__ import annotations

import os

from bench.common import ROOT

IMG = os.path.join(ROOT, "docs", "img")
MB = 1024 * 1024


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, name: str) -> str:
    """Write the figure as docs/img/<name> and close it."""
    fig.tight_layout()
    path = os.path.join(IMG, name)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _can_plot() -> bool:
    """matplotlib is installed here (it is in .venv-bench); the docs/img directory is made when it is."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    os.makedirs(IMG, exist_ok=True)
    return True


def refresh_plot(peers: dict) -> str:
    """Refresh time vs window size, log-log, one panel per feature count, the three contenders."""
    plt = _pyplot()
    counts = sorted({r["features"] for r in peers["speed"]})
    fig, axes = plt.subplots(1, len(counts), figsize=(5.5 * len(counts), 4.2), sharey=True)
    for ax, f in zip(axes if len(counts) > 1 else [axes], counts):
        rows = [r for r in peers["speed"] if r["features"] == f]
        n = [r["events"] for r in rows]
        ax.plot(n, [r["mlmon_seconds"] for r in rows], "o-", label="mlmon (scrape math from the rings)")
        ax.plot(n, [r["mlmon_collect_seconds"] for r in rows], "o:", label="mlmon (whole collect)")
        ax.plot(n, [r["exact_seconds"] for r in rows], "s-", label="exact (numpy/scipy/sklearn, raw rows)")
        bounds = [(r["events"], r["exact_seconds"]) for r in rows if r.get("exact_lower_bound")]
        if bounds:
            ax.plot(*zip(*bounds), "s", mfc="white", color="C2", label="exact: lower bound (runs stopped at the cap)")
        ev = [(r["events"], r["evidently"]) for r in rows if "median_seconds" in r.get("evidently", {})]
        if ev:
            ax.plot(
                [e for e, _ in ev], [x["median_seconds"] for _, x in ev], "^-", color="C3", label="Evidently (raw rows)"
            )
            low = [(e, x["median_seconds"]) for e, x in ev if x.get("lower_bound")]
            if low:
                ax.plot(
                    *zip(*low), "^", mfc="white", color="C3", label="Evidently: lower bound (runs stopped at the cap)"
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("events in the window")
        ax.set_title(f"{f} features: drift (PSI, KS, JS, Wasserstein) + quality")
        ax.grid(True, which="both", alpha=0.3)
    (axes[0] if len(counts) > 1 else axes).set_ylabel("seconds per refresh (median)")
    (axes[0] if len(counts) > 1 else axes).legend(fontsize=8, loc="center left")
    return _save(fig, "bench-refresh.png")


def memory_plot(peers: dict) -> str:
    """Memory per model vs events per window: mlmon's RSS growth; Evidently's window DataFrame and peak."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    mem = peers["memory"]
    ax.plot([r["events"] for r in mem], [r["rss_growth_bytes"] / MB for r in mem], "o-", label="mlmon: RSS growth")
    ax.plot([r["events"] for r in mem], [r["ring_bytes"] / MB for r in mem], "o:", label="mlmon: ring arrays")
    f = peers["memory_features"]
    evs = [
        r["evidently"] | {"events": r["events"]} for r in peers["speed"] if r["features"] == f and r.get("evidently")
    ]
    large = peers.get("evidently_memory_large") or {}
    if "peak_growth_bytes" in large:
        evs.append(large)
    evs = [e for e in evs if "peak_growth_bytes" in e]
    if evs:
        ax.plot(
            [e["events"] for e in evs],
            [(e["window_frame_bytes"] + e["peak_growth_bytes"]) / MB for e in evs],
            "^-",
            label="Evidently: window DataFrame + refresh peak",
        )
        low = [e for e in evs if e.get("capped") and all(e["capped"])]
        if low:
            ax.plot(
                [e["events"] for e in low],
                [(e["window_frame_bytes"] + e["peak_growth_bytes"]) / MB for e in low],
                "^",
                mfc="white",
                color="C2",
                label="Evidently: lower bound (runs stopped at the cap)",
            )
    raw = [(n, n * (f + 3) * 8 / MB) for n in [r["events"] for r in mem]]
    ax.plot([n for n, _ in raw], [b for _, b in raw], "--", color="grey", label="raw rows alone (8 bytes a value)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("events in the window")
    ax.set_ylabel("MiB per model")
    ax.set_title(f"Memory per model, {f} features")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, "bench-memory.png")


def write(peers: dict) -> list[str]:
    """Both plots; an empty list (and no plot) when matplotlib is not installed here."""
    return [refresh_plot(peers), memory_plot(peers)] if _can_plot() else []


def scrape_plot(scrape: dict) -> str:
    """Scrape time vs series count over the grid of models x features, log-log: in process and over HTTP, one
    colour per feature count, each point marked with its model count; the least-squares line per series and
    the 100 ms target."""
    plt = _pyplot()
    g = scrape["grid"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, f in enumerate(g["features"]):
        cells = [c for c in g["cells"] if c["features"] == f]
        x = [c["in_process"]["series"] for c in cells]
        ax.plot(
            x,
            [c["in_process"]["median_seconds"] * 1000 for c in cells],
            "o-",
            color=f"C{i}",
            label=f"{f} features, in process",
        )
        http = [c for c in cells if "http" in c]
        if http:
            ax.plot(
                [c["in_process"]["series"] for c in http],
                [c["http"]["median_seconds"] * 1000 for c in http],
                "s--",
                mfc="white",
                color=f"C{i}",
                label=f"{f} features, GET /metrics",
            )
        for c in cells:
            ax.annotate(
                f"{c['models']}",
                (c["in_process"]["series"], c["in_process"]["median_seconds"] * 1000),
                textcoords="offset points",
                xytext=(-4, 6),
                fontsize=7,
                color=f"C{i}",
            )
    lo, hi = min(c["in_process"]["series"] for c in g["cells"]), max(c["in_process"]["series"] for c in g["cells"])
    per = g["fit"]["in_process"]["per_series_seconds"] * 1000
    ax.plot(
        [lo, hi], [per * lo, per * hi], ":", color="grey", label=f"{per * 1000:.1f} µs per series (median, in process)"
    )
    ax.axhline(100, color="C3", lw=0.8, ls="-.", label="target: 100 ms for 10 models x 30 features")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("series in the exposition")
    ax.set_ylabel("ms per scrape (median)")
    ax.set_title(f"/metrics: models x features, {len(g['windows'])} windows (numbers: models)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, "bench-scrape.png")


def write_scrape(scrape: dict) -> list[str]:
    """The scrape plot; an empty list (and no plot) when matplotlib is not installed here or no grid ran."""
    return [scrape_plot(scrape)] if scrape.get("grid") and _can_plot() else []
