"""The two ways a body becomes items, the fast decoder and the general validator, give the same answers.

A body a model server sends is decoded in C by the fast path when it is valid (exporter/ingest/fastpath.py)
and otherwise checked and worded by the general validator (exporter/ingest/validation.py). Both are built
from one schema (exporter/ingest/schema.py). Here 10,000 generated bodies (hypothesis) go to two exporters
with the same config: one as served (fast path first), one with the fast path switched off. For every body
the status and the whole answer (the error list included) must be equal, and so must every series of the
two exporters afterwards. Each field of each item is present and valid, absent, null, of the wrong type, or
out of range; items go alone or in batches; configs hold one model or three. Prediction attributes split
segments and fairness groups, and attributions add to the windows of the models that monitor them, so the series
compared afterwards include those the attributes and the attributions decide.
"""

from __future__ import annotations

import functools
import json
import math
import random

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.ingest import schema
from tests.conftest import T0, Clock, make_app, scrape

SINGLE = """
windows: ["5m", "1h"]
storage: {backend: memory}
models:
  - name: churn
    task: binary
    classes: ["stay", "churn"]
    positive_class: "churn"
    features:
      - {name: tenure, type: numeric}
      - {name: plan, type: categorical}
      - {name: "mean radius", type: numeric}
    attributes: [sex, "age band"]
    segments: {features: [plan, "age band"], top: 2}
    fairness: {features: [sex], reference_group: {sex: f}}
    attributions: {top: 2}
"""
MULTI = (
    SINGLE
    + """
  - name: iris
    task: multiclass
    classes: [setosa, versicolor, virginica]
    features:
      - {name: "petal length (cm)", type: numeric}
      - {name: "od280/od315", type: categorical}
  - name: price
    task: regression
    invalid_features: count
    features:
      - {name: bmi, type: numeric}
      - {name: region, type: categorical}
    attributes: [site]
    segments: {features: [site]}
    attributions: true
"""
)
CONFIGS = {"single": SINGLE, "multi": MULTI}
MODELS = {"single": ("churn",), "multi": ("churn", "iris", "price")}

SETTINGS = {
    "deadline": None,
    "derandomize": True,  # CI sees the same bodies every run
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}
# 10,000 bodies in all: 2,500 prediction and 2,500 label bodies for each config.
PREDICTION_BODIES = LABEL_BODIES = 2500

# -- values of each kind: valid ones, of the wrong type, out of range -----------------------------------------

# Drawing from fixed pools keeps generation cheap (nested text and float strategies cost more than the two
# requests a body makes); the pools hold the edges and a spread of values drawn once from a seeded generator.
_RNG = random.Random(7)
_NUMBERS = [0, 1, -1, 0.5, -0.0, 1e100, -1e100, 1.0000001e100, -1.0000001e100, 1e308, 5e-324, 2**63 - 1, 2**63]
_NUMBERS += [-(2**63), -(2**63) - 1, 2**64, 2**70, 12345678901234567890]
_NUMBERS += [_RNG.uniform(-1, 1) * 10 ** _RNG.randint(-5, 120) for _ in range(40)]
_NUMBERS += [_RNG.randint(-(2**40), 2**40) for _ in range(20)]
_TEXT = ["a", "x" * 64, "x" * 65, "x" * 256, "x" * 257, "x" * 1024, "x" * 1025, "v 1", "é", "a\nb", 'q"uote', "back\\"]
_TEXT += ["\x00", "\u2028", "1", "1.5", "true", "null", " ", "\t", "\ud7ff", "💥"]
_TEXT += ["".join(_RNG.choice('ab z.-_:@+/()"\\\n\u00e9\u4e2d') for _ in range(_RNG.randint(1, 12))) for _ in range(20)]
WRONG = st.sampled_from([[], {}, [1], {"a": 1}, True, False, "", "x"])
NUMBERS = st.sampled_from(_NUMBERS)
TEXT = st.sampled_from(_TEXT)
SMALL = st.integers(-500, 500).map(lambda i: i / 100)  # valid numbers, cheap to draw
PROBABILITY = st.integers(0, 1000).map(lambda i: i / 1000)
VERSION = st.one_of(st.sampled_from(["default", "v1", "v2", "a:b@c+1.2-3_4", "x" * 64, "x" * 65, "v\n", ""]), TEXT)
ID = st.one_of(st.sampled_from(["p1", "p2", "p3", "x" * 256, "x" * 257, "", 0, 7, -3, 2**63, 1.5]), TEXT, NUMBERS)
TIMESTAMP = st.one_of(
    st.sampled_from(
        [
            T0 - 10,
            T0 - 4000,
            T0 + 200,
            T0 + 299,
            T0 + 301,
            T0 + 1000,
            T0 * 1000,
            0,
            -1,
            "2027-01-15T07:59:00Z",
            "2027-01-15T08:59:00+01:00",
            "2027-01-15 07:00:00z",
            "2027-01-15T07:00:00",
            "2027-02-30T00:00:00Z",
            "2027-01-15T07:00:00+00:99",
            "x" * 70,
        ]
    ),
    st.integers(-7200, 600).map(lambda s: T0 + s),
)
CLASSES = {"churn": ["stay", "churn"], "iris": ["setosa", "versicolor", "virginica"], "price": []}
FEATURES = {
    "churn": ["tenure", "plan", "mean radius"],
    "iris": ["petal length (cm)", "od280/od315"],
    "price": ["bmi", "region"],
}
FEATURE_VALUE = st.one_of(NUMBERS, TEXT, st.booleans(), st.none(), WRONG)
ATTRIBUTES = {"churn": ["sex", "age band"], "iris": [], "price": ["site"]}
ATTRIBUTIONS = {"churn", "price"}  # the models with attributions: iris refuses them


