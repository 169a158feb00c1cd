"""Alert replay harness: when each bundled alert fires, and how often it fires without cause (`make bench-alerts`).

Each scenario drives the exporter's own state (``ModelState``: the join store, the window rings, the drift
binning) with an injected clock, step by step, and collects what a scrape would publish (``MlmonCollector``),
keeping the metrics the rules read. The series go to ``promtool test rules`` with the bundled rule groups,
evaluated at every step as Prometheus would (15 s, its evaluation interval, around a change; 1 m over
simulated weeks); a harness group records when each alert starts firing, and the harness reads that back.

For each scenario and seed it reports, per alert, the delay from the change to the first firing, and the
firing episodes without cause (before the change, or over a stationary week). The tables go into
docs/alerts.md between the ``bench-alerts`` markers (quality, estimate and drift), the
``bench-alerts-fairness`` markers (MlmonModelFairnessDisparity, per criterion) and the
``bench-alerts-multivariate`` markers (MlmonModelMultivariateDrift, with correlated features); a run writes
each table whose scenarios it all replayed. ``--rules-dir`` runs another copy of the rules, so a rule made
slower or noisier shows in the table (tests/bundle/test_bench_alerts.py checks that it does).

    python bench/bench_alerts.py                 # every scenario, 5 seeds where the outcome is random
    python bench/bench_alerts.py --quick         # 2 seeds, for a look (does not write docs/alerts.md)
    python bench/bench_alerts.py --only fairness: --jobs 1   # the fairness table alone (written)
    python bench/bench_alerts.py --only multivariate:        # the multivariate table alone (written)
    python bench/bench_alerts.py --only "collapse 0.2/s" --seeds 1 --no-write
    python bench/bench_alerts.py --only "healthy week 30/h" --seeds 8 --set min_labeled_samples=30
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import fill_markers  # noqa: E402
from exporter.config import THRESHOLDS, parse_config  # noqa: E402
from exporter.engine.state import ModelState, ServerReports  # noqa: E402
from exporter.ingest.validation import IngestErrors, Label, Prediction  # noqa: E402
from exporter.serve.collector import MlmonCollector  # noqa: E402
from exporter.stats import multivariate, reference  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES_DIR = os.path.join(ROOT, "prometheus", "rules")
DOC = os.path.join(ROOT, "docs", "alerts.md")
# docs/alerts.md holds one table per block, each between its own markers (<!-- name:begin --> ...
# <!-- name:end -->), with the families it shows and the thresholds its header names. A run writes the
# blocks whose scenarios it all replayed, so that `--only fairness:` measures the fairness table alone. A name
# with a dot is a model setting of the block's scenarios (see _setting), not one of the exporter's thresholds.
BLOCKS = {
    "bench-alerts": (
        ("quality", "estimate", "drift"),
        (
            "accuracy_min",
            "accuracy_drop",
            "error_rise",
            "min_labeled_samples",
            "evidence_confidence",
            "calibration_gap_max",
        ),
    ),
    "bench-alerts-fairness": (
        ("fairness",),
        ("fairness_ratio_min", "fairness_gap_max", "fairness_min_group_samples", "evidence_confidence"),
    ),
    "bench-alerts-multivariate": (
        ("multivariate",),
        ("drift.min_samples", "drift.multivariate.variance", "drift.multivariate.chunk_size", "drift.thresholds.psi"),
    ),
}
HOUR, DAY, WEEK = 3600.0, 86400.0, 7 * 86400.0
FEATURES = 20
MV_FEATURES = 10  # the multivariate family's model (correlated_rows)

# The groups of each family of scenarios: the recording groups, in the order their results feed each other
# (promtool evaluates them so at each step; Prometheus evaluates groups independently, so each group boundary
# can add up to one evaluation interval), then the alerts.
GROUPS = {
    "quality": ["mlmon-pooled-shared", "mlmon-evidence", "mlmon-quality"],
    "estimate": ["mlmon-pooled-shared", "mlmon-pooled-estimate", "mlmon-quality"],
    "drift": ["mlmon-pooled-shared", "mlmon-pooled-quality", "mlmon-pooled-drift", "mlmon-drift"],
    # mlmon-fairness-evidence holds the evidence the alert decides on, then the alert.
    "fairness": ["mlmon-pooled-shared", "mlmon-fairness", "mlmon-fairness-evidence"],
    # MlmonModelMultivariateDrift reads mlmon-pooled-drift alone; MlmonModelFeatureDrift, shown beside it, also
    # the window samples of mlmon-pooled-quality, and the group's missing-values alert mlmon-pooled-shared.
    "multivariate": ["mlmon-pooled-shared", "mlmon-pooled-quality", "mlmon-pooled-drift", "mlmon-drift"],
}
ALERTS = {
    "quality": ("MlmonModelAccuracyLow", "MlmonModelAccuracyDrop", "MlmonModelErrorRise"),
    "estimate": ("MlmonModelEstimatedAccuracyLow", "MlmonModelCalibrationGap"),
    "drift": ("MlmonModelFeatureDrift", "MlmonModelPredictionDrift", "MlmonModelFeatureValuesMissing"),
    "fairness": ("MlmonModelFairnessDisparity",),
    "multivariate": ("MlmonModelMultivariateDrift", "MlmonModelFeatureDrift"),
}
# The fairness alert's two criteria, told apart by its `criterion` label (the harness keeps that label).
PARITY = 'MlmonModelFairnessDisparity{criterion="demographic_parity"}'
OPPORTUNITY = 'MlmonModelFairnessDisparity{criterion="equal_opportunity"}'


@dataclasses.dataclass(frozen=True)
class Group:
    """A group of the fairness feature: its share of the traffic, the share of its predictions the model
    selects (predicts positive), the share truly positive (its base rate) and, of those, the share the model
    selects (its true positive rate). Its false positive rate follows from the three."""

    name: str
    share: float
    selection: float
    base: float
    tpr: float = 0.8

    @property
    def fpr(self) -> float:
        fpr = (self.selection - self.tpr * self.base) / (1.0 - self.base)
        if not 0.0 <= fpr <= 1.0:
            raise ValueError(f"no false positive rate gives {self}")
        return fpr


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A model's life: ``rate`` events a second (labels for quality, predictions for drift) for ``hours``;
    at ``change`` hours (None: never) it breaks as ``kind`` says. Series are recorded from ``record_from``
    hours, one sample every ``step`` seconds; before that the exporter warms up in steps of ``warm_step``."""

    name: str
    family: str  # quality | drift | estimate | fairness | multivariate
    # healthy | collapse | decay | drop_above_floor | mae_double | regression_healthy | stationary | shift |
    # covariate_shift | calibrated (estimate: the inputs move, the relation of inputs to outcomes stays) |
    # concept_drift (estimate: the inputs stay, a share of the outcomes turns) | equal (fairness: the groups
    # as ``groups`` says throughout) | selection_drop (fairness: the last group's selection rate falls to 0.6
    # times the first's, its true positive rate kept) | tpr_drop (fairness: the last group's true positive
    # rate falls by 0.25, its selection rate kept) | stationary (multivariate too) | correlation_flip
    # (multivariate: f1 turns sign, so its correlation with f0 goes from 0.8 to -0.8, every marginal kept) |
    # shift_all (multivariate: every feature moves by ``shift`` reference standard deviations)
    kind: str
    rate: float
    hours: float
    change: float | None = None
    record_from: float = 0.0
    step: float = 15.0
    warm_step: float = 300.0
    label_delay: float = 0.0  # seconds from a prediction to its label
    replicas: int = 1
    seeds: int = 5  # runs with different random draws (1 where the outcome hardly varies)
    target: str = ""
    watch: tuple[str, ...] = ()  # the alerts shown for this scenario
    chunk: float = HOUR  # promtool reads the alert timeline back in pieces of this length
    thresholds: tuple[tuple[str, float], ...] = ()  # the exporter's `thresholds:` (default: its defaults)
    # Checked targets: the first watched alert fires within this many minutes of the change in every run;
    # the first watched alert never fires without cause; the others at most this many times a run.
    within: float | None = None
    quiet: bool = False
    max_other: int | None = None
    # fairness: the groups of the feature `group` (the first is the reference group in reference mode), and
    # the model's fairness.disparity
    groups: tuple[Group, ...] = ()
    disparity: str = "reference"
    # multivariate: the reference's rows (its chunks, hence its thresholds, are a tenth of them), and the
    # shift of shift_all
    reference_rows: int = 5_000
    shift: float = 0.3

    @property
    def task(self) -> str:
        return "regression" if self.kind in ("mae_double", "regression_healthy") else "binary"


