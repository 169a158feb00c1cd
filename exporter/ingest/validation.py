"""Validate ingest payloads as a whole batch and turn them into normalised events.

A batch is accepted only if every item is valid; otherwise every problem is reported with the item's
index, the field and a reason code (the ``reason`` label of ``mlmon_ingest_errors_total``).
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from exporter.config import REGISTRY_FIELDS, Config, ModelConfig, RegistryInfo, registry_value
from exporter.ingest import schema
from exporter.ingest.schema import (
    FUTURE_SKEW_SECONDS,
    MAX_ID_LENGTH,
    MAX_MAGNITUDE,
    MAX_RESOURCE,
    MAX_SERVER_LENGTH,
    MAX_STRING_LENGTH,
    MAX_TIMESTAMP_LENGTH,
    SCORE_SUM_TOLERANCE,
    VERSION_PATTERN,
)

# Reason codes: a fixed set, so the metric's cardinality is bounded. Documented in docs/api.md.
REASONS = (
    "malformed_json",
    "malformed_arrow",
    "invalid_body",
    "body_too_large",
    "batch_too_large",
    "unknown_model",
    "unknown_field",
    "missing_field",
    "invalid_value",
    "unknown_class",
    "unknown_feature",
    "unknown_attribute",
    "invalid_reference",
    "invalid_idempotency_key",
    "idempotency_key_reused",
)

# fullmatch, not match: "$" also matches before a trailing newline, so "v1\n" would pass.
_VERSION_RE = re.compile(VERSION_PATTERN)

PREDICTION_FIELDS = schema.PREDICTION.names
LABEL_FIELDS = schema.LABEL.names
RESOURCE_FIELDS = schema.RESOURCES.names


@dataclass(frozen=True)
class Problem:
    index: int
    field: str
    reason: str
    message: str
    model: str = ""

    def as_json(self) -> dict:
        return {"index": self.index, "field": self.field, "reason": self.reason, "message": self.message}


class Invalid(Exception):
    """The whole payload is rejected; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, problems: list[Problem]):
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = problems


@dataclass(slots=True)
class Prediction:
    model: str
    version: str
    id: str | None
    timestamp: float
    prediction: Any  # class index (classification) or float (regression)
    scores: tuple[float, ...] | None  # per ModelConfig.score_classes; None when not given
    latency: float | None
    label: Any  # class index or float, or None
    features: dict | None = None
    feature_errors: tuple[tuple[str, str], ...] = ()  # (feature, reason) left out under invalid_features: count
    registry: RegistryInfo | None = None  # the model version in a model registry, when the prediction says
    attributes: dict | None = None  # attribute name -> value (models[].attributes): segments, not drift
    attributions: Any = None  # feature name -> its attribution (models[].attributions); a struct on the fast path


@dataclass(slots=True)
class Label:
    model: str
    id: str
    label: Any


@dataclass(frozen=True)
class ResourceReport:
    server: str
    models: tuple[str, ...]
    cpu_seconds: float
    resident_memory_bytes: float


# ASCII digits only ("\d" also takes other scripts' digits, which int() reads), matched in full (fullmatch:
# "$" would also match before a trailing newline).
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)


def parse_rfc3339(text: str) -> float | None:
    """Unix seconds of an RFC 3339 date-time with a time zone (the same on every Python), or None."""
    m = _RFC3339.fullmatch(text)
    if not m:
        return None
    year, month, day, hour, minute, second, frac, zulu, sign, tzh, tzm = m.groups()
    if not zulu and (int(tzh) > 23 or int(tzm) > 59):  # "+00:99" is not an offset of 1h39m
        return None
    try:
        offset = 0 if zulu else (1 if sign == "+" else -1) * (int(tzh) * 60 + int(tzm))
        tz = timezone(timedelta(minutes=offset))
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=tz)
    except ValueError:  # day 31 of April, hour 25, an offset of 24h or more...
        return None
    return moment.timestamp() + (int(frac) / 10 ** len(frac) if frac else 0.0)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bounded(v: Any) -> bool:
    return _finite(v) and -MAX_MAGNITUDE <= v <= MAX_MAGNITUDE