@functools.cache
def outcome(model: str):
    classes = st.sampled_from(CLASSES[model] + ["nope", "1", 0, 1, 2, 3]) if CLASSES[model] else SMALL
    return st.one_of(classes, NUMBERS, TEXT, WRONG)


@functools.cache
def features(model: str):
    names = FEATURES[model] + ["unknown feature"]
    return st.one_of(st.dictionaries(st.sampled_from(names), FEATURE_VALUE, max_size=4), WRONG)


@functools.cache
def attributes(model: str):
    names = ATTRIBUTES[model] + ["unknown attribute", "plan"]  # "plan" is a feature of churn, not an attribute
    return st.one_of(st.dictionaries(st.sampled_from(names), FEATURE_VALUE, max_size=3), WRONG)


@functools.cache
def attributions(model: str):
    names = FEATURES[model] + ["unknown feature", "sex"]  # "sex" is an attribute of churn, not a feature
    return st.one_of(st.dictionaries(st.sampled_from(names), FEATURE_VALUE, max_size=4), WRONG)


@functools.cache
def scores(model: str):
    classes = CLASSES[model] or ["churn"]
    probability = st.one_of(PROBABILITY, st.sampled_from([0, 1, 1.5, -0.1, True, None, "0.5"]))
    return st.one_of(
        st.dictionaries(st.sampled_from(classes + ["nope"]), probability, max_size=4),
        PROBABILITY.map(lambda p: {c: p if i == 0 else (1 - p) / len(classes) for i, c in enumerate(classes)}),
        WRONG,
    )


REGISTRY_KEYS = st.sampled_from(["run_id", "model_uri", "name", "version", "extra", "Run_id"])
REGISTRY_VALUE = st.one_of(
    TEXT,
    NUMBERS,
    WRONG,
    st.sampled_from([None, True, "models:/churn/3", "runs:/a1/model", "no scheme", "a1b2", "0", "01", "7", -1, 0]),
)
# Valid registry entries: a few values each, so that versions keep one now and then change it.
VALID_REGISTRY = st.fixed_dictionaries(
    {"version": st.sampled_from([3, "4"])},
    optional={
        "run_id": st.sampled_from(["a1b2c3", "f" * 32]),
        "model_uri": st.sampled_from(["models:/churn-clf/3", "s3://bucket/model"]),
        "name": st.sampled_from(["churn-clf", "Churn model"]),
    },
)


@functools.cache
def value(kind: str, model: str):
    """A value for a field of ``kind``: valid or not."""
    return {
        "registry": st.one_of(st.dictionaries(REGISTRY_KEYS, REGISTRY_VALUE, max_size=4), VALID_REGISTRY, WRONG),
        "version": VERSION,
        "id": ID,
        "timestamp": TIMESTAMP,
        "features": features(model),
        "attributes": attributes(model),
        "attributions": attributions(model),
        "outcome": outcome(model),
        "scores": scores(model),
        "probability": st.one_of(PROBABILITY, NUMBERS, WRONG),
        "seconds": st.one_of(PROBABILITY, NUMBERS, WRONG),
    }[kind]