def _rate_name(rate: float) -> str:
    """10/s, 0.2/s, 10/min, 30/h: the units the scenarios are stated in."""
    if rate >= 0.2:
        return f"{rate:g}/s"
    if abs(rate * 60 - round(rate * 60)) < 1e-9:
        return f"{rate * 60:g}/min"
    return f"{rate * 3600:g}/h"


def scenarios() -> list[Scenario]:
    low, mid, high = 30 / 3600, 0.2, 10.0
    acc = ("MlmonModelAccuracyLow", "MlmonModelAccuracyDrop")
    out = []
    for rate, target, hours in ((high, 10, 2), (mid, 20, 3), (low, 240, 10)):
        out.append(
            Scenario(
                f"collapse {_rate_name(rate)}",
                "quality",
                "collapse",
                rate,
                24 + hours,
                change=24,
                record_from=23,
                seeds=1 if rate == high else 10,
                target=f"critical within {target} min",
                within=target,
                watch=acc,
            )
        )
    for rate in (high, mid, low):
        out.append(
            Scenario(
                f"healthy week {_rate_name(rate)}",
                "quality",
                "healthy",
                rate,
                WEEK / HOUR,
                step=60,
                seeds={high: 1, mid: 2, low: 3}[rate],
                target="no page, at most 1 warning episode",
                watch=acc,
                quiet=True,
                max_other=1,
                chunk=DAY,
            )
        )
    out.append(
        Scenario(
            "gradual decay 0.2/s",
            "quality",
            "decay",
            mid,
            24 + 8,
            change=24,
            record_from=23,
            seeds=3,
            target="measured (crosses the floor 4.1 h in)",
            watch=acc,
        )
    )
    for rate in (mid, low):
        out.append(
            Scenario(
                f"drop to 0.72, above the floor, {_rate_name(rate)}",
                "quality",
                "drop_above_floor",
                rate,
                24 + 24,
                change=24,
                record_from=23,
                seeds=3,
                target="measured: the warning is due, a page is the cost of the page's second way",
                watch=acc,
            )
        )
    out.append(
        Scenario(
            "labels 2 h late, collapse 0.2/s",
            "quality",
            "collapse",
            mid,
            24 + 4,
            change=24,
            record_from=23,
            label_delay=2 * HOUR,
            seeds=3,
            target="measured (the labels of the break arrive 2 h after it)",
            watch=acc,
        )
    )
    out.append(
        Scenario(
            "two replicas, collapse 0.2/s",
            "quality",
            "collapse",
            mid,
            24 + 3,
            change=24,
            record_from=23,
            replicas=2,
            seeds=3,
            target="as one exporter (the sums are pooled)",
            watch=acc,
        )
    )
    for rate, hours in ((high, 2), (mid, 3), (low, 10)):
        out.append(
            Scenario(
                f"MAE doubles {_rate_name(rate)}",
                "quality",
                "mae_double",
                rate,
                24 + hours,
                change=24,
                record_from=23,
                seeds=1 if rate == high else 3,
                target="warning within comparable times",
                watch=("MlmonModelErrorRise",),
            )
        )
    out.append(
        Scenario(
            "regression healthy week 0.2/s",
            "quality",
            "regression_healthy",
            mid,
            WEEK / HOUR,
            step=60,
            seeds=1,
            target="at most 1 warning episode",
            watch=("MlmonModelErrorRise",),
            max_other=1,
            chunk=DAY,
        )
    )
    drift = ("MlmonModelFeatureDrift", "MlmonModelPredictionDrift")
    for rate in (10 / 60, 100.0):
        out.append(
            Scenario(
                f"stationary week {_rate_name(rate)}",
                "drift",
                "stationary",
                rate,
                WEEK / HOUR,
                step=60,
                seeds=1,
                target="at most 1 warning episode",
                watch=drift,
                max_other=1,
                chunk=DAY,
            )
        )
        out.append(
            Scenario(
                f"1 sd shift in 3 of 20 features {_rate_name(rate)}",
                "drift",
                "shift",
                rate,
                4 + 8,
                change=4,
                record_from=3,
                warm_step=60,
                seeds=1 if rate == 100.0 else 3,
                target="measured",
                watch=("MlmonModelFeatureDrift",),
            )
        )
    # Before the labels: a covariate shift moves the inputs towards the model's boundary, so that its true
    # accuracy falls from 0.92 to 0.65 while the labels are 6 hours late; the estimate must warn within 30
    # minutes. And a week of the same inputs must raise no estimated-accuracy warning.
    estimate = ("MlmonModelEstimatedAccuracyLow",)
    for rate in (mid, high):
        out.append(
            Scenario(
                f"covariate shift to 0.65, labels 6 h late, {_rate_name(rate)}",
                "estimate",
                "covariate_shift",
                rate,
                24 + 2,
                change=24,
                record_from=23,
                label_delay=6 * HOUR,
                seeds=1 if rate == high else 3,
                target="warning within 30 min",
                within=30,
                watch=estimate,
            )
        )
    # With the labels: a concept drift keeps the inputs (and so the estimate) as they were while the outcomes
    # change, accuracy 0.92 to 0.84: above the floor and within accuracy_drop, so only the calibration gap
    # (0.08 against a tolerated 0.05) can tell.
    gap = ("MlmonModelCalibrationGap", "MlmonModelEstimatedAccuracyLow")
    for rate in (mid, high):
        out.append(
            Scenario(
                f"concept drift to 0.84, same inputs, {_rate_name(rate)}",
                "estimate",
                "concept_drift",
                rate,
                24 + 3,
                change=24,
                record_from=23,
                seeds=1 if rate == high else 3,
                target="warning within 60 min; no estimated-accuracy warning",
                within=60,
                watch=gap,
                max_other=0,
            )
        )
    out.append(
        Scenario(
            "estimate, stationary week 0.2/s",
            "estimate",
            "calibrated",
            mid,
            WEEK / HOUR,
            step=60,
            label_delay=6 * HOUR,
            seeds=2,
            target="no estimated-accuracy or calibration-gap warning",
            watch=(*estimate, "MlmonModelCalibrationGap"),
            quiet=True,
            max_other=0,
            chunk=DAY,
        )
    )
    out += fairness_scenarios()
    out += multivariate_scenarios()
    return out


