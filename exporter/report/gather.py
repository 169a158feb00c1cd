"""What a report says, read from Prometheus: per model, its versions, traffic, quality (realized and estimated),
drift, data quality, latency, label delay and the alerts that fired over the period.

Quality over time comes from the counters (`mlmon_outcomes_total`, `mlmon_absolute_error_total`...), so that
replicas add up exactly and any period works whatever the exporter's windows; the figures that only exist as
window gauges (estimated accuracy, drift, data quality) are read from the shortest window that covers one point
of the chart, and from the worst replica."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from exporter.config import parse_duration
from exporter.report.prom import Prometheus, ReportError, Series
from exporter.stats.window import format_duration

# Durations a chart's step, a rate's range and a quality bucket are rounded up to.
NICE = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 7 * 86400)
POINTS = 400  # points per chart line at most
QUALITY_POINTS = 40  # quality buckets per period: each holds enough labels to say something
TOP_FEATURES = 5
INFO_HIDDEN = {"__name__", "job", "instance", "model", "version", "task"}
Z95 = 1.959964


def nice(seconds: float) -> float:
    return next((n for n in NICE if n >= seconds), max(seconds, NICE[-1]))


@dataclass(frozen=True)
class Period:
    start: float
    end: float
    step: float  # of the charts
    rate: float  # range of rate() and histogram_quantile()
    bucket: float  # of the quality charts: labels of one bucket make one point
    recent: float  # "lately", in the summary

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @classmethod
    def plan(cls, end: float, seconds: float, scrape_interval: float, step: float | None = None) -> Period:
        step = step or max(nice(seconds / POINTS), 1.0)
        rate = max(step + scrape_interval, 4 * scrape_interval)
        bucket = min(max(nice(seconds / QUALITY_POINTS), nice(rate)), seconds)
        recent = min(math.ceil(nice(seconds / 7) / bucket) * bucket, seconds)
        return cls(end - seconds, end, step, rate, bucket, recent)

    @property
    def edges(self) -> np.ndarray:
        """The buckets' edges, the last one at the end: counters are read there, and their differences are the
        buckets' counts (the first bucket may start a little before the period when it is not a whole number
        of buckets)."""
        n = max(math.ceil(self.seconds / self.bucket - 1e-9), 1)
        return self.end - self.bucket * np.arange(n, -1, -1, dtype=float)


def dur(seconds: float) -> str:
    """A PromQL duration, whole milliseconds."""
    return format_duration(round(seconds, 3))


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def regex_alternation(values) -> str:
    return "|".join(re.escape(v) for v in values)


@dataclass
class Episode:
    alertname: str
    severity: str
    version: str
    start: float
    end: float
    ongoing: bool

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class FeatureDrift:
    feature: str
    method: str
    threshold: float
    worst: float
    last: float  # in the current version, lately
    version: str = ""  # where it was worst
    series: dict[str, Series] = field(default_factory=dict)  # per version
    bins: list[tuple[str, float, float]] = field(default_factory=list)  # (bin, reference, at its worst)
    worst_at: float = math.nan

    @property
    def ratio(self) -> float:
        return self.worst / self.threshold if self.threshold > 0 else math.inf


@dataclass
class DataQualityRow:
    feature: str
    missing_worst: float = 0.0
    missing_last: float = math.nan
    out_of_range_worst: float = 0.0
    unseen_worst: float = 0.0


@dataclass
class Quality:
    """Realized quality over time per version, from the labels joined in each bucket (by join time)."""

    name: str  # accuracy | mae
    t: dict[str, np.ndarray] = field(default_factory=dict)
    value: dict[str, np.ndarray] = field(default_factory=dict)
    low: dict[str, np.ndarray] = field(default_factory=dict)
    high: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    period: float = math.nan  # over the whole period, all versions
    recent: float = math.nan  # over the last `recent`
    extra: dict[str, float] = field(default_factory=dict)  # rmse over the period...


@dataclass
class ModelReport:
    name: str
    task: str
    versions: list[str]
    info: dict[str, dict[str, str]]  # version -> registry and other info labels (non-empty ones)
    first_seen: dict[str, float]
    current: str  # the version most served lately: drift and data quality are read for it
    predictions: dict[str, float]
    labels: dict[str, float]
    traffic: list[Series]
    quality: Quality | None
    estimated: list[Series]
    estimate_now: float
    window: str
    drift: list[FeatureDrift]
    drifted: int
    drift_watched: int
    prediction_drift: FeatureDrift | None
    data_quality: list[DataQualityRow]
    missing_max: float
    errors: dict[str, float]
    latency: dict[str, Series]
    latency_p95: float
    label_delay: dict[str, Series]
    label_delay_median: float
    alerts: list[Episode]

    @property
    def total_predictions(self) -> float:
        return sum(self.predictions.values())

    @property
    def total_labels(self) -> float:
        return sum(self.labels.values())

    @property
    def status(self) -> str:
        severities = {e.severity for e in self.alerts}
        if "critical" in severities:
            return "attention"
        if severities:
            return "watch"
        return "healthy"


@dataclass
class Report:
    prometheus: str
    period: Period
    selector: str
    models: list[ModelReport]
    other_alerts: list[Episode]
    generated: float
    queries: int = 0
    mlmon_versions: list[str] = field(default_factory=list)


class Gatherer:
    def __init__(
        self,
        prom: Prometheus,
        period: Period,
        matchers: str = "",
        progress: Callable[[str], None] | None = None,
    ):
        self.prom = prom
        self.p = period
        self.matchers = matchers  # extra label matchers on every mlmon_ series, e.g. job="mlmon"
        self.progress = progress or (lambda _msg: None)

    # --- selectors -----------------------------------------------------------------------------------------
    def sel(self, **labels: str) -> str:
        parts = [f"{k}={quote(v)}" for k, v in labels.items()]
        if self.matchers:
            parts.append(self.matchers)
        return "{" + ",".join(parts) + "}"

    def at_end(self, expr: str) -> list[Series]:
        return self.prom.instant(expr, self.p.end)

    def over(self, expr: str, step: float | None = None) -> list[Series]:
        step = step or self.p.step
        # Points at whole multiples of the step, so that the buckets of two reports of the same period agree.
        start = math.ceil(self.p.start / step) * step
        return self.prom.range(expr, start, self.p.end, step)

    # --- the whole report ----------------------------------------------------------------------------------
    def models(self) -> dict[str, dict]:
        """Every model and version seen in the period: {model: {"task": .., "versions": {version: info}}}."""
        found = self.at_end(f"max_over_time(mlmon_model_info{self.sel()}[{dur(self.p.seconds)}])")
        models: dict[str, dict] = {}
        for s in found:
            m = s.labels.get("model")
            if not m:
                continue
            entry = models.setdefault(m, {"task": s.labels.get("task", ""), "versions": {}})
            info = entry["versions"].setdefault(s.labels.get("version", ""), {})
            for k, v in s.labels.items():
                if k not in INFO_HIDDEN and v:
                    info[k] = v
        return models

    def gather(self, wanted: list[str] | None = None) -> Report:
        self.progress("finding the models")
        models = self.models()
        if not models:
            matching = f" matching {self.matchers}" if self.matchers else ""
            raise NoData(
                f"Prometheus at {self.prom.base} holds no mlmon series{matching} "
                f"between {iso(self.p.start)} and {iso(self.p.end)} (mlmon_model_info is empty): is it scraping the "
                "exporter (Status > Targets), and has a model received predictions? A longer --period or an "
                "earlier --end reaches older data."
            )
        names = sorted(models)
        if wanted:
            unknown = [w for w in wanted if w not in models]
            if unknown:
                raise NoData(
                    f"no mlmon data for model {', '.join(unknown)} in the period; the models with data: "
                    + ", ".join(names)
                )
            names = [n for n in names if n in wanted]
        reports = []
        for i, name in enumerate(names):
            reports.append(self.model(name, models[name], f"[{i + 1}/{len(names)}] {name}"))
        self.progress("alerts of the exporter and the fleet")
        other = self.episodes('ALERTS{alertstate="firing",alertname=~"Mlmon.*",model=""}')
        build = self.at_end(f"max by (version) (max_over_time(mlmon_build_info{self.sel()}[{dur(self.p.seconds)}]))")
        return Report(
            prometheus=self.prom.base,
            period=self.p,
            selector=self.matchers,
            models=reports,
            other_alerts=other,
            generated=0.0,
            mlmon_versions=sorted(s.labels.get("version", "") for s in build),
        )

    # --- one model -----------------------------------------------------------------------------------------
    def model(self, name: str, found: dict, tag: str) -> ModelReport:
        P = dur(self.p.seconds)
        m = self.sel(model=name)
        task = found["task"]
        versions = sorted(found["versions"])

        self.progress(f"{tag}: traffic")
        recent = self.recent_buckets
        counted = self.counts(f"mlmon_predictions_total{m}", ("version",))
        predictions = {k[0]: float(d.sum()) for k, d in counted.items()}
        lately = {k[0]: float(d[-recent:].sum()) for k, d in counted.items()}
        labels = {k[0]: float(d.sum()) for k, d in self.counts(f"mlmon_labels_total{m}", ("version",)).items()}
        traffic = self.over(f"sum by (version) (rate(mlmon_predictions_total{m}[{dur(self.p.rate)}]))")
        first_seen = self._first_seen(name, traffic)
        # The version served most lately; when none was, the newest.
        current = max(versions, key=lambda v: (lately.get(v, 0.0), first_seen.get(v, 0.0), v))

        self.progress(f"{tag}: quality")
        quality = self.quality(m, task)
        windows = self.windows(m)
        window = self.window_for(windows, self.p.bucket)
        estimated: list[Series] = []
        estimate_now = math.nan
        if task != "regression":
            w = self.sel(model=name, window=window)
            scored = f'mlmon_estimated_samples{w[:-1]},kind="scored"}}'
            expr = (
                f"sum by (version) (mlmon_estimated_accuracy{w} * ignoring(kind) {scored})"
                f" / sum by (version) ({scored})"
            )
            estimated = [s for s in self.over(expr) if np.isfinite(s.v).any()]
            now = [s for s in self.at_end(f"last_over_time(({expr})[{dur(self.p.recent)}:])") if s.labels]
            estimate_now = next((s.last for s in now if s.labels.get("version") == current), math.nan)

        self.progress(f"{tag}: drift")
        drift, watched, pred_drift = self.drift(name, current, window)
        self.progress(f"{tag}: data quality")
        dq, missing_max, errors = self.data_quality(name, current, window)

        self.progress(f"{tag}: latency and label delay")
        latency = self.quantiles("mlmon_prediction_latency_seconds", m, (0.5, 0.95, 0.99), self.p.rate)
        p95 = self._scalar(
            f"histogram_quantile(0.95, sum by (le) (increase(mlmon_prediction_latency_seconds_bucket{m}[{P}])))"
        )
        delay = self.quantiles("mlmon_label_delay_seconds", m, (0.5, 0.9), max(self.p.rate, self.p.bucket))
        delay_median = self._scalar(
            f"histogram_quantile(0.5, sum by (le) (increase(mlmon_label_delay_seconds_bucket{m}[{P}])))"
        )

        self.progress(f"{tag}: alerts")
        alerts = self.episodes(f'ALERTS{{alertstate="firing",model={quote(name)}}}')
        return ModelReport(
            name=name,
            task=task,
            versions=versions,
            info={v: found["versions"][v] for v in versions if found["versions"][v]},
            first_seen=first_seen,
            current=current,
            predictions=predictions,
            labels=labels,
            traffic=traffic,
            quality=quality,
            estimated=estimated,
            estimate_now=estimate_now,
            window=window,
            drift=drift,
            drifted=sum(1 for d in drift if d.ratio >= 1),
            drift_watched=watched,
            prediction_drift=pred_drift,
            data_quality=dq,
            missing_max=missing_max,
            errors=errors,
            latency=latency,
            latency_p95=p95,
            label_delay=delay,
            label_delay_median=delay_median,
            alerts=alerts,
        )

    def _scalar(self, expr: str) -> float:
        found = [s.last for s in self.at_end(expr) if np.isfinite(s.last)]
        return found[0] if found else math.nan

    def _first_seen(self, model: str, traffic: list[Series]) -> dict[str, float]:
        """When each version first served: the exporter's own record where it publishes one, else the first
        point of its traffic within the period."""
        out = {}
        for s in traffic:
            served = s.t[np.isfinite(s.v) & (s.v > 0)]
            if len(served):
                out[s.labels.get("version", "")] = float(served[0])
        seen = self.at_end(
            f"max by (version) (max_over_time(mlmon_model_version_first_seen_timestamp_seconds"
            f"{self.sel(model=model)}[{dur(self.p.seconds)}]))"
        )
        for s in seen:
            if np.isfinite(s.last):
                out[s.labels.get("version", "")] = s.last
        return out

    def windows(self, m: str) -> list[str]:
        found = self.at_end(f"count by (window) (last_over_time(mlmon_window_samples{m}[{dur(self.p.seconds)}]))")
        names = [s.labels["window"] for s in found if "window" in s.labels]
        return sorted(names, key=_window_seconds)

    @staticmethod
    def window_for(windows: list[str], seconds: float) -> str:
        """The shortest window at least `seconds` long (the longest if none is)."""
        if not windows:
            return "5m"
        return next((w for w in windows if _window_seconds(w) >= seconds), windows[-1])

    @property
    def recent_buckets(self) -> int:
        return max(round(self.p.recent / self.p.bucket), 1)

    def counts(self, selector: str, by: tuple[str, ...]) -> dict[tuple[str, ...], np.ndarray]:
        """Per group of `by` labels, how much the counters grew in each bucket: the differences of their values
        at the bucket edges, series by series (a drop is a restart: the new value is the growth), then summed.
        A series that appears within the period starts from 0, as the exporter's counters do. Exact, where
        increase() would extrapolate."""
        edges = self.p.edges
        out: dict[tuple[str, ...], np.ndarray] = {}
        for s in self.prom.range(selector, edges[0], edges[-1], self.p.bucket):
            values = np.full(len(edges), np.nan)
            index = np.clip(np.rint((s.t - edges[0]) / self.p.bucket).astype(int), 0, len(edges) - 1)
            values[index] = s.v
            key = tuple(s.labels.get(k, "") for k in by)
            out[key] = out.get(key, np.zeros(len(edges) - 1)) + growth(values)
        return out

    def quality(self, m: str, task: str) -> Quality | None:
        t = self.p.edges[1:]
        recent = self.recent_buckets
        if task == "regression":
            q = Quality("mae")
            n = self.counts(f"mlmon_labels_total{m}", ("version",))
            err = self.counts(f"mlmon_absolute_error_total{m}", ("version",))
            sq = self.counts(f"mlmon_squared_error_total{m}", ("version",))
            for (v,), labelled in n.items():
                ok = labelled >= 1
                if ok.any() and (v,) in err:
                    q.t[v], q.value[v], q.labels[v] = t[ok], err[(v,)][ok] / labelled[ok], labelled[ok]
            total = sum(d.sum() for d in n.values())
            late = sum(d[-recent:].sum() for d in n.values())
            q.period = sum(d.sum() for d in err.values()) / total if total >= 1 else math.nan
            q.recent = sum(d[-recent:].sum() for d in err.values()) / late if late >= 1 else math.nan
            q.extra["rmse"] = math.sqrt(sum(d.sum() for d in sq.values()) / total) if total >= 1 else math.nan
            return q if q.t else None

        q = Quality("accuracy")
        correct: dict[str, np.ndarray] = {}
        labelled: dict[str, np.ndarray] = {}
        for (v, actual, predicted), d in self.counts(
            f"mlmon_outcomes_total{m}", ("version", "actual", "predicted")
        ).items():
            labelled[v] = labelled.get(v, 0) + d
            correct[v] = correct.get(v, 0) + (d if actual == predicted else 0)
        for v, n in labelled.items():
            ok = n >= 1
            if ok.any():
                lo, hi = wilson(correct[v][ok], n[ok])
                q.t[v], q.value[v], q.low[v], q.high[v], q.labels[v] = t[ok], correct[v][ok] / n[ok], lo, hi, n[ok]
        total = sum(n.sum() for n in labelled.values())
        late = sum(n[-recent:].sum() for n in labelled.values())
        q.period = sum(c.sum() for c in correct.values()) / total if total >= 1 else math.nan
        q.recent = sum(c[-recent:].sum() for c in correct.values()) / late if late >= 1 else math.nan
        return q if q.t else None

    def drift(self, model: str, version: str, window: str) -> tuple[list[FeatureDrift], int, FeatureDrift | None]:
        """Every feature by the method that decides its drift, ranked by its worst value over the period in any
        version (the worst replica); the top ones get their values over time per version, and their
        distribution at their worst moment against the reference."""
        P = dur(self.p.seconds)
        decisions = self.at_end(f"max_over_time(mlmon_drift_decision{self.sel(model=model)}[{P}]) == 1")
        decide = {s.labels.get("feature", ""): s.labels.get("method", "") for s in decisions}
        thresholds = {
            (s.labels.get("feature", ""), s.labels.get("method", "")): s.last
            for s in self.at_end(f"max_over_time(mlmon_drift_threshold{self.sel(model=model)}[{P}])")
        }
        w = self.sel(model=model, window=window)
        by = "max by (version, feature, method)"
        last = {
            (s.labels.get("feature"), s.labels.get("method")): s.last
            for s in self.at_end(
                f"max without (instance) (last_over_time(mlmon_feature_drift"
                f"{self.sel(model=model, version=version, window=window)}[{dur(self.p.recent)}]))"
            )
        }
        worst: dict[tuple[str, str], FeatureDrift] = {}
        for s in self.at_end(f"{by} (max_over_time(mlmon_feature_drift{w}[{P}]))"):
            f, method = s.labels.get("feature", ""), s.labels.get("method", "")
            if decide.get(f) != method or not np.isfinite(s.last):
                continue
            if (f, method) not in worst or s.last > worst[(f, method)].worst:
                limit = thresholds.get((f, method), math.nan)
                worst[(f, method)] = FeatureDrift(
                    f, method, limit, s.last, last.get((f, method), math.nan), version=s.labels.get("version", "")
                )
        found = sorted(worst.values(), key=lambda d: (-d.ratio if np.isfinite(d.ratio) else 0.0, d.feature))
        top = found[:TOP_FEATURES]
        if top:
            alternation = regex_alternation(d.feature for d in top)
            methods = regex_alternation({d.method for d in top})
            sel = f'{w[:-1]},feature=~"{alternation}",method=~"{methods}"}}'
            for s in self.over(f"{by} (mlmon_feature_drift{sel})"):
                for d in top:
                    if s.labels.get("feature") == d.feature and s.labels.get("method") == d.method:
                        d.series[s.labels.get("version", "")] = s
            for d in top:
                self.bins(model, window, d)

        pred = None
        method = decide.get("")
        if method:
            pw = self.at_end(f"max(max_over_time(mlmon_prediction_drift{w[:-1]},method={quote(method)}}}[{P}]))")
            if pw and np.isfinite(pw[0].last):
                limit = thresholds.get(("", method), math.nan)
                pred = FeatureDrift("(predictions)", method, limit, pw[0].last, math.nan)
        return top, len(found), pred

    def bins(self, model: str, window: str, d: FeatureDrift) -> None:
        """The feature's distribution at its worst moment (in the version where it was worst) against the
        reference's, where the exporter publishes them (`drift: {bins: true}`); averaged over replicas."""
        series = d.series.get(d.version)
        if series is None or not np.isfinite(series.v).any():
            return
        d.worst_at = float(series.t[int(np.nanargmax(series.v))])
        sel = self.sel(model=model, version=d.version, window=window, feature=d.feature)
        current = self.prom.instant(f"avg without (instance) (mlmon_feature_bin_ratio{sel})", d.worst_at)
        reference = self.at_end(
            f"avg without (instance) (last_over_time(mlmon_reference_bin_ratio"
            f"{self.sel(model=model, feature=d.feature)}[{dur(self.p.seconds)}]))"
        )
        cur = {s.labels.get("bin"): s.last for s in current}
        ref = {s.labels.get("bin"): s.last for s in reference}
        if cur and ref:
            d.bins = [(b, ref.get(b, 0.0), cur.get(b, 0.0)) for b in sorted({*cur, *ref}, key=_bin_order)]

    def data_quality(self, model: str, version: str, window: str) -> tuple[list[DataQualityRow], float, dict]:
        """Per feature, the worst share of missing, out-of-range and unseen values in the period (any version,
        the worst replica), and the last share of missing values in the current version."""
        P = dur(self.p.seconds)
        w = self.sel(model=model, window=window)
        rows: dict[str, DataQualityRow] = {}

        def row(s: Series) -> DataQualityRow:
            f = s.labels.get("feature", "")
            return rows.setdefault(f, DataQualityRow(f))

        for s in self.at_end(f"max by (feature) (max_over_time(mlmon_feature_missing_ratio{w}[{P}]))"):
            row(s).missing_worst = s.last
        current = self.sel(model=model, version=version, window=window)
        for s in self.at_end(
            f"max by (feature) (last_over_time(mlmon_feature_missing_ratio{current}[{dur(self.p.recent)}]))"
        ):
            row(s).missing_last = s.last
        for s in self.at_end(f"max by (feature) (max_over_time(mlmon_feature_out_of_range_ratio{w}[{P}]))"):
            row(s).out_of_range_worst = s.last
        for s in self.at_end(f"max by (feature) (max_over_time(mlmon_feature_unseen_ratio{w}[{P}]))"):
            row(s).unseen_worst = s.last
        limit = self._scalar(
            f'max(max_over_time(mlmon_alert_threshold{self.sel(model=model)[:-1]},threshold="missing_ratio_max"}}[{P}]))'
        )
        errors = {
            s.labels.get("reason", ""): s.last
            for s in self.at_end(
                f"sum by (reason) (increase(mlmon_ingest_errors_total{self.sel(model=model)}[{P}])) > 0"
            )
        }
        ordered = sorted(
            rows.values(), key=lambda r: (-(r.missing_worst + r.out_of_range_worst + r.unseen_worst), r.feature)
        )
        return ordered, limit, errors

    def quantiles(self, metric: str, m: str, qs: tuple[float, ...], span: float) -> dict[str, Series]:
        out = {}
        for q in qs:
            found = self.over(f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{m}[{dur(span)}])))")
            if found and np.isfinite(found[0].v).any():
                out[f"p{round(q * 100)}"] = found[0]
        return out

    def episodes(self, selector: str) -> list[Episode]:
        """Firing episodes of the alerts matched: a point per step that saw the alert firing at any moment of
        the `lookback` before it (so that no episode falls between two points, and rule evaluations further
        apart than a step leave no holes)."""
        lookback = max(self.p.step, self.p.rate)
        found = self.over(f"max by (alertname, severity, version) (max_over_time({selector}[{dur(lookback)}]))")
        return episodes(found, self.p.step, self.p.start, self.p.end, lookback)


