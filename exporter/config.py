"""Load and validate the YAML configuration into frozen value objects before anything starts.

Every error names the key (as a path such as ``models[0].features[1].type``), its line in the file and
what is wrong; unknown keys are errors, never silently ignored.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import io
import math
import os
import re
import string
from dataclasses import dataclass, field
from typing import Any

import yaml

TASKS = ("binary", "multiclass", "regression")
FEATURE_TYPES = ("numeric", "categorical")
DEFAULT_WINDOWS = ("5m", "1h", "1d")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
_DURATION_RE = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_DURATION_UNITS = (604800, 86400, 3600, 60, 1)

# Latency of one prediction as measured by the model server: 1 ms .. 10 s.
DEFAULT_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Time from a prediction to its label: seconds (interactive feedback) to a week (chargebacks, churn).
DEFAULT_LABEL_DELAY_BUCKETS = (1, 10, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400)
# Regression predictions when the model names no buckets of its own: a signed log-spaced grid.
DEFAULT_VALUE_BUCKETS = (-1e4, -1e3, -100, -10, -1, -0.1, 0, 0.1, 1, 10, 100, 1e3, 1e4)


# Alert thresholds, published as mlmon_alert_threshold{model,threshold} so that the bundled alert rules
# join them and ops change them per model in this file, never in the rules. name -> (default, min, max).
THRESHOLDS: dict[str, tuple[float, float, float]] = {
    # Quality alerts test accuracy and MAE on each span (a window or one of its recent parts) with at least
    # this many labels, and fire when a span proves the model worse than its threshold with this one-sided
    # confidence (docs/alerts.md: "How the quality alerts decide"; bench/bench_alerts.py measured the defaults).
    "min_labeled_samples": (100, 1, 1e9),
    "evidence_confidence": (0.99, 0.5, 0.999999),
    "accuracy_min": (0.7, 0, 1),  # absolute floor of accuracy
    "accuracy_drop": (0.1, 0, 1),  # relative drop of accuracy against the baseline (the longest window)
    "error_rise": (0.25, 0, 100),  # relative rise of regression MAE against the baseline (the longest window)
    "latency_p99_seconds": (0.5, 0, 3600),  # p99 of the latency the model server reports
    "traffic_stale_seconds": (600, 10, 30 * 86400),  # no prediction for this long: traffic stopped
    "labels_stale_seconds": (21600, 60, 90 * 86400),  # no label joined for this long while predictions wait
    "missing_ratio_max": (0.1, 0, 1),  # share of missing values of a feature in a window
    # |realized - estimated accuracy| of the labelled, scored predictions tolerated before the scores are
    # proven off their calibration (concept drift; docs/estimation.md)
    "calibration_gap_max": (0.05, 0, 1),
    # Fairness of binary models (models[].fairness; docs/fairness.md, docs/alerts.md "MlmonModelFairnessDisparity"):
    # a group is compared only with at least this many predictions in the window (this many labelled positives
    # for the true positive rate). The alert decides on evidence (z over evidence_z), which rules out chance;
    # the minimum keeps the normal approximation of the tests honest: 100, as min_labeled_samples (simulated,
    # two equal groups of 100 fire by chance in at most 0.13% of windows; bench/sim_fairness_evidence.py).
    "fairness_min_group_samples": (100, 1, 1e9),
    # lowest selection rate over the highest (or over the reference group's): the four-fifths rule of US
    # employment practice
    "fairness_ratio_min": (0.8, 0, 1),
    # largest gap between the groups' true positive rates (equal opportunity): 10 points, the tolerance
    # usually quoted for fairness differences; the alert needs the gap proven over it (evidence_confidence)
    "fairness_gap_max": (0.1, 0, 1),
}


# -- model registry links (docs/registry.md) ---------------------------------------------------------------
# What a model version may say of itself in a model registry: the same fields, with the same rules, in the
# config (models[].registry.versions) and on a prediction (its `registry` object; exporter/ingest/schema.py).
REGISTRY_FIELDS = {
    "run_id": "the run that trained the version: 1 to 64 letters, digits, '_' or '-'",
    "model_uri": "a URI with a scheme (models:/churn/3, runs:/<run id>/model, s3://...), at most 1024 characters "
    "without spaces",
    "name": "the registered model's name: 1 to 256 printable characters",
    "version": "the registered model's version: a positive integer (or its decimal string)",
}
_RUN_ID_RE = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_MODEL_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+")
_REGISTRY_VERSION_RE = re.compile(r"[1-9][0-9]{0,18}")
MAX_REGISTRY_VERSION = 2**63 - 1
# A model version's name as the prediction API takes it (exporter/ingest/schema.py VERSION_PATTERN; a test
# checks that the two agree): the keys of models[].registry.versions.
_MODEL_VERSION_RE = re.compile(r"[A-Za-z0-9_.+:@\-]{1,64}")
# The placeholders of registry.run_url_template.
RUN_URL_PLACEHOLDERS = ("model", "version", "run_id", "experiment_id", "model_uri", "registry_name", "registry_version")


@dataclass(frozen=True)
class RegistryInfo:
    """What is known of a model version in a model registry; "" where unknown."""

    run_id: str = ""
    model_uri: str = ""
    name: str = ""  # the registered model's name
    version: str = ""  # the registered model's version


def registry_value(key: str, value: Any) -> str | None:
    """A registry field's value as kept (a string), or None when the field's rule (REGISTRY_FIELDS) refuses it."""
    if key == "version":
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value) if 1 <= value <= MAX_REGISTRY_VERSION else None
        if isinstance(value, str) and _REGISTRY_VERSION_RE.fullmatch(value) and int(value) <= MAX_REGISTRY_VERSION:
            return value
        return None
    if not isinstance(value, str):
        return None
    if key == "run_id":
        return value if _RUN_ID_RE.fullmatch(value) else None
    if key == "model_uri":
        ok = len(value) <= 1024 and value.isprintable() and _MODEL_URI_RE.fullmatch(value)
        return value if ok else None
    if key == "name":
        return value if 0 < len(value) <= 256 and value.isprintable() else None
    return None


def run_url_fields(template: str) -> tuple[str, ...]:
    """The placeholders a run URL template uses; ValueError naming what is wrong with it."""
    used: list[str] = []
    for _, name, spec, conversion in string.Formatter().parse(template):  # ValueError on a lone { or }
        if name is None:
            continue
        if name not in RUN_URL_PLACEHOLDERS:
            raise ValueError(f"unknown placeholder {{{name}}} (allowed: {', '.join(RUN_URL_PLACEHOLDERS)})")
        if spec or conversion:
            raise ValueError(f"placeholder {{{name}}} takes no format or conversion")
        used.append(name)
    return tuple(dict.fromkeys(used))


class ConfigError(ValueError):
    """A configuration problem; ``str()`` lists every problem found, one per line."""

    def __init__(self, problems: list[str], source: str = "<config>"):
        self.problems = problems
        self.source = source
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


def parse_duration(text: str) -> int:
    """Parse a Prometheus-style duration (``30s``, ``5m``, ``1h30m``, ``7d``, ``1w``) into seconds."""
    m = _DURATION_RE.match(text) if isinstance(text, str) and text else None
    if not m or not any(m.groups()):
        raise ValueError(f"{text!r} is not a duration such as 30s, 5m, 1h, 1d or 1h30m")
    return sum(int(g) * unit for g, unit in zip(m.groups(), _DURATION_UNITS) if g)


@dataclass(frozen=True)
class Feature:
    name: str
    type: str  # numeric | categorical
    drift_thresholds: tuple[tuple[str, float], ...] = ()  # this feature's overrides of the model's


# Drift methods and their default thresholds (docs/drift.md). For *_pvalue the feature drifts BELOW it.
DRIFT_THRESHOLDS = {
    "psi": 0.25,  # Siddiqi 2006: < 0.1 stable, 0.1 to 0.25 moderate shift, > 0.25 major shift
    "ks": 0.1,
    "ks_pvalue": 0.05,
    "js": 0.1,  # Jensen-Shannon distance, base 2
    "wasserstein": 0.1,  # in reference standard deviations
    "chi2_pvalue": 0.05,
    "unseen": 0.05,
}
DRIFT_METHODS = ("psi", "js", "wasserstein", "ks")  # the ones that can decide "drifted" (drift.method)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    task: str
    classes: tuple[str, ...] = ()
    positive_class: str | None = None
    features: tuple[Feature, ...] = ()
    # Categorical values a prediction carries beside its features (``attributes``): they split segments and
    # fairness groups and are kept out of drift and data quality (docs/fairness.md#attributes).
    attributes: tuple[str, ...] = ()
    prediction_buckets: tuple[float, ...] = DEFAULT_VALUE_BUCKETS
    thresholds: tuple[tuple[str, float], ...] = tuple((k, v[0]) for k, v in THRESHOLDS.items())
    reference: str | None = None  # path of a reference CSV or profile JSON, resolved against the config's folder
    drift_method: str = "psi"
    drift_min_samples: int = 100
    drift_thresholds: tuple[tuple[str, float], ...] = tuple(DRIFT_THRESHOLDS.items())
    # Publish each feature's window and reference distributions in 12 coarse bins (mlmon_*_bin_ratio):
    # off by default, since it adds 12 series per feature and window.
    drift_bins: bool = False
    # Multivariate drift (drift.multivariate, docs/drift.md#multivariate-drift): on with two features or more;
    # the share of the standardised variance the kept components explain; reference rows per chunk for the
    # thresholds (0: a tenth of the reference, as NannyML's default chunker). Both are fitted with the reference.
    multivariate: bool = True
    multivariate_variance: float = 0.65
    multivariate_chunk: int = 0
    # Feature attributions (models[].attributions, docs/attributions.md): predictions may carry each feature's
    # SHAP or LIME value; per window, each feature's mean absolute attribution against the reference's. Off by
    # default (its arrays cost memory in every bucket); ``attribution_top``: features published one by one.
    attributions: bool = False
    attribution_top: int = 20
    invalid_features: str = "reject"  # reject | count: unknown feature names and values of the wrong type
    segment_features: tuple[str, ...] = ()  # categorical features whose values split quality and drift
    segment_top: int = 10  # values per segment feature published one by one; the rest are "other"
    registry_name: str = ""  # the model's name in the model registry, for versions that do not name one
    # version -> what the config says of it in the registry (models[].registry.versions)
    registry_versions: tuple[tuple[str, RegistryInfo], ...] = ()
    # Sensitive features of a binary model (models[].fairness): also segment features, so that each group's
    # counts are its segment's windows (docs/fairness.md).
    fairness_features: tuple[str, ...] = ()
    # The segment features listed under segments.features: their mlmon_segment_* families are published. A
    # fairness feature not listed there keeps only its groups' counts.
    listed_segments: tuple[str, ...] = ()
    fairness_reference: tuple[tuple[str, str], ...] = ()  # feature -> its reference group (disparity: reference)
    fairness_disparity: str = "spread"  # spread: max minus min over groups | reference: gaps to the reference group

    def drift_threshold(self, feature: str | None, method: str) -> float:
        """The threshold of ``method`` for ``feature`` (None: the model's predictions or labels)."""
        own = self._feature_thresholds.get((feature, method))
        if own is not None:
            return own
        return self._model_thresholds.get(method, DRIFT_THRESHOLDS.get(method, float("nan")))

    # Look-ups a scrape makes for every feature and window: dicts built once, not a scan of the features each
    # time (at 100 features that scan was a fifth of a scrape). Not fields: equality and the config's digest
    # do not see them.
    @functools.cached_property
    def _feature_thresholds(self) -> dict[tuple[str, str], float]:
        return {(f.name, m): v for f in self.features for m, v in f.drift_thresholds}

    @functools.cached_property
    def _model_thresholds(self) -> dict[str, float]:
        return dict(self.drift_thresholds)

    @functools.cached_property
    def registry(self) -> dict[str, RegistryInfo]:
        """Version -> what the config says of it in the model registry."""
        return dict(self.registry_versions)

    @functools.cached_property
    def feature_types(self) -> dict[str, str]:
        """Feature name -> "numeric" or "categorical"."""
        return {f.name: f.type for f in self.features}

    @functools.cached_property
    def fairness_reference_group(self) -> dict[str, str]:
        """Fairness feature -> its reference group (empty unless ``disparity: reference``)."""
        return dict(self.fairness_reference)

    @property
    def is_classification(self) -> bool:
        return self.task != "regression"

    @property
    def score_classes(self) -> tuple[str, ...]:
        """Classes whose score is histogrammed: the positive class for binary, every class for multiclass."""
        if self.task == "binary":
            return (self.positive_class,)  # type: ignore[return-value]
        return self.classes


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 10 * 1024 * 1024
    max_batch_size: int = 10_000
    pending_ttl_seconds: int = 7 * 86400
    max_pending_per_model: int = 100_000
    max_versions_per_model: int = 10
    max_servers: int = 100
    server_stale_seconds: int = 600
    # How long an ingest request may wait for its turn before it is answered 429 with Retry-After.
    ingest_queue_timeout_seconds: float = 2.0


@dataclass(frozen=True)
class Storage:
    """Where acknowledged events and window state survive a restart (docs/durability.md)."""

    backend: str = "sqlite"  # sqlite | memory
    path: str = "data"  # the data directory (relative paths: to the config file's directory)
    sync: str = "normal"  # normal: survives a process crash; full: also a power loss (fsync per request)
    checkpoint_interval_seconds: int = 60
    checkpoint_bytes: int = 64 * 1024 * 1024  # journal size that triggers a checkpoint before the interval
    max_journal_bytes: int = 1024 * 1024 * 1024  # over this, ingest answers 429 until a checkpoint catches up
    idempotency_ttl_seconds: int = 86400  # how long an Idempotency-Key is remembered
    max_idempotency_keys: int = 1_000_000


@dataclass(frozen=True)
class Auth:
    """Bearer tokens of the API (exporter/security/auth.py); only their SHA-256 digests are kept."""

    enabled: bool = False
    tokens: tuple = ()  # exporter.security.auth.Token
    audit_path: str = ""  # JSON lines of admin actions and authentication failures; "" = in the data directory


@dataclass(frozen=True)
class Joins:
    """Where predictions wait for their labels: in the process (default) or shared by replicas in Redis."""

    backend: str = "local"  # local | redis
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "mlmon"
    redis_timeout_seconds: float = 5.0
    redis_password_file: str = ""  # the password, read at start (keeps it out of the config file)


@dataclass(frozen=True)
class Registry:
    """Where model versions are looked up (MLflow) and how their run's URL is made (docs/registry.md)."""

    tracking_uri: str = ""  # "": no lookups; the links come from the config and the predictions only
    run_url_template: str = ""  # "": no run URL
    lookup_timeout_seconds: float = 10.0

    @functools.cached_property
    def run_url_fields(self) -> tuple[str, ...]:
        return run_url_fields(self.run_url_template)


@dataclass(frozen=True)
class Config:
    models: tuple[ModelConfig, ...]
    windows: tuple[str, ...] = DEFAULT_WINDOWS
    window_seconds: tuple[int, ...] = (300, 3600, 86400)
    buckets_per_window: int = 60
    limits: Limits = field(default_factory=Limits)
    latency_buckets: tuple[float, ...] = DEFAULT_LATENCY_BUCKETS
    label_delay_buckets: tuple[float, ...] = DEFAULT_LABEL_DELAY_BUCKETS
    storage: Storage = field(default_factory=Storage)
    joins: Joins = field(default_factory=Joins)
    auth: Auth = field(default_factory=Auth)
    registry: Registry = field(default_factory=Registry)

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)


