"""Generates mlmon's Grafana dashboards (grafana/dashboards/*.json) from code: one builder per dashboard.

Run `python grafana/build.py` after changing this file or grafana/lib.py, and commit the JSON;
tests/bundle/test_dashboards.py fails while the committed JSON is stale. `--out DIR` writes elsewhere.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grafana_foundation_sdk.cog.encoder import JSONEncoder

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib import (  # noqa: E402 - lib sits next to this script, which is not a package
    BAD,
    GOOD,
    MODEL,
    PSI,
    QUALITY,
    TARGET,
    VERSION,
    WARN,
    WINDOW,
    WINDOW_KEY,
    Layout,
    bars,
    heat,
    model_link,
    new_dashboard,
    query,
    shared,
    stat_panel,
    tbl,
    thresholds,
    ts,
    weighted,
)

OUT = Path(__file__).resolve().parent / "dashboards"
RATE = "$__rate_interval"


def mx(by: str, expr: str) -> str:
    """One series per `by` out of pooled series (several jobs may carry a model)."""
    return f"max by ({by}) ({expr})"


PSI_ONLY = 'method="psi"'


def cm_weight(sel: str, by: str) -> str:
    """Each replica's count of a class as predicted (`by="predicted"`) or actual, from its confusion matrix,
    labelled `class`: the exact weight of its precision (predicted) and recall (actual)."""
    other = "actual" if by == "predicted" else "predicted"
    return f'label_replace(sum without ({other}) (mlmon_confusion_matrix{{{sel}}}), "class", "$1", "{by}", "(.*)")'


def estimated_accuracy(sel: str = WINDOW) -> str:
    """The estimated accuracy of the window ``sel`` selects, pooled over replicas by their scored predictions."""
    return weighted("mlmon_estimated_accuracy", sel, weight=f'mlmon_estimated_samples{{{sel},kind="scored"}}')


def estimated_stddev() -> str:
    """The standard deviation of the pooled estimate: sqrt(sum of the replicas' variances of the number
    correct) over their scored predictions."""
    n = f'mlmon_estimated_samples{{{WINDOW},kind="scored"}}'
    sd = f"mlmon_estimated_accuracy_stddev{{{WINDOW}}}"
    return (
        f"(sqrt(sum without (instance) (({sd} * on ({WINDOW_KEY}) group_left () {n}) ^ 2))"
        f" / sum without (instance, kind) ({n} and on ({WINDOW_KEY}) {sd}))"
    )


def calibration_gap() -> str:
    """The calibration gap of the chosen window, pooled over replicas by their labelled, scored predictions."""
    return weighted("mlmon_calibration_gap", WINDOW, weight=f'mlmon_estimated_samples{{{WINDOW},kind="labeled"}}')


def calibration_gap_stddev() -> str:
    """Its standard deviation if the scores are calibrated, pooled as the estimate's."""
    n = f'mlmon_estimated_samples{{{WINDOW},kind="labeled"}}'
    sd = f"mlmon_calibration_gap_stddev{{{WINDOW}}}"
    return (
        f"(sqrt(sum without (instance) (({sd} * on ({WINDOW_KEY}) group_left () {n}) ^ 2))"
        f" / sum without (instance, kind) ({n} and on ({WINDOW_KEY}) {sd}))"
    )


def class_weighted(metric: str, sel: str, extra: str, weight: str) -> str:
    return weighted(metric, sel, extra, weight=weight, key="job, instance, model, version, window, class")


REGISTRY_LABELS = "model, version, registry_name, registry_version, run_id, model_uri, run_url"


def attributed(metric: str, by: str) -> str:
    """An attribution window gauge pooled over replicas, weighted by their predictions with attributions."""
    return mx(by, weighted(metric, WINDOW, weight=f"mlmon_attribution_samples{{{WINDOW}}}"))


def registry_versions() -> str:
    """One row per chosen version and registry entry (replicas agree once their look-ups are done), valued with
    the version's first-served time in ms (the earliest over the replicas), or 0 where it is unknown."""
    entries = f"max by ({REGISTRY_LABELS}) (mlmon_model_info{{{VERSION}}})"
    first = f"min by (model, version) (mlmon_model_version_first_seen_timestamp_seconds{{{VERSION}}}) * 1000"
    return f"({entries} * on (model, version) group_left () {first}) or 0 * {entries}"


def p(q: float, metric: str, by: str, matchers: str) -> str:
    """A percentile of a histogram: buckets summed by `le` (and `by`) before the quantile."""
    return f"histogram_quantile({q}, sum by ({by}le) (rate({metric}_bucket{{{matchers}}}[{RATE}])))"