def _shares(groups: tuple[Group, ...]) -> str:
    return "/".join(f"{g.share * 100:g}" for g in groups)


def fairness_scenarios() -> list[Scenario]:
    """A binary model with the categorical feature `group` under fairness:, predictions with their labels.
    Equal treatment for a week (every group selected as often, and found as often when truly positive),
    across traffic, the minority's share, the selection rate and the disparity mode; then breaks of each
    criterion, where the minority group is the one treated worse."""
    both = (PARITY, OPPORTUNITY)
    out = []
    weeks = (
        ("reference", 1.0, (0.5, 0.5), 0.1),
        ("reference", 10.0, (0.9, 0.1), 0.3),
        ("spread", 0.2, (0.45, 0.45, 0.1), 0.1),
        ("spread", 10.0, (0.5, 0.4, 0.1), 0.3),
    )
    for disparity, rate, shares, selection in weeks:
        groups = tuple(Group("abc"[i], share, selection, selection / 2) for i, share in enumerate(shares))
        out.append(
            Scenario(
                f"fairness: equal week {_rate_name(rate)}, groups {_shares(groups)}, selection {selection:g}, "
                f"{disparity}",
                "fairness",
                "equal",
                rate,
                WEEK / HOUR,
                step=60,
                seeds=1,
                target="no warning",
                watch=both,
                quiet=True,
                max_other=0,
                chunk=DAY,
                groups=groups,
                disparity=disparity,
            )
        )
    # Disparate impact: the minority's selection rate falls to 0.6 times the reference group's (its true
    # positive rate kept: fewer of its truly negative members are selected). The target says which window
    # decides (the shortest decisive one of those that compare both groups) and what it holds.
    steps = (
        (10.0, (0.5, 0.5), 0.3, 3, 3, "the 5m window decides: 1500 predictions a group"),
        (10.0, (0.9, 0.1), 0.1, 4, 2, "the 1h window decides: 300 of the minority in 5m, 18 selected, prove nothing"),
        (0.2, (0.5, 0.5), 0.3, 12, 3, "the 1h window decides: 360 predictions a group"),
    )
    for rate, shares, selection, hours, seeds, window in steps:
        groups = tuple(Group("ab"[i], share, selection, selection / 2) for i, share in enumerate(shares))
        out.append(
            Scenario(
                f"fairness: disparate impact 0.6, {_rate_name(rate)}, groups {_shares(groups)}, "
                f"selection {selection:g}",
                "fairness",
                "selection_drop",
                rate,
                24 + hours,
                change=24,
                record_from=23,
                seeds=seeds,
                target=f"measured ({window})",
                watch=both,
                groups=groups,
            )
        )
    # Equal opportunity: the minority's true positive rate falls from 0.8 to 0.55 (its selection rate kept:
    # more of its truly negative members are selected instead).
    steps = (
        (10.0, (0.5, 0.5), 3, 2, "the 5m window decides: 450 positives a group"),
        (1.0, (0.5, 0.5), 4, 3, "the 1h window decides: 540 positives a group"),
        (10.0, (0.9, 0.1), 4, 3, "the 1h window decides: the minority's 90 positives in 5m prove nothing"),
    )
    for rate, shares, hours, seeds, window in steps:
        groups = tuple(Group("ab"[i], share, 0.3, 0.3) for i, share in enumerate(shares))
        out.append(
            Scenario(
                f"fairness: minority TPR 0.8 to 0.55, {_rate_name(rate)}, groups {_shares(groups)}",
                "fairness",
                "tpr_drop",
                rate,
                24 + hours,
                change=24,
                record_from=23,
                seeds=seeds,
                target=f"measured ({window})",
                watch=(OPPORTUNITY, PARITY),
                groups=groups,
            )
        )
    return out