# --------------------------------------------------------------------------------------------------
# YAML with positions: compose the node tree so that every value keeps the line it came from. Node, to_nodes,
# Checker and kind_name are also what other config files of mlmon (the retraining hook's) are checked with, so
# that their errors read the same.


class Node:
    """A YAML value together with where it stood in the file."""

    __slots__ = ("value", "line", "col", "text")

    def __init__(self, value: Any, line: int, col: int, text: str | None = None):
        self.value, self.line, self.col = value, line, col
        self.text = text  # a scalar as written, before YAML typed it (yes -> True, 007 -> 7)


def to_nodes(node: yaml.Node) -> Node:
    """The composed YAML node as a tree of Nodes; a duplicate key is an error."""
    line, col = node.start_mark.line + 1, node.start_mark.column + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Node] = {}
        keys: dict[str, int] = {}
        for k, v in node.value:
            key = yaml.SafeLoader.construct_scalar(_LOADER, k) if isinstance(k, yaml.ScalarNode) else str(k)
            if key in keys:
                raise ConfigError([f"line {k.start_mark.line + 1}: duplicate key {key!r} (first at line {keys[key]})"])
            keys[key] = k.start_mark.line + 1
            out[str(key)] = to_nodes(v)
        return Node(out, line, col)
    if isinstance(node, yaml.SequenceNode):
        return Node([to_nodes(v) for v in node.value], line, col)
    return Node(_LOADER.construct_object(node, deep=True), line, col, node.value)