@functools.cache
def valid(field: schema.Field, model: str):
    """A value the field takes for ``model``, or ABSENT where the field does not apply to it."""
    classes = CLASSES[model]
    if field.kind == "model":
        return st.just(model)
    if field.kind == "version":
        return st.sampled_from(["default", "v1", "v2"])
    if field.kind == "id":
        return st.one_of(st.integers(1, 60).map(lambda i: f"p{i}"), st.integers(1, 60))
    if field.kind == "timestamp":
        rfc3339 = st.sampled_from(["2027-01-15T07:59:00Z", "2027-01-15T08:30:00+01:00"])
        return st.one_of(st.integers(-3000, 0).map(lambda s: T0 + s), rfc3339)
    if field.kind == "features":
        values = {n: (SMALL if i % 2 == 0 else st.sampled_from(["a", "b", "c"])) for i, n in enumerate(FEATURES[model])}
        return st.fixed_dictionaries({}, optional=values)
    if field.kind == "attributes":
        groups = st.one_of(st.sampled_from(["f", "m", "x", "", 1, 2.0, True]), st.none())
        return st.fixed_dictionaries({}, optional={n: groups for n in ATTRIBUTES[model]})
    if field.kind == "attributions":
        if model not in ATTRIBUTIONS:
            return st.just(ABSENT)
        return st.fixed_dictionaries({}, optional={n: st.one_of(SMALL, st.none()) for n in FEATURES[model]})
    if field.kind == "outcome":
        return st.sampled_from(classes) if classes else SMALL
    if field.kind == "scores":
        if not classes:
            return st.just(ABSENT)
        if model == "churn":
            return PROBABILITY.map(lambda p: {"churn": p})
        return PROBABILITY.map(lambda p: {"setosa": p, "versicolor": (1 - p) / 2, "virginica": (1 - p) / 2})
    if field.kind == "probability":
        return PROBABILITY if model == "churn" else st.just(ABSENT)
    if field.kind == "seconds":
        return PROBABILITY
    if field.kind == "registry":
        return VALID_REGISTRY
    raise AssertionError(field.kind)


ABSENT = object()
# Strategies built once: hypothesis validates a strategy when it is first drawn from.
BOOLEANS = st.booleans()
MUTATION = st.sampled_from(["absent", "null", "other"])
OTHER_MODEL = st.sampled_from(["nope", "", 1, "Churn", *MODELS["multi"]])
ANY_MODEL = st.sampled_from(MODELS["multi"])
UNKNOWN_FIELD = st.sampled_from(["extra", "Model", "scores ", "predictions"])
ONE_IN_20 = st.integers(0, 19)
SHAPE = st.integers(0, 29)


@functools.cache
def fields_to_change(item_schema: schema.Item):
    return st.lists(st.sampled_from(item_schema.fields), max_size=3)


@functools.cache
def models_of(models: tuple[str, ...]):
    return st.sampled_from(models)


@st.composite
def item(draw, item_schema: schema.Item, models: tuple[str, ...]):
    """A valid item of a random model, then up to three of its fields made absent, null, or another value
    (of the wrong type, out of range, or valid for another model); now and then an unknown field."""
    model = draw(models_of(models))
    out = {}
    for field in item_schema.fields:
        v = draw(valid(field, model)) if field.required or draw(BOOLEANS) else ABSENT
        if field.name == "score" and "scores" in out:
            v = ABSENT
        if v is not ABSENT:
            out[field.name] = v
    for field in draw(fields_to_change(item_schema)):
        how = draw(MUTATION)
        if how == "absent":
            out.pop(field.name, None)
        elif how == "null":
            out[field.name] = None
        elif field.kind == "model":
            out[field.name] = draw(OTHER_MODEL)
        else:
            out[field.name] = draw(value(field.kind, draw(ANY_MODEL)))
    if draw(ONE_IN_20) == 0:
        out[draw(UNKNOWN_FIELD)] = 1
    return out


@st.composite
def body(draw, item_schema: schema.Item, models: tuple[str, ...]):
    items = draw(st.lists(item(item_schema, models), min_size=1, max_size=4))
    shape = draw(SHAPE)
    if shape == 0:
        return draw(st.sampled_from([[], [items[0]], "x", 1, None, {item_schema.batch_key: []}]))
    if shape == 1:
        return {item_schema.batch_key: items, "extra": 1}
    if shape == 2:
        return {item_schema.batch_key: items[0]}
    if len(items) == 1 and shape % 2:
        return items[0]
    return {item_schema.batch_key: items}


# -- two exporters of each config, fed the same bodies ---------------------------------------------------------