def _deciding(rate: float, rows: int) -> str:
    """Which window decides the multivariate alert at ``rate`` with a reference of ``rows``: the shortest that
    holds a chunk's rows (and drift.min_samples, 100), as the exporter publishes it."""
    chunk = rows // multivariate.DEFAULT_CHUNKS
    for name, seconds in (("5m", 300), ("1h", HOUR), ("1d", DAY)):
        held = rate * seconds
        if held >= max(100, chunk):
            return f"the {name} window decides: {held:,.0f} rows, chunks of {chunk:,}"
    return "no window holds a chunk"


def multivariate_scenarios() -> list[Scenario]:
    """A binary model with ten numeric features that move together (correlated_rows) against a reference of
    5,000 rows (1,000 in one week): stationary weeks, where the alert must stay quiet, then two changes no
    single feature shows: a correlation that turns (every marginal kept) and a small shift of every feature.
    MlmonModelFeatureDrift is shown beside it: it should not fire in either."""
    both = ("MlmonModelMultivariateDrift", "MlmonModelFeatureDrift")
    out = []
    for rate, rows, seeds in ((0.2, 5_000, 3), (1.0, 5_000, 1), (10.0, 5_000, 1), (1.0, 1_000, 2)):
        out.append(
            Scenario(
                f"multivariate: stationary week {_rate_name(rate)}, reference {rows:,} rows",
                "multivariate",
                "stationary",
                rate,
                WEEK / HOUR,
                step=60,
                seeds=seeds,
                target=f"no warning ({_deciding(rate, rows)})",
                watch=both,
                quiet=True,
                chunk=DAY,
                reference_rows=rows,
            )
        )
    for rate, hours, seeds in ((0.2, 3, 3), (10.0, 2, 1)):
        out.append(
            Scenario(
                f"multivariate: correlation of f0 and f1 0.8 to -0.8, {_rate_name(rate)}",
                "multivariate",
                "correlation_flip",
                rate,
                24 + hours,
                change=24,
                record_from=23,
                seeds=seeds,
                target=f"measured ({_deciding(rate, 5_000)}); every marginal kept",
                watch=both,
            )
        )
    for rate, hours, seeds in ((0.2, 3, 3), (10.0, 2, 2)):
        out.append(
            Scenario(
                f"multivariate: all {MV_FEATURES} features +0.3 sd, {_rate_name(rate)}",
                "multivariate",
                "shift_all",
                rate,
                24 + hours,
                change=24,
                record_from=23,
                seeds=seeds,
                target=f"measured ({_deciding(rate, 5_000)}); each feature's PSI about 0.1, under its 0.25",
                watch=both,
            )
        )
    return out


# -- the model's life --------------------------------------------------------------------------------------


def accuracy_at(s: Scenario, t: float) -> float:
    """Accuracy of the predictions made at ``t`` (seconds)."""
    if s.kind == "healthy":
        return 0.78
    change = s.change * HOUR
    if t < change:
        return 0.92
    if s.kind == "decay":
        return max(0.60, 0.92 - 0.32 * (t - change) / (6 * HOUR))
    if s.kind == "drop_above_floor":
        return 0.72
    return 0.55


def error_sd_at(s: Scenario, t: float) -> float:
    return 2.0 if s.kind == "mae_double" and t >= s.change * HOUR else 1.0


def groups_at(s: Scenario, t: float) -> tuple[Group, ...]:
    """The fairness feature's groups at ``t`` (seconds): after the change, the last group (the minority)
    treated worse as ``s.kind`` says."""
    if s.change is None or t < s.change * HOUR or s.kind == "equal":
        return s.groups
    *rest, last = s.groups
    if s.kind == "selection_drop":
        last = dataclasses.replace(last, selection=0.6 * s.groups[0].selection)
    elif s.kind == "tpr_drop":
        last = dataclasses.replace(last, tpr=last.tpr - 0.25)
    return (*rest, last)


def config_text(s: Scenario) -> str:
    lines = ["storage: {backend: memory}"]
    if s.thresholds:
        lines.append("thresholds: {" + ", ".join(f"{k}: {v}" for k, v in s.thresholds) + "}")
    lines += ["models:", "  - name: m", f"    task: {s.task}"]
    if s.task == "binary":
        lines.append('    classes: ["no", "yes"]')
    if s.family in ("drift", "multivariate"):
        lines.append("    features:")
        count = FEATURES if s.family == "drift" else MV_FEATURES
        lines += [f"      - {{name: f{i}, type: numeric}}" for i in range(count)]
    if s.family == "estimate":
        lines += ['    positive_class: "yes"', "    features:", "      - {name: x, type: numeric}"]
    if s.family == "fairness":
        lines += ['    positive_class: "yes"', "    features:", "      - {name: group, type: categorical}"]
        reference = f", reference_group: {{group: {s.groups[0].name}}}" if s.disparity == "reference" else ""
        lines.append(f"    fairness: {{features: [group]{reference}, disparity: {s.disparity}}}")
    return "\n".join(lines) + "\n"


# The multivariate family's world: ten Normal(0, 1) features that move together. f0 and f1 are correlated 0.8;
# f2 to f9 are eight independent Normals mixed by a fixed matrix (columns of unit length: correlations from
# -0.64 to 0.67, of both signs). A PCA keeping 65% of the variance keeps three components (of eigenvalues
# about 3.4, 2.1 and the pair's 1.8, against 1.1 for the next), whatever the reference's draw.
MIXING = np.random.default_rng(6).standard_normal((8, 8))
MIXING /= np.sqrt((MIXING**2).sum(axis=0))


def correlated_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    z = rng.standard_normal((n, MV_FEATURES))
    x = np.empty_like(z)
    x[:, 0] = z[:, 0]
    x[:, 1] = 0.8 * z[:, 0] + 0.6 * z[:, 1]
    x[:, 2:] = z[:, 2:] @ MIXING
    return x


def changed_rows(s: Scenario, rows: np.ndarray) -> np.ndarray:
    """The rows after the scenario's change (a copy)."""
    out = rows.copy()
    if s.kind == "shift":
        out[:, :3] += 1.0  # one reference standard deviation in three of the twenty features
    elif s.kind == "correlation_flip":
        out[:, 1] = -out[:, 1]
    elif s.kind == "shift_all":
        out += s.shift
    return out