_LOADER = yaml.SafeLoader("")


class Checker:
    """Walks the node tree, collecting every problem instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, node: Node | None, message: str) -> None:
        where = f"line {node.line}: " if node is not None else ""
        self.problems.append(f"{where}{path or '(top level)'}: {message}")

    def mapping(self, path: str, node: Node, allowed: set[str], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(node.value, dict):
            self.fail(path, node, f"must be a mapping, got {kind_name(node.value)}")
            return {}
        for key, sub in node.value.items():
            if key not in allowed:
                near = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.75)
                hint = f"did you mean {near[0]!r}? " if near else ""
                close = ", ".join(sorted(allowed))
                self.fail(f"{path}.{key}" if path else key, sub, f"unknown key ({hint}allowed here: {close})")
        for key in required:
            if key not in node.value:
                self.fail(f"{path}.{key}" if path else key, node, "is required")
        return {k: v for k, v in node.value.items() if k in allowed}

    def positive_int(self, path: str, node: Node, low: int = 1, high: int = 2**62) -> int | None:
        v = node.value
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            self.fail(path, node, f"must be an integer from {low} to {high}, got {v!r}")
            return None
        return v

    def duration(self, path: str, node: Node, low: int = 0, high: int = 2**62) -> int | None:
        try:
            seconds = parse_duration(node.value)
            if not low <= seconds <= high:
                raise ValueError(f"must be from {low}s to {high}s, got {node.value}")
            return seconds
        except ValueError as exc:
            self.fail(path, node, str(exc))
            return None

    def fine_duration(self, path: str, node: Node, low: float, high: float) -> float | None:
        """A duration that may be under a second: ``250ms``, ``2s``, ``1m``."""
        v = node.value
        try:
            if isinstance(v, str) and v.endswith("ms") and v[:-2].isdigit():
                seconds = int(v[:-2]) / 1000
            else:
                seconds = float(parse_duration(v))
        except ValueError as exc:
            self.fail(path, node, f"{exc} (or milliseconds such as 250ms)")
            return None
        if not low <= seconds <= high:
            self.fail(path, node, f"must be from {low}s to {high}s, got {v}")
            return None
        return seconds

    def buckets(self, path: str, node: Node) -> tuple[float, ...] | None:
        v = node.value
        # YAML 1.1 reads 1e4 (no dot) as a string: take any list item that reads as a number.
        values = [_number(n.value) for n in v] if isinstance(v, list) else None
        if (
            not values
            or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) for x in values)
            or any(b <= a for a, b in zip(values, values[1:]))
        ):
            self.fail(path, node, "must be a non-empty list of finite numbers in increasing order")
            return None
        return tuple(float(x) for x in values)


def _number(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def kind_name(v: Any) -> str:
    """What a value is, in an error message: "a mapping", "a list", "a string", "nothing", "int"..."""
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(type(v), type(v).__name__)


def _class_name(node: Node) -> str | None:
    """Classes are label values, taken as written: `0`, `yes` and `no` are names, not numbers or booleans."""
    if isinstance(node.value, (list, dict)) or node.value is None or not node.text:
        return None
    return node.text


def _drift_thresholds(ck: Checker, path: str, node: Node, base: dict[str, float]) -> dict[str, float]:
    out = dict(base)
    for key, sub in ck.mapping(path, node, set(DRIFT_THRESHOLDS)).items():
        v = _number(sub.value)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1e9:
            ck.fail(f"{path}.{key}", sub, f"must be a number >= 0, got {sub.value!r}")
        else:
            out[key] = float(v)
    return out


@dataclass(frozen=True)
class _Drift:
    method: str = "psi"
    min_samples: int = 100
    thresholds: tuple[tuple[str, float], ...] = tuple(DRIFT_THRESHOLDS.items())
    bins: bool = False
    multivariate: bool = True
    variance: float = 0.65
    chunk: int = 0


def _drift(ck: Checker, path: str, node: Node) -> _Drift:
    d = _Drift()
    method, min_samples, thresholds, bins = d.method, d.min_samples, dict(DRIFT_THRESHOLDS), d.bins
    m = ck.mapping(path, node, {"method", "min_samples", "thresholds", "bins", "multivariate"})
    if "bins" in m:
        if not isinstance(m["bins"].value, bool):
            ck.fail(f"{path}.bins", m["bins"], "must be true or false")
        else:
            bins = m["bins"].value
    if "method" in m:
        if m["method"].value not in DRIFT_METHODS:
            ck.fail(f"{path}.method", m["method"], f"must be one of {', '.join(DRIFT_METHODS)}")
        else:
            method = m["method"].value
    if "min_samples" in m:
        min_samples = ck.positive_int(f"{path}.min_samples", m["min_samples"], 1, 10**9) or min_samples
    if "thresholds" in m:
        thresholds = _drift_thresholds(ck, f"{path}.thresholds", m["thresholds"], thresholds)
    multivariate, variance, chunk = d.multivariate, d.variance, d.chunk
    if "multivariate" in m:
        mpath, mnode = f"{path}.multivariate", m["multivariate"]
        if isinstance(mnode.value, bool):  # multivariate: false (or true: the defaults)
            multivariate = mnode.value
        else:
            mm = ck.mapping(mpath, mnode, {"enabled", "variance", "chunk_size"})
            if "enabled" in mm:
                if not isinstance(mm["enabled"].value, bool):
                    ck.fail(f"{mpath}.enabled", mm["enabled"], "must be true or false")
                else:
                    multivariate = mm["enabled"].value
            if "variance" in mm:
                v = _number(mm["variance"].value)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                    ck.fail(
                        f"{mpath}.variance",
                        mm["variance"],
                        f"must be a share of the variance above 0 and below 1, e.g. 0.65; got {mm['variance'].value!r}",
                    )
                else:
                    variance = float(v)
            if "chunk_size" in mm:
                chunk = ck.positive_int(f"{mpath}.chunk_size", mm["chunk_size"], 10, 10**8) or chunk
    return _Drift(method, min_samples, tuple(thresholds.items()), bins, multivariate, variance, chunk)


def _thresholds(ck: Checker, path: str, node: Node, base: dict[str, float]) -> dict[str, float]:
    out = dict(base)
    for key, sub in ck.mapping(path, node, set(THRESHOLDS)).items():
        _, low, high = THRESHOLDS[key]
        v = _number(sub.value)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
            ck.fail(f"{path}.{key}", sub, f"must be a number from {low:g} to {high:g}, got {sub.value!r}")
        else:
            out[key] = float(v)
    return out


def _model(ck: Checker, path: str, node: Node, thresholds: dict[str, float], base_dir: str) -> ModelConfig | None:
    allowed = {
        "name",
        "task",
        "classes",
        "positive_class",
        "features",
        "attributes",
        "attributions",
        "prediction_buckets",
        "thresholds",
        "reference",
        "drift",
        "segments",
        "fairness",
        "invalid_features",
        "registry",
    }
    m = ck.mapping(path, node, allowed, required=("name", "task"))
    if not m:
        return None
    name, task = m.get("name"), m.get("task")
    ok = True
    if name is not None and not (isinstance(name.value, str) and NAME_RE.match(name.value)):
        ck.fail(
            f"{path}.name",
            name,
            "must be 1-64 characters of letters, digits, '_', '.', '-' starting with a letter or '_'",
        )
        ok = False
    if task is not None and task.value not in TASKS:
        ck.fail(f"{path}.task", task, f"must be one of {', '.join(TASKS)}, got {task.value!r}")
        ok = False
    if not ok or name is None or task is None:
        return None
    task_v = task.value

    classes: tuple[str, ...] = ()
    positive = None
    if task_v == "regression":
        for key in ("classes", "positive_class"):
            if key in m:
                ck.fail(f"{path}.{key}", m[key], "only applies to classification tasks (binary, multiclass)")
    else:
        cnode = m.get("classes")
        if cnode is None:
            ck.fail(f"{path}.classes", node, f"is required for task {task_v}")
            return None
        raw = cnode.value if isinstance(cnode.value, list) else None
        names = [_class_name(c) for c in raw] if raw is not None else None
        if names is None or None in names:
            ck.fail(f"{path}.classes", cnode, "must be a list of class names (strings or integers)")
            return None
        if len(set(names)) != len(names):
            ck.fail(f"{path}.classes", cnode, "has duplicate class names")
            return None
        want = "exactly 2" if task_v == "binary" else "at least 2"
        if (task_v == "binary" and len(names) != 2) or len(names) < 2 or len(names) > 1000:
            ck.fail(f"{path}.classes", cnode, f"a {task_v} model needs {want} classes (at most 1000), got {len(names)}")
            return None
        classes = tuple(names)  # type: ignore[arg-type]
        pnode = m.get("positive_class")
        if task_v == "binary":
            positive = classes[1]
            if pnode is not None:
                positive = _class_name(pnode)
                if positive not in classes:
                    ck.fail(f"{path}.positive_class", pnode, f"must be one of the classes {list(classes)}")
                    return None
        elif pnode is not None:
            ck.fail(f"{path}.positive_class", pnode, "only applies to binary models")

    features: list[Feature] = []
    fnode = m.get("features")
    if fnode is not None:
        if not isinstance(fnode.value, list):
            ck.fail(f"{path}.features", fnode, "must be a list of {name, type} mappings")
        else:
            seen: set[str] = set()
            for i, f in enumerate(fnode.value):
                fpath = f"{path}.features[{i}]"
                fm = ck.mapping(fpath, f, {"name", "type", "drift_thresholds"}, required=("name", "type"))
                if "name" not in fm or "type" not in fm:
                    continue
                fname, ftype = fm["name"].value, fm["type"].value
                if not isinstance(fname, str) or not 0 < len(fname) <= 128 or not fname.isprintable():
                    ck.fail(
                        f"{fpath}.name",
                        fm["name"],
                        "must be 1 to 128 printable characters (spaces, parentheses, slashes and dots are fine; "
                        "no tabs or newlines)",
                    )
                elif fname in seen:
                    ck.fail(f"{fpath}.name", fm["name"], f"duplicate feature name {fname!r}")
                elif ftype not in FEATURE_TYPES:
                    ck.fail(f"{fpath}.type", fm["type"], f"must be one of {', '.join(FEATURE_TYPES)}, got {ftype!r}")
                else:
                    seen.add(fname)
                    overrides = {}
                    if "drift_thresholds" in fm:
                        overrides = _drift_thresholds(ck, f"{fpath}.drift_thresholds", fm["drift_thresholds"], {})
                    features.append(Feature(fname, ftype, tuple(overrides.items())))

    attributes: tuple[str, ...] = ()
    if "attributes" in m:
        attributes = _attributes(ck, f"{path}.attributes", m["attributes"], {f.name for f in features})
    buckets = DEFAULT_VALUE_BUCKETS
    if "prediction_buckets" in m:
        if task_v != "regression":
            ck.fail(f"{path}.prediction_buckets", m["prediction_buckets"], "only applies to regression models")
        else:
            buckets = ck.buckets(f"{path}.prediction_buckets", m["prediction_buckets"]) or buckets
    if "thresholds" in m:
        thresholds = _thresholds(ck, f"{path}.thresholds", m["thresholds"], thresholds)
    reference = None
    if "reference" in m:
        rnode = m["reference"]
        if not (isinstance(rnode.value, str) and rnode.value):
            ck.fail(f"{path}.reference", rnode, "must be the path of a CSV file or of a profile (.json)")
        elif not features:
            ck.fail(f"{path}.reference", rnode, "needs the model's features: list them under features")
        else:
            reference = os.path.join(base_dir, rnode.value) if base_dir else rnode.value
            if not os.path.isfile(reference):
                ck.fail(f"{path}.reference", rnode, f"no such file: {reference}")
    drift = _drift(ck, f"{path}.drift", m["drift"]) if "drift" in m else _Drift()
    invalid = "reject"
    if "invalid_features" in m:
        if m["invalid_features"].value not in ("reject", "count"):
            ck.fail(f"{path}.invalid_features", m["invalid_features"], "must be reject or count")
        else:
            invalid = m["invalid_features"].value
    segment_features, segment_top = (), 10
    if "segments" in m:
        sm = ck.mapping(f"{path}.segments", m["segments"], {"features", "top"}, required=("features",))
        fnode = sm.get("features")
        names = _group_features(ck, f"{path}.segments.features", fnode, features, attributes)
        if names:
            segment_features = tuple(names)
        if "top" in sm:
            segment_top = ck.positive_int(f"{path}.segments.top", sm["top"], 1, 100) or segment_top
    listed = segment_features
    fairness: tuple[tuple[str, ...], tuple[tuple[str, str], ...], str] = ((), (), "spread")
    if "fairness" in m:
        fairness = _fairness(ck, f"{path}.fairness", m["fairness"], task_v, features, attributes)
        # Each group's counts are its segment's windows: a fairness feature is a segment feature too.
        segment_features = tuple(dict.fromkeys((*segment_features, *fairness[0])))
    attributions, attribution_top = False, 20
    if "attributions" in m:
        attributions, attribution_top = _attributions(ck, f"{path}.attributions", m["attributions"], features)
    registry_name, registry_versions = "", ()
    if "registry" in m:
        registry_name, registry_versions = _model_registry(ck, f"{path}.registry", m["registry"])
    return ModelConfig(
        name.value,
        task_v,
        classes,
        positive,
        tuple(features),
        attributes,
        buckets,
        tuple(thresholds.items()),
        reference,
        drift.method,
        drift.min_samples,
        drift.thresholds,
        drift.bins,
        drift.multivariate,
        drift.variance,
        drift.chunk,
        attributions,
        attribution_top,
        invalid,
        segment_features,
        segment_top,
        registry_name,
        registry_versions,
        fairness_features=fairness[0],
        listed_segments=listed,
        fairness_reference=fairness[1],
        fairness_disparity=fairness[2],
    )


FAIRNESS_DISPARITIES = ("spread", "reference")


def _attributions(ck: Checker, path: str, node: Node, features: list) -> tuple[bool, int]:
    """models[].attributions: true, false, or {enabled, top}."""
    enabled, top = True, 20
    if isinstance(node.value, bool):
        enabled = node.value
    else:
        m = ck.mapping(path, node, {"enabled", "top"})
        if "enabled" in m:
            if not isinstance(m["enabled"].value, bool):
                ck.fail(f"{path}.enabled", m["enabled"], "must be true or false")
            else:
                enabled = m["enabled"].value
        if "top" in m:
            top = ck.positive_int(f"{path}.top", m["top"], 1, 1000) or top
    if enabled and not features:
        ck.fail(path, node, "needs the model's features: list them under features")
        enabled = False
    return enabled, top


MAX_ATTRIBUTES = 32


def _attributes(ck: Checker, path: str, node: Node, features: set[str]) -> tuple[str, ...]:
    """models[].attributes: the names of the categorical values predictions carry beside their features."""
    if not isinstance(node.value, list) or not node.value:
        ck.fail(path, node, "must be a non-empty list of attribute names, e.g. [sex, region]")
        return ()
    if len(node.value) > MAX_ATTRIBUTES:
        ck.fail(path, node, f"at most {MAX_ATTRIBUTES} attributes, got {len(node.value)}")
        return ()
    names: list[str] = []
    for i, n in enumerate(node.value):
        name = n.value
        if not isinstance(name, str) or not 0 < len(name) <= 128 or not name.isprintable():
            ck.fail(f"{path}[{i}]", n, "must be a name of 1 to 128 printable characters")
        elif name in features:
            ck.fail(f"{path}[{i}]", n, f"{name!r} is a feature of the model; an attribute is a value it does not use")
        elif name in names:
            ck.fail(f"{path}[{i}]", n, f"duplicate attribute {name!r}")
        else:
            names.append(name)
    return tuple(names) if len(names) == len(node.value) else ()


def _group_features(
    ck: Checker, path: str, node: Node | None, features: list[Feature], attributes: tuple[str, ...]
) -> list[str] | None:
    """The names a ``features:`` list of segments or fairness gives: distinct categorical features or
    attributes of the model. None (after saying why) when it is not such a list."""
    if node is None:
        return None
    allowed = [f.name for f in features if f.type == "categorical"] + list(attributes)
    names = [n.value for n in node.value] if isinstance(node.value, list) else None
    if not names or any(n not in allowed for n in names) or len(set(names)) < len(names):
        ck.fail(
            path,
            node,
            "must list distinct categorical features or attributes of the model "
            f"(categorical features: {sorted(f.name for f in features if f.type == 'categorical')}, "
            f"attributes: {list(attributes)})",
        )
        return None
    return names


def _fairness(
    ck: Checker, path: str, node: Node, task: str, features: list[Feature], attributes: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...], str]:
    """models[].fairness: {features, reference_group, disparity}; nothing (no fairness) when anything is wrong."""
    none: tuple[tuple[str, ...], tuple[tuple[str, str], ...], str] = ((), (), "spread")
    fm = ck.mapping(path, node, {"features", "reference_group", "disparity"}, required=("features",))
    if not fm:
        return none
    if task != "binary":
        # Selection rate, true and false positive rates all count one class as the favourable outcome.
        ck.fail(path, node, f"applies to binary models only: its rates need a positive class (task is {task})")
        return none
    ok = True
    fnode = fm.get("features")
    names = _group_features(ck, f"{path}.features", fnode, features, attributes)
    if fnode is not None and names is None:
        ok = False
    disparity = None
    if "disparity" in fm:
        disparity = fm["disparity"].value
        if disparity not in FAIRNESS_DISPARITIES:
            ck.fail(f"{path}.disparity", fm["disparity"], f"must be one of {', '.join(FAIRNESS_DISPARITIES)}")
            ok = False
    reference: dict[str, str] = {}
    rnode = fm.get("reference_group")
    if rnode is not None:
        if disparity == "spread":
            ck.fail(f"{path}.reference_group", rnode, "only applies to disparity: reference")
            ok = False
        elif not isinstance(rnode.value, dict) or not rnode.value:
            ck.fail(f"{path}.reference_group", rnode, "must map each fairness feature to its reference group")
            ok = False
        else:
            for feature, vnode in rnode.value.items():
                value = _class_name(vnode)
                if names is not None and feature not in names:
                    ck.fail(f"{path}.reference_group.{feature}", vnode, f"not a fairness feature (features: {names})")
                    ok = False
                elif value is None or value == "" or not value.isprintable():
                    ck.fail(f"{path}.reference_group.{feature}", vnode, "must be a value of the feature")
                    ok = False
                elif value == "other":
                    ck.fail(
                        f"{path}.reference_group.{feature}",
                        vnode,
                        "'other' is the bucket of the values beyond segments.top, not a group",
                    )
                    ok = False
                else:
                    reference[feature] = value
    if disparity is None:
        disparity = "reference" if rnode is not None else "spread"
    if disparity == "reference" and ok and names:
        lacking = [n for n in names if n not in reference]
        if lacking:
            ck.fail(f"{path}.reference_group", rnode or node, f"disparity: reference needs a group for {lacking}")
            ok = False
    if not ok or not names:
        return none
    return tuple(names), tuple((n, reference[n]) for n in names if n in reference), disparity


def parse_config(text: str, source: str = "<config>", base_dir: str = "") -> Config:
    """Validate YAML text into a :class:`Config`; raise :class:`ConfigError` listing every problem."""
    try:
        stream = io.StringIO(text)
        stream.name = source  # YAML's own messages then name the file, not "<unicode string>"
        root = yaml.compose(stream, Loader=yaml.SafeLoader)
        tree = to_nodes(root) if root is not None else Node(None, 1, 1)
    except ConfigError as exc:
        raise ConfigError(exc.problems, source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], source) from None

    if tree.value is None:
        raise ConfigError(["the file is empty; it needs at least a 'models:' list"], source)
    ck = Checker()
    top = ck.mapping(
        "",
        tree,
        {
            "windows",
            "buckets_per_window",
            "limits",
            "histograms",
            "thresholds",
            "models",
            "storage",
            "joins",
            "auth",
            "registry",
        },
        required=("models",),
    )

    windows, window_seconds = DEFAULT_WINDOWS, (300, 3600, 86400)
    if "windows" in top:
        wn = top["windows"]
        if not isinstance(wn.value, list) or not wn.value:
            ck.fail("windows", wn, 'must be a non-empty list of durations such as ["5m", "1h", "1d"]')
        else:
            secs = [ck.duration(f"windows[{i}]", w) for i, w in enumerate(wn.value)]
            if all(s is not None for s in secs):
                bad = [i for i, s in enumerate(secs) if not 10 <= s <= 90 * 86400]  # type: ignore[operator]
                same = [i for i, s in enumerate(secs) if s in secs[:i]]
                for i in bad:
                    ck.fail(
                        f"windows[{i}]", wn.value[i], f"{wn.value[i].value!r}: a window must be from 10s to 90d long"
                    )
                for i in same:
                    first = wn.value[secs.index(secs[i])].value
                    ck.fail(
                        f"windows[{i}]",
                        wn.value[i],
                        f"{wn.value[i].value!r} is as long as {first!r}, an earlier window",
                    )
                if not bad and not same:
                    windows = tuple(w.value for w in wn.value)
                    window_seconds = tuple(secs)  # type: ignore[arg-type]

    bpw = 60
    if "buckets_per_window" in top:
        bpw = ck.positive_int("buckets_per_window", top["buckets_per_window"], 2, 1000) or bpw

    limits = Limits()
    if "limits" in top:
        spec = {
            "max_body_bytes": ("int", 1024, 1 << 30),
            "max_batch_size": ("int", 1, 1_000_000),
            "pending_ttl": ("duration", 60, 365 * 86400),
            "max_pending_per_model": ("int", 1, 100_000_000),
            "max_versions_per_model": ("int", 1, 1000),
            "max_servers": ("int", 1, 100_000),
            "server_stale": ("duration", 10, 86400),
            "ingest_queue_timeout": ("seconds", 0, 600),
        }
        lm = ck.mapping("limits", top["limits"], set(spec))
        values: dict[str, int] = {}
        for key, sub in lm.items():
            kind, low, high = spec[key]
            if kind == "seconds":
                v = ck.fine_duration(f"limits.{key}", sub, low, high)
            elif kind == "duration":
                v = ck.duration(f"limits.{key}", sub, low, high)
            else:
                v = ck.positive_int(f"limits.{key}", sub, low, high)
            if v is not None:
                values[key + "_seconds" if kind != "int" else key] = v
        limits = Limits(**values)

    latency, delay = DEFAULT_LATENCY_BUCKETS, DEFAULT_LABEL_DELAY_BUCKETS
    if "histograms" in top:
        hm = ck.mapping("histograms", top["histograms"], {"latency_buckets", "label_delay_buckets"})
        if "latency_buckets" in hm:
            latency = ck.buckets("histograms.latency_buckets", hm["latency_buckets"]) or latency
        if "label_delay_buckets" in hm:
            delay = ck.buckets("histograms.label_delay_buckets", hm["label_delay_buckets"]) or delay

    thresholds = {k: float(v[0]) for k, v in THRESHOLDS.items()}
    if "thresholds" in top:
        thresholds = _thresholds(ck, "thresholds", top["thresholds"], thresholds)

    models: list[ModelConfig] = []
    if "models" in top:
        mn = top["models"]
        if not isinstance(mn.value, list) or not mn.value:
            ck.fail("models", mn, "must be a non-empty list of models")
        else:
            names: set[str] = set()
            for i, node in enumerate(mn.value):
                model = _model(ck, f"models[{i}]", node, thresholds, base_dir)
                if model is None:
                    continue
                if model.name in names:
                    ck.fail(f"models[{i}].name", node.value.get("name"), f"duplicate model name {model.name!r}")
                names.add(model.name)
                models.append(model)

    storage = _storage(ck, top["storage"], base_dir) if "storage" in top else _storage_default(base_dir)
    join_store = _joins(ck, top["joins"]) if "joins" in top else Joins()
    auth = _auth(ck, top["auth"], base_dir, {m.name for m in models}) if "auth" in top else Auth()
    registry = _registry(ck, top["registry"]) if "registry" in top else Registry()

    if ck.problems:
        raise ConfigError(ck.problems, source)
    return Config(
        tuple(models), windows, window_seconds, bpw, limits, latency, delay, storage, join_store, auth, registry
    )


def _mlflow_installed() -> bool:
    return importlib.util.find_spec("mlflow") is not None


def _registry(ck: Checker, node: Node) -> Registry:
    """registry: {tracking_uri, run_url_template, lookup_timeout}."""
    rm = ck.mapping("registry", node, {"tracking_uri", "run_url_template", "lookup_timeout"})
    values: dict[str, Any] = {}
    if "tracking_uri" in rm:
        v = rm["tracking_uri"].value
        # MLflow's own forms: a URI with a scheme (http, https, file, databricks...) or "databricks".
        if not isinstance(v, str) or not (v == "databricks" or _MODEL_URI_RE.fullmatch(v)) or not v.isprintable():
            ck.fail(
                "registry.tracking_uri",
                rm["tracking_uri"],
                "must be an MLflow tracking URI such as http://mlflow:5000, file:///srv/mlruns or databricks",
            )
        elif not _mlflow_installed():
            ck.fail(
                "registry.tracking_uri",
                rm["tracking_uri"],
                "looking up the registry needs the MLflow client, which is not installed: pip install 'mlmon[mlflow]'",
            )
        else:
            values["tracking_uri"] = v
    if "run_url_template" in rm:
        tn = rm["run_url_template"]
        v = tn.value
        if not isinstance(v, str) or not v.startswith(("http://", "https://")) or not v.isprintable():
            ck.fail("registry.run_url_template", tn, "must be an http:// or https:// URL with placeholders")
        else:
            try:
                run_url_fields(v)
                values["run_url_template"] = v
            except ValueError as exc:
                ck.fail("registry.run_url_template", tn, str(exc))
    if "lookup_timeout" in rm:
        v = ck.fine_duration("registry.lookup_timeout", rm["lookup_timeout"], 1, 300)
        if v is not None:
            values["lookup_timeout_seconds"] = v
    template = values.get("run_url_template", "")
    if "{experiment_id}" in template and "tracking_uri" not in rm:
        ck.fail(
            "registry.run_url_template",
            rm["run_url_template"],
            "{experiment_id} is only known to the registry: set registry.tracking_uri to look it up",
        )
    return Registry(**values)


def _registry_info(ck: Checker, path: str, node: Node) -> RegistryInfo | None:
    """One version's {run_id, model_uri, name, version}, each under its rule."""
    m = ck.mapping(path, node, set(REGISTRY_FIELDS))
    if not m:
        if isinstance(node.value, dict):
            ck.fail(path, node, f"must give at least one of {', '.join(REGISTRY_FIELDS)}")
        return None
    values: dict[str, str] = {}
    for key, sub in m.items():
        v = registry_value(key, sub.value)
        if v is None:
            ck.fail(f"{path}.{key}", sub, f"must be {REGISTRY_FIELDS[key]}, got {sub.value!r}")
        else:
            values[key] = v
    return RegistryInfo(**values) if len(values) == len(m) else None