def fleet():
    d = new_dashboard(
        "mlmon-fleet",
        "mlmon / Fleet",
        "Every model's health at a glance; click a model to open its dashboard.",
        ["window"],
    )
    fw = TARGET + ',window="$window"'
    lay = Layout()
    d = d.with_panel(
        lay.place(
            tbl(
                "Models",
                "One row per model and version, from the chosen window, pooled over the exporter replicas serving it "
                "(weighted by their samples, docs/scaling.md): accuracy (classifiers) or MAE (regressors), "
                "the accuracy estimated from the calibrated scores of every prediction, labelled or not (classifiers "
                "whose reference carries scores and labels; it speaks before the labels come), the accuracy floor "
                "from the config, features drifting, predictions per second, p99 latency and labels still pending. "
                "Click a model name to open its dashboard.",
                "short",
                [
                    query(f"max by (model, version) ({weighted('mlmon_accuracy', fw)})", instant=True, fmt="table"),
                    query(f"max by (model, version) ({estimated_accuracy(fw)})", instant=True, fmt="table"),
                    query(f"max by (model, version) ({weighted('mlmon_mae', fw)})", instant=True, fmt="table"),
                    query(
                        f'max by (model) (mlmon_alert_threshold{{{TARGET},threshold="accuracy_min"}})',
                        instant=True,
                        fmt="table",
                    ),
                    query(f"max by (model, version) (mlmon_drifted_features{{{fw}}})", instant=True, fmt="table"),
                    query(
                        f"sum by (model, version) (rate(mlmon_predictions_total{{{TARGET}}}[{RATE}]))",
                        instant=True,
                        fmt="table",
                    ),
                    query(
                        p(0.99, "mlmon_prediction_latency_seconds", "model, version, ", TARGET),
                        instant=True,
                        fmt="table",
                    ),
                    query(f"sum by (model) ({shared('mlmon_pending_labels', TARGET)})", instant=True, fmt="table"),
                ],
                transformations=[
                    ("merge", {}),
                    (
                        "organize",
                        {
                            "excludeByName": {"Time": True},
                            "renameByName": {
                                "Value #A": "accuracy",
                                "Value #B": "estimated accuracy",
                                "Value #C": "MAE",
                                "Value #D": "accuracy floor",
                                "Value #E": "drifting features",
                                "Value #F": "predictions/s",
                                "Value #G": "latency p99",
                                "Value #H": "pending labels",
                            },
                        },
                    ),
                ],
                overrides=[
                    ("model", {"links": [model_link(row=True).build()]}),
                    (
                        "accuracy",
                        {
                            "unit": "percentunit",
                            "min": 0,
                            "max": 1,
                            "custom.cellOptions": {"type": "color-background"},
                            "thresholds": QUALITY.build(),
                        },
                    ),
                    (
                        "estimated accuracy",
                        {
                            "unit": "percentunit",
                            "min": 0,
                            "max": 1,
                            "custom.cellOptions": {"type": "color-background"},
                            "thresholds": QUALITY.build(),
                        },
                    ),
                    ("accuracy floor", {"unit": "percentunit"}),
                    (
                        "drifting features",
                        {
                            "custom.cellOptions": {"type": "color-background"},
                            "thresholds": thresholds((None, GOOD), (1, WARN), (3, BAD)).build(),
                        },
                    ),
                    ("predictions/s", {"unit": "reqps"}),
                    ("latency p99", {"unit": "s"}),
                ],
            ),
            24,
            9,
        )
    )
    d = d.with_panel(
        lay.place(
            ts(
                "Accuracy against its floor",
                "Accuracy of each classifier version in the chosen window (solid) and the accuracy floor of "
                "MlmonModelAccuracyLow from the config (dashed series `floor`). A line under its floor, with enough "
                "labels, is what pages.",
                "percentunit",
                [
                    query(f"max by (model, version) ({weighted('mlmon_accuracy', fw)})", "{{model}} {{version}}"),
                    query(
                        f'max by (model) (mlmon_alert_threshold{{{TARGET},threshold="accuracy_min"}})',
                        "{{model}} floor",
                    ),
                ],
                thr=QUALITY,
            ).data_links([model_link()]),
            12,
            8,
        )
    )
    d = d.with_panel(
        lay.place(
            ts(
                "Mean absolute error (regressors)",
                "Mean absolute error of each regression model version in the chosen window, in the label's unit. "
                "Compare with the model's own history: there is no fixed floor.",
                "short",
                [query(f"max by (model, version) ({weighted('mlmon_mae', fw)})", "{{model}} {{version}}")],
                lo=0,
            ).data_links([model_link()]),
            12,
            8,
        )
    )
    d = d.with_panel(
        lay.place(
            bars(
                "Drifting features",
                "Features over their drift threshold (the config's drift.method, psi by default) per model version "
                "in the chosen window. 0 is green; open the drift dashboard to see which. With several replicas "
                "serving a model, the largest of their counts.",
                "short",
                [
                    query(
                        f"max by (model, version) (mlmon_drifted_features{{{fw}}})",
                        "{{model}} {{version}}",
                        instant=True,
                    )
                ],
                thr=thresholds((None, GOOD), (1, WARN), (3, BAD)),
                lo=0,
            ).data_links([model_link()]),
            8,
            8,
        )
    )
    d = d.with_panel(
        lay.place(
            ts(
                "Traffic",
                "Predictions accepted per second by model, from mlmon_predictions_total. A drop to zero means the "
                "model server stopped sending.",
                "reqps",
                [query(f"sum by (model) (rate(mlmon_predictions_total{{{TARGET}}}[{RATE}]))", "{{model}}")],
                lo=0,
            ).data_links([model_link()]),
            8,
            8,
        )
    )
    d = d.with_panel(
        lay.place(
            ts(
                "Latency p99",
                "99th percentile of the prediction latency the model servers report, by model.",
                "s",
                [query(p(0.99, "mlmon_prediction_latency_seconds", "model, ", TARGET), "{{model}}")],
                thr=thresholds((None, GOOD), (0.5, WARN), (1, BAD)),
                lo=0,
            ).data_links([model_link()]),
            8,
            8,
        )
    )
    d = d.with_panel(
        lay.place(
            ts(
                "Label delay p90",
                "90th percentile of the time from a prediction to its ground-truth label, by model: quality "
                "figures describe predictions this old.",
                "s",
                [query(p(0.9, "mlmon_label_delay_seconds", "model, ", TARGET), "{{model}}")],
                lo=0,
            ).data_links([model_link()]),
            8,
            8,
        )
    )
    d = d.with_panel(
        lay.place(
            ts(
                "Pending labels",
                "Predictions waiting for their label, by model (one copy of the shared join store's count per job, "
                "never the sum of the replicas'). Steady growth means labels stopped arriving.",
                "short",
                [query(f"sum by (model) ({shared('mlmon_pending_labels', TARGET)})", "{{model}}")],
                lo=0,
            ).data_links([model_link()]),
            8,
            8,
        )
    )
    d = d.with_panel(
        lay.place(
            stat_panel(
                "Firing alerts",
                "mlmon alerts firing now, from Prometheus's ALERTS series (0 when none). The firing alerts also "
                "show as red annotations on every graph.",
                "short",
                [query('count(ALERTS{alertstate="firing",alertname=~"Mlmon.*"}) or vector(0)', instant=True)],
                thr=thresholds((None, GOOD), (1, BAD)),
            ),
            8,
            8,
        )
    )
    return d