# The estimate's world: the outcome is "yes" with probability sigmoid(K x); the model predicts the likelier
# class and scores that probability. Inputs spread as N(0, 2.23) give it an accuracy of 0.92; a covariate
# shift to N(0, 0.275) brings them near its boundary, where it is right 0.65 of the time. A concept drift
# turns a share FLIP of the outcomes, whatever the input: accuracy 0.92 (1 - FLIP) + 0.08 FLIP = 0.84.
K, SPREAD, SHIFTED_SPREAD = 3.0, 2.2317, 0.2753
FLIP = 0.08 / 0.84


def _estimate_rows(rng: np.random.Generator, n: int, spread: float):
    x = rng.normal(0.0, spread, n)
    p = 1.0 / (1.0 + np.exp(-K * x))
    return x, p, (rng.random(n) < p).astype(np.int64)


class Replay:
    """One run of a scenario: the exporter's state of each replica, fed step by step."""

    def __init__(self, s: Scenario, seed: int):
        self.s = s
        self.rng = np.random.default_rng(seed)
        self.config = parse_config(config_text(s))
        self.model = self.config.models[0]
        self.states = [ModelState(self.model, self.config) for _ in range(s.replicas)]
        self.collectors = [
            MlmonCollector([st], IngestErrors(["m"]), ServerReports(10, 600), clock=lambda: self.now)
            for st in self.states
        ]
        self.now = 0.0
        self.next_id = 0
        self.waiting: list[tuple[float, int, list]] = []  # (due, replica, labels) of delayed labels
        if s.family == "estimate":
            x, p, y = _estimate_rows(self.rng, 20_000, SPREAD)
            columns = {"x": list(x), "label": [("no", "yes")[v] for v in y], "score": list(p)}
            profile = reference.build_profile(columns, self.model)
            for st in self.states:
                st.set_reference(profile)
        if s.family in ("drift", "multivariate"):
            if s.family == "drift":
                ref = self.rng.standard_normal((20_000, FEATURES))
            else:  # the reference goes through build_profile, which fits and freezes its reconstruction
                ref = correlated_rows(self.rng, s.reference_rows)
            names = [f"f{i}" for i in range(ref.shape[1])]
            profile = reference.build_profile({f: list(ref[:, i]) for i, f in enumerate(names)}, self.model)
            for st in self.states:
                st.set_reference(profile)
            # Events are drawn from a pool made once (their time set as they are sent): building a prediction
            # per event would cost more than the exporter's own work. The same rows, changed, after the change.
            if s.family == "drift":
                pool = self.rng.standard_normal((50_000, FEATURES))
            else:
                pool = correlated_rows(self.rng, 50_000)
            classes = self.rng.integers(0, 2, len(pool)).tolist()

            def predictions(rows: np.ndarray) -> list[Prediction]:
                return [
                    Prediction("m", "v1", None, 0.0, c, None, None, None, dict(zip(names, row)))
                    for c, row in zip(classes, rows.tolist())
                ]

            self.pool = predictions(pool)
            self.changed = predictions(changed_rows(s, pool)) if s.change is not None else self.pool

        if s.family == "fairness":
            # Every event is one of a few kinds (group, label, predicted class): one prediction object per
            # kind, its time set as it is sent, as the drift pool does.
            self.kinds = [
                Prediction("m", "v1", None, 0.0, predicted, None, None, label, {"group": g.name})
                for g in s.groups
                for label in (0, 1)
                for predicted in (0, 1)
            ]

    def advance(self, t: float, dt: float) -> None:
        """Everything that arrives in (t - dt, t], ingested at t."""
        self.now = t
        s, rng = self.s, self.rng
        n = int(rng.poisson(s.rate * dt))
        split = rng.integers(0, s.replicas, n) if s.replicas > 1 else np.zeros(n, dtype=np.int64)
        for r, st in enumerate(self.states):
            idx = np.flatnonzero(split == r)
            if idx.size:
                self._events(st, r, idx.size, t)
        while self.waiting and self.waiting[0][0] <= t:
            _, r, labels = self.waiting.pop(0)
            self.states[r].add_labels(labels, t)

    def _events(self, st: ModelState, replica: int, n: int, t: float) -> None:
        s, rng = self.s, self.rng
        if s.family in ("drift", "multivariate"):
            pool = self.changed if s.change is not None and t >= s.change * HOUR else self.pool
            start = int(rng.integers(0, len(pool) - n)) if n < len(pool) else 0
            events = pool[start : start + n]
            for e in events:
                e.timestamp = t
            st.add_predictions(events, t)
            return
        if s.family == "fairness":
            groups = groups_at(s, t)
            g = rng.choice(len(groups), n, p=[x.share for x in groups])
            label = rng.random(n) < np.array([x.base for x in groups])[g]
            chance = np.where(label, np.array([x.tpr for x in groups])[g], np.array([x.fpr for x in groups])[g])
            predicted = rng.random(n) < chance
            for e in self.kinds:
                e.timestamp = t
            st.add_predictions([self.kinds[k] for k in (4 * g + 2 * label + predicted).tolist()], t)
            return
        if s.family == "estimate":
            shifted = s.kind == "covariate_shift" and t >= s.change * HOUR
            x, p, y = _estimate_rows(rng, n, SHIFTED_SPREAD if shifted else SPREAD)
            if s.kind == "concept_drift" and t >= s.change * HOUR:
                y = np.where(rng.random(n) < FLIP, 1 - y, y)
            ids = [str(self.next_id + i) for i in range(n)]
            self.next_id += n
            predicted = (p >= 0.5).astype(np.int64)
            st.add_predictions(
                [
                    Prediction("m", "v1", i, t, c, (float(q),), None, None, {"x": float(v)})
                    for i, c, q, v in zip(ids, predicted.tolist(), p, x)
                ],
                t,
            )
            self.waiting.append((t + s.label_delay, replica, [Label("m", i, a) for i, a in zip(ids, y.tolist())]))
            return
        if s.task == "binary":
            actual = rng.integers(0, 2, n)
            right = rng.random(n) < accuracy_at(s, t)
            predicted = np.where(right, actual, 1 - actual)
            pairs = list(zip(predicted.tolist(), actual.tolist()))
        else:
            y = rng.normal(50.0, 10.0, n)
            pairs = list(zip((y + rng.normal(0.0, error_sd_at(s, t), n)).tolist(), y.tolist()))
        if not s.label_delay:
            st.add_predictions([Prediction("m", "v1", None, t, p, None, None, a) for p, a in pairs], t)
            return
        ids = [str(self.next_id + i) for i in range(n)]
        self.next_id += n
        st.add_predictions([Prediction("m", "v1", i, t, p, None, None, None) for i, (p, _) in zip(ids, pairs)], t)
        self.waiting.append((t + s.label_delay, replica, [Label("m", i, a) for i, (_, a) in zip(ids, pairs)]))

    def scrape(self, wanted: set[str]) -> dict[str, float]:
        """The samples of the metrics ``wanted``, as a scrape adds job and instance; drift of the methods
        that decide nothing is left out (every drift alert keeps only mlmon_drift_decision's method), and
        values are rounded to 7 digits (a smaller test file for promtool; far finer than any threshold)."""
        out = {}
        for r, collector in enumerate(self.collectors):
            instance = f"replica-{'ab'[r]}:8490"
            families = [f for f in collector.collect() if f.name in wanted]
            deciding = {
                (s.labels["feature"], s.labels["method"])
                for f in families
                if f.name == "mlmon_drift_decision"
                for s in f.samples
            }
            for family in families:
                for sample in family.samples:
                    method = sample.labels.get("method")
                    if method and (sample.labels.get("feature", ""), method) not in deciding:
                        continue
                    labels = {"job": "mlmon", "instance": instance, **sample.labels}
                    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
                    out[f"{sample.name}{{{inner}}}"] = float(f"{sample.value:.7g}")
        return out