def episodes(
    found: list[Series], step: float, start: float, end: float, lookback: float | None = None
) -> list[Episode]:
    """Firing episodes from series with a point at each step whose `lookback` saw the alert firing: a gap of
    more than a step ends an episode. It started within the step before its first point, and ended within
    the step before its last point less the lookback; it is ongoing when its last point is the period's end."""
    lookback = lookback or step
    out = []
    for s in found:
        t = s.t[np.isfinite(s.v)]
        if not len(t):
            continue
        breaks = np.flatnonzero(np.diff(t) > 1.5 * step)
        firsts = np.concatenate([[0], breaks + 1])
        lasts = np.concatenate([breaks, [len(t) - 1]])
        for a, b in zip(firsts, lasts):
            began = max(float(t[a]) - step, start)
            ongoing = float(t[b]) > end - step
            out.append(
                Episode(
                    alertname=s.labels.get("alertname", ""),
                    severity=s.labels.get("severity", ""),
                    version=s.labels.get("version", ""),
                    start=began,
                    end=float(t[b]) if ongoing else max(float(t[b]) - lookback + step, began),
                    ongoing=ongoing,
                )
            )
    return sorted(out, key=lambda e: (e.start, e.alertname))


class NoData(ReportError):
    """Prometheus answered, but holds nothing to report."""


def growth(values: np.ndarray) -> np.ndarray:
    """The growth of one counter between consecutive readings (NaN: no reading), as Prometheus's increase() counts
    it but without extrapolation: a drop is a restart (the new value is the growth); a series first read after
    the first edge grew from 0; a gap carries the last reading over."""
    out = np.zeros(len(values) - 1)
    previous = values[0] if np.isfinite(values[0]) else 0.0
    for i in range(1, len(values)):
        v = values[i]
        if not np.isfinite(v):
            continue
        out[i - 1] = v - previous if v >= previous else v
        previous = v
    return out


def wilson(correct: np.ndarray, n: np.ndarray, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval of a proportion (95% by default)."""
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def _window_seconds(name: str) -> float:
    try:
        return float(parse_duration(name))
    except ValueError:
        return math.inf


def _bin_order(name: str) -> tuple:
    if name == "below_min":
        return (0, 0, "")
    if name == "above_max":
        return (2, 0, "")
    m = re.fullmatch(r"q(\d+)", name)
    if m:
        return (1, int(m.group(1)), "")
    return (3, 1 if name in ("other", "unseen", "__other__") else 0, name)


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