def model():
    d = new_dashboard(
        "mlmon-model",
        "mlmon / Model",
        "One model: quality over time, per class, calibration, what it predicts, and its versions side by side.",
        ["model", "version", "window", "class"],
    )
    lay = Layout()
    mv = "{{model}} {{version}}"
    cls = 'class=~"$class"'
    panels = [
        (
            ts(
                "Accuracy by window",
                "Accuracy of the chosen versions in every window (1m/5m/1h... as configured): short windows react "
                "first, long ones are steadier. Absent while a window holds no labelled prediction.",
                "percentunit",
                [query(weighted("mlmon_accuracy", VERSION), "{{model}} {{version}} {{window}}")],
                thr=QUALITY,
            ),
            12,
            8,
        ),
        (
            ts(
                "Regression error by window",
                "Mean absolute error and root mean squared error of regression versions in every window, in the "
                "label's unit. RMSE well above MAE means a few large errors.",
                "short",
                [
                    query(weighted("mlmon_mae", VERSION), "MAE {{model}} {{version}} {{window}}"),
                    query(weighted("mlmon_rmse", VERSION, square=True), "RMSE {{model}} {{version}} {{window}}"),
                ],
                lo=0,
            ),
            12,
            8,
        ),
        (
            ts(
                "Estimated and realized accuracy",
                "Accuracy in the chosen window as the labels show it (realized), as the calibrated scores of "
                "every prediction promise it before any label comes (estimated, docs/estimation.md), with a band "
                "of two standard deviations, and the nowcast: realized where labelled, estimated elsewhere. The "
                "estimate moves first when inputs shift; a realized accuracy outside the band means the scores "
                "no longer mean what they meant on the reference (concept drift). Estimates need a reference "
                "with scores and labels.",
                "percentunit",
                [
                    query(weighted("mlmon_accuracy", WINDOW), "realized " + mv),
                    query(estimated_accuracy(), "estimated " + mv),
                    query(
                        weighted(
                            "mlmon_nowcast_accuracy",
                            WINDOW,
                            weight=f'mlmon_estimated_samples{{{WINDOW},kind="scored"}}',
                        ),
                        "nowcast " + mv,
                    ),
                    query(f"{estimated_accuracy()} - 2 * {estimated_stddev()}", "estimated -2 sd " + mv),
                    query(f"{estimated_accuracy()} + 2 * {estimated_stddev()}", "estimated +2 sd " + mv),
                ],
                thr=QUALITY,
            ),
            16,
            8,
        ),
        (
            ts(
                "Calibration gap",
                "Realized minus estimated accuracy of the window's labelled, scored predictions, with the band "
                "of two standard deviations it keeps to while the scores mean what they meant on the reference. "
                "Below the band the model does worse than its scores promise (concept drift; MlmonModelCalibrationGap "
                "fires past calibration_gap_max, the lines `tolerated`).",
                "percentunit",
                [
                    query(calibration_gap(), "gap " + mv),
                    query(f"-2 * {calibration_gap_stddev()}", "-2 sd " + mv),
                    query(f"2 * {calibration_gap_stddev()}", "+2 sd " + mv),
                    query(
                        f'max by (model) (mlmon_alert_threshold{{{MODEL},threshold="calibration_gap_max"}})',
                        "tolerated {{model}}",
                    ),
                    query(
                        f'-max by (model) (mlmon_alert_threshold{{{MODEL},threshold="calibration_gap_max"}})',
                        "tolerated {{model}}",
                    ),
                ],
            ),
            8,
            8,
        ),
        (
            ts(
                "Precision, recall and F1 per class",
                "Per-class precision, recall and F1 in the chosen window. A class whose recall falls while the "
                "others hold is being confused with another: see the confusion matrix.",
                "percentunit",
                [
                    query(
                        class_weighted("mlmon_precision", WINDOW, cls, cm_weight(WINDOW, "predicted")),
                        "precision {{class}} " + mv,
                    ),
                    query(
                        class_weighted("mlmon_recall", WINDOW, cls, cm_weight(WINDOW, "actual")),
                        "recall {{class}} " + mv,
                    ),
                    query(
                        class_weighted(
                            "mlmon_f1",
                            WINDOW,
                            cls,
                            f"({cm_weight(WINDOW, 'predicted')} + ignoring (predicted, actual) "
                            f"{cm_weight(WINDOW, 'actual')})",
                        ),
                        "F1 {{class}} " + mv,
                    ),
                ],
                thr=QUALITY,
            ),
            12,
            9,
        ),
        (
            tbl(
                "Confusion matrix",
                "Labelled predictions in the chosen window: one row per actual class, one column per predicted class "
                "(summed over the chosen versions). The diagonal is correct.",
                "short",
                [query(f"sum by (actual, predicted) (mlmon_confusion_matrix{{{WINDOW}}})", instant=True, fmt="table")],
                transformations=[
                    ("groupingToMatrix", {"rowField": "actual", "columnField": "predicted", "valueField": "Value"}),
                ],
            ),
            12,
            9,
        ),
        (
            ts(
                "Calibration error (ECE)",
                "Top-label expected calibration error in the chosen window (10 bins): the gap between the "
                "confidence the model claims and the accuracy it reaches. 0 is perfectly calibrated.",
                "percentunit",
                [query(weighted("mlmon_expected_calibration_error", WINDOW), mv)],
                thr=thresholds((None, GOOD), (0.05, WARN), (0.15, BAD)),
            ),
            6,
            8,
        ),
        (
            ts(
                "Score separation (binary)",
                "How well the scores of binary versions tell the classes apart in the chosen window: ROC AUC, Gini "
                "(2 AUC - 1) and KS separation (the largest gap between the score distributions of the two "
                "classes). They look at the order of the scores only: a model can separate well and still be "
                "miscalibrated (see ECE).",
                "percentunit",
                [
                    query(weighted("mlmon_roc_auc", WINDOW), "AUC " + mv),
                    query(weighted("mlmon_gini", WINDOW), "Gini " + mv),
                    query(weighted("mlmon_ks_separation", WINDOW), "KS " + mv),
                ],
            ),
            6,
            8,
        ),
        (
            tbl(
                "Reliability diagram",
                "Top-label reliability diagram in the chosen window: for each confidence bin (`bin` = its upper "
                "edge, 0.1 to 1.0) the accuracy of the labelled, scored predictions in it next to their mean "
                "confidence. Perfectly calibrated means the two are equal in every bin; accuracy below confidence is "
                "over-confidence, above it under-confidence. Empty bins are absent; a bin with few predictions is "
                "noisy.",
                "percentunit",
                [
                    query(
                        f"max by (model, version, bin) ({weighted('mlmon_reliability_accuracy', WINDOW)})",
                        instant=True,
                        fmt="table",
                    ),
                    query(
                        f"max by (model, version, bin) ({weighted('mlmon_reliability_confidence', WINDOW)})",
                        instant=True,
                        fmt="table",
                    ),
                ],
                transformations=[
                    ("merge", {}),
                    (
                        "organize",
                        {
                            "excludeByName": {"Time": True},
                            "renameByName": {"Value #A": "accuracy", "Value #B": "confidence"},
                        },
                    ),
                    ("sortBy", {"sort": [{"field": "bin"}]}),
                ],
                overrides=[
                    ("accuracy", {"custom.cellOptions": {"type": "gauge", "mode": "basic"}}),
                    ("confidence", {"custom.cellOptions": {"type": "gauge", "mode": "basic"}}),
                ],
            ),
            6,
            8,
        ),
        (
            heat(
                "Confidence distribution",
                "Top-label confidence of every prediction sent with scores (histogram mlmon_prediction_confidence), "
                "predictions per second by confidence bucket. Mass moving down means the model is less sure.",
                "reqps",
                [
                    query(
                        f"sum by (le) (rate(mlmon_prediction_confidence_bucket{{{VERSION}}}[{RATE}]))",
                        "{{le}}",
                        fmt="heatmap",
                    )
                ],
                y_unit="percentunit",
            ),
            6,
            8,
        ),
        (
            ts(
                "Predicted classes",
                "Predictions per second by predicted class. A shift in the mix with steady inputs is prediction drift.",
                "reqps",
                [
                    query(
                        f"sum by (model, class) (rate(mlmon_predicted_class_total"
                        f'{{{VERSION},class=~"$class"}}[{RATE}]))',
                        "{{model}} {{class}}",
                    )
                ],
                lo=0,
            ),
            8,
            8,
        ),
        (
            heat(
                "Predicted values (regressors)",
                "Predicted values of regression versions (histogram mlmon_prediction_value, buckets from the "
                "config's prediction_buckets), predictions per second by bucket.",
                "reqps",
                [
                    query(
                        f"sum by (le) (rate(mlmon_prediction_value_bucket{{{VERSION}}}[{RATE}]))",
                        "{{le}}",
                        fmt="heatmap",
                    )
                ],
            ),
            8,
            8,
        ),
        (
            ts(
                "Labelled samples in the window",
                "Predictions and labelled outcomes in the chosen window: quality figures from a handful of labels "
                "are noise (alerts wait for min_labeled_samples).",
                "short",
                [query(f"sum without (instance) (mlmon_window_samples{{{WINDOW}}})", "{{kind}} " + mv)],
                lo=0,
            ),
            8,
            8,
        ),
        (
            tbl(
                "Versions side by side",
                "Every version of the chosen models in the chosen window: accuracy, MAE, predictions per second and "
                "labels per second. Compare a new version with the one it replaces.",
                "short",
                [
                    query(
                        mx("model, version", weighted("mlmon_accuracy", MODEL + ',window="$window"')),
                        instant=True,
                        fmt="table",
                    ),
                    query(
                        mx("model, version", weighted("mlmon_mae", MODEL + ',window="$window"')),
                        instant=True,
                        fmt="table",
                    ),
                    query(
                        f"sum by (model, version) (rate(mlmon_predictions_total{{{MODEL}}}[{RATE}]))",
                        instant=True,
                        fmt="table",
                    ),
                    query(
                        f"sum by (model, version) (rate(mlmon_labels_total{{{MODEL}}}[{RATE}]))",
                        instant=True,
                        fmt="table",
                    ),
                ],
                transformations=[
                    ("merge", {}),
                    (
                        "organize",
                        {
                            "excludeByName": {"Time": True},
                            "renameByName": {
                                "Value #A": "accuracy",
                                "Value #B": "MAE",
                                "Value #C": "predictions/s",
                                "Value #D": "labels/s",
                            },
                        },
                    ),
                ],
                overrides=[
                    (
                        "accuracy",
                        {
                            "unit": "percentunit",
                            "custom.cellOptions": {"type": "color-background"},
                            "thresholds": QUALITY.build(),
                        },
                    ),
                    ("predictions/s", {"unit": "reqps"}),
                    ("labels/s", {"unit": "reqps"}),
                ],
            ),
            24,
            8,
        ),
        (
            tbl(
                "Versions in the model registry",
                "Every chosen version with its model registry entry (mlmon_model_info: from the predictions, the "
                "config, or looked up in MLflow; docs/registry.md) and when it was first served. Click a run to "
                "open it in the registry (a link when the exporter's registry.run_url_template can make one).",
                "short",
                [query(registry_versions(), instant=True, fmt="table")],
                transformations=[
                    (
                        "organize",
                        {
                            "excludeByName": {"Time": True},
                            "indexByName": {
                                "model": 0,
                                "version": 1,
                                "registry_name": 2,
                                "registry_version": 3,
                                "run_id": 4,
                                "model_uri": 5,
                                "run_url": 6,
                                "Value": 7,
                            },
                            "renameByName": {
                                "registry_name": "registered model",
                                "registry_version": "registry version",
                                "run_id": "run id",
                                "model_uri": "model URI",
                                "run_url": "run",
                                "Value": "first served",
                            },
                        },
                    ),
                ],
                overrides=[
                    (
                        "run",
                        {
                            "links": [
                                {
                                    "title": "Open the run in the model registry",
                                    "url": "${__value.raw}",
                                    "targetBlank": True,
                                }
                            ]
                        },
                    ),
                    (
                        "first served",
                        {
                            "unit": "dateTimeAsIso",
                            "mappings": [{"type": "value", "options": {"0": {"text": "unknown", "index": 0}}}],
                        },
                    ),
                ],
            ),
            24,
            6,
        ),
    ]
    panels += fairness_panels()
    for panel, w, h in panels:
        d = d.with_panel(lay.place(panel, w, h))
    return d