def replay(s: Scenario, seed: int, wanted: set[str]) -> tuple[list[str], dict[str, list[float | None]]]:
    """Run the scenario; return the sample times (relative to the first recorded one) and each series'
    values at those times (None: absent)."""
    sim = Replay(s, seed)
    start, end = s.record_from * HOUR, s.hours * HOUR
    t = 0.0
    while t + s.warm_step <= start:  # warm-up, unrecorded
        t += s.warm_step
        sim.advance(t, s.warm_step)
    if t < start:
        sim.advance(start, start - t)
        t = start
    series: dict[str, list[float | None]] = {}
    steps = 0
    while t <= end + 1e-9:
        if steps:
            sim.advance(t, s.step)
        for key, value in sim.scrape(wanted).items():
            column = series.setdefault(key, [None] * steps)
            column.append(value)
        steps += 1
        for column in series.values():
            if len(column) < steps:
                column.append(None)
        t += s.step
    return steps, series


# -- the rules, through promtool --------------------------------------------------------------------------


def rule_groups(rules_dir: str, family: str) -> list[dict]:
    """The family's alert group and, in the order of GROUPS, the recording rules its alerts read, directly or
    through other recording rules; each rule as the bundle writes it. Rules nothing here reads are left out:
    promtool would evaluate them at every step for nothing."""
    groups = {}
    for name in sorted(os.listdir(rules_dir)):
        if name.endswith(".yml"):
            with open(os.path.join(rules_dir, name)) as fh:
                for g in yaml.safe_load(fh)["groups"]:
                    groups[g["name"]] = g
    alerts = groups[GROUPS[family][-1]]
    records = {r["record"]: r for name in GROUPS[family][:-1] for r in groups[name]["rules"]}
    needed: set[str] = set()
    todo = [r["expr"] + str(r.get("annotations", "")) for r in alerts["rules"]]  # descriptions query some
    while todo:
        for name in re.findall(r"\b\w+:mlmon_\w+:\w+\b", todo.pop()):
            if name in records and name not in needed:
                needed.add(name)
                todo.append(records[name]["expr"])
    out = []
    for name in GROUPS[family][:-1]:
        rules = [r for r in groups[name]["rules"] if r.get("record") in needed]
        if rules:
            out.append({**groups[name], "rules": rules})
    return [*out, alerts]


def wanted_metrics(groups: list[dict]) -> set[str]:
    """The exporter's metrics the rules read (names without a colon)."""
    text = " ".join(r["expr"] + str(r.get("annotations", "")) for g in groups for r in g["rules"])
    return set(re.findall(r"(?<![\w:])(mlmon_[a-z_]+)\b", text))


def harness_group(step: float) -> dict:
    return {
        "name": "harness",
        "rules": [
            {
                "record": "harness:alerts_firing",
                # criterion: the fairness alert's two criteria are two alerts (absent elsewhere: no label).
                "expr": 'count by (alertname, severity, criterion) (ALERTS{alertstate="firing"})',
            },
            {
                # One sample, its time, at each evaluation where an alert starts firing.
                "record": "harness:alert_started",
                "expr": f"timestamp(harness:alerts_firing unless harness:alerts_firing offset {int(step)}s)",
            },
        ],
    }


def _values(column: list[float | None]) -> str:
    """promtool's series notation, with runs compressed: 'v' then 'vxN' (N more), '_xN' (N absent)."""
    out, i = [], 0
    while i < len(column):
        j = i
        while j + 1 < len(column) and column[j + 1] == column[i]:
            j += 1
        v = column[i]
        if v is None:
            out.append("_" if j == i else f"_x{j - i + 1}")
        else:
            text = repr(v) if not v.is_integer() else str(int(v))
            out.append(text if j == i else f"{text}x{j - i}")
        i = j + 1
    return " ".join(out)


@dataclasses.dataclass
class Timeline:
    """When each (alertname, severity) started firing, as the first start of each chunk that had any."""

    starts: dict[tuple[str, str], list[tuple[float, int, float]]]  # -> [(chunk end, starts, first start)]
    firing: dict[tuple[str, str], float]  # -> seconds firing in all


