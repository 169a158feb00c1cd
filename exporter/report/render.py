"""The report as one self-contained HTML file: charts drawn with matplotlib into PNG images inlined as data
URIs, styles inline, no script and no network needed to open it."""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
from importlib import resources

import numpy as np

from exporter.report.gather import Episode, ModelReport, Report, iso
from exporter.stats.window import format_duration

# Colour-blind-safe (Okabe-Ito), one per version in order of first service.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
STATUS = {
    "healthy": ("Healthy", "no alert fired in the period"),
    "watch": ("Watch", "a warning fired in the period"),
    "attention": ("Needs attention", "a critical alert fired in the period"),
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "legend.frameon": False,
            "svg.hashsalt": "mlmon",
        }
    )
    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _dates(t) -> np.ndarray:
    return np.array([dt.datetime.fromtimestamp(x, dt.timezone.utc) for x in t], dtype=object)


def _time_axis(ax, report: Report, narrow: bool = False) -> None:
    import matplotlib.dates as mdates

    p = report.period
    ax.set_xlim(_dates([p.start])[0], _dates([p.end])[0])
    locator = mdates.AutoDateLocator(tz=dt.timezone.utc, minticks=3, maxticks=5 if narrow else 10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=dt.timezone.utc))


def _broken(t: np.ndarray, gap: float, *ys: np.ndarray) -> tuple[np.ndarray, ...]:
    """A NaN between points further apart than `gap`, so that a line is not drawn across missing buckets."""
    cut = np.flatnonzero(np.diff(t) > 1.5 * gap) + 1
    return (np.insert(t.astype(float), cut, np.nan), *(np.insert(y.astype(float), cut, np.nan) for y in ys))


def _colors(m: ModelReport) -> dict[str, str]:
    order = sorted(m.versions, key=lambda v: (m.first_seen.get(v, math.inf), v))
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(order)}


def _deploys(ax, m: ModelReport, report: Report, colors: dict[str, str]) -> None:
    """A dotted line where a version first served within the period."""
    for v, t in m.first_seen.items():
        if report.period.start < t <= report.period.end and len(m.versions) > 1:
            ax.axvline(_dates([t])[0], color=colors.get(v, "grey"), linestyle=":", linewidth=1)


def _alert_spans(ax, m: ModelReport) -> None:
    for e in m.alerts:
        colour = "#D55E00" if e.severity == "critical" else "#E69F00"
        ax.axvspan(*_dates([e.start, e.end]), color=colour, alpha=0.08, linewidth=0)


def chart_quality(m: ModelReport, report: Report) -> str | None:
    q = m.quality
    if q is None and not m.estimated:
        return None
    plt = _plt()
    colors = _colors(m)
    fig, ax = plt.subplots(figsize=(12, 3))
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.16, top=0.97)
    if q is not None:
        bucket = report.period.bucket
        for v in sorted(q.t, key=lambda v: m.first_seen.get(v, 0)):
            t, value = _broken(q.t[v], bucket, q.value[v])
            x = _dates(np.nan_to_num(t, nan=report.period.start))
            ax.plot(x, value, marker="o", markersize=3, color=colors.get(v), label=f"{v} realized")
            if v in q.low:
                _, low, high = _broken(q.t[v], bucket, q.low[v], q.high[v])
                ax.fill_between(x, low, high, color=colors.get(v), alpha=0.15, linewidth=0)
    for s in m.estimated:
        v = s.labels.get("version", "")
        ok = np.isfinite(s.v)
        ax.plot(_dates(s.t[ok]), s.v[ok], linestyle="--", color=colors.get(v), label=f"{v} estimated ({m.window})")
    _deploys(ax, m, report, colors)
    _alert_spans(ax, m)
    if q is not None and q.name == "accuracy" or m.estimated:
        from matplotlib.ticker import PercentFormatter

        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_ylabel("accuracy")
    else:
        ax.set_ylabel("mean absolute error")
    _time_axis(ax, report)
    ax.legend(loc="lower left", ncols=4, fontsize=8)
    return _png(fig)


def chart_traffic(m: ModelReport, report: Report) -> str | None:
    if not m.traffic and not m.latency and not m.label_delay:
        return None
    plt = _plt()
    colors = _colors(m)
    fig, axes = plt.subplots(1, 3, figsize=(12, 2.6))
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.17, top=0.9, wspace=0.22)
    ax = axes[0]
    for s in m.traffic:
        ok = np.isfinite(s.v)
        v = s.labels.get("version", "")
        ax.plot(_dates(s.t[ok]), s.v[ok], color=colors.get(v), label=v)
    ax.set_title("predictions per second", fontsize=9)
    if m.traffic:
        ax.legend(fontsize=8)
    _deploys(ax, m, report, colors)
    _quantile_panel(axes[1], m.latency, "latency (ms)", 1000.0)
    scale, unit = _delay_unit(m.label_delay)
    _quantile_panel(axes[2], m.label_delay, f"label delay ({unit})", 1 / scale)
    for a in axes:
        _time_axis(a, report, narrow=True)
    return _png(fig)