FAIR_BY = "model, version, feature, group"
FAIR_LEGEND = "{{model}} {{version}} {{feature}}={{group}}"


def group_counts(metric: str, extra: str = "") -> str:
    """A fairness count of each group in the chosen window, summed over the replicas (exact: counts add)."""
    return f"sum without (instance, kind, outcome) ({metric}{{{WINDOW}{',' + extra if extra else ''}}})"


def group_rate(numerator: tuple[str, str], denominator: tuple[str, str]) -> str:
    """A rate of each group from its summed counts: exactly the exporter's with one replica, and the pooled
    rate with several; absent where the denominator is 0."""
    return mx(FAIR_BY, f"{group_counts(*numerator)} / ({group_counts(*denominator)} > 0)")


OUTCOMES = "mlmon_fairness_group_outcomes"
SELECTION_RATE = group_rate(
    ("mlmon_fairness_group_predicted_positive", ""),
    ("mlmon_fairness_group_samples", 'kind="predictions"'),
)
TRUE_POSITIVE_RATE = group_rate((OUTCOMES, 'outcome="tp"'), (OUTCOMES, 'outcome=~"tp|fn"'))
FALSE_POSITIVE_RATE = group_rate((OUTCOMES, 'outcome="fp"'), (OUTCOMES, 'outcome=~"fp|tn"'))
GROUP_ACCURACY = group_rate((OUTCOMES, 'outcome=~"tp|tn"'), (OUTCOMES, ""))
ESTIMATED = "mlmon_fairness_group_estimated_outcomes"
ESTIMATED_TRUE_POSITIVE_RATE = group_rate((ESTIMATED, 'outcome="tp"'), (ESTIMATED, 'outcome=~"tp|fn"'))