class Pair:
    def __init__(self, config: str):
        self.clock = Clock(T0)
        self.served, _ = make_app(config, self.clock)
        self.general, _ = make_app(config, self.clock)
        self.general.extensions["mlmon"].fast.enabled = False  # every body through the validator
        self.bodies = 0
        self.accepted = 0
        self.fast_taken = 0

    def send(self, path: str, raw: bytes) -> None:
        kind = path.rsplit("/", 1)[1]
        m = self.served.extensions["mlmon"]
        fast = m.fast.predictions(raw, self.clock()) if kind == "predictions" else m.fast.labels(raw)
        a = self.served.test_client().post(path, data=raw, content_type="application/json")
        b = self.general.test_client().post(path, data=raw, content_type="application/json")
        assert (a.status_code, a.get_json()) == (b.status_code, b.get_json()), raw[:2000]
        self.bodies += 1
        self.accepted += a.status_code == 202
        self.fast_taken += fast is not None
        if fast is not None:
            assert a.status_code == 202, raw[:2000]  # the fast path takes only what the validator accepts
        if self.bodies % 250 == 0:
            self.same_state()

    def same_state(self) -> None:
        a, b = series(self.served), series(self.general)
        assert a == b


def series(app) -> dict:
    skip = ("mlmon_http_", "mlmon_collect_duration", "process_", "python_")
    out = scrape(app.test_client()).series()
    return {k: v for k, v in out.items() if not k[0].startswith(skip) and not (isinstance(v, float) and math.isnan(v))}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request):
    p = Pair(CONFIGS[request.param])
    p.models = MODELS[request.param]
    # A few fixed bodies first, so that every kind of series the checks below look for exists whatever the
    # generator draws (how often a value comes up shifts with Hypothesis's choices, which other tests' timing
    # can sway): each fairness and segment group of churn, attributions of the models that take them.
    seed = [
        {"model": "churn", "prediction": "churn", "score": 0.7, "attributes": {"sex": sex, "age band": band},
         "features": {"plan": plan, "tenure": 1.5}, "attributions": {"tenure": 0.25}}
        for sex, band, plan in (("f", "a", "b"), ("m", "b", "c"), ("x", "c", "a"))
    ]  # fmt: skip
    if "price" in p.models:
        seed += [{"model": "price", "prediction": 1.5, "attributes": {"site": s}, "attributions": {"bmi": 0.5}}
                 for s in ("s1", "s2")]  # fmt: skip
    p.send("/api/v1/predictions", encode({"predictions": seed}))
    assert p.accepted == 1
    yield p
    p.same_state()
    # The generator reaches both outcomes and both paths often enough to mean something.
    assert p.accepted >= p.bodies // 20, (p.accepted, p.bodies)
    assert p.fast_taken >= p.bodies // 40, (p.fast_taken, p.bodies)
    # Attributes decided segments and fairness groups, so their series were among those compared.
    segments = {
        (dict(labels)["segment_feature"], dict(labels)["segment"])
        for name, labels in series(p.served)
        if name == "mlmon_segment_window_samples"
    }
    for attribute in ("age band", "site") if "price" in p.models else ("age band",):
        assert len({v for f, v in segments if f == attribute and v != "other"}) >= 2, segments
    groups = {dict(labels)["group"] for name, labels in series(p.served) if name == "mlmon_fairness_group_samples"}
    assert "f" in groups and len(groups - {"f", "other"}) >= 1, groups  # the reference group and another
    # Attributions reached the windows of both models that monitor them (and were compared).
    carried = {
        dict(labels)["model"]
        for (name, labels), value in series(p.served).items()
        if name == "mlmon_attribution_samples" and value > 0
    }
    assert carried == set(p.models) & ATTRIBUTIONS, carried


def encode(value) -> bytes:
    return orjson.dumps(value) if _orjson_safe(value) else json.dumps(value).encode()


def _orjson_safe(value) -> bool:
    try:
        orjson.dumps(value)
        return True
    except TypeError:  # integers beyond 64 bits: json writes them, orjson does not
        return False


def test_prediction_bodies_get_the_same_answers_and_state(pair):
    @settings(max_examples=PREDICTION_BODIES, **SETTINGS)
    @given(body(schema.PREDICTION, pair.models))
    def run(b):
        pair.send("/api/v1/predictions", encode(b))

    run()


def test_label_bodies_get_the_same_answers_and_state(pair):
    @settings(max_examples=LABEL_BODIES, **SETTINGS)
    @given(body(schema.LABEL, pair.models))
    def run(b):
        pair.send("/api/v1/labels", encode(b))

    run()