def _model_registry(ck: Checker, path: str, node: Node) -> tuple[str, tuple[tuple[str, RegistryInfo], ...]]:
    """models[].registry: {name, versions: {<version>: {run_id, model_uri, name, version}}}."""
    m = ck.mapping(path, node, {"name", "versions"})
    name = ""
    if "name" in m:
        v = registry_value("name", m["name"].value)
        if v is None:
            ck.fail(f"{path}.name", m["name"], f"must be {REGISTRY_FIELDS['name']}")
        else:
            name = v
    versions: list[tuple[str, RegistryInfo]] = []
    vn = m.get("versions")
    if vn is not None:
        if not isinstance(vn.value, dict) or not vn.value:
            ck.fail(f"{path}.versions", vn, "must map model versions (as predictions send them) to registry entries")
        else:
            for version, sub in vn.value.items():
                vpath = f"{path}.versions.{version}"
                if not _MODEL_VERSION_RE.fullmatch(version):
                    ck.fail(vpath, sub, "a model version is 1-64 characters of letters, digits and _.+:@-")
                    continue
                info = _registry_info(ck, vpath, sub)
                if info is not None:
                    versions.append((version, info))
    return name, tuple(versions)


MIN_TOKEN_LENGTH = 16


def _auth(ck: Checker, node: Node, base_dir: str, model_names: set[str]) -> Auth:
    """auth: {enabled, tokens: [{name, token_file | token_env | sha256, models, actions}], audit_log}."""
    from exporter.security.auth import ACTIONS, ALL_MODELS, Token, digest

    am = ck.mapping("auth", node, {"enabled", "tokens", "audit_log"})
    tokens: list[Token] = []
    names: set[str] = set()
    tn = am.get("tokens")
    if tn is not None:
        if not isinstance(tn.value, list):
            ck.fail("auth.tokens", tn, "must be a list of tokens")
        else:
            for i, item in enumerate(tn.value):
                path = f"auth.tokens[{i}]"
                tm = ck.mapping(
                    path, item, {"name", "token_file", "token_env", "sha256", "models", "actions"}, ("name", "actions")
                )
                if not tm:
                    continue
                name = tm["name"].value if "name" in tm else None
                if not isinstance(name, str) or not name.isprintable() or not 0 < len(name) <= 64:
                    ck.fail(f"{path}.name", tm.get("name", item), "must be a printable name of 1 to 64 characters")
                    continue
                if name in names:
                    ck.fail(f"{path}.name", tm["name"], f"duplicate token name {name!r}")
                names.add(name)
                sources = [k for k in ("token_file", "token_env", "sha256") if k in tm]
                if len(sources) != 1:
                    ck.fail(path, item, "needs exactly one of token_file, token_env, sha256")
                    continue
                token_digest = _token_digest(ck, f"{path}.{sources[0]}", sources[0], tm[sources[0]], base_dir, digest)
                models = _string_list(ck, f"{path}.models", tm.get("models"), default=[ALL_MODELS])
                for m in models:
                    if m != ALL_MODELS and m not in model_names:
                        ck.fail(f"{path}.models", tm["models"], f"unknown model {m!r}")
                if "actions" not in tm:
                    continue  # reported: "is required"
                actions = _string_list(ck, f"{path}.actions", tm["actions"], default=[])
                for a in actions:
                    if a not in ACTIONS:
                        ck.fail(
                            f"{path}.actions", tm["actions"], f"unknown action {a!r}; allowed: {', '.join(ACTIONS)}"
                        )
                if not actions:
                    ck.fail(f"{path}.actions", tm["actions"], f"must list actions from {', '.join(ACTIONS)}")
                if token_digest is not None:
                    tokens.append(Token(name, token_digest, frozenset(models), frozenset(actions)))
    enabled = bool(tokens) or tn is not None
    if "enabled" in am:
        v = am["enabled"].value
        if not isinstance(v, bool):
            ck.fail("auth.enabled", am["enabled"], "must be true or false")
        else:
            enabled = v
    if enabled and not tokens and not ck.problems:
        ck.fail("auth.tokens", node, "authentication is enabled but no token is configured")
    audit = ""
    if "audit_log" in am:
        v = am["audit_log"].value
        if not isinstance(v, str) or not v:
            ck.fail("auth.audit_log", am["audit_log"], 'must be a file path, or "-" for stderr')
        else:
            audit = v if v == "-" or os.path.isabs(v) or not base_dir else os.path.join(base_dir, v)
    return Auth(enabled, tuple(tokens), audit)


