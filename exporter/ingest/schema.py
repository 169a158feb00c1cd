"""The one definition of what an ingest item may hold: a prediction, a label, a model server's resource report.

Each item is a tuple of :class:`Field` s (name, kind, required, what it means); each kind has its rule, with
the limits below. Three things are made from it, so they cannot drift apart:

- the general validator (exporter/ingest/validation.py) takes the field names, required fields and limits
  from here, and checks each kind's rule in Python, wording every problem;
- the fast decoder (exporter/ingest/fastpath.py) builds its msgspec structs field by field from here;
- the OpenAPI document (exporter/serve/openapi.py) takes the JSON Schema of each item from :func:`json_schema`.

tests/ingest/test_differential.py feeds both paths generated bodies and compares statuses, error lists and
the state afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exporter.config import REGISTRY_FIELDS

# -- limits -------------------------------------------------------------------------------------------------

MAX_ID_LENGTH = 256  # characters of a prediction id
MAX_STRING_LENGTH = 1024  # characters of a categorical feature's value
MAX_TIMESTAMP_LENGTH = 64  # characters of an RFC 3339 timestamp
FUTURE_SKEW_SECONDS = 300.0  # how far in the future a timestamp may be (clock skew)
SCORE_SUM_TOLERANCE = 0.01  # how far from 1 the scores of every class may sum
# Numbers mlmon sums (regression predictions and labels, latencies, numeric features) stay within this
# magnitude: their squares and sums then never overflow a double, so one absurd value cannot turn a counter
# or a window into infinity.
MAX_MAGNITUDE = 1e100
VERSION_PATTERN = r"[A-Za-z0-9_.+:@\-]{1,64}"
MAX_SERVER_LENGTH = 128  # characters of a model server's name in a resource report
MAX_RESOURCE = 1e18  # CPU seconds and bytes of a resource report


@dataclass(frozen=True)
class Field:
    """One field of an item. ``kind`` names its rule (see :data:`KINDS`); ``nullable``: null stands for absent
    (otherwise null is a value, and a wrong one)."""

    name: str
    kind: str
    required: bool
    description: str
    nullable: bool = True
    default: Any = None


# What each kind of value may be, in words; the validator words its problems in the same terms.
KINDS = {
    "model": "the name of a model in the config",
    "version": "1 to 64 letters, digits and _.+:@-",
    "id": f"a string of 1 to {MAX_ID_LENGTH} characters, or an integer",
    "timestamp": "unix seconds or an RFC 3339 date-time with a time zone",
    "features": "an object of feature name to value (a number, string, boolean, or null for missing)",
    "attributes": "an object of attribute name to value (a string, number, boolean, or null for missing)",
    "attributions": "an object of feature name to a number (its attribution: a SHAP or LIME value), or null",
    "outcome": "a class of the model (classification) or a finite number (regression)",
    "scores": "an object of class to probability",
    "probability": "a probability from 0 to 1",
    "seconds": f"a number from 0 to {MAX_MAGNITUDE:g}",
    "server": f"a printable string of 1 to {MAX_SERVER_LENGTH} characters",
    "models": "a non-empty list of model names",
    "amount": f"a number from 0 to {MAX_RESOURCE:g}",
    "registry": f"an object with some of {', '.join(REGISTRY_FIELDS)}: the model version in a model registry",
}


@dataclass(frozen=True)
class Item:
    name: str  # the OpenAPI component's name
    batch_key: str | None  # {"<batch_key>": [items]} sends a batch
    fields: tuple[Field, ...]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(f.name for f in self.fields)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.required)

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)


PREDICTION = Item(
    "Prediction",
    "predictions",
    (
        Field("model", "model", True, "A model named in the config.", nullable=False),
        Field("version", "version", False, "The model's version.", nullable=False, default="default"),
        Field("id", "id", False, "Needed to join a label sent later."),
        Field(
            "timestamp",
            "timestamp",
            False,
            f"When the prediction was made; default: arrival time. At most {FUTURE_SKEW_SECONDS:.0f} s in the future.",
        ),
        Field("features", "features", False, "Feature name to value; names must be in the model's config."),
        Field(
            "attributes",
            "attributes",
            False,
            "Attribute name to value: categorical facts about the prediction the model does not use (a sensitive "
            "group, a region), named under the model's attributes in the config. They split segments and "
            "fairness groups and are kept out of drift and data quality.",
        ),
        Field(
            "attributions",
            "attributions",
            False,
            "Feature name to its attribution for this prediction (a SHAP or LIME value from the model server), for "
            "models with attributions: true in the config; names must be the model's features, some may be left "
            "out. Monitored as each feature's mean absolute attribution against the reference's.",
        ),
        Field(
            "prediction",
            "outcome",
            True,
            "The predicted class (classification) or value (regression).",
            nullable=False,
        ),
        Field(
            "scores",
            "scores",
            False,
            "Class to probability. Multiclass: every class, summing to 1 (within "
            f"{SCORE_SUM_TOLERANCE}). Binary: at least the positive class.",
        ),
        Field("score", "probability", False, "Binary models only: probability of the positive class."),
        Field("latency_seconds", "seconds", False, "Time the model took to predict."),
        Field("label", "outcome", False, "The true outcome, when it is known at once."),
        Field(
            "registry",
            "registry",
            False,
            "The model version in a model registry (run_id, model_uri, name, version): published as labels of "
            "mlmon_model_info; the latest sent for a version wins.",
        ),
    ),
)

LABEL = Item(
    "Label",
    "labels",
    (
        Field("model", "model", True, "A model named in the config.", nullable=False),
        Field("id", "id", True, "The id of the prediction this label belongs to."),
        Field("label", "outcome", True, "The true class (classification) or value (regression)."),
    ),
)

RESOURCES = Item(
    "ResourceReport",
    None,
    (
        Field("server", "server", True, "The reporting model server's name.", nullable=False),
        Field("models", "models", True, "The models this server serves.", nullable=False),
        Field("cpu_seconds_total", "amount", True, "CPU time the server has used since it started.", nullable=False),
        Field("resident_memory_bytes", "amount", True, "The server's resident memory.", nullable=False),
    ),
)

ITEMS = (PREDICTION, LABEL, RESOURCES)


# -- JSON Schema (OpenAPI 3.0) --------------------------------------------------------------------------------

_JSON_KINDS: dict[str, dict] = {
    "model": {"type": "string"},
    "version": {"type": "string", "pattern": f"^{VERSION_PATTERN}$"},
    "id": {"oneOf": [{"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}, {"type": "integer"}]},
    "timestamp": {
        "oneOf": [
            {"type": "number", "minimum": 0, "exclusiveMinimum": True},
            {"type": "string", "format": "date-time", "maxLength": MAX_TIMESTAMP_LENGTH},
        ]
    },
    "features": {
        "type": "object",
        "additionalProperties": {
            "oneOf": [
                {"type": "number", "minimum": -MAX_MAGNITUDE, "maximum": MAX_MAGNITUDE},
                {"type": "string", "maxLength": MAX_STRING_LENGTH},
                {"type": "boolean"},
            ],
            "nullable": True,
        },
    },
    "attributes": {
        "type": "object",
        "additionalProperties": {
            "oneOf": [{"type": "string", "maxLength": MAX_STRING_LENGTH}, {"type": "number"}, {"type": "boolean"}],
            "nullable": True,
        },
    },
    "attributions": {
        "type": "object",
        "additionalProperties": {
            "type": "number",
            "minimum": -MAX_MAGNITUDE,
            "maximum": MAX_MAGNITUDE,
            "nullable": True,
        },
    },
    "outcome": {"anyOf": [{"type": "string"}, {"type": "number"}]},
    "scores": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1}},
    "probability": {"type": "number", "minimum": 0, "maximum": 1},
    "seconds": {"type": "number", "minimum": 0, "maximum": MAX_MAGNITUDE},
    "server": {"type": "string", "minLength": 1, "maxLength": MAX_SERVER_LENGTH},
    "models": {"type": "array", "minItems": 1, "items": {"type": "string"}},
    "amount": {"type": "number", "minimum": 0, "maximum": MAX_RESOURCE, "exclusiveMaximum": True},
    "registry": {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {
            "run_id": {
                "type": "string",
                "pattern": "^[A-Za-z0-9_\\-]{1,64}$",
                "description": REGISTRY_FIELDS["run_id"],
            },
            "model_uri": {
                "type": "string",
                "pattern": "^[A-Za-z][A-Za-z0-9+.\\-]*:\\S+$",
                "maxLength": 1024,
                "description": REGISTRY_FIELDS["model_uri"],
            },
            "name": {"type": "string", "minLength": 1, "maxLength": 256, "description": REGISTRY_FIELDS["name"]},
            "version": {
                "oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": "^[1-9][0-9]{0,18}$"}],
                "description": REGISTRY_FIELDS["version"],
            },
        },
    },
}


# -- columnar batches (exporter/ingest/columnar.py) ---------------------------------------------------------------

# A columnar batch holds one model's items: these fields once for the whole batch...
BATCH_FIELDS = {"Prediction": ("model", "version", "registry"), "Label": ("model",)}
# ...the object fields as objects of columns (one per key), and every other field as a column named so.
OBJECT_FIELDS = ("features", "attributes", "attributions", "scores")
COLUMN_NAMES = {
    "id": "ids",
    "timestamp": "timestamps",
    "prediction": "predictions",
    "label": "labels",
    "score": "score",
    "latency_seconds": "latency_seconds",
}


def columnar_json_schema(item: Item) -> dict:
    """The JSON Schema of a columnar batch of ``item`` s: the batch-wide fields, then one list per field (null
    where a row has no value), object fields as objects of such lists."""
    properties: dict[str, Any] = {}
    for f in item.fields:
        if f.name in BATCH_FIELDS[item.name]:
            properties[f.name] = _property(f)
        elif f.name in OBJECT_FIELDS:
            values = _JSON_KINDS[f.kind]["additionalProperties"]
            properties[f.name] = {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {**values, "nullable": True}},
                "description": f.description + " One list per key, a value per row (null: the row has none).",
            }
        else:
            properties[COLUMN_NAMES[f.name]] = {
                "type": "array",
                "items": {**_JSON_KINDS[f.kind], "nullable": True},
                "description": f.description + " A value per row (null: the row has none).",
            }
    main = "predictions" if item.name == "Prediction" else "labels"
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["model", main],
        "properties": properties,
        "description": "One model's batch as columns, all of one length; row i is made of each list's i-th value.",
    }


def json_schema(item: Item) -> dict:
    """The item's JSON Schema as OpenAPI 3.0 writes it: every field, its rule, its meaning."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": list(item.required),
        "properties": {f.name: _property(f) for f in item.fields},
    }


def _property(field: Field) -> dict:
    out = {**_JSON_KINDS[field.kind], "description": field.description}
    if field.nullable and not field.required:
        out["nullable"] = True
    if field.default is not None:
        out["default"] = field.default
    return out
