"""Turn state snapshots into Prometheus metric families, one consistent snapshot per model per scrape.

Names and labels here are a contract documented in docs/metrics.md. A quality gauge of an empty window is
absent (never 0 or NaN); ``mlmon_window_samples`` always says how many samples a window holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.config import ModelConfig
from exporter.engine.model_registry import EMPTY, RegistryLinks
from exporter.engine.state import ModelSnapshot, ModelState, Segments, ServerReports
from exporter.ingest.validation import IngestErrors
from exporter.serve.exposition import CounterFamily, GaugeFamily, HistogramFamily, SeriesBlock
from exporter.stats import attribution, estimate, fairness, quality
from exporter.stats.binning import WindowDrift, decision_method, distribution, windows_drift
from exporter.stats.drift import CATEGORICAL_METHODS, CLASS_METHODS, NUMERIC_METHODS
from exporter.stats.histogram import Histogram

MV = ["model", "version"]
# The model registry labels of mlmon_model_info ("" where unknown; exporter/engine/model_registry.py).
REGISTRY_LABELS = ["run_id", "model_uri", "registry_name", "registry_version", "run_url"]
MVW = ["model", "version", "window"]

# (name, help) of the per-window quality gauges, by task.
CLASSIFICATION_GAUGES = {
    "accuracy": "Share of labelled predictions in the window that were correct.",
    "balanced_accuracy": "Mean recall over the classes present in the window.",
    "roc_auc": "ROC AUC in the window (binary; one-vs-rest macro average for multiclass), from score "
    "histograms; docs/metrics.md gives the method and its error bound.",
    "gini": "Gini coefficient (2 AUC - 1) of a binary model in the window, from score histograms.",
    "ks_separation": "Kolmogorov-Smirnov separation of a binary model in the window: the largest gap between the "
    "score distributions of the two classes, from score histograms; docs/metrics.md gives its error bound.",
    "log_loss": "Mean log loss of the labelled, scored predictions in the window.",
    "brier_score": "Mean Brier score of the labelled, scored predictions in the window.",
    "expected_calibration_error": "Top-label expected calibration error over 10 equal-width confidence bins.",
}
PER_CLASS_GAUGES = {
    "precision": "Precision of each class in the window (absent for a class never predicted).",
    "recall": "Recall of each class in the window (absent for a class never seen).",
    "f1": "F1 score of each class in the window.",
}
REGRESSION_GAUGES = {
    "mae": "Mean absolute error in the window.",
    "rmse": "Root mean squared error in the window.",
    "r2": "Coefficient of determination (R^2) in the window; absent when labels have no variance.",
    "mean_error": "Mean of prediction minus label in the window (bias).",
}


class MlmonCollector(Collector):
    def __init__(
        self,
        models: list[ModelState],
        errors: IngestErrors,
        servers: ServerReports,
        clock: Callable[[], float] = time.time,
        links: RegistryLinks | None = None,
    ):
        self.models = models
        self.errors = errors
        self.servers = servers
        self.clock = clock
        self.links = links
        # model name -> its series that only the config and the reference decide, kept between scrapes
        self.static: dict[str, _StaticSeries] = {}

    def describe(self) -> list:
        # The families without their samples: cheap, and lets /metrics?name[]=... select them.
        return [*_families([], {}, {}, self.links), GaugeFamily("mlmon_collect_duration_seconds", "")]

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        now = self.clock()
        snaps = [m.snapshot(now) for m in self.models]
        yield from _families(snaps, self.errors.snapshot(), self.servers.snapshot(now), self.links, self.static)
        duration = GaugeFamily(
            "mlmon_collect_duration_seconds", "Time taken to build the mlmon metric families of this scrape."
        )
        duration.add_metric([], time.perf_counter() - started)
        yield duration


def _families(
    snaps: list[ModelSnapshot],
    errors: dict,
    servers: dict,
    links: RegistryLinks | None = None,
    static: dict[str, _StaticSeries] | None = None,
) -> Iterator[Metric]:
    """The metric families of a scrape; ``static`` keeps each model's :class:`_StaticSeries` from one scrape
    to the next (by model name; None: built afresh)."""
    static = {} if static is None else static
    build = GaugeFamily("mlmon_build_info", "mlmon build information; always 1.", labels=["version"])
    build.add_metric([__version__], 1)
    yield build

    info = GaugeFamily(
        "mlmon_model_info",
        "Model versions seen, with their task and their model registry entry (empty where unknown); always 1.",
        labels=["model", "version", "task", *REGISTRY_LABELS],
    )
    first_seen = GaugeFamily(
        "mlmon_model_version_first_seen_timestamp_seconds",
        "Arrival time of the version's first prediction, by the exporter's clock (unix seconds); kept across "
        "restarts with durable storage.",
        labels=MV,
    )
    predictions = CounterFamily("mlmon_predictions", "Predictions received.", labels=MV)
    labels = CounterFamily("mlmon_labels", "Labels joined to their prediction.", labels=MV)
    outcomes = CounterFamily(
        "mlmon_outcomes", "Labelled predictions by actual and predicted class.", labels=MV + ["actual", "predicted"]
    )
    predicted = CounterFamily("mlmon_predicted_class", "Predictions by predicted class.", labels=MV + ["class"])
    abs_err = CounterFamily("mlmon_absolute_error", "Sum of |prediction - label| of regression models.", labels=MV)
    sq_err = CounterFamily("mlmon_squared_error", "Sum of (prediction - label)^2 of regression models.", labels=MV)
    last_pred = GaugeFamily(
        "mlmon_last_prediction_timestamp_seconds",
        "Arrival time of the newest prediction, by the exporter's clock (unix seconds).",
        labels=MV,
    )
    last_label = GaugeFamily(
        "mlmon_last_label_timestamp_seconds", "Time the newest label was joined (unix seconds).", labels=MV
    )
    confidence = _histogram(
        "mlmon_prediction_confidence", "Top-label confidence (highest class probability) of scored predictions."
    )
    value = _histogram("mlmon_prediction_value", "Predicted values of regression models.")
    latency = _histogram("mlmon_prediction_latency_seconds", "Prediction latency reported by the model server.")
    delay = _histogram("mlmon_label_delay_seconds", "Time from a prediction to the arrival of its label.")
    samples = GaugeFamily(
        "mlmon_window_samples",
        "Events in the window: kind=predictions by prediction time, kind=labeled by label arrival time.",
        labels=MVW + ["kind"],
    )
    gauges = {
        name: GaugeFamily(f"mlmon_{name}", text, labels=MVW)
        for name, text in {**CLASSIFICATION_GAUGES, **REGRESSION_GAUGES}.items()
    }
    per_class = {
        name: GaugeFamily(f"mlmon_{name}", text, labels=MVW + ["class"]) for name, text in PER_CLASS_GAUGES.items()
    }
    reliability = (
        GaugeFamily(
            "mlmon_reliability_accuracy",
            "Accuracy of the labelled, scored predictions whose top-label confidence falls in the bin (bin: its "
            "upper edge); absent for an empty bin. With mlmon_reliability_confidence: the reliability diagram.",
            labels=MVW + ["bin"],
        ),
        GaugeFamily(
            "mlmon_reliability_confidence",
            "Mean top-label confidence of the labelled, scored predictions in the bin; absent for an empty bin.",
            labels=MVW + ["bin"],
        ),
    )
    confusion = GaugeFamily(
        "mlmon_confusion_matrix",
        "Labelled predictions in the window by actual and predicted class.",
        labels=MVW + ["actual", "predicted"],
    )
    pending = GaugeFamily("mlmon_pending_labels", "Predictions with an id waiting for their label.", labels=["model"])
    early = GaugeFamily("mlmon_early_labels", "Labels waiting for their prediction to arrive.", labels=["model"])
    dropped = CounterFamily(
        "mlmon_pending_dropped",
        "Waiting predictions and labels dropped unjoined, "
        "by reason (expired: older than limits.pending_ttl; evicted: over "
        "limits.max_pending_per_model).",
        labels=["model", "kind", "reason"],
    )
    dups = CounterFamily(
        "mlmon_duplicates",
        "Predictions and labels ignored because their id was seen already.",
        labels=["model", "kind"],
    )
    thresholds = GaugeFamily(
        "mlmon_alert_threshold",
        "Alert thresholds from the config (thresholds: and models[].thresholds:), joined by the bundled alert rules.",
        labels=["model", "threshold"],
    )
    retired = CounterFamily(
        "mlmon_retired_versions", "Versions dropped over limits.max_versions_per_model.", labels=["model"]
    )
    spans = _SpanFamilies()
    estimated = _EstimateFamilies()

    drift_families = _DriftFamilies()
    segments = _SegmentFamilies()
    fair = _FairnessFamilies()
    attributions = _AttributionFamilies()

    # Every family of the loop below, in the order they are published; by name, for the kept series' blocks.
    published = (
        info,
        first_seen,
        predictions,
        labels,
        outcomes,
        predicted,
        abs_err,
        sq_err,
        last_pred,
        last_label,
        confidence,
        value,
        latency,
        delay,
        samples,
        *gauges.values(),
        *per_class.values(),
        confusion,
        *reliability,
        pending,
        early,
        dropped,
        dups,
        retired,
        thresholds,
        *spans.all(),
        *estimated.all(),
        *drift_families.all(),
        *segments.all(),
        *fair.all(),
        *attributions.all(),
    )
    by_name = {family.name: family for family in published}

    for snap in snaps:
        model = snap.config
        m = model.name
        feature_names = [f.name for f in model.features]
        kept = static.get(m)
        if kept is None or not kept.describes(snap):  # a new reference (or the first scrape): built again
            kept = static[m] = _StaticSeries(
                snap,
                [
                    *_alert_thresholds(thresholds, model),
                    *estimated.static(snap),
                    *drift_families.static(snap),
                    *attributions.static(snap),
                    *fair.static(model),
                ],
            )
        for name, block in kept.blocks:
            by_name[name].add_block(block)
        drift_families.model(snap)
        calibration = snap.profile.calibration if snap.profile is not None else None
        pending.add_metric((m,), snap.pending_predictions)
        early.add_metric((m,), snap.pending_labels)
        for (kind, reason), n in snap.dropped.items():
            dropped.add_metric((m, kind, reason), n)
        for kind, n in snap.duplicates.items():
            dups.add_metric((m, kind), n)
        retired.add_metric((m,), snap.retired_versions)
        for v in snap.versions:
            mv = (m, v.version)
            registry = links.labels(model, v.version, v.registry) if links is not None else EMPTY
            info.add_metric((m, v.version, model.task, *registry), 1)
            if v.first_seen:
                first_seen.add_metric(mv, v.first_seen)
            predictions.add_metric(mv, v.predictions)
            labels.add_metric(mv, v.labels)
            if v.last_prediction:
                last_pred.add_metric(mv, v.last_prediction)
            if v.last_label:
                last_label.add_metric(mv, v.last_label)
            _observe(latency, mv, v.latency)
            _observe(delay, mv, v.label_delay)
            drift_families.missing_total.add_group(mv, dict(zip(feature_names, v.missing.tolist())))
            if model.is_classification:
                for actual, n, row in zip(model.classes, v.predicted_class.tolist(), v.outcomes.tolist()):
                    predicted.add_metric(mv + (actual,), n)
                    outcomes.add_group(mv + (actual,), dict(zip(model.classes, row)))
                _observe(confidence, mv, v.confidence)
            else:
                _observe(value, mv, v.value)
                abs_err.add_metric(mv, v.abs_error)
                sq_err.add_metric(mv, v.sq_error)
            # Drift of every window of the version in one computation (binning.windows_drift)
            drifts = windows_drift(model, snap.profile, list(v.windows.values()))
            for (window, totals), drift_of_window in zip(v.windows.items(), drifts):
                mvw = mv + (window,)
                samples.add_metric(mvw + ("predictions",), float(totals["predictions"]))
                samples.add_metric(mvw + ("labeled",), float(totals["labeled"]))
                if model.is_classification:
                    _classification_window(model.classes, mvw, totals, gauges, per_class, confusion, reliability)
                    if calibration is not None and "est_n" in totals:
                        estimated.window(model, mvw, totals)
                else:
                    _regression_window(mvw, totals, gauges)
                drift_families.window(mvw, drift_of_window)
                if model.attributions:
                    attributions.window(snap, mvw, totals)
            spans.version(mv, v.spans, model.is_classification, calibration is not None)
            for (seg_feature, seg_value), windows in v.segments.items():
                if seg_feature not in model.listed_segments:
                    continue  # a fairness feature only: its groups are published by the fairness families
                drifts = windows_drift(model, snap.profile, list(windows.values()), exclude=model.segment_features)
                for (window, totals), drift_of_window in zip(windows.items(), drifts):
                    segments.window(model, mv + (window, seg_feature, seg_value), totals, drift_of_window)
            if model.fairness_features:
                fair.version(model, mv, v.segments)

    yield from published

    errs = CounterFamily(
        "mlmon_ingest_errors",
        "Rejected ingest input by model and reason (model is empty when the input names no configured model).",
        labels=["model", "reason"],
    )
    for (m, reason), n in sorted(errors.items()):
        errs.add_metric((m, reason), n)
    yield errs

    cpu = CounterFamily(
        "mlmon_model_server_cpu_seconds",
        "CPU time of a model server process, as reported by the mlmon client.",
        labels=["model", "server"],
    )
    rss = GaugeFamily(
        "mlmon_model_server_resident_memory_bytes",
        "Resident memory of a model server process, as reported by the mlmon client.",
        labels=["model", "server"],
    )
    for server, (models, cpu_s, rss_b, _) in sorted(servers.items()):
        for m in models:
            cpu.add_metric((m, server), cpu_s)
            rss.add_metric((m, server), rss_b)
    yield cpu
    yield rss

    if links is not None and links.enabled:
        lookups = CounterFamily(
            "mlmon_registry_lookups", "Look-ups of model versions and runs in the model registry (MLflow)."
        )
        lookups.add_metric([], links.attempts)
        lookup_errors = CounterFamily(
            "mlmon_registry_lookup_errors", "Registry look-ups that failed (retried later, with a growing delay)."
        )
        lookup_errors.add_metric([], links.failures)
        yield lookups
        yield lookup_errors


class _StaticSeries:
    """The series of one model that only its config and its reference decide (the alert and drift thresholds,
    the drift decisions, the reference's rows, bins, attributions and multivariate bounds, the calibration
    method, the fairness reference groups; the families' ``static`` methods give them): the same at every
    scrape, and many (a fifth of the series at 10 models x 30 features, mostly mlmon_drift_threshold). They
    are gathered once per config and reference, one :class:`SeriesBlock` per family, whose text the
    exposition writes once. Versions, windows and a reset do not touch them; a new reference is a new
    profile object, for which they are gathered again."""

    def __init__(self, snap: ModelSnapshot, series: list[tuple[Metric, tuple[str, ...], float]]):
        self.config, self.profile = snap.config, snap.profile
        rows: dict[str, list] = {}  # family name -> rows, in the order they are published
        for family, labels, value in series:
            rows.setdefault(family.name, []).append((labels, value))
        self.blocks = [(name, SeriesBlock(family_rows)) for name, family_rows in rows.items()]

    def describes(self, snap: ModelSnapshot) -> bool:
        # Identity, not equality: a config or profile is never changed in place, only replaced.
        return snap.config is self.config and snap.profile is self.profile


def _alert_thresholds(family: GaugeFamily, model: ModelConfig) -> Iterator[tuple[GaugeFamily, tuple[str, str], float]]:
    """The model's static series of mlmon_alert_threshold (see :class:`_StaticSeries`)."""
    for threshold, limit in model.thresholds:
        yield family, (model.name, threshold), limit
        if threshold == "evidence_confidence":  # the rules need the normal quantile, which PromQL lacks
            yield family, (model.name, "evidence_z"), quality.z_of_confidence(limit)


def _key(name: str) -> Callable[[dict], float]:
    return lambda sums: sums[name]


def _trace(name: str) -> Callable[[dict], float]:
    return lambda sums: np.trace(sums[name])


# The span series: name, help, which versions publish it ("all", "classification", "regression", or "estimated":
# classifiers whose reference calibrates their scores), and its value from a span's sums (window.spans).
SPAN_SERIES: tuple[tuple[str, str, str, Callable[[dict], float]], ...] = (
    (
        "mlmon_span_labeled",
        "Labelled predictions in the most recent span of a window, by label arrival time; the spans are the "
        "windows and their recent parts.",
        "all",
        _key("labeled"),
    ),
    (
        "mlmon_span_correct",
        "Correct predictions among the span's labelled ones (classification).",
        "classification",
        _trace("confusion"),
    ),
    (
        "mlmon_span_absolute_error",
        "Sum of |prediction - label| over the span's labelled predictions (regression).",
        "regression",
        _key("abs_err"),
    ),
    (
        "mlmon_span_squared_error",
        "Sum of (prediction - label)^2 over the span's labelled predictions (regression).",
        "regression",
        _key("sq_err"),
    ),
    (
        "mlmon_span_estimated",
        "Scored predictions in the most recent span of a window, by prediction time (models whose reference "
        "calibrates their scores).",
        "estimated",
        _key("est_n"),
    ),
    (
        "mlmon_span_estimated_correct",
        "Sum over the span's scored predictions of the calibrated probability of being right.",
        "estimated",
        _trace("est_confusion"),
    ),
    (
        "mlmon_span_estimated_correct_squares",
        "Sum over the span's scored predictions of the squared calibrated probability of being right.",
        "estimated",
        _key("est_sq"),
    ),
    (
        "mlmon_span_calibration_labeled",
        "Scored predictions of the span (by prediction time) whose label has come.",
        "estimated",
        _key("est_lab_n"),
    ),
    (
        "mlmon_span_calibration_correct",
        "Correct predictions among the span's labelled, scored ones.",
        "estimated",
        _key("est_lab_correct"),
    ),
    (
        "mlmon_span_calibration_expected",
        "Sum over the span's labelled, scored predictions of the calibrated probability of being right.",
        "estimated",
        _key("est_lab_p"),
    ),
    (
        "mlmon_span_calibration_variance",
        "Sum over the span's labelled, scored predictions of p (1 - p), p the calibrated probability of being "
        "right: the variance of their number right if the scores are calibrated.",
        "estimated",
        _key("est_lab_var"),
    ),
)


class _SpanFamilies:
    """The sums of labelled outcomes over each span (the windows and their recent parts, window.spans), from
    which the bundled rules test accuracy and MAE against their thresholds (docs/alerts.md). Counts, not
    ratios, so that they add up over replicas; published for every span, 0 included."""

    def __init__(self) -> None:
        labels = MV + ["span"]
        self.families = [(GaugeFamily(name, text, labels=labels), who, value) for name, text, who, value in SPAN_SERIES]

    def version(
        self, mv: tuple[str, ...], spans: dict[str, dict], classification: bool, estimated: bool = False
    ) -> None:
        base = {"all", "classification" if classification else "regression"}
        for name, sums in spans.items():
            labels = mv + (name,)
            publish = base | {"estimated"} if classification and estimated and "est_n" in sums else base
            for family, who, value in self.families:
                if who in publish:
                    family.add_metric(labels, float(value(sums)))

    def all(self) -> list:
        return [family for family, _, _ in self.families]


class _EstimateFamilies:
    """Quality estimated from the calibrated scores of every scored prediction, labelled or not
    (exporter/stats/estimate.py); published for the models whose reference calibrates their scores."""

    def __init__(self):
        self.info = GaugeFamily(
            "mlmon_calibration_info",
            "Always 1: how the model's scores are calibrated for the estimated quality (method: isotonic, fitted on "
            "the reference's scores and labels; none: the scores were already calibrated on held-out reference rows).",
            labels=["model", "method"],
        )
        self.samples = GaugeFamily(
            "mlmon_estimated_samples",
            "Scored predictions in the window by prediction time (kind=scored), and those of them labelled since "
            "(kind=labeled): what the estimate and the calibration gap rest on.",
            labels=MVW + ["kind"],
        )
        self.gauges = {
            "accuracy": GaugeFamily(
                "mlmon_estimated_accuracy",
                "Accuracy expected from the calibrated scores of the window's predictions, before any label (CBPE).",
                labels=MVW,
            ),
            "accuracy_stddev": GaugeFamily(
                "mlmon_estimated_accuracy_stddev",
                "Standard deviation of the window's accuracy around the estimate, if the scores are calibrated.",
                labels=MVW,
            ),
            "accuracy_stderr": GaugeFamily(
                "mlmon_estimated_accuracy_stderr",
                "Standard error of the estimated accuracy itself: how much it varies with the sample of inputs. "
                "The estimate alert tests the estimate against the floor with it.",
                labels=MVW,
            ),
            "roc_auc": GaugeFamily(
                "mlmon_estimated_roc_auc",
                "ROC AUC expected from the calibrated scores of the window's predictions (binary models).",
                labels=MVW,
            ),
            "nowcast_accuracy": GaugeFamily(
                "mlmon_nowcast_accuracy",
                "Best guess of the window's accuracy: realized for its labelled predictions, estimated for the rest.",
                labels=MVW,
            ),
            "nowcast_accuracy_stddev": GaugeFamily(
                "mlmon_nowcast_accuracy_stddev",
                "Standard deviation of the window's accuracy around the nowcast (from its unlabelled predictions).",
                labels=MVW,
            ),
            "calibration_gap": GaugeFamily(
                "mlmon_calibration_gap",
                "Realized minus estimated accuracy of the window's labelled, scored predictions: below 0 the model "
                "does worse than its scores promise (concept drift).",
                labels=MVW,
            ),
            "calibration_gap_stddev": GaugeFamily(
                "mlmon_calibration_gap_stddev",
                "Standard deviation of the calibration gap if the scores are calibrated (sampling only).",
                labels=MVW,
            ),
        }
        self.per_class = {
            name: GaugeFamily(
                f"mlmon_estimated_{name}",
                f"{name.capitalize() if name != 'f1' else 'F1'} of each class expected from the calibrated scores "
                "of the window's predictions.",
                labels=MVW + ["class"],
            )
            for name in ("precision", "recall", "f1")
        }

    def static(self, snap: ModelSnapshot) -> Iterator[tuple[GaugeFamily, tuple[str, ...], float]]:
        """The model's static series (see :class:`_StaticSeries`): how its scores are calibrated."""
        calibration = snap.profile.calibration if snap.profile is not None else None
        if calibration is not None:
            yield self.info, (snap.config.name, calibration.method), 1

    def window(self, model, mvw: tuple[str, ...], totals: dict) -> None:
        self.samples.add_metric(mvw + ("scored",), float(totals["est_n"]))
        self.samples.add_metric(mvw + ("labeled",), float(totals["est_lab_n"]))
        figures = estimate.figures(totals, model.task == "binary")
        if figures is None:
            return
        for name, family in self.gauges.items():
            if figures[name] is not None:
                family.add_metric(mvw, figures[name])
        for name, family in self.per_class.items():
            for index, value in figures[name].items():
                family.add_metric(mvw + (model.classes[index],), value)

    def all(self) -> list:
        return [self.info, self.samples, *self.gauges.values(), *self.per_class.values()]


class _AttributionFamilies:
    """Feature attributions (exporter/stats/attribution.py): what drives the model now against the reference."""

    def __init__(self):
        w = [*MV, "window"]
        self.mean_abs = GaugeFamily(
            "mlmon_attribution_mean_abs",
            "Mean absolute attribution (SHAP or LIME value) of the feature over the window's predictions that carry "
            "it: the feature's importance now (models with attributions: true; the top features only).",
            labels=[*w, "feature"],
        )
        self.rank = GaugeFamily(
            "mlmon_attribution_rank",
            "The feature's rank by mean absolute attribution in the window: 1 is the strongest driver.",
            labels=[*w, "feature"],
        )
        self.samples = GaugeFamily(
            "mlmon_attribution_samples", "Predictions in the window that carried attributions.", labels=w
        )
        self.drift = GaugeFamily(
            "mlmon_attribution_drift",
            "Total variation distance between the features' shares of the mean absolute attribution in the window "
            "and in the reference: the share of the model's attention that moved between features (0 to 1).",
            labels=w,
        )
        self.correlation = GaugeFamily(
            "mlmon_attribution_rank_correlation",
            "Spearman's rank correlation of the features' mean absolute attributions in the window and in the "
            "reference: 1 when the drivers rank as at training.",
            labels=w,
        )
        self.reference = GaugeFamily(
            "mlmon_reference_attribution_mean_abs",
            "Mean absolute attribution of the feature in the reference (its attributions.<feature> column): its "
            "importance at training time (the top features only).",
            labels=["model", "feature"],
        )
        self.reference_rank = GaugeFamily(
            "mlmon_reference_attribution_rank",
            "The feature's rank by mean absolute attribution in the reference: 1 was the strongest driver.",
            labels=["model", "feature"],
        )

    def _reference(self, snap: ModelSnapshot):
        return snap.profile.attributions if snap.profile is not None else None

    def static(self, snap: ModelSnapshot) -> Iterator[tuple[GaugeFamily, tuple[str, ...], float]]:
        """The model's static series (see :class:`_StaticSeries`): the reference's attributions."""
        model, ref = snap.config, self._reference(snap)
        if not model.attributions or ref is None:
            return
        ranks = attribution.ranks(ref)
        for j in sorted(attribution.top(ref, model.attribution_top)):
            yield self.reference, (model.name, model.features[j].name), float(ref[j])
            yield self.reference_rank, (model.name, model.features[j].name), int(ranks[j])

    def window(self, snap: ModelSnapshot, mvw: tuple[str, ...], totals: dict) -> None:
        model = snap.config
        names = [f.name for f in model.features]
        a = attribution.window(names, totals, self._reference(snap), model.drift_min_samples, model.attribution_top)
        if a is None:
            return
        self.samples.add_metric(mvw, a.rows)
        for name, value in a.mean_abs.items():
            self.mean_abs.add_metric(mvw + (name,), value)
            self.rank.add_metric(mvw + (name,), a.rank[name])
        if a.drift is not None:
            self.drift.add_metric(mvw, a.drift)
        if a.rank_correlation is not None:
            self.correlation.add_metric(mvw, a.rank_correlation)

    def all(self) -> list:
        return [
            self.mean_abs,
            self.rank,
            self.samples,
            self.drift,
            self.correlation,
            self.reference,
            self.reference_rank,
        ]


class _DriftFamilies:
    """Drift and data-quality families (docs/drift.md), filled model by model, window by window."""

    def __init__(self) -> None:
        w, f = MVW, MVW + ["feature"]
        self.feature = GaugeFamily(
            "mlmon_feature_drift",
            "Drift of a feature in the window against the reference, by method.",
            labels=f + ["method"],
        )
        self.prediction = GaugeFamily(
            "mlmon_prediction_drift",
            "Drift of the predictions in the window against the reference's.",
            labels=w + ["method"],
        )
        self.label = GaugeFamily(
            "mlmon_label_drift", "Drift of the labels in the window against the reference's.", labels=w + ["method"]
        )
        self.drifted = GaugeFamily(
            "mlmon_drifted_features",
            "Features whose drift (drift.method) is over their threshold in the window.",
            labels=w,
        )
        self.threshold = GaugeFamily(
            "mlmon_drift_threshold",
            "Drift thresholds from the config, per feature and method (feature is empty for predictions and labels); "
            "p-value methods drift below theirs.",
            labels=["model", "feature", "method"],
        )
        self.bins = GaugeFamily(
            "mlmon_feature_bin_ratio",
            "Share of a feature's values in the window per coarse bin (numeric: reference deciles q01..q10, "
            "below_min, above_max; categorical: tracked categories and other); beside mlmon_reference_bin_ratio.",
            labels=f + ["bin"],
        )
        self.reference_bins = GaugeFamily(
            "mlmon_reference_bin_ratio",
            "Share of a feature's reference values per coarse bin, as mlmon_feature_bin_ratio.",
            labels=["model", "feature", "bin"],
        )
        self.decision = GaugeFamily(
            "mlmon_drift_decision",
            "1 for the method that decides whether a feature (feature empty: the predictions) drifted: drift.method, "
            "or psi where it does not apply; the bundled drift alerts join it.",
            labels=["model", "feature", "method"],
        )
        self.missing = GaugeFamily(
            "mlmon_feature_missing_ratio", "Share of the window's predictions with the feature missing.", labels=f
        )
        self.out_of_range = GaugeFamily(
            "mlmon_feature_out_of_range_ratio",
            "Share of a numeric feature's values outside the reference range.",
            labels=f,
        )
        self.unseen = GaugeFamily(
            "mlmon_feature_unseen_ratio",
            "Share of a categorical feature's values never seen in the reference.",
            labels=f,
        )
        self.missing_total = CounterFamily(
            "mlmon_feature_missing", "Predictions with the feature missing.", labels=MV + ["feature"]
        )
        self.type_error = GaugeFamily(
            "mlmon_feature_type_error_ratio",
            "Share of the window's predictions whose value of the feature had the wrong type and was left out "
            "(invalid_features: count).",
            labels=f,
        )
        self.errors_total = CounterFamily(
            "mlmon_feature_errors",
            "Feature values left out under invalid_features: count, by reason (type_error: by feature; "
            "unknown_feature: feature is empty).",
            labels=["model", "feature", "reason"],
        )
        self.rows = GaugeFamily(
            "mlmon_reference_rows", "Rows of the reference profile in use (absent: no reference).", labels=["model"]
        )
        self.multivariate = GaugeFamily(
            "mlmon_multivariate_drift",
            "Mean PCA reconstruction error of the window's rows (the features standardised on the reference): "
            "how far the features have left the way they moved together in the reference.",
            labels=w,
        )
        self.multivariate_rows = GaugeFamily(
            "mlmon_multivariate_drift_samples",
            "Rows in the window with a reconstruction error (the weight of mlmon_multivariate_drift).",
            labels=w,
        )
        self.multivariate_bounds = GaugeFamily(
            "mlmon_multivariate_drift_threshold",
            "The reference's own range of mlmon_multivariate_drift: the mean of its chunks' errors -3 (lower) and "
            "+3 (upper) standard deviations.",
            labels=["model", "bound"],
        )

    def static(self, snap: ModelSnapshot) -> Iterator[tuple[GaugeFamily, tuple[str, ...], float]]:
        """The model's static series (see :class:`_StaticSeries`): the reference's and the drift settings'."""
        model, m = snap.config, snap.config.name
        if snap.profile is None:
            return
        yield self.rows, (m,), snap.profile.rows
        rec = snap.profile.reconstruction
        if rec is not None:
            if rec.lower is not None:
                yield self.multivariate_bounds, (m, "lower"), rec.lower
            yield self.multivariate_bounds, (m, "upper"), rec.upper
        for f in model.features:
            for method in NUMERIC_METHODS if f.type == "numeric" else CATEGORICAL_METHODS:
                if method != "chi2":
                    yield self.threshold, (m, f.name, method), model.drift_threshold(f.name, method)
        methods = NUMERIC_METHODS if model.task == "regression" else CLASS_METHODS
        for method in methods:
            if method != "chi2":
                yield self.threshold, (m, "", method), model.drift_threshold(None, method)
        for feature in [f.name for f in model.features] + [None]:
            yield self.decision, (m, feature or "", decision_method(model, feature)), 1
        for name, ref in snap.profile.features.items() if model.drift_bins else ():
            for bin_name, share in distribution(ref, ref.counts.astype(float)).items():
                yield self.reference_bins, (m, name, bin_name), share

    def model(self, snap: ModelSnapshot) -> None:
        """The model's feature errors (its static series are :meth:`static`'s)."""
        model = snap.config
        for (feature, reason), n in snap.feature_errors.items():
            self.errors_total.add_metric((model.name, feature, reason), n)

    def window(self, mvw: tuple[str, ...], d) -> None:
        for feature, values in d.features.items():
            self.feature.add_group(mvw + (feature,), values)
        for method, value in d.prediction.items():
            self.prediction.add_metric(mvw + (method,), value)
        for method, value in d.label.items():
            self.label.add_metric(mvw + (method,), value)
        if d.drifted is not None:
            self.drifted.add_metric(mvw, d.drifted)
        if d.multivariate_rows:
            self.multivariate_rows.add_metric(mvw, d.multivariate_rows)
        if d.multivariate is not None:
            self.multivariate.add_metric(mvw, d.multivariate)
        for feature, shares in d.distribution.items():
            self.bins.add_group(mvw + (feature,), shares)
        for family, key in (
            (self.missing, "missing"),
            (self.type_error, "type_error"),
            (self.out_of_range, "out_of_range"),
            (self.unseen, "unseen"),
        ):
            family.add_group(mvw, d.quality[key])

    def all(self) -> list:
        return [
            self.feature,
            self.prediction,
            self.label,
            self.drifted,
            self.threshold,
            self.decision,
            self.bins,
            self.reference_bins,
            self.missing,
            self.type_error,
            self.out_of_range,
            self.unseen,
            self.missing_total,
            self.errors_total,
            self.rows,
            self.multivariate,
            self.multivariate_rows,
            self.multivariate_bounds,
        ]


class _SegmentFamilies:
    """Per segment value (models[].segments): window samples, the quality gauges without a class label,
    feature drift, drifted features and missing ratios, as mlmon_segment_* with segment_feature and segment."""

    LABELS = MVW + ["segment_feature", "segment"]

    def __init__(self) -> None:
        seg = self.LABELS
        self.samples = GaugeFamily(
            "mlmon_segment_window_samples", "Events of the segment in the window, by kind.", labels=seg + ["kind"]
        )
        self.gauges = {
            name: GaugeFamily(f"mlmon_segment_{name}", f"Per segment: {text}", labels=seg)
            for name, text in {**CLASSIFICATION_GAUGES, **REGRESSION_GAUGES}.items()
        }
        self.drift = GaugeFamily(
            "mlmon_segment_feature_drift",
            "Per segment: drift of a feature against the reference, by method.",
            labels=seg + ["feature", "method"],
        )
        self.drifted = GaugeFamily(
            "mlmon_segment_drifted_features", "Per segment: features whose drift is over their threshold.", labels=seg
        )
        self.missing = GaugeFamily(
            "mlmon_segment_feature_missing_ratio",
            "Per segment: share of predictions with the feature missing.",
            labels=seg + ["feature"],
        )
        # Per-class figures and confusion matrices stay per model version: per segment they would multiply
        # the series by classes squared; these families take them and are never published.
        self._unpublished = ({name: _Discard() for name in PER_CLASS_GAUGES}, _Discard())

    def window(self, model: ModelConfig, labels: tuple[str, ...], totals: dict, d: WindowDrift) -> None:
        """The segment's series of one window; ``d``: the window's drift (binning.windows_drift, with the
        segment features excluded)."""
        self.samples.add_metric(labels + ("predictions",), float(totals["predictions"]))
        self.samples.add_metric(labels + ("labeled",), float(totals["labeled"]))
        if model.is_classification:
            _classification_window(model.classes, labels, totals, self.gauges, *self._unpublished)
        else:
            _regression_window(labels, totals, self.gauges)
        for feature, values in d.features.items():
            self.drift.add_group(labels + (feature,), values)
        if d.drifted is not None:
            self.drifted.add_metric(labels, d.drifted)
        self.missing.add_group(labels, d.quality["missing"])

    def all(self) -> list:
        return [self.samples, *self.gauges.values(), self.drift, self.drifted, self.missing]


class _FairnessFamilies:
    """Per fairness feature of a binary model (models[].fairness; docs/fairness.md): each group's counts and
    rates, from its segment's windows, and the disparities between the groups."""

    GROUP = MVW + ["feature", "group"]

    def __init__(self) -> None:
        g = self.GROUP
        self.samples = GaugeFamily(
            "mlmon_fairness_group_samples",
            "Events of the group in the window: kind=predictions by prediction time, kind=labeled by join time.",
            labels=g + ["kind"],
        )
        self.positive = GaugeFamily(
            "mlmon_fairness_group_predicted_positive",
            "Predictions of the group in the window predicted positive, by prediction time.",
            labels=g,
        )
        self.outcomes = GaugeFamily(
            "mlmon_fairness_group_outcomes",
            "Labelled predictions of the group in the window by outcome (tp, fp, tn, fn), by join time.",
            labels=g + ["outcome"],
        )
        self.rates = {
            "selection_rate": GaugeFamily(
                "mlmon_fairness_selection_rate",
                "Share of the group's predictions in the window predicted positive.",
                labels=g,
            ),
            "true_positive_rate": GaugeFamily(
                "mlmon_fairness_true_positive_rate",
                "Share of the group's labelled positives in the window predicted positive; absent without positives.",
                labels=g,
            ),
            "false_positive_rate": GaugeFamily(
                "mlmon_fairness_false_positive_rate",
                "Share of the group's labelled negatives in the window predicted positive; absent without negatives.",
                labels=g,
            ),
            "accuracy": GaugeFamily(
                "mlmon_fairness_accuracy", "Share of the group's labelled predictions that were correct.", labels=g
            ),
        }
        # The same rates as the group's calibrated scores expect them, before the labels (with a reference
        # that has scores and labels; docs/estimation.md), and the expected outcomes they come from (poolable).
        self.estimated_outcomes = GaugeFamily(
            "mlmon_fairness_group_estimated_outcomes",
            "Scored predictions of the group in the window by expected outcome (tp, fp, tn, fn): the sums of the "
            "calibrated probabilities, by prediction time, labelled or not.",
            labels=g + ["outcome"],
        )
        self.estimated = {
            "true_positive_rate": GaugeFamily(
                "mlmon_fairness_estimated_true_positive_rate",
                "True positive rate of the group's predictions in the window, as their calibrated scores expect it.",
                labels=g,
            ),
            "false_positive_rate": GaugeFamily(
                "mlmon_fairness_estimated_false_positive_rate",
                "False positive rate of the group's predictions in the window, as their calibrated scores expect it.",
                labels=g,
            ),
            "accuracy": GaugeFamily(
                "mlmon_fairness_estimated_accuracy",
                "Accuracy of the group's predictions in the window, as their calibrated scores expect it.",
                labels=g,
            ),
        }
        between = (
            "between the groups (fairness.disparity: spread, max minus min; reference, the largest gap to the "
            "reference group)"
        )
        # Which group each feature's disparities compare with (disparity: reference): the bundled fairness
        # rules recompute the disparities from the pooled counts and need it; absent in spread mode.
        self.reference = GaugeFamily(
            "mlmon_fairness_reference_group",
            "1 for the reference group of a fairness feature (fairness.disparity: reference); absent in spread mode. "
            "The bundled fairness alert joins it.",
            labels=["model", "feature", "group"],
        )
        self.disparities = {
            "demographic_parity_difference": GaugeFamily(
                "mlmon_fairness_demographic_parity_difference",
                f"Difference of selection rates {between}.",
                labels=MVW + ["feature"],
            ),
            "demographic_parity_ratio": GaugeFamily(
                "mlmon_fairness_demographic_parity_ratio",
                "Ratio of selection rates (disparate impact): lowest over highest, or lowest over the reference "
                "group's.",
                labels=MVW + ["feature"],
            ),
            "equal_opportunity_difference": GaugeFamily(
                "mlmon_fairness_equal_opportunity_difference",
                f"Difference of true positive rates {between}.",
                labels=MVW + ["feature"],
            ),
            "equalized_odds_difference": GaugeFamily(
                "mlmon_fairness_equalized_odds_difference",
                "Larger of the differences of true and of false positive rates between the groups.",
                labels=MVW + ["feature"],
            ),
            "accuracy_difference": GaugeFamily(
                "mlmon_fairness_accuracy_difference", f"Difference of accuracies {between}.", labels=MVW + ["feature"]
            ),
        }
        self.estimated_disparities = {
            name: GaugeFamily(
                f"mlmon_fairness_estimated_{name}",
                f"{self.disparities[name].documentation.rstrip('.')}, from the groups' estimated rates.",
                labels=MVW + ["feature"],
            )
            for name in fairness.ESTIMATED_DISPARITIES
        }

    def static(self, model: ModelConfig) -> Iterator[tuple[GaugeFamily, tuple[str, ...], float]]:
        """The model's static series (see :class:`_StaticSeries`): the reference groups of the config."""
        for feature, group in model.fairness_reference_group.items():
            yield self.reference, (model.name, feature, group), 1

    def version(self, model: ModelConfig, mv: tuple[str, ...], segments: dict) -> None:
        positive = model.classes.index(model.positive_class)
        reference = model.fairness_reference_group
        for feature in model.fairness_features:
            by_window: dict[str, dict[str, dict[str, float | None]]] = {}
            estimated_by_window: dict[str, dict[str, dict[str, float | None]]] = {}
            for (seg_feature, group), windows in segments.items():
                if seg_feature != feature:
                    continue
                for window, totals in windows.items():
                    labels = mv + (window, feature, group)
                    counts = fairness.group_counts(totals["pred_bins"], totals["confusion"], positive)
                    self.samples.add_metric(labels + ("predictions",), counts.predictions)
                    self.samples.add_metric(labels + ("labeled",), counts.labeled)
                    self.positive.add_metric(labels, counts.predicted_positive)
                    for outcome in fairness.OUTCOMES:
                        self.outcomes.add_metric(labels + (outcome,), getattr(counts, outcome))
                    rates = fairness.group_rates(counts)
                    for name, value in rates.items():
                        if value is not None:
                            self.rates[name].add_metric(labels, value)
                    estimated = None
                    if totals.get("est_n", 0) > 0:
                        outcomes = fairness.estimated_outcomes(totals["est_confusion"], positive)
                        for outcome, value in outcomes.items():
                            self.estimated_outcomes.add_metric(labels + (outcome,), value)
                        estimated = fairness.estimated_rates(outcomes)
                        for name, family in self.estimated.items():
                            if estimated[name] is not None:
                                family.add_metric(labels, estimated[name])
                    # "other" mixes the values beyond segments.top (and missing ones): not a group to compare.
                    if group != Segments.OTHER:
                        by_window.setdefault(window, {})[group] = rates
                        if estimated is not None:
                            estimated_by_window.setdefault(window, {})[group] = estimated
            for window, rates in by_window.items():
                for name, value in fairness.disparities(rates, reference.get(feature)).items():
                    if value is not None:
                        self.disparities[name].add_metric(mv + (window, feature), value)
            for window, rates in estimated_by_window.items():
                found = fairness.disparities(rates, reference.get(feature))
                for name, family in self.estimated_disparities.items():
                    if found[name] is not None:
                        family.add_metric(mv + (window, feature), found[name])

    def all(self) -> list:
        return [
            self.samples,
            self.positive,
            self.outcomes,
            *self.rates.values(),
            *self.disparities.values(),
            self.estimated_outcomes,
            *self.estimated.values(),
            *self.estimated_disparities.values(),
            self.reference,
        ]


class _Discard:
    """Accepts samples and drops them."""

    def add_metric(self, *args, **kwargs) -> None:
        pass

    def add_group(self, prefix, values) -> None:
        pass


def _histogram(name: str, text: str) -> HistogramFamily:
    return HistogramFamily(name, text, labels=MV)


def _observe(family: HistogramFamily, labels: tuple[str, ...], hist: Histogram) -> None:
    family.add_metric(labels, hist.buckets(), hist.sum)


# The bin label of each reliability bin: its upper edge.
_RELIABILITY_EDGES = tuple(f"{(b + 1) / quality.ECE_BINS:.1f}" for b in range(quality.ECE_BINS))


def _classification_window(classes, mvw, totals, gauges, per_class, confusion, reliability=None) -> None:
    conf = totals["confusion"]
    for actual, row in zip(classes, conf.tolist()):
        confusion.add_group(mvw + (actual,), dict(zip(classes, row)))
    if totals["labeled"] == 0:
        return
    figures = quality.classification(conf)
    for name in ("accuracy", "balanced_accuracy"):
        if figures[name] is not None:
            gauges[name].add_metric(mvw, figures[name])
    for name in ("precision", "recall", "f1"):
        for index, value in figures[name].items():
            per_class[name].add_metric(mvw + (classes[index],), value)
    scored = float(totals["scored"])
    if scored == 0:
        return
    auc = quality.roc_auc(totals["hist_pos"], totals["hist_all"])
    if auc is not None:
        gauges["roc_auc"].add_metric(mvw, auc[0])
    if len(totals["hist_pos"]) == 1:  # binary: one score column, the positive class's
        gini = quality.gini(auc)
        if gini is not None:
            gauges["gini"].add_metric(mvw, gini[0])
        pos = totals["hist_pos"][0]
        ks = quality.ks_separation(pos, totals["hist_all"][0] - pos)
        if ks is not None:
            gauges["ks_separation"].add_metric(mvw, ks[0])
    gauges["log_loss"].add_metric(mvw, float(totals["log_loss"]) / scored)
    gauges["brier_score"].add_metric(mvw, float(totals["brier"]) / scored)
    ece = quality.expected_calibration_error(totals["ece_count"], totals["ece_correct"], totals["ece_confidence"])
    if ece is not None:
        gauges["expected_calibration_error"].add_metric(mvw, ece)
    if reliability is not None:
        bins = zip(_RELIABILITY_EDGES, *(totals[k].tolist() for k in ("ece_count", "ece_correct", "ece_confidence")))
        for edge, n, correct, conf_sum in bins:
            if n > 0:
                reliability[0].add_metric(mvw + (edge,), float(correct) / float(n))
                reliability[1].add_metric(mvw + (edge,), float(conf_sum) / float(n))


def _regression_window(mvw, totals, gauges) -> None:
    figures = quality.regression(
        float(totals["labeled"]),
        float(totals["err"]),
        float(totals["abs_err"]),
        float(totals["sq_err"]),
        float(totals["y"]),
        float(totals["y_sq"]),
    )
    for name, value in figures.items():
        gauges[name].add_metric(mvw, value)