def _token_digest(ck: Checker, path: str, kind: str, node: Node, base_dir: str, digest) -> bytes | None:
    v = node.value
    if not isinstance(v, str) or not v:
        ck.fail(path, node, "must be a non-empty string")
        return None
    if kind == "sha256":
        if not re.fullmatch(r"[0-9a-fA-F]{64}", v):
            ck.fail(path, node, "must be the 64 hex digits of the token's SHA-256 (sha256sum)")
            return None
        return bytes.fromhex(v)
    if kind == "token_env":
        value = os.environ.get(v)
        if value is None:
            ck.fail(path, node, f"the environment variable {v} is not set")
            return None
    else:
        file = v if os.path.isabs(v) or not base_dir else os.path.join(base_dir, v)
        try:
            with open(file, encoding="utf-8") as fh:
                value = fh.read()
        except OSError as exc:
            ck.fail(path, node, f"cannot read {file}: {exc.strerror}")
            return None
    value = value.strip()
    if len(value) < MIN_TOKEN_LENGTH:
        # The value itself is never echoed: only its length.
        ck.fail(
            path, node, f"the token is {len(value)} characters; use at least {MIN_TOKEN_LENGTH} (openssl rand -hex 32)"
        )
        return None
    return digest(value)


def _string_list(ck: Checker, path: str, node: Node | None, default: list[str]) -> list[str]:
    if node is None:
        return default
    if not isinstance(node.value, list) or not all(isinstance(x.value, str) for x in node.value):
        ck.fail(path, node, "must be a list of strings")
        return []
    return [x.value for x in node.value]