def _delay_unit(series: dict) -> tuple[float, str]:
    peak = max((np.nanmax(s.v) for s in series.values() if np.isfinite(s.v).any()), default=0.0)
    for scale, unit in ((86400, "days"), (3600, "hours"), (60, "minutes")):
        if peak >= 2 * scale:
            return scale, unit
    return 1, "seconds"


def _quantile_panel(ax, series: dict, title: str, factor: float) -> None:
    ax.set_title(title, fontsize=9)
    if not series:
        ax.text(0.5, 0.5, "no data in the period", ha="center", va="center", transform=ax.transAxes, color="grey")
        return
    for i, (name, s) in enumerate(series.items()):
        ok = np.isfinite(s.v)
        ax.plot(_dates(s.t[ok]), s.v[ok] * factor, label=name, color=("#009E73", "#0072B2", "#CC79A7")[i % 3])
    ax.legend(fontsize=8)


def chart_drift(m: ModelReport, report: Report) -> str | None:
    shown = [d for d in m.drift if d.series]
    if not shown:
        return None
    plt = _plt()
    colors = _colors(m)
    cols = min(len(shown), 3)
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.3 * rows), squeeze=False)
    _margins(fig, rows, bottom=0.45)
    for ax, d in zip(axes.flat, shown):
        for v, s in sorted(d.series.items(), key=lambda kv: m.first_seen.get(kv[0], 0)):
            ok = np.isfinite(s.v)
            ax.plot(_dates(s.t[ok]), s.v[ok], color=colors.get(v), label=v)
        if np.isfinite(d.threshold):
            ax.axhline(d.threshold, color="#D55E00", linestyle="--", linewidth=1)
        ax.set_title(f"{d.feature} ({d.method})", fontsize=9)
        if len(d.series) > 1:
            ax.legend(fontsize=7)
        _time_axis(ax, report, narrow=True)
    for ax in list(axes.flat)[len(shown) :]:
        ax.set_visible(False)
    return _png(fig)


def chart_bins(m: ModelReport) -> str | None:
    shown = [d for d in m.drift if d.bins]
    if not shown:
        return None
    plt = _plt()
    cols = min(len(shown), 3)
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.4 * rows), squeeze=False)
    _margins(fig, rows, bottom=0.55)
    for ax, d in zip(axes.flat, shown):
        names = [b for b, _, _ in d.bins]
        x = np.arange(len(names))
        ax.bar(x - 0.2, [r for _, r, _ in d.bins], width=0.4, color="#999999", label="reference")
        at = dt.datetime.fromtimestamp(d.worst_at, dt.timezone.utc).strftime("%m-%d %H:%M")
        ax.bar(x + 0.2, [c for _, _, c in d.bins], width=0.4, color="#0072B2", label=f"{d.version}, {at}")
        ax.set_xticks(x, [_short_bin(b) for b in names], rotation=60, fontsize=7)
        ax.set_title(d.feature, fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(shown) :]:
        ax.set_visible(False)
    return _png(fig)


def _margins(fig, rows: int, bottom: float) -> None:
    """Fixed margins (in inches at the bottom and between rows, for the tick labels): a layout engine would
    cost a third of the report's time."""
    height = fig.get_figheight()
    fig.subplots_adjust(
        left=0.06, right=0.99, top=1 - 0.3 / height, bottom=bottom / height, hspace=(bottom + 0.3) / (height / rows)
    )


def _short_bin(name: str) -> str:
    return {"below_min": "< min", "above_max": "> max"}.get(name, name if len(name) <= 12 else name[:11] + "…")


# --- words ---------------------------------------------------------------------------------------------------
def pct(x: float, digits: int = 1) -> str:
    return "n/a" if not np.isfinite(x) else f"{100 * x:.{digits}f}%"


def num(x: float) -> str:
    if not np.isfinite(x):
        return "n/a"
    if abs(x) >= 1e6:
        return f"{x / 1e6:.1f} M"
    if abs(x) >= 1e4:
        return f"{x / 1e3:.0f} k"
    return f"{x:,.0f}"


def fig(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.3g}"


def seconds(x: float) -> str:
    if not np.isfinite(x):
        return "n/a"
    if x < 1:
        return f"{x * 1000:.0f} ms"
    return format_duration(round(x)) if x >= 60 else f"{x:.1f} s"