def disparity(metric: str) -> str:
    """A disparity gauge of each fairness feature, pooled over replicas by the predictions of the compared
    groups (exact with one replica per model, an approximation with several: docs/dashboards.md)."""
    weight = f'sum without (group) (mlmon_fairness_group_samples{{{WINDOW},kind="predictions",group!="other"}})'
    return mx("model, version, feature", weighted(metric, WINDOW, weight=weight, key=f"{WINDOW_KEY}, feature"))


def fairness_panels() -> list:
    """The model dashboard's fairness row: binary models with `fairness:` in the config (docs/fairness.md)."""
    threshold = 'mlmon_alert_threshold{{{sel},threshold="{name}"}}'
    return [
        (
            ts(
                "Fairness: selection rate by group",
                "Share of each group's predictions that are the positive class, in the chosen window (binary "
                "models with fairness: in the config; groups are the values of a sensitive feature or attribute, "
                "`other` the values beyond segments.top). Needs no labels: a gap shows at once. Groups selected "
                "at very different rates may still be treated fairly if they truly differ (docs/fairness.md).",
                "percentunit",
                [query(SELECTION_RATE, FAIR_LEGEND)],
            ),
            8,
            8,
        ),
        (
            ts(
                "Fairness: true positive rate by group",
                "Of each group's labelled positives in the chosen window, the share the model found (equal "
                "opportunity: a group whose rate falls is the one the model now fails), by the time the labels "
                "arrive; absent for a group without labelled positives. `estimated`: the same rate as the group's "
                "calibrated scores expect it for every prediction, labelled or not (needs a reference with scores "
                "and labels): it speaks before the labels, and a realized rate far from it means the scores no "
                "longer hold for that group.",
                "percentunit",
                [
                    query(TRUE_POSITIVE_RATE, FAIR_LEGEND),
                    query(ESTIMATED_TRUE_POSITIVE_RATE, "estimated " + FAIR_LEGEND),
                ],
                thr=QUALITY,
            ),
            8,
            8,
        ),
        (
            ts(
                "Fairness: disparities",
                "Per fairness feature in the chosen window: the demographic parity ratio (lowest selection rate "
                "over the reference group's, or over the highest; 1 is parity, MlmonModelFairnessDisparity needs "
                "it proven under fairness_ratio_min), and the largest gaps in true positive rates (equal "
                "opportunity; the alert's fairness_gap_max), in true or false positive rates (equalized odds) and "
                "in accuracy. `other` is never compared. Read the groups' counts beside them: a gap between small "
                "groups is noise.",
                "percentunit",
                [
                    query(disparity("mlmon_fairness_demographic_parity_ratio"), "parity ratio {{model}} {{feature}}"),
                    query(
                        disparity("mlmon_fairness_equal_opportunity_difference"),
                        "opportunity gap {{model}} {{feature}}",
                    ),
                    query(disparity("mlmon_fairness_equalized_odds_difference"), "odds gap {{model}} {{feature}}"),
                    query(disparity("mlmon_fairness_accuracy_difference"), "accuracy gap {{model}} {{feature}}"),
                    query(
                        f"max by (model) ({threshold.format(sel=MODEL, name='fairness_ratio_min')})",
                        "lowest ratio {{model}}",
                    ),
                    query(
                        f"max by (model) ({threshold.format(sel=MODEL, name='fairness_gap_max')})",
                        "largest gap {{model}}",
                    ),
                ],
                lo=0,
            ),
            8,
            8,
        ),
        (
            tbl(
                "Fairness: groups side by side",
                "Every group of every fairness feature in the chosen window, summed over the replicas: its "
                "predictions and labelled outcomes, how often it is selected, and how often the model is right "
                "for it. The alert compares a group only with at least fairness_min_group_samples predictions "
                "(and as many labelled positives for the true positive rate).",
                "short",
                [
                    query(
                        mx(FAIR_BY, group_counts("mlmon_fairness_group_samples", 'kind="predictions"')),
                        instant=True,
                        fmt="table",
                    ),
                    query(mx(FAIR_BY, group_counts(OUTCOMES)), instant=True, fmt="table"),
                    query(SELECTION_RATE, instant=True, fmt="table"),
                    query(TRUE_POSITIVE_RATE, instant=True, fmt="table"),
                    query(FALSE_POSITIVE_RATE, instant=True, fmt="table"),
                    query(GROUP_ACCURACY, instant=True, fmt="table"),
                ],
                transformations=[
                    ("merge", {}),
                    (
                        "organize",
                        {
                            "excludeByName": {"Time": True},
                            "renameByName": {
                                "Value #A": "predictions",
                                "Value #B": "labelled",
                                "Value #C": "selection rate",
                                "Value #D": "true positive rate",
                                "Value #E": "false positive rate",
                                "Value #F": "accuracy",
                            },
                        },
                    ),
                ],
                overrides=[
                    (name, {"unit": "percentunit", "custom.cellOptions": {"type": "gauge", "mode": "basic"}})
                    for name in ("selection rate", "true positive rate", "false positive rate", "accuracy")
                ],
            ),
            24,
            7,
        ),
    ]