def run_promtool(s: Scenario, steps: int, series: dict, rules_dir: str, workdir: str) -> Timeline:
    groups = rule_groups(rules_dir, s.family) + [harness_group(s.step)]
    with open(os.path.join(workdir, "rules.yml"), "w") as fh:
        yaml.safe_dump({"groups": groups}, fh, sort_keys=False, width=1 << 20)
    end = (steps - 1) * s.step
    bounds = [0.0] + [min(end, s.chunk * (k + 1)) for k in range(math.ceil(end / s.chunk))]
    exprs = []
    for lo, hi in zip(bounds, bounds[1:]):
        for expr in ("count_over_time({}[{}s])", "min_over_time({}[{}s])"):
            exprs.append({"expr": expr.format("harness:alert_started", int(hi - lo)), "eval_time": f"{int(hi)}s"})
        exprs.append({"expr": f"count_over_time(harness:alerts_firing[{int(hi - lo)}s])", "eval_time": f"{int(hi)}s"})
    for e in exprs:
        e["exp_samples"] = []  # so that promtool prints what each query returned
    test = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": f"{int(s.step)}s",
        "group_eval_order": [g["name"] for g in groups],
        "tests": [
            {
                "interval": f"{int(s.step)}s",
                "input_series": [{"series": key, "values": _values(column)} for key, column in series.items()],
                "promql_expr_test": exprs,
            }
        ],
    }
    path = os.path.join(workdir, "replay_test.yml")
    with open(path, "w") as fh:
        yaml.safe_dump(test, fh, sort_keys=False, width=1 << 30)
    done = subprocess.run(["promtool", "test", "rules", path], capture_output=True, text=True)
    return parse_promtool(done.stdout + done.stderr, s.step)


_BLOCK = re.compile(r'expr: "(?P<expr>(?:[^"\\]|\\.)*)", time: (?P<time>\S+),\n\s+exp: .*\n\s+got: (?P<got>.*)')
_SAMPLE = re.compile(r"\{(?P<labels>[^}]*)\} (?P<value>\S+?)(?:,|$)")
_DURATION = re.compile(r"(\d+)(ms|w|d|h|m|s)")
_UNITS = {"w": WEEK, "d": DAY, "h": HOUR, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_promtool(output: str, step: float) -> Timeline:
    """Read the harness's queries back from promtool's report of them (each asked to return nothing, so
    promtool prints what they did return)."""
    if "FAILED" in output and "got:" not in output:
        raise RuntimeError(f"promtool could not run the replay:\n{output[-3000:]}")
    starts: dict[tuple[str, str], dict[float, list]] = {}
    firing: dict[tuple[str, str], float] = {}
    for m in _BLOCK.finditer(output):
        at = sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(m["time"]))
        for sample in _SAMPLE.finditer(m["got"]):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', sample["labels"]))
            alert = labels.get("alertname", "")
            if labels.get("criterion"):
                alert += f'{{criterion="{labels["criterion"]}"}}'
            key = (alert, labels.get("severity", ""))
            value = float(sample["value"])
            if m["expr"].startswith("count_over_time(harness:alert_started"):
                starts.setdefault(key, {}).setdefault(at, [0, None])[0] = int(value)
            elif m["expr"].startswith("min_over_time"):
                starts.setdefault(key, {}).setdefault(at, [0, None])[1] = value
            else:
                firing[key] = firing.get(key, 0.0) + value * step
    return Timeline({k: sorted((at, n, first) for at, (n, first) in v.items()) for k, v in starts.items()}, firing)


# -- one scenario, one seed --------------------------------------------------------------------------------


def run_one(args: tuple) -> dict:
    s, seed, rules_dir = args
    t0 = time.perf_counter()
    groups = rule_groups(rules_dir, s.family)
    steps, series = replay(s, seed, wanted_metrics(groups))
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mlmon-bench-alerts-") as workdir:
        timeline = run_promtool(s, steps, series, rules_dir, workdir)
    t2 = time.perf_counter()
    origin = s.record_from * HOUR
    change = None if s.change is None else (s.change - s.record_from) * HOUR
    result = {"scenario": s.name, "seed": seed, "alerts": {}, "simulate_s": t1 - t0, "promtool_s": t2 - t1}
    for (alert, severity), chunks in timeline.starts.items():
        before = sum(n for at, n, first in chunks if change is None or first < change)
        after = [first for at, n, first in chunks if change is not None and first >= change]
        result["alerts"][alert] = {
            "severity": severity,
            "episodes_without_cause": before,
            "delay_minutes": (min(after) - change) / 60 if after else None,
            "firing_minutes": timeline.firing.get((alert, severity), 0.0) / 60,
        }
    result["span_hours"] = (s.hours * HOUR - origin) / HOUR
    return result


# -- the report --------------------------------------------------------------------------------------------


def _delays(runs: list[dict], alert: str) -> str:
    values = [r["alerts"].get(alert, {}).get("delay_minutes") for r in runs]
    never = sum(v is None for v in values)
    got = sorted(v for v in values if v is not None)
    if not got:
        return "never"
    text = _minutes(statistics.median(got)) if len(got) > 1 else _minutes(got[0])
    if len(got) > 1:
        text += f" ({_minutes(got[0])} to {_minutes(got[-1])})"
    if never:
        text += f"; {never} of {len(values)} runs never"
    return text


def _minutes(m: float) -> str:
    return f"{m:.1f} min" if m < 90 else f"{m / 60:.2f} h"


def _episodes(runs: list[dict], alert: str) -> str:
    counts = [r["alerts"].get(alert, {}).get("episodes_without_cause", 0) for r in runs]
    return " / ".join(str(c) for c in counts)


def block_of(s: Scenario) -> str:
    return next(name for name, (families, _) in BLOCKS.items() if s.family in families)