def _class_key(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return None


class _Item:
    """Collects the problems of one item."""

    __slots__ = ("index", "model", "problems")

    def __init__(self, index: int, problems: list[Problem]):
        self.index, self.model, self.problems = index, "", problems

    def fail(self, field: str, reason: str, message: str) -> None:
        self.problems.append(Problem(self.index, field, reason, message, self.model))


class Validator:
    """Validates payloads against the configured models; one instance per app, no mutable state."""

    def __init__(self, config: Config, clock):
        self.config = config
        self.clock = clock
        self.models = {m.name: m for m in config.models}
        self.class_index = {m.name: {c: i for i, c in enumerate(m.classes)} for m in config.models}
        self.features = {m.name: {f.name: f.type for f in m.features} for m in config.models}
        self.numeric = {m.name: frozenset(f.name for f in m.features if f.type == "numeric") for m in config.models}
        self.attributes = {m.name: frozenset(m.attributes) for m in config.models}

    # -- shared pieces ------------------------------------------------------------------------------

    def _items(self, body: Any, key: str) -> list:
        if isinstance(body, dict) and key in body and len(body) == 1:
            items = body[key]
            if not isinstance(items, list):
                raise Invalid(400, f"'{key}' must be a list", [Problem(0, key, "invalid_body", "must be a list")])
        elif isinstance(body, dict):
            items = [body]
        else:
            raise Invalid(
                400,
                f'the body must be a JSON object, or {{"{key}": [...]}}',
                [Problem(0, "", "invalid_body", "the body must be a JSON object")],
            )
        if not items:
            raise Invalid(400, f"'{key}' is empty", [Problem(0, key, "invalid_body", "must hold at least one item")])
        limit = self.config.limits.max_batch_size
        if len(items) > limit:
            raise Invalid(
                413,
                f"the batch holds {len(items)} items; the limit is {limit} (limits.max_batch_size)",
                [Problem(0, key, "batch_too_large", f"at most {limit} items per request")],
            )
        return items

    def _model(self, it: _Item, item: Any, allowed: frozenset) -> ModelConfig | None:
        if not isinstance(item, dict):
            it.fail("", "invalid_body", "each item must be a JSON object")
            return None
        name = item.get("model")
        if name is None:
            it.fail("model", "missing_field", "is required")
            return None
        model = self.models.get(name) if isinstance(name, str) else None
        if model is None:
            known = ", ".join(sorted(self.models))
            it.fail("model", "unknown_model", f"unknown model {str(name)[:100]!r}; known models: {known}")
            return None
        it.model = model.name
        if not item.keys() <= allowed:
            for key in item:
                if key not in allowed:
                    it.fail(str(key)[:100], "unknown_field", f"unknown field; allowed: {', '.join(sorted(allowed))}")
        return model

    def _id(self, it: _Item, value: Any, required: bool) -> str | None:
        if value is None:
            if required:
                it.fail("id", "missing_field", "is required to join a label to its prediction")
            return None
        key = _class_key(value)
        if key is None or not 0 < len(key) <= MAX_ID_LENGTH:
            it.fail("id", "invalid_value", f"must be a string or integer of 1 to {MAX_ID_LENGTH} characters")
            return None
        return key

    def _outcome(self, it: _Item, model: ModelConfig, field: str, value: Any) -> Any:
        """A class index for classification, a float for regression."""
        if model.task == "regression":
            if not _bounded(value):
                it.fail(
                    field,
                    "invalid_value",
                    f"must be a finite number within ±1e100 for a regression model, got {_show(value)}",
                )
                return None
            return float(value)
        key = _class_key(value)
        index = self.class_index[model.name].get(key) if key is not None else None
        if index is None:
            it.fail(field, "unknown_class", f"{_show(value)} is not one of the classes {list(model.classes)}")
        return index

    # -- predictions ------------------------------------------------------------------------------

    def predictions(self, body: Any, now: float | None = None) -> list[Prediction]:
        """Validate a prediction payload; raise :class:`Invalid` listing every problem.

        ``now`` (default: the clock) stamps predictions without a timestamp; a journal replay passes the
        request's arrival time so that the replay is exactly the first run.
        """
        items = self._items(body, "predictions")
        problems: list[Problem] = []
        out: list[Prediction] = []
        now = self.clock() if now is None else now
        for index, item in enumerate(items):
            it = _Item(index, problems)
            before = len(problems)
            model = self._model(it, item, PREDICTION_FIELDS)
            if model is None:
                continue
            version = item.get("version", "default")
            if version != "default" and (not isinstance(version, str) or not _VERSION_RE.fullmatch(version)):
                it.fail("version", "invalid_value", "must be 1-64 characters of letters, digits and _.+:@-")
            pid = self._id(it, item.get("id"), required=False)
            ts = self._timestamp(it, item.get("timestamp"), now)
            features, feature_errors = self._features(it, model, item.get("features"))
            attributes = self._attributes(it, model, item.get("attributes"))
            attributions = self._attributions(it, model, item.get("attributions"))
            if "prediction" not in item:
                it.fail("prediction", "missing_field", "is required")
                pred = None
            else:
                pred = self._outcome(it, model, "prediction", item["prediction"])
            scores = self._scores(it, model, item.get("scores"), item.get("score"))
            latency = item.get("latency_seconds")
            if latency is not None and not (_bounded(latency) and latency >= 0):
                it.fail("latency_seconds", "invalid_value", f"must be a number from 0 to 1e100, got {_show(latency)}")
            label = self._outcome(it, model, "label", item["label"]) if item.get("label") is not None else None
            registry = self._registry(it, item["registry"]) if item.get("registry") is not None else None
            if len(problems) == before:
                out.append(
                    Prediction(
                        model.name,
                        version,
                        pid,
                        ts,
                        pred,
                        scores,
                        float(latency) if latency is not None else None,
                        label,
                        features,
                        feature_errors,
                        registry,
                        attributes,
                        attributions,
                    )
                )
        if problems:
            raise _rejection(problems, len(items))
        return out

    def _timestamp(self, it: _Item, value: Any, now: float) -> float:
        if value is None:
            return now
        if _finite(value):
            ts = float(value)
        elif isinstance(value, str) and len(value) <= MAX_TIMESTAMP_LENGTH:
            parsed = parse_rfc3339(value)
            if parsed is None:
                it.fail("timestamp", "invalid_value", "must be unix seconds or RFC 3339 with a time zone")
                return now
            ts = parsed
        else:
            it.fail("timestamp", "invalid_value", "must be unix seconds or an RFC 3339 string")
            return now
        if ts <= 0:
            it.fail("timestamp", "invalid_value", "must be after 1970")
        elif ts > now + FUTURE_SKEW_SECONDS:
            hint = ""
            if 946_684_800 <= ts / 1000 <= now + FUTURE_SKEW_SECONDS:  # a time since 2000, in milliseconds
                hint = "; it looks like milliseconds: send unix seconds (milliseconds / 1000)"
            it.fail(
                "timestamp",
                "invalid_value",
                f"is {ts - now:.0f}s in the future (clock skew up to {FUTURE_SKEW_SECONDS:.0f}s is tolerated){hint}",
            )
        return min(ts, now)

    def _features(self, it: _Item, model: ModelConfig, features: Any) -> tuple[dict | None, tuple]:
        """The usable features and, when the model counts bad features (``invalid_features: count``)
        instead of rejecting them, the ``(feature, reason)`` of each one left out."""
        if features is None:
            return None, ()
        if not isinstance(features, dict):
            it.fail("features", "invalid_value", "must be an object of feature name to value")
            return None, ()
        types, numeric = self.features[model.name], self.numeric[model.name]
        # (name, reason, message) of each bad value: rejected, or left out and counted (invalid_features: count).
        bad: list[tuple[str, str, str]] = []
        # The hot loop of ingest: exact type checks first, the general (and error) path after.
        for name, value in features.items():
            if name in numeric:
                # A chained comparison is False for NaN too: the fast path takes finite, bounded floats only.
                if type(value) is float:
                    if -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE:
                        continue
                elif type(value) is int or value is None:
                    continue
                if not _bounded(value):
                    bad.append(
                        (name, "type_error", f"must be a finite number within ±1e100 or null, got {_show(value)}")
                    )
                continue
            kind = types.get(name)
            vtype = type(value)
            if kind is None:
                hint = (
                    " (it is an attribute: send it under 'attributes')" if name in self.attributes[model.name] else ""
                )
                bad.append((name, "unknown_feature", f"is not a feature of model {model.name!r}{hint}"))
            elif vtype is str:
                if len(value) > MAX_STRING_LENGTH:
                    it.fail(f"features.{name}", "invalid_value", f"must be at most {MAX_STRING_LENGTH} characters")
            elif not (value is None or vtype is bool or _finite(value)):
                bad.append((name, "type_error", "must be a string, number, boolean or null"))
        if not bad:
            return features, ()
        if model.invalid_features != "count":
            for name, reason, message in bad:
                it.fail(f"features.{str(name)[:100]}", "invalid_value" if reason == "type_error" else reason, message)
            return features, ()
        dropped = {name for name, _, _ in bad}
        # Unknown names are counted without their name: label values stay bounded by the config.
        errors = tuple(("" if reason == "unknown_feature" else name, reason) for name, reason, _ in bad)
        return {k: v for k, v in features.items() if k not in dropped}, errors

    def _attributions(self, it: _Item, model: ModelConfig, attributions: Any) -> dict | None:
        """A prediction's ``attributions``: feature name -> a finite number (null: left out). Always strict: a
        model must say it monitors them (models[].attributions), and every name must be one of its features."""
        if attributions is None:
            return None
        if not model.attributions:
            it.fail(
                "attributions",
                "invalid_value",
                f"model {model.name!r} does not monitor attributions (attributions: true in its config)",
            )
            return None
        if not isinstance(attributions, dict):
            it.fail("attributions", "invalid_value", "must be an object of feature name to a number")
            return None
        features = self.features[model.name]
        for name, value in attributions.items():
            if name not in features:
                it.fail(
                    f"attributions.{str(name)[:100]}",
                    "unknown_feature",
                    f"is not a feature of model {model.name!r}; attributions are per feature",
                )
            elif value is not None and not _bounded(value):
                it.fail(
                    f"attributions.{name}",
                    "invalid_value",
                    f"must be a number from -{MAX_MAGNITUDE:g} to {MAX_MAGNITUDE:g}, got {_show(value)}",
                )
        return attributions

    def _attributes(self, it: _Item, model: ModelConfig, attributes: Any) -> dict | None:
        """A prediction's ``attributes``: names declared under the model's attributes, categorical values.
        Always checked strictly (``invalid_features`` is about features): an attribute splits segments and
        fairness groups, and a misspelt one would silently fold its predictions into no group."""
        if attributes is None:
            return None
        if not isinstance(attributes, dict):
            it.fail("attributes", "invalid_value", "must be an object of attribute name to value")
            return None
        declared = self.attributes[model.name]
        for name, value in attributes.items():
            if name not in declared:
                hint = (
                    f"; attributes: {sorted(declared)}"
                    if declared
                    else "; the model declares none (models[].attributes in the config)"
                )
                if name in self.features[model.name]:
                    hint = " (it is a feature: send it under 'features')"
                it.fail(
                    f"attributes.{str(name)[:100]}",
                    "unknown_attribute",
                    f"is not an attribute of model {model.name!r}{hint}",
                )
            elif type(value) is str:
                if len(value) > MAX_STRING_LENGTH:
                    it.fail(f"attributes.{name}", "invalid_value", f"must be at most {MAX_STRING_LENGTH} characters")
            elif not (value is None or type(value) is bool or _finite(value)):
                it.fail(f"attributes.{name}", "invalid_value", "must be a string, number, boolean or null")
        return attributes

    def _registry(self, it: _Item, value: Any) -> RegistryInfo | None:
        """A prediction's ``registry`` object: some of run_id, model_uri, name and version, each under its rule."""
        if not isinstance(value, dict) or not value:
            it.fail("registry", "invalid_value", f"must be an object with some of {', '.join(REGISTRY_FIELDS)}")
            return None
        kept: dict[str, str] = {}
        for key, v in value.items():
            if key not in REGISTRY_FIELDS:
                allowed = ", ".join(REGISTRY_FIELDS)
                it.fail(f"registry.{str(key)[:100]}", "unknown_field", f"unknown field; allowed: {allowed}")
                continue
            normal = registry_value(key, v)
            if normal is None:
                it.fail(f"registry.{key}", "invalid_value", f"must be {REGISTRY_FIELDS[key]}, got {_show(v)}")
            else:
                kept[key] = normal
        return RegistryInfo(**kept) if len(kept) == len(value) else None

    def _scores(self, it: _Item, model: ModelConfig, scores: Any, score: Any) -> tuple[float, ...] | None:
        if score is not None:
            if model.task != "binary":
                it.fail("score", "invalid_value", "a single score applies to binary models; send 'scores' instead")
                return None
            if scores is not None:
                it.fail("score", "invalid_value", "send either 'score' or 'scores', not both")
                return None
            if not (_finite(score) and 0 <= score <= 1):
                it.fail("score", "invalid_value", f"must be a probability from 0 to 1, got {_show(score)}")
                return None
            return (float(score),)
        if scores is None or model.task == "regression":
            if scores is not None:
                it.fail("scores", "invalid_value", "scores apply to classification models only")
            return None
        if not isinstance(scores, dict) or not scores:
            it.fail("scores", "invalid_value", "must be an object of class to probability")
            return None
        index = self.class_index[model.name]
        probs: dict[int, float] = {}
        for key, p in scores.items():
            if key not in index:
                it.fail(f"scores.{str(key)[:100]}", "unknown_class", f"is not one of the classes {list(model.classes)}")
            elif not (_finite(p) and 0 <= p <= 1):
                it.fail(f"scores.{key}", "invalid_value", f"must be a probability from 0 to 1, got {_show(p)}")
            else:
                probs[index[key]] = float(p)
        if len(probs) != len(scores):
            return None
        total = sum(probs.values())
        if model.task == "binary":
            positive = index[model.positive_class]
            if positive not in probs:
                it.fail(f"scores.{model.positive_class}", "missing_field", "the positive class's score is required")
                return None
            if len(probs) == 2 and abs(total - 1) > SCORE_SUM_TOLERANCE:
                it.fail("scores", "invalid_value", f"must sum to 1, got {total:.4g}")
                return None
            return (probs[positive],)
        if len(probs) != len(model.classes):
            missing = [c for c in model.classes if index[c] not in probs]
            it.fail("scores", "missing_field", f"needs a score for every class; missing {missing[:10]}")
            return None
        if abs(total - 1) > SCORE_SUM_TOLERANCE:
            it.fail("scores", "invalid_value", f"must sum to 1, got {total:.4g}")
            return None
        return tuple(probs[i] for i in range(len(model.classes)))

    # -- labels -------------------------------------------------------------------------------------

    def labels(self, body: Any) -> list[Label]:
        """Validate a label payload; raise :class:`Invalid` listing every problem."""
        items = self._items(body, "labels")
        problems: list[Problem] = []
        out: list[Label] = []
        for index, item in enumerate(items):
            it = _Item(index, problems)
            before = len(problems)
            model = self._model(it, item, LABEL_FIELDS)
            if model is None:
                continue
            lid = self._id(it, item.get("id"), required=True)
            if item.get("label") is None:
                it.fail("label", "missing_field", "is required")
                value = None
            else:
                value = self._outcome(it, model, "label", item["label"])
            if len(problems) == before:
                out.append(Label(model.name, lid, value))  # type: ignore[arg-type]
        if problems:
            raise _rejection(problems, len(items))
        return out

    # -- resource reports ---------------------------------------------------------------------------

    def resources(self, body: Any) -> ResourceReport:
        """Validate a model server's resource report (one object); raise :class:`Invalid` listing every problem."""
        if not isinstance(body, dict):
            raise Invalid(400, "the body must be a JSON object", [Problem(0, "", "invalid_body", "must be an object")])
        problems: list[Problem] = []
        for key in body:
            if key not in RESOURCE_FIELDS:
                allowed = ", ".join(sorted(RESOURCE_FIELDS))
                problems.append(Problem(0, str(key)[:100], "unknown_field", f"allowed: {allowed}"))
        server = body.get("server")
        if not (isinstance(server, str) and 0 < len(server) <= MAX_SERVER_LENGTH and server.isprintable()):
            message = f"must be a printable string of 1 to {MAX_SERVER_LENGTH} characters"
            problems.append(Problem(0, "server", "invalid_value", message))
        models = body.get("models")
        if not (isinstance(models, list) and models and all(isinstance(x, str) for x in models)):
            problems.append(Problem(0, "models", "invalid_value", "must be a non-empty list of model names"))
            models = []
        unknown = [x for x in models if x not in self.models]
        if unknown:
            message = f"unknown models {unknown[:10]}; known: {sorted(self.models)}"
            problems.append(Problem(0, "models", "unknown_model", message))
        for key in ("cpu_seconds_total", "resident_memory_bytes"):
            v = body.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < MAX_RESOURCE:
                problems.append(Problem(0, key, "invalid_value", "must be a number >= 0"))
        if problems:
            raise Invalid(400, "invalid resource report", problems)
        return ResourceReport(
            server, tuple(dict.fromkeys(models)), float(body["cpu_seconds_total"]), float(body["resident_memory_bytes"])
        )


def _rejection(problems: list[Problem], n_items: int) -> Invalid:
    bad = len({p.index for p in problems})
    status = 404 if all(p.reason == "unknown_model" for p in problems) else 400
    verb = "is" if bad == 1 else "are"
    return Invalid(status, f"{bad} of {n_items} items {verb} invalid; nothing was accepted", problems)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class IngestErrors:
    """Counts of rejected input by model and reason; every known label set starts at 0."""

    def __init__(self, models: list[str]):
        self._lock = threading.Lock()
        self.counts = {(m, r): 0 for m in models for r in REASONS}
        self.counts.update({("", r): 0 for r in REASONS})

    def inc(self, model: str, reason: str, n: int = 1) -> None:
        with self._lock:
            self.counts[(model, reason)] = self.counts.get((model, reason), 0) + n

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self.counts)