def drift():
    d = new_dashboard(
        "mlmon-drift",
        "mlmon / Drift and data quality",
        "Which inputs moved away from the reference, by how much, and whether the data is complete.",
        ["model", "version", "window", "feature", "segment"],
    )
    lay = Layout()
    ff = 'feature=~"$feature"'
    panels = [
        (
            heat(
                "PSI per feature over time",
                "Population stability index of each feature against the reference, in the chosen window: one row "
                "per feature, darker is more drift. Above 0.25 is the default drift threshold.",
                "short",
                [
                    query(
                        mx(
                            "model, feature",
                            weighted("mlmon_feature_drift", WINDOW, ff + "," + PSI_ONLY, kind="predictions"),
                        ),
                        "{{model}} {{feature}}",
                    )
                ],
            ),
            24,
            10,
        ),
        (
            bars(
                "Top drifting features (PSI)",
                "The ten features with the highest PSI in the chosen window. Yellow from 0.1 (moderate shift), red "
                "from 0.25 (the default threshold).",
                "short",
                [
                    query(
                        "topk(10, "
                        + mx(
                            "model, feature",
                            weighted("mlmon_feature_drift", WINDOW, ff + "," + PSI_ONLY, kind="predictions"),
                        )
                        + ")",
                        "{{model}} {{feature}}",
                        instant=True,
                    )
                ],
                thr=PSI,
                lo=0,
            ),
            8,
            10,
        ),
        (
            tbl(
                "Drift by method per feature",
                "Every drift statistic of every feature in the chosen window (psi, ks, ks_pvalue, js, wasserstein for "
                "numeric features; psi, js, chi2, chi2_pvalue, unseen for categorical ones): how far apart the "
                "reference and current distributions are. The panel below shows what they look like. p-values drift "
                "below their threshold, the others above.",
                "short",
                [
                    query(
                        mx("model, feature, method", weighted("mlmon_feature_drift", WINDOW, ff, kind="predictions")),
                        instant=True,
                        fmt="table",
                    )
                ],
                transformations=[
                    ("groupingToMatrix", {"rowField": "feature", "columnField": "method", "valueField": "Value"}),
                ],
            ),
            16,
            10,
        ),
        (
            tbl(
                "Reference vs current distribution",
                "The chosen features' distribution in coarse bins, the reference's next to the chosen window's "
                "(mlmon_reference_bin_ratio and mlmon_feature_bin_ratio): share of values per bin. Numeric features: "
                "q01..q10 are the reference's deciles, so the reference holds about 10% in each and a drift-free "
                "feature shows about 10% per decile in the window too; below_min and above_max hold the values "
                "outside the reference's [min, max] (0% in the reference). Categorical features: the tracked "
                "categories and `other`. Where the two columns part is where the feature drifted. Published with "
                "the drift, once the window holds drift.min_samples values, for models with drift: {bins: true}.",
                "percentunit",
                [
                    query(
                        f'max by (model, feature, bin) (mlmon_reference_bin_ratio{{{MODEL},feature=~"$feature"}})',
                        instant=True,
                        fmt="table",
                    ),
                    query(
                        mx("model, feature, bin", weighted("mlmon_feature_bin_ratio", WINDOW, ff, kind="predictions")),
                        instant=True,
                        fmt="table",
                    ),
                ],
                transformations=[
                    ("merge", {}),
                    (
                        "organize",
                        {
                            "excludeByName": {"Time": True},
                            "indexByName": {"model": 0, "feature": 1, "bin": 2, "Value #A": 3, "Value #B": 4},
                            "renameByName": {"Value #A": "reference", "Value #B": "current"},
                        },
                    ),
                ],
                overrides=[
                    ("reference", {"custom.cellOptions": {"type": "gauge", "mode": "basic"}}),
                    ("current", {"custom.cellOptions": {"type": "gauge", "mode": "basic"}}),
                ],
            ),
            24,
            12,
        ),
        (
            ts(
                "Prediction and label drift (PSI)",
                "PSI of the predictions and of the joined labels against the reference's prediction and label columns. "
                "Prediction drift without feature drift points at the model; label drift at the world.",
                "short",
                [
                    query(
                        mx("model, version", weighted("mlmon_prediction_drift", WINDOW, PSI_ONLY, kind="predictions")),
                        "predictions {{model}} {{version}}",
                    ),
                    query(
                        mx("model, version", weighted("mlmon_label_drift", WINDOW, PSI_ONLY)),
                        "labels {{model}} {{version}}",
                    ),
                ],
                thr=PSI,
                lo=0,
                show_thresholds=True,
            ),
            12,
            8,
        ),
        (
            ts(
                "Drifting features",
                "Features over their threshold per model version in the chosen window. With several replicas serving a "
                "model, the largest of their counts (the drift alerts read the weighted drift of each feature).",
                "short",
                [query(f"max by (model, version) (mlmon_drifted_features{{{WINDOW}}})", "{{model}} {{version}}")],
                thr=thresholds((None, GOOD), (1, WARN), (3, BAD)),
                lo=0,
            ),
            12,
            8,
        ),
        (
            ts(
                "Multivariate drift (PCA reconstruction error)",
                "The mean reconstruction error of the window's rows: how far the features left the way they moved "
                "together in the reference (a correlation that turned, many small shifts at once), which no single "
                "feature's drift shows. The lines are the reference's own range (its chunks' mean error +- 3 sd); "
                "MlmonModelMultivariateDrift fires when the shortest window holding a reference chunk's rows stays "
                "outside it for 15 minutes. Published once the window holds a chunk's rows; models with two features "
                "or more.",
                "short",
                [
                    query(
                        mx(
                            "model, version",
                            weighted(
                                "mlmon_multivariate_drift",
                                WINDOW,
                                weight=f"mlmon_multivariate_drift_samples{{{WINDOW}}}",
                            ),
                        ),
                        "{{model}} {{version}}",
                    ),
                    query(
                        f'max by (model) (mlmon_multivariate_drift_threshold{{{MODEL},bound="upper"}})',
                        "upper {{model}}",
                    ),
                    query(
                        f'max by (model) (mlmon_multivariate_drift_threshold{{{MODEL},bound="lower"}})',
                        "lower {{model}}",
                    ),
                ],
            ),
            24,
            8,
        ),
        (
            tbl(
                "Drivers now vs at training (attributions)",
                "Each feature's mean absolute attribution (SHAP or LIME value) in the chosen window and in the "
                "reference, with its rank (1: the strongest driver). A feature that climbs the ranking drives the "
                "model more than it did at training time: its inputs moved into a region where it matters more, or "
                "the model leans on it after a retrain. Models with attributions: true whose predictions carry them; "
                "the top features of each side (attributions.top).",
                "short",
                [
                    query(
                        attributed("mlmon_attribution_mean_abs", "model, feature"),
                        instant=True,
                        fmt="table",
                    ),
                    query(f"min by (model, feature) (mlmon_attribution_rank{{{WINDOW}}})", instant=True, fmt="table"),
                    query(
                        f"max by (model, feature) (mlmon_reference_attribution_mean_abs{{{MODEL}}})",
                        instant=True,
                        fmt="table",
                    ),
                    query(
                        f"min by (model, feature) (mlmon_reference_attribution_rank{{{MODEL}}})",
                        instant=True,
                        fmt="table",
                    ),
                ],
                transformations=[
                    ("merge", {}),
                    (
                        "organize",
                        {
                            "excludeByName": {"Time": True},
                            "indexByName": {
                                "model": 0,
                                "feature": 1,
                                "Value #B": 2,
                                "Value #A": 3,
                                "Value #D": 4,
                                "Value #C": 5,
                            },
                            "renameByName": {
                                "Value #A": "mean |attribution| now",
                                "Value #B": "rank now",
                                "Value #C": "mean |attribution| at training",
                                "Value #D": "rank at training",
                            },
                        },
                    ),
                    ("sortBy", {"sort": [{"field": "rank now"}]}),
                ],
            ),
            14,
            10,
        ),
        (
            ts(
                "Attribution drift",
                "How far the model's attention moved from the reference's: the total variation distance between the "
                "features' shares of the mean absolute attribution (0: the same drivers in the same proportions; 1: "
                "none in common), and Spearman's rank correlation of the drivers (1: they rank as at training).",
                "short",
                [
                    query(
                        attributed("mlmon_attribution_drift", "model, version"),
                        "distance {{model}} {{version}}",
                    ),
                    query(
                        attributed("mlmon_attribution_rank_correlation", "model, version"),
                        "rank correlation {{model}} {{version}}",
                    ),
                ],
            ),
            10,
            10,
        ),
        (
            ts(
                "Missing values",
                "Share of the window's predictions without the feature (absent or null).",
                "percentunit",
                [
                    query(
                        mx("model, feature", weighted("mlmon_feature_missing_ratio", WINDOW, ff, kind="predictions")),
                        "{{model}} {{feature}}",
                    )
                ],
                thr=thresholds((None, GOOD), (0.05, WARN), (0.2, BAD)),
            ),
            8,
            8,
        ),
        (
            ts(
                "Out-of-range values",
                "Numeric features: share of present values outside the reference's [min, max]. Needs a reference.",
                "percentunit",
                [
                    query(
                        mx(
                            "model, feature",
                            weighted("mlmon_feature_out_of_range_ratio", WINDOW, ff, kind="predictions"),
                        ),
                        "{{model}} {{feature}}",
                    )
                ],
                thr=thresholds((None, GOOD), (0.05, WARN), (0.2, BAD)),
            ),
            8,
            8,
        ),
        (
            ts(
                "Unseen categories",
                "Categorical features: share of present values never seen in the reference. Empty for models with "
                "numeric features only.",
                "percentunit",
                [
                    query(
                        mx("model, feature", weighted("mlmon_feature_unseen_ratio", WINDOW, ff, kind="predictions")),
                        "{{model}} {{feature}}",
                    )
                ],
                thr=thresholds((None, GOOD), (0.05, WARN), (0.2, BAD)),
            ),
            8,
            8,
        ),
        (
            ts(
                "Segments: drifting features",
                "Features over their threshold within each segment (models with `segments:` in the config). A "
                "segment drifting alone points at one population.",
                "short",
                [
                    query(
                        f"max by (model, segment_feature, segment) (mlmon_segment_drifted_features{{{WINDOW},"
                        f'segment=~"$segment"}})',
                        "{{model}} {{segment_feature}}={{segment}}",
                    )
                ],
                thr=thresholds((None, GOOD), (1, WARN), (3, BAD)),
                lo=0,
            ),
            12,
            8,
        ),
        (
            ts(
                "Segments: labelled samples and accuracy",
                "Accuracy within each segment, next to the window's labelled samples of the segment: a small "
                "segment's accuracy is noisy.",
                "percentunit",
                [
                    query(
                        "max by (model, segment_feature, segment) ("
                        + weighted(
                            "mlmon_segment_accuracy",
                            WINDOW + ',segment=~"$segment"',
                            weight=f'mlmon_segment_window_samples{{{WINDOW},segment=~"$segment",kind="labeled"}}',
                            key=f"{WINDOW_KEY}, segment_feature, segment",
                        )
                        + ")",
                        "{{model}} {{segment_feature}}={{segment}}",
                    )
                ],
                thr=QUALITY,
            ),
            12,
            8,
        ),
    ]
    for panel, w, h in panels:
        d = d.with_panel(lay.place(panel, w, h))
    return d


