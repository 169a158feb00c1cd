"""Shared helpers of the dashboard builders (grafana/build.py): the dashboard skeleton, the variables, the
panel kinds and the label matchers every query carries. Built with grafana-foundation-sdk."""

from __future__ import annotations

from grafana_foundation_sdk.builders import bargauge, dashboard, heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataTransformerConfig,
    DynamicConfigValue,
    GridPos,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.heatmap import HeatmapColorMode
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

GRAFANA = "http://localhost:3000"
TAG = "mlmon"
DATASOURCE = common.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Label matchers, from the least to the most specific. Every query carries at least TARGET.
TARGET = 'job=~"$job",instance=~"$instance"'
MODEL = TARGET + ',model=~"$model"'
VERSION = MODEL + ',version=~"$version"'
WINDOW = VERSION + ',window="$window"'

# Labels that identify one replica's window: the join of a window gauge with its sample count.
WINDOW_KEY = "job, instance, model, version, window"


def weighted(
    metric: str,
    sel: str,
    extra: str = "",
    *,
    kind: str = "labeled",
    weight: str = "",
    key: str = WINDOW_KEY,
    square: bool = False,
) -> str:
    """A window gauge pooled over the replicas of a job, as the `:weighted` rules of
    prometheus/rules/recording.yml: sum(G x N) / sum(N) over the replicas with G and N > 0, where two or more
    replicas have G, and G itself where only one has it (one replica per model: exactly the exporter's figure).
    N is mlmon_window_samples{kind} (or `weight`, joined on `key`); `square` pools an RMS (RMSE). Exact for
    accuracy, MAE, mean error, RMSE, precision/recall/F1 and the missing ratio; an approximation for the rest
    (docs/scaling.md). `sel` selects the replicas and window; `extra` narrows the gauge only."""
    g = f"{metric}{{{sel}{',' + extra if extra else ''}}}"
    n = weight or f'mlmon_window_samples{{{sel},kind="{kind}"}}'
    on = f"on ({key}) group_left ()"
    num = f"sum without (instance) ({g}{' ^ 2' if square else ''} * {on} ({n} > 0))"
    den = f"sum without (instance) (0 * {g} + {on} ({n} > 0))"
    pooled = f"sqrt({num} / {den})" if square else f"{num} / {den}"
    return f"({pooled} and count without (instance) ({g}) > 1) or max without (instance) ({g})"


def shared(metric: str, sel: str) -> str:
    """A per-model gauge every replica reports identically (the shared join store's counts): one copy."""
    return f"max without (instance) ({metric}{{{sel}}})"


# Colours that mean something (CONVENTIONS 6.2): green is fine, orange needs a look, red is an alert.
GOOD, WARN, BAD = "green", "orange", "red"


def thresholds(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    """Absolute threshold steps; the first step's value is None (from -infinity)."""
    return (
        dashboard.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for value, color in steps])
    )


# Higher is better for the quality ratios; lower is better for errors and drift.
NEUTRAL = thresholds((None, GOOD))
QUALITY = thresholds((None, BAD), (0.75, WARN), (0.9, GOOD))
PSI = thresholds((None, GOOD), (0.1, WARN), (0.25, BAD))


def query(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False, fmt: str = "") -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        q = q.legend_format(legend)
    if instant:
        q = q.instant()
    if fmt:
        q = q.format(PromQueryFormat(fmt))
    return q


class Layout:
    """Places panels left to right in rows of 24 columns and numbers them, so ids and positions never clash."""

    def __init__(self) -> None:
        self.x = self.y = self.row_h = 0
        self.next_id = 1

    def place(self, panel, w: int, h: int):
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel = panel.id(self.next_id).grid_pos(GridPos(h=h, w=w, x=self.x, y=self.y))
        self.next_id += 1
        self.x += w
        self.row_h = max(self.row_h, h)
        return panel


def _common(panel, title: str, description: str, unit: str, targets, thr, lo, hi):
    panel = panel.title(title).description(description).datasource(DATASOURCE).unit(unit)
    panel = panel.thresholds(thr or NEUTRAL)
    if lo is not None:
        panel = panel.min(lo)
    if hi is not None:
        panel = panel.max(hi)
    refs = "ABCDEFGH"
    for i, target in enumerate(targets):
        panel = panel.with_target(target.ref_id(refs[i]))
    return panel


def ratio_bounds(unit: str, lo, hi):
    """percentunit is 0-1 unless told otherwise."""
    if unit == "percentunit":
        return (0 if lo is None else lo), (1 if hi is None else hi)
    return lo, hi


def ts(title, description, unit, targets, thr=None, lo=None, hi=None, show_thresholds=False):
    lo, hi = ratio_bounds(unit, lo, hi)
    panel = _common(timeseries.Panel(), title, description, unit, targets, thr, lo, hi)
    if show_thresholds:
        panel = panel.thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE)
        )
    return panel


def stat_panel(title, description, unit, targets, thr=None, lo=None, hi=None):
    lo, hi = ratio_bounds(unit, lo, hi)
    return _common(stat.Panel(), title, description, unit, targets, thr, lo, hi).color_mode(
        common.BigValueColorMode.BACKGROUND
    )