def _storage_default(base_dir: str) -> Storage:
    return Storage(path=os.path.join(base_dir, Storage.path) if base_dir else Storage.path)


def _storage(ck: Checker, node: Node, base_dir: str) -> Storage:
    sm = ck.mapping(
        "storage",
        node,
        {
            "backend",
            "path",
            "sync",
            "checkpoint_interval",
            "checkpoint_bytes",
            "max_journal_bytes",
            "idempotency_ttl",
            "max_idempotency_keys",
        },
    )
    values: dict[str, Any] = {}
    for key, allowed in (("backend", ("sqlite", "memory")), ("sync", ("normal", "full"))):
        if key in sm:
            v = sm[key].value
            if v not in allowed:
                ck.fail(f"storage.{key}", sm[key], f"must be one of {', '.join(allowed)}, got {v!r}")
            else:
                values[key] = v
    path = Storage.path
    if "path" in sm:
        if not isinstance(sm["path"].value, str) or not sm["path"].value.strip():
            ck.fail("storage.path", sm["path"], "must be a directory path")
        else:
            path = sm["path"].value
    values["path"] = os.path.join(base_dir, path) if base_dir and not os.path.isabs(path) else path
    for key, low, high in (("checkpoint_interval", 1, 86400), ("idempotency_ttl", 0, 30 * 86400)):
        if key in sm:
            v = ck.duration(f"storage.{key}", sm[key], low, high)
            if v is not None:
                values[key + "_seconds"] = v
    for key, low, high in (
        ("checkpoint_bytes", 1 << 16, 1 << 40),
        ("max_journal_bytes", 1 << 16, 1 << 42),
        ("max_idempotency_keys", 0, 100_000_000),
    ):
        if key in sm:
            v = ck.positive_int(f"storage.{key}", sm[key], low, high)
            if v is not None:
                values[key] = v
    storage = Storage(**values)
    if storage.max_journal_bytes < storage.checkpoint_bytes:
        ck.fail("storage.max_journal_bytes", node, "must be at least storage.checkpoint_bytes")
    return storage