def report(
    results: dict[str, list[dict]],
    all_scenarios: list[Scenario],
    took: float,
    mode: str,
    command: str = "`make bench-alerts` (`python bench/bench_alerts.py`)",
    scope: str = "",
) -> list[str]:
    """The table of ``results`` (one block's scenarios), under a header saying how and when it was measured;
    ``scope`` qualifies the run time (its workers, and whether the run replayed more than this table)."""
    by_name = {s.name: s for s in all_scenarios}
    named = BLOCKS[block_of(by_name[next(iter(results))])][1] if results else ()
    shown = [by_name[name] for name in results]
    defaults = ", ".join(_setting(k, shown) for k in named)
    kind = "thresholds" if all(k in THRESHOLDS for k in named) else "settings"
    lines = [
        f"Measured by {command} on {datetime.date.today().isoformat()}, "
        f"{mode} mode, in {took / 60:.1f} min{scope}, with the bundled rules and the default {kind} "
        f"({defaults}) and windows (5m, 1h, 1d; 60 buckets each). "
        "Delays are from the change to the first firing, as the median over the runs (seeds) with the fastest and "
        "slowest in brackets; episodes are counted per run."
        + "".join(f" This run sets `{k}` to {v:g}." for k, v in all_scenarios[0].thresholds),
        "",
        "| scenario | events | alert | delay | episodes without cause | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        s = by_name[name]
        unit = "labels" if s.family == "quality" else "predictions"
        for i, alert in enumerate(s.watch):
            severity = next((r["alerts"][alert]["severity"] for r in runs if alert in r["alerts"]), "")
            delay = _delays(runs, alert) if s.change is not None else "-"
            cells = [
                name if i == 0 else "",
                f"{_rate_name(s.rate)} {unit}" if i == 0 else "",
                f"{alert}{f' ({severity})' if severity else ''}",
                delay,
                _episodes(runs, alert),
                s.target if i == 0 else "",
                met(s, runs) if i == 0 else "",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _setting(name: str, shown: list[Scenario]) -> str:
    """One setting of a block's header: an exporter threshold's default, or (a name with a dot) a model
    setting of the scenarios ``shown``, as their config gives it."""
    if name in THRESHOLDS:
        return f"`{name}` {THRESHOLDS[name][0]:g}"
    model = parse_config(config_text(shown[0])).models[0]
    if name == "drift.min_samples":
        return f"`drift.min_samples` {model.drift_min_samples}"
    if name == "drift.multivariate.variance":
        return f"`drift.multivariate.variance` {model.multivariate_variance:g}"
    if name == "drift.multivariate.chunk_size":  # the scenarios set none: a tenth of each reference
        sizes = sorted({s.reference_rows for s in shown}, reverse=True)
        chunks = " and ".join(f"{rows // multivariate.DEFAULT_CHUNKS:,} of {rows:,}" for rows in sizes)
        return f"no `drift.multivariate.chunk_size`: chunks of a tenth of the reference's rows ({chunks})"
    if name.startswith("drift.thresholds."):
        method = name.rsplit(".", 1)[1]
        return f"`drift.thresholds.{method}` {model.drift_threshold(None, method):g}"
    raise ValueError(f"no setting {name}")


def met(s: Scenario, runs: list[dict]) -> str:
    """Whether the scenario's checked targets held in every run: yes, no (how many runs missed), or blank."""
    missed = []
    for r in runs:
        alerts = r["alerts"]
        first = alerts.get(s.watch[0], {})
        ok = True
        if s.within is not None:
            ok &= first.get("delay_minutes") is not None and first["delay_minutes"] <= s.within
        if s.quiet:
            ok &= first.get("episodes_without_cause", 0) == 0
        others = s.watch if s.max_other is not None and not s.quiet else s.watch[1:]
        if s.max_other is not None:
            ok &= all(alerts.get(a, {}).get("episodes_without_cause", 0) <= s.max_other for a in others)
        if not ok:
            missed.append(r["seed"])
    if s.within is None and not s.quiet and s.max_other is None:
        return ""
    return "yes" if not missed else f"**no** ({len(missed)} of {len(runs)} runs)"


def write_doc(lines: list[str], block: str = "bench-alerts") -> None:
    """Replace the table between the block's markers in docs/alerts.md, leaving every other block as it is."""
    fill_markers(DOC, f"<!-- {block}:begin -->", f"<!-- {block}:end -->", "\n".join(lines))


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="at most 2 seeds a scenario; docs untouched")
    parser.add_argument("--seeds", type=int, help="seeds per scenario (default: each scenario's own)")
    parser.add_argument("--only", action="append", help="run the scenarios whose name contains this")
    parser.add_argument("--rules-dir", default=RULES_DIR, help="the rule files to replay (default: the bundle's)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="THRESHOLD=VALUE", help="a threshold of the exporter's config"
    )
    parser.add_argument("--no-write", action="store_true", help="print the table; leave docs/alerts.md alone")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    chosen = [s for s in scenarios() if not args.only or any(o in s.name for o in args.only)]
    if args.set:
        pairs = tuple((k, float(v)) for k, v in (item.split("=", 1) for item in args.set))
        chosen = [dataclasses.replace(s, thresholds=pairs) for s in chosen]
    if not chosen:
        raise SystemExit(f"no scenario matches {args.only}; scenarios: {[s.name for s in scenarios()]}")
    jobs = []
    for s in chosen:
        n = args.seeds or (min(s.seeds, 2) if args.quick else s.seeds)
        jobs += [(s, seed, args.rules_dir) for seed in range(n)]
    # The longest first, so that two workers finish together.
    jobs.sort(key=lambda j: -j[0].hours * j[0].rate ** 0.5 / j[0].step)
    started = time.perf_counter()
    results: dict[str, list[dict]] = {s.name: [] for s in chosen}
    with multiprocessing.Pool(max(1, min(args.jobs, len(jobs)))) as pool:
        for r in pool.imap_unordered(run_one, jobs):
            results[r["scenario"]].append(r)
            print(
                f"bench-alerts: {r['scenario']} seed {r['seed']}: "
                + ", ".join(
                    f"{a} delay {v['delay_minutes'] if v['delay_minutes'] is None else round(v['delay_minutes'], 1)}"
                    f" episodes {v['episodes_without_cause']}"
                    for a, v in sorted(r["alerts"].items())
                )
                + f" (simulated {r['simulate_s']:.0f} s, promtool {r['promtool_s']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    took = time.perf_counter() - started
    for runs in results.values():
        runs.sort(key=lambda r: r["seed"])
    command = "`make bench-alerts` (`python bench/bench_alerts.py`)"
    if args.only:
        command = "`python bench/bench_alerts.py " + " ".join(f"--only '{o}'" for o in args.only) + "`"
    mode = "quick" if args.quick else "default"
    may_write = not (args.no_write or args.quick or args.seeds or args.set or args.rules_dir != RULES_DIR)
    ran = {s.name for s in chosen}
    for block in BLOCKS:
        names = [s.name for s in chosen if block_of(s) == block]
        if not names:
            continue
        workers = max(1, min(args.jobs, len(jobs)))
        scope = f" on {workers} worker{'s' if workers > 1 else ''}"
        if len(names) < len(chosen):
            scope += " (a run that also replayed the other tables' scenarios)"
        lines = report({n: results[n] for n in names}, chosen, took, mode, command, scope)
        print("\n".join(lines) + "\n")
        # A block's table is written only whole: every scenario of the block, and nothing else in its rows.
        if may_write and all(s.name in ran for s in scenarios() if block_of(s) == block):
            write_doc(lines, block)
    return results


if __name__ == "__main__":
    main()