def operations():
    d = new_dashboard(
        "mlmon-operations",
        "mlmon / Operations",
        "Is the exporter healthy and is data flowing in: RED for the ingest path, USE for the processes.",
        ["model"],
    )
    lay = Layout()
    panels = [
        (
            ts(
                "Throughput",
                "Predictions and joined labels accepted per second, by model.",
                "reqps",
                [
                    query(
                        f"sum by (model) (rate(mlmon_predictions_total{{{MODEL}}}[{RATE}]))", "predictions {{model}}"
                    ),
                    query(f"sum by (model) (rate(mlmon_labels_total{{{MODEL}}}[{RATE}]))", "labels {{model}}"),
                ],
                lo=0,
            ),
            12,
            8,
        ),
        (
            ts(
                "Prediction latency",
                "p50, p90 and p99 of the latency the model servers report with their predictions.",
                "s",
                [
                    query(p(0.5, "mlmon_prediction_latency_seconds", "model, ", MODEL), "p50 {{model}}"),
                    query(p(0.9, "mlmon_prediction_latency_seconds", "model, ", MODEL), "p90 {{model}}"),
                    query(p(0.99, "mlmon_prediction_latency_seconds", "model, ", MODEL), "p99 {{model}}"),
                ],
                thr=thresholds((None, GOOD), (0.5, WARN), (1, BAD)),
                lo=0,
            ),
            12,
            8,
        ),
        (
            ts(
                "Ingest errors by reason",
                "Rejected predictions and labels per second by model and reason code (docs/api.md). `model` is "
                "empty when the input names no configured model.",
                "short",
                [
                    query(
                        f"sum by (model, reason) (rate(mlmon_ingest_errors_total{{{TARGET}}}[{RATE}]))",
                        "{{model}} {{reason}}",
                    )
                ],
                thr=thresholds((None, GOOD), (0.01, BAD)),
                lo=0,
            ),
            12,
            8,
        ),
        (
            ts(
                "HTTP requests by handler and code",
                "Requests per second the exporter served, by route and status code (/metrics is not counted).",
                "reqps",
                [
                    query(
                        f"sum by (handler, code) (rate(mlmon_http_requests_total{{{TARGET}}}[{RATE}]))",
                        "{{handler}} {{code}}",
                    )
                ],
                lo=0,
            ),
            12,
            8,
        ),
        (
            ts(
                "HTTP request duration p99",
                "99th percentile of the time the exporter took to serve a request, by route.",
                "s",
                [query(p(0.99, "mlmon_http_request_duration_seconds", "handler, ", TARGET), "{{handler}}")],
                thr=thresholds((None, GOOD), (0.25, WARN), (1, BAD)),
                lo=0,
            ),
            8,
            8,
        ),
        (
            ts(
                "Pending and early labels",
                "Predictions waiting for their label, and labels waiting for their prediction.",
                "short",
                [
                    query(f"sum by (model) ({shared('mlmon_pending_labels', MODEL)})", "pending {{model}}"),
                    query(f"sum by (model) ({shared('mlmon_early_labels', MODEL)})", "early {{model}}"),
                ],
                lo=0,
            ),
            8,
            8,
        ),
        (
            ts(
                "Label delay",
                "p50 and p90 of the time from a prediction to its label, by model.",
                "s",
                [
                    query(p(0.5, "mlmon_label_delay_seconds", "model, ", MODEL), "p50 {{model}}"),
                    query(p(0.9, "mlmon_label_delay_seconds", "model, ", MODEL), "p90 {{model}}"),
                ],
                lo=0,
            ),
            8,
            8,
        ),
        (
            ts(
                "Exporter CPU",
                "CPU used by the exporter process, in cores (1 = one core busy).",
                "percentunit",
                [query(f"rate(process_cpu_seconds_total{{{TARGET}}}[{RATE}])", "{{instance}}")],
                thr=thresholds((None, GOOD), (0.8, WARN)),
                hi=None,
            ),
            6,
            8,
        ),
        (
            ts(
                "Exporter memory",
                "Resident memory of the exporter process. Windows live in memory but do not grow with traffic.",
                "bytes",
                [query(f"process_resident_memory_bytes{{{TARGET}}}", "{{instance}}")],
                lo=0,
            ),
            6,
            8,
        ),
        (
            ts(
                "Scrape and collect duration",
                "How long Prometheus's scrape of the exporter took, and the part spent building the mlmon_ "
                "families. MlmonExporterScrapeSlow fires at 8 s.",
                "s",
                [
                    query(f"scrape_duration_seconds{{{TARGET}}}", "scrape {{instance}}"),
                    query(f"mlmon_collect_duration_seconds{{{TARGET}}}", "collect {{instance}}"),
                ],
                thr=thresholds((None, GOOD), (2, WARN), (8, BAD)),
                lo=0,
            ),
            12,
            8,
        ),
        (
            ts(
                "Model server CPU",
                "CPU used by each model server process, in cores, as its mlmon client reports it. Each server "
                "reports once per model it serves, so this takes one model's copy.",
                "percentunit",
                [
                    query(
                        f"max by (server) (rate(mlmon_model_server_cpu_seconds_total{{{MODEL}}}[{RATE}]))", "{{server}}"
                    )
                ],
                thr=thresholds((None, GOOD), (0.8, WARN)),
                hi=None,
            ),
            12,
            8,
        ),
        (
            ts(
                "Model server memory",
                "Resident memory of each model server process, as its mlmon client reports it (one copy per server).",
                "bytes",
                [query(f"max by (server) (mlmon_model_server_resident_memory_bytes{{{MODEL}}})", "{{server}}")],
                lo=0,
            ),
            12,
            8,
        ),
    ]
    for panel, w, h in panels:
        d = d.with_panel(lay.place(panel, w, h))
    return d


BUILDERS = {"fleet": fleet, "model": model, "drift": drift, "operations": operations}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    encoder = JSONEncoder(sort_keys=True, indent=2)
    return {f"{name}.json": encoder.encode(build().build()) + "\n" for name, build in BUILDERS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="directory to write to (default %(default)s)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (args.out / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