def summary_lines(m: ModelReport, report: Report) -> list[str]:
    """What a stakeholder reads first: plain sentences, numbers rounded."""
    p = report.period
    lines = []
    served = ", ".join(sorted(m.versions, key=lambda v: m.first_seen.get(v, 0)))
    new = [v for v, t in m.first_seen.items() if p.start < t <= p.end and len(m.versions) > 1]
    text = f"{num(m.total_predictions)} predictions ({m.total_predictions / p.seconds:.3g}/s on average)"
    text += f", {num(m.total_labels)} of them labelled"
    text += f"; versions {served}" if len(m.versions) > 1 else f"; version {served}"
    if new:
        text += "; " + ", ".join(f"{v} first served {iso(m.first_seen[v])}" for v in sorted(new))
    lines.append(text + ".")
    q = m.quality
    recent = format_duration(p.recent)
    if q is not None and q.name == "accuracy":
        text = f"Accuracy {pct(q.period)} over the period, {pct(q.recent)} in the last {recent}"
    elif q is not None:
        text = f"Mean absolute error {fig(q.period)} over the period (RMSE {fig(q.extra.get('rmse', math.nan))})"
        text += f", {fig(q.recent)} in the last {recent}"
    else:
        text = "No label joined in the period, so no realized quality"
    if np.isfinite(m.estimate_now):
        text += f"; estimated accuracy of {m.current} now {pct(m.estimate_now)} (from its scores, before labels)"
    lines.append(text + ".")
    if m.drift_watched:
        top = [d for d in m.drift if d.ratio >= 1]
        if top:
            names = ", ".join(
                f"{d.feature} ({d.method} {fig(d.worst)} > {fig(d.threshold)} in {d.version})" for d in top[:3]
            )
            lines.append(f"{m.drifted} of {m.drift_watched} features drifted beyond their threshold: {names}.")
            calm = [d for d in top if np.isfinite(d.last) and d.last < d.threshold]
            if len(calm) == len(top):
                lines.append(f"None of them is beyond it lately in {m.current}.")
        else:
            lines.append(f"No feature drifted beyond its threshold ({m.drift_watched} watched).")
    if m.alerts:
        names = {}
        for e in m.alerts:
            names.setdefault((e.alertname, e.severity), []).append(e)
        parts = [
            f"{a} ({s}, {len(es)}x, {format_duration(round(sum(e.seconds for e in es)))})"
            for (a, s), es in sorted(names.items(), key=lambda kv: (kv[0][1] != "critical", kv[0][0]))
        ]
        firing = [e.alertname for e in m.alerts if e.ongoing]
        still = f". Still firing: {', '.join(sorted(set(firing)))}" if firing else ""
        lines.append("Alerts fired: " + "; ".join(parts) + still + ".")
    else:
        lines.append("No alert fired.")
    return lines


def episode_rows(episodes: list[Episode]) -> list[dict]:
    return [
        {
            "alertname": e.alertname,
            "severity": e.severity or "",
            "version": e.version or "",
            "start": iso(e.start),
            "end": "still firing" if e.ongoing else iso(e.end),
            "duration": format_duration(round(e.seconds)),
        }
        for e in episodes
    ]


def drift_rows(m: ModelReport) -> list[dict]:
    rows = []
    for d in [*m.drift, *([m.prediction_drift] if m.prediction_drift else [])]:
        rows.append(
            {
                "feature": d.feature,
                "method": d.method,
                "version": d.version,
                "worst": fig(d.worst),
                "last": fig(d.last),
                "threshold": fig(d.threshold),
                "over": d.ratio >= 1,
            }
        )
    return rows


def render(report: Report) -> str:
    import jinja2

    template = resources.files("exporter.report").joinpath("report.html.j2").read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    models = []
    for m in report.models:
        models.append(
            {
                "m": m,
                "anchor": "model-" + "".join(c if c.isalnum() else "-" for c in m.name),
                "status": STATUS[m.status],
                "status_key": m.status,
                "summary": summary_lines(m, report),
                "quality": chart_quality(m, report),
                "traffic": chart_traffic(m, report),
                "drift_chart": chart_drift(m, report),
                "bins": chart_bins(m),
                "drift_rows": drift_rows(m),
                "dq": [r for r in m.data_quality if r.missing_worst or r.out_of_range_worst or r.unseen_worst][:15],
                "alerts": episode_rows(m.alerts),
                "info": m.info,
                "first_seen": {v: iso(t) for v, t in m.first_seen.items()},
            }
        )
    p = report.period
    context = {
        "r": report,
        "models": models,
        "start": iso(p.start),
        "end": iso(p.end),
        "length": format_duration(round(p.seconds)),
        "generated": iso(report.generated),
        "recent": format_duration(p.recent),
        "bucket": format_duration(p.bucket),
        "other_alerts": episode_rows(report.other_alerts),
        "pct": pct,
        "fig": fig,
        "num": num,
        "seconds": seconds,
        "esc": html.escape,
    }
    return env.from_string(template).render(context)