def bars(title, description, unit, targets, thr=None, lo=None, hi=None):
    lo, hi = ratio_bounds(unit, lo, hi)
    return (
        _common(bargauge.Panel(), title, description, unit, targets, thr, lo, hi)
        .orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def tbl(title, description, unit, targets, thr=None, lo=None, hi=None, transformations=(), overrides=()):
    lo, hi = ratio_bounds(unit, lo, hi)
    panel = _common(table.Panel(), title, description, unit, targets, thr, lo, hi)
    for transformation_id, options in transformations:
        panel = panel.with_transformation(DataTransformerConfig(id_val=transformation_id, options=options))
    for name, props in overrides:
        panel = panel.override_by_name(name, [DynamicConfigValue(id_val=k, value=v) for k, v in props.items()])
    return panel


def heat(title, description, unit, targets, y_unit: str = "short"):
    """A heatmap of pre-bucketed series: histogram buckets (format heatmap), or one row per time series (the
    PSI of each feature). Grafana shows them as they are rather than re-bucketing them."""
    return (
        _common(heatmap.Panel(), title, description, unit, targets, None, None, None)
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit(y_unit))
        .color(heatmap.HeatmapColorOptions().mode(HeatmapColorMode.SCHEME).scheme("Oranges").exponent(0.5))
    )


def model_link(title: str = "Open the model dashboard", *, row: bool = False) -> dashboard.DashboardLink:
    """Data link into the model dashboard, keeping the time range: from a series' `model` label, or (`row`) from
    the `model` column of a table row (a merged table has no per-field labels)."""
    model = "${__data.fields.model}" if row else "${__field.labels.model}"
    return (
        dashboard.DashboardLink(title)
        .type(DashboardLinkType.LINK)
        .url(f"/d/mlmon-model/mlmon-model?var-model={model}&${{__url_time_range}}")
    )


def _query_variable(name: str, label: str, expr: str, *, multi: bool, include_all: bool) -> dashboard.QueryVariable:
    v = (
        dashboard.QueryVariable(name)
        .label(label)
        .query(expr)
        .definition(expr)
        .datasource(DATASOURCE)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.NATURAL_ASC)
        .multi(multi)
    )
    if include_all:
        v = v.include_all(True).all_value(".+")
    return v


# The variables, as name: (label, metric, multi). Each query narrows by the variables before it on the
# dashboard (job -> instance -> model -> version -> window), so the choices cascade.
VARIABLES = {
    "job": ("Job", "mlmon_build_info", True),
    "instance": ("Instance", "mlmon_build_info", True),
    "model": ("Model", "mlmon_model_info", True),
    "version": ("Version", "mlmon_model_info", True),
    "window": ("Window", "mlmon_window_samples", False),
    "feature": ("Feature", "mlmon_feature_missing_ratio", True),
    "class": ("Class", "mlmon_predicted_class_total", True),  # no window label: filtered up to version
    "segment": ("Segment", "mlmon_segment_window_samples", True),
}
CASCADE = ["job", "instance", "model", "version", "window"]


def variable_query(name: str, present: list[str]) -> str:
    """label_values() of the variable's metric, filtered by the cascade variables before it."""
    _, metric, _ = VARIABLES[name]
    before = CASCADE[: CASCADE.index(name)] if name in CASCADE else CASCADE
    if name == "class":
        before = CASCADE[: CASCADE.index("window")]
    matchers = ",".join(f'{v}="${v}"' if not VARIABLES[v][2] else f'{v}=~"${v}"' for v in before if v in present)
    return f"label_values({metric}{{{matchers}}}, {name})" if matchers else f"label_values({metric}, {name})"


def first_served(sel: str) -> dashboard.AnnotationQuery:
    """One marker per model version, at the arrival of its first prediction: the series' value (in ms) is the
    marker's time ("Series value as timestamp"), so restarts and scrape gaps add none. The earliest over the
    replicas that serve the version."""
    return (
        dashboard.AnnotationQuery()
        .name("Versions first served")
        .datasource(DATASOURCE)
        .enable(True)
        .icon_color("blue")
        .expr(f"min by (model, version) (mlmon_model_version_first_seen_timestamp_seconds{{{sel}}}) * 1000")
        .use_value_for_time(True)
        .title_format("{{model}} {{version}} first served")
        .tag_keys("model,version")
        .step("1m")
    )


def new_dashboard(uid: str, title: str, description: str, variables: list[str]) -> dashboard.Dashboard:
    """The skeleton every mlmon dashboard shares: uid, title, tag, time settings, links, annotations and
    variables (datasource, job and instance first, then `variables` in cascade order)."""
    # The annotations follow the dashboard's model and version variables, where it has them.
    sel = VERSION if "version" in variables else MODEL if "model" in variables else TARGET
    d = (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG])
        .readonly()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .timezone("utc")
        .refresh("30s")
        .time("now-1h", "now")
        .link(
            dashboard.DashboardLink("mlmon")
            .type(DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
        .annotation(
            dashboard.AnnotationQuery()
            .name("Annotations & Alerts")
            .built_in(1)
            .type("dashboard")
            .datasource(common.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
        )
        .annotation(first_served(sel))
        .annotation(
            dashboard.AnnotationQuery()
            .name("Firing alerts")
            .datasource(DATASOURCE)
            .enable(True)
            .icon_color("red")
            .expr('ALERTS{alertstate="firing",alertname=~"Mlmon.*"}')
            .title_format("{{alertname}} {{model}}")
            .tag_keys("alertname,model,version,severity")
            .step("1m")
        )
        .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    )
    present = ["job", "instance", *variables]
    for name in present:
        label, _, multi = VARIABLES[name]
        expr = variable_query(name, present)
        d = d.with_variable(_query_variable(name, label, expr, multi=multi, include_all=multi))
    return d