def _joins(ck: Checker, node: Node) -> Joins:
    jm = ck.mapping("joins", node, {"backend", "redis_url", "redis_prefix", "redis_timeout", "redis_password_file"})
    values: dict[str, Any] = {}
    if "backend" in jm:
        v = jm["backend"].value
        if v not in ("local", "redis"):
            ck.fail("joins.backend", jm["backend"], f"must be local or redis, got {v!r}")
        else:
            values["backend"] = v
    if "redis_url" in jm:
        v = jm["redis_url"].value
        if not isinstance(v, str) or not v.startswith(("redis://", "rediss://", "unix://")):
            ck.fail("joins.redis_url", jm["redis_url"], "must be a redis://, rediss:// or unix:// URL")
        else:
            values["redis_url"] = v
    if "redis_prefix" in jm:
        v = jm["redis_prefix"].value
        if not isinstance(v, str) or not v or not v.replace("_", "").replace("-", "").replace(".", "").isalnum():
            ck.fail("joins.redis_prefix", jm["redis_prefix"], "must be letters, digits, '_', '-' or '.'")
        else:
            values["redis_prefix"] = v
    if "redis_password_file" in jm:
        v = jm["redis_password_file"].value
        if not isinstance(v, str) or not v:
            ck.fail("joins.redis_password_file", jm["redis_password_file"], "must be a file path")
        else:
            values["redis_password_file"] = v
    if "redis_timeout" in jm:
        v = ck.fine_duration("joins.redis_timeout", jm["redis_timeout"], 0.01, 600)
        if v is not None:
            values["redis_timeout_seconds"] = v
    return Joins(**values)


def read_config_file(path: str) -> str:
    """The text of a config file; :class:`ConfigError` naming the file when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError([f"cannot read the config file: {exc.strerror}"], path) from None


def load_config(path: str) -> Config:
    """Read and validate a config file; raise :class:`ConfigError` (also for a missing file)."""
    return parse_config(read_config_file(path), path, os.path.dirname(os.path.abspath(path)))
