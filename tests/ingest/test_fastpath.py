"""The fast path of prediction ingest (exporter/ingest/fastpath.py) against the general validation it shortcuts.

The general path (orjson + ``Validator.predictions``) defines what a valid prediction is. The fast path
may decline any body (then the general path runs), but a body it takes must give exactly the predictions
the general path gives, and every valid body of the common kind must be taken (else it would be slow for
nothing). Checked on generated bodies mixing valid values with every kind of wrong or edge value, and on
hand-written edges of JSON itself (duplicate keys, huge integers, surrogates, overflowing numbers).
Then the windows: a batch binned from the fast path's rows equals the same batch from the general path's.
"""

from __future__ import annotations

import json
import math

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config import parse_config
from exporter.ingest import fastpath
from exporter.ingest.columns import bin_rows
from exporter.ingest.validation import Invalid, Validator
from exporter.stats.binning import CAT_SLOTS, Binner
from exporter.stats.reference import build_profile

NOW = 1_800_000_000.0

CONFIG = """
windows: ["5m"]
storage: {backend: memory}
limits: {max_batch_size: 8}
models:
  - name: churn
    task: binary
    classes: ["stay", "churn"]
    positive_class: "churn"
    features:
      - {name: tenure, type: numeric}
      - {name: user.age, type: numeric}
      - {name: plan-type, type: categorical}
      - {name: "mean radius (cm)", type: numeric}
      - {name: "od280/od315 ratio", type: categorical}
      - {name: region, type: categorical}
    attributes: [sex, "age.band (y)"]
    segments: {features: [region, sex]}
    attributions: true
  - name: iris
    task: multiclass
    classes: [setosa, versicolor, "2"]
    features:
      - {name: petal_length, type: numeric}
  - name: price
    task: regression
    invalid_features: count
    features:
      - {name: rooms, type: numeric}
      - {name: city, type: categorical}
"""

config = parse_config(CONFIG)
validator = Validator(config, lambda: NOW)
fast = fastpath.FastDecoder(validator)


def general(raw: bytes):
    """The general path's predictions, or None when it rejects the body."""
    try:
        return validator.predictions(orjson.loads(raw), NOW)
    except (Invalid, orjson.JSONDecodeError):
        return None


def features_of(features) -> dict:
    """A prediction's features as {name: value} without missing ones, for either path's representation."""
    if features is None:
        return {}
    if isinstance(features, dict):
        return {k: v for k, v in features.items() if v is not None}
    return {
        name: getattr(features, a) for name, a in type(features).ATTRIBUTES.items() if getattr(features, a) is not None
    }


def same(fast_items, general_items) -> None:
    assert len(fast_items) == len(general_items)
    for f, g in zip(fast_items, general_items):
        for field in (
            "model",
            "version",
            "id",
            "timestamp",
            "prediction",
            "scores",
            "latency",
            "label",
            "feature_errors",
            "registry",
        ):
            a, b = getattr(f, field), getattr(g, field)
            assert a == b and type(a) is type(b) or (isinstance(a, float) and isinstance(b, int) and a == b), (
                field,
                a,
                b,
            )
        for kind in ("features", "attributes", "attributions"):
            fa, fg = features_of(getattr(f, kind)), features_of(getattr(g, kind))
            assert fa == fg, kind
            for name, value in fa.items():  # categorical values keep their JSON type (category() depends on it)
                assert isinstance(value, float) and isinstance(fg[name], (int, float)) or type(value) is type(fg[name])


# -- generated bodies ---------------------------------------------------------------------------------

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, -1, 0.5, 1e100, -1e100, 1.0000001e100, 2**63 - 1, 2**63, 2**64, -(2**63) - 1]),
    st.text(max_size=5),
    st.sampled_from(["", "x" * 1024, "x" * 1025, "2026-11-23T10:00:00Z", "stay", "churn", "setosa", "2"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def field(valid, p_valid=0.85):
    """Mostly a valid value, sometimes anything at all (or the field left out: None drawn as 'absent')."""
    return st.one_of(valid, anything) if p_valid < 1 else valid


numbers = st.one_of(
    st.floats(min_value=-1e100, max_value=1e100, allow_nan=False), st.integers(-(2**53), 2**53), st.none()
)
categories = st.one_of(st.text(max_size=8), st.booleans(), st.integers(-5, 5), st.floats(-5, 5), st.none())
timestamps = st.one_of(
    st.floats(min_value=1.0, max_value=NOW + 300),
    st.floats(min_value=NOW - 10, max_value=NOW + 301),
    st.integers(min_value=1, max_value=int(NOW)),
    st.sampled_from(
        ["2026-11-23T10:00:00Z", "2026-11-23T10:00:00.5+02:00", "2027-01-01T00:00:00Z", "1970-01-01T00:00:00Z"]
    ),
)


@st.composite
def item(draw, valid=None):
    model = draw(st.sampled_from(["churn", "iris", "price", "price"]))
    if valid is None:  # half the items valid by construction, half with wrong values mixed in
        valid = draw(st.booleans())
    pick = (lambda s: draw(s)) if valid else (lambda s: draw(st.one_of(s, anything)))
    out: dict = {"model": model if valid or draw(st.integers(0, 9)) else draw(st.sampled_from(["nope", 3, None]))}
    if model == "churn":
        feats = {
            "tenure": numbers,
            "user.age": numbers,
            "plan-type": categories,
            "region": categories,
            "mean radius (cm)": numbers,
            "od280/od315 ratio": categories,
        }
        classes = st.sampled_from(["stay", "churn"])
    elif model == "iris":
        feats = {"petal_length": numbers}
        classes = st.sampled_from(["setosa", "versicolor", "2", 2])
    else:
        feats = {"rooms": numbers, "city": categories}
        classes = st.floats(-1e100, 1e100, allow_nan=False)
    if draw(st.integers(0, 9)):
        features = {name: pick(s) for name, s in feats.items() if draw(st.integers(0, 5))}
        if not valid and draw(st.integers(0, 3)) == 0:
            features[
                draw(st.sampled_from(["other", "tenure ", "v0", "ATTRIBUTES", "mean radius", "mean radius (cm) "]))
            ] = pick(numbers)
        out["features"] = features
    if model == "churn" and draw(st.booleans()):
        attributes = {name: pick(categories) for name in ("sex", "age.band (y)") if draw(st.booleans())}
        if not valid and draw(st.integers(0, 3)) == 0:
            attributes[draw(st.sampled_from(["tenure", "other", "v0", "sex "]))] = pick(categories)
        out["attributes"] = attributes
    elif model != "churn" and not valid and draw(st.integers(0, 9)) == 0:
        out["attributes"] = {"sex": "f"}  # a model that declares no attributes
    if model == "churn" and draw(st.booleans()):
        attributions = {name: pick(numbers) for name in feats if draw(st.booleans())}
        if not valid and draw(st.integers(0, 3)) == 0:
            attributions[draw(st.sampled_from(["sex", "other", "v0", "tenure "]))] = pick(numbers)
        if not valid and draw(st.integers(0, 5)) == 0:
            attributions[draw(st.sampled_from(list(feats)))] = pick(categories)  # not a number
        out["attributions"] = attributions
    elif model != "churn" and not valid and draw(st.integers(0, 9)) == 0:
        out["attributions"] = {"rooms": 0.1}  # a model that does not monitor attributions
    if draw(st.integers(0, 19)):
        out["prediction"] = pick(classes)
    optional = {
        "version": st.sampled_from(["default", "v1", "a_b.c+d:e@f-g"] + ([] if valid else ["v 1", "a" * 65, "v1\n"])),
        "id": st.one_of(st.text(min_size=1, max_size=4), st.integers(-(2**63), 2**63 - 1))
        if valid
        else st.one_of(st.text(max_size=4), st.integers(-(2**64), 2**64), st.just("i" * 257)),
        "timestamp": timestamps,
        "latency_seconds": st.floats(min_value=0, max_value=1e100),
        "label": classes,
        "registry": st.fixed_dictionaries(
            {},
            optional={
                "run_id": st.sampled_from(["a1b2", "f" * 32, "run_1-x"]),
                "model_uri": st.sampled_from(["models:/churn/3", "runs:/a1b2/model"]),
                "name": st.text(min_size=1, max_size=6).filter(str.isprintable),
                "version": st.one_of(st.integers(1, 2**63 - 1), st.sampled_from(["1", "42"])),
            },
        ).filter(bool)
        if valid
        else st.dictionaries(
            st.sampled_from(["run_id", "model_uri", "name", "version", "other"]),
            st.one_of(anything, st.sampled_from(["a", "models:/m/1", "0", "-1", "x y"])),
            max_size=3,
        ),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            out[name] = pick(strategy)
    if model == "churn" and draw(st.booleans()):
        if draw(st.booleans()):
            out["score"] = pick(st.floats(0, 1))
        else:
            p = draw(st.floats(0, 1))
            out["scores"] = pick(st.just({"churn": p, "stay": 1 - p}))
    if model == "iris" and draw(st.booleans()):
        out["scores"] = pick(st.just({"setosa": 0.5, "versicolor": 0.25, "2": 0.25}))
    if not valid and draw(st.integers(0, 5)) == 0:
        out[draw(st.sampled_from(["extra", "Model", "scores "]))] = 1
    return out


bodies = st.one_of(
    st.builds(lambda items: {"predictions": items}, st.lists(item(valid=True), min_size=1, max_size=8)),
    st.builds(lambda items: {"predictions": items}, st.lists(item(), min_size=0, max_size=9)),
    item(valid=True),
    item(),
    st.just({"predictions": []}),
    st.builds(lambda items: {"predictions": items, "x": 1}, st.lists(item(), min_size=1, max_size=2)),
)


@settings(max_examples=1500, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(bodies)
def test_fast_path_agrees_with_the_general_path(body):
    raw = json.dumps(body).encode()
    expected, got = general(raw), fast.predictions(raw, NOW)
    if got is not None:
        assert expected is not None, "the fast path took a body the general path rejects"
        same(got, expected)
    elif expected is not None and not any(e.feature_errors for e in expected):
        # A valid body of the common kind must not fall back, except integers the fast path leaves to orjson.
        assert "9223372036854775808" in raw.decode() or "18446744073709551616" in raw.decode(), raw


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "churn", "prediction": "stay", "features": {"tenure": 1, "tenure": 2}}',
        b'{"model": "churn", "prediction": "stay", "model": "iris"}',
        b'{"model": "churn", "prediction": "stay", "features": {"region": "\\ud800"}}',
        b'{"model": "churn", "prediction": "stay", "features": {"region": 123456789012345678901234567890}}',
        b'{"model": "churn", "prediction": "stay", "id": 18446744073709551615}',
        b'{"model": "churn", "prediction": "stay", "features": {"tenure": 1e400}}',
        b'{"model": "churn", "prediction": "stay", "features": {"tenure": NaN}}',
        b'{"model": "price", "prediction": 1e-400, "label": -0.0}',
        b'{"model": "churn", "prediction": "stay", "timestamp": 1e400}',
        b'{"model": "churn", "prediction": true}',
        b'{"model": "iris", "prediction": 2, "label": "2"}',
        b'{"model": "churn", "prediction": "stay", "features": {"region": "a\\u0000b"}}',
        b'\xef\xbb\xbf{"model": "churn", "prediction": "stay"}',
        b' {"predictions": [{"model": "churn", "prediction": "stay"}]} ',
        b'{"predictions": [{"model": "churn", "prediction": "stay"}], "predictions": []}',
        b'{"predictions": [{"model": "churn", "prediction": "stay"}]}\n',
        b'{"model": "churn", "prediction": "stay", "features": {"v0": 1}}',
        b'{"model": "churn", "prediction": "stay", "features": {"ATTRIBUTES": 1}}',
        b'{"model": "churn", "prediction": "stay", "score": 0.2, "scores": {"churn": 0.2, "stay": 0.8}}',
        b'{"model": "churn", "prediction": "stay", "scores": {"churn": 0.2, "stay": 0.5}}',
        b'{"model": "churn", "prediction": "stay", "version": null}',
        b'{"model": "churn", "prediction": "stay", "features": null, "id": null, "label": null}',
        b'[{"model": "churn", "prediction": "stay"}]',
        b'{"predictions": {"model": "churn", "prediction": "stay"}}',
    ],
)
def test_json_edges(raw):
    expected, got = general(raw), fast.predictions(raw, NOW)
    if got is not None:
        assert expected is not None
        same(got, expected)


def test_the_common_batch_takes_the_fast_path():
    """Not a test that can pass by always declining: the usual batch is decoded by the fast path."""
    items = [
        {
            "model": "churn",
            "prediction": "churn",
            "score": 0.7,
            "features": {"tenure": 3, "user.age": 31.5, "plan-type": "a", "region": "eu"},
            "label": "stay",
            "latency_seconds": 0.01,
            "id": i,
        }
        for i in range(8)
    ]
    raw = json.dumps({"predictions": items}).encode()
    got = fast.predictions(raw, NOW)
    assert got is not None and len(got) == 8
    same(got, general(raw))
    assert got[0].scores == (0.7,) and got[0].id == "0" and got[0].timestamp == NOW and got[0].prediction == 1


# -- the windows: binned rows from either path are the same ----------------------------------------------


def test_binning_is_the_same_for_both_paths():
    rng = np.random.default_rng(7)
    model = config.models[0]
    columns = {
        "tenure": list(rng.normal(size=500)),
        "user.age": list(rng.normal(size=500)),
        "plan-type": list(rng.choice(["a", "b", "c"], 500)),
        "region": list(rng.choice(["eu", "us"], 500)),
        "mean radius (cm)": list(rng.normal(size=500)),
        "od280/od315 ratio": list(rng.choice(["x", "y"], 500)),
    }
    profile = build_profile(columns, model)
    binner = Binner(model, profile)
    items = []
    for i in range(400):
        feats = {
            "tenure": None if i % 17 == 0 else float(rng.normal(0.3)),
            "user.age": float(rng.normal()),
            "plan-type": ["a", "b", "c", "d", "", True, 1][i % 7],
            "region": None if i % 5 == 0 else ["eu", "us", "apac"][i % 3],
            "mean radius (cm)": float(rng.normal(-0.2)),
            "od280/od315 ratio": ["x", "y", "z"][i % 3],
        }
        if i % 11 == 0:
            del feats["user.age"]
        item = {"model": "churn", "prediction": ["stay", "churn"][i % 2], "score": 0.4}
        if i % 13:
            item["features"] = feats
        items.append(item)
    raw = json.dumps({"predictions": items}).encode()
    big = Validator(parse_config(CONFIG.replace("max_batch_size: 8", "max_batch_size: 1000")), lambda: NOW)
    got, expected = fastpath.FastDecoder(big).predictions(raw, NOW), big.predictions(orjson.loads(raw), NOW)
    assert got is not None
    same(got, expected)
    a = bin_rows(binner, [e.features for e in got], [e.prediction for e in got])
    b = bin_rows(binner, [e.features for e in expected], [e.prediction for e in expected])
    assert np.array_equal(a.missing, b.missing)
    assert a.scatter.keys() == b.scatter.keys()
    for key in a.scatter:
        for x, y in zip(a.scatter[key], b.scatter[key]):
            assert (x is None and y is None) or np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True), key
    assert math.isclose(float(np.nansum(a.scatter["missing"][0])), float(np.nansum(b.scatter["missing"][0])))


# -- labels ------------------------------------------------------------------------------------------


def general_labels(raw: bytes):
    try:
        return validator.labels(orjson.loads(raw))
    except (Invalid, orjson.JSONDecodeError):
        return None


@st.composite
def label_item(draw, valid=None):
    if valid is None:
        valid = draw(st.booleans())
    model = draw(st.sampled_from(["churn", "iris", "price"]))
    values = {
        "churn": st.sampled_from(["stay", "churn"]),
        "iris": st.sampled_from(["setosa", "versicolor", "2", 2]),
        "price": st.floats(-1e100, 1e100, allow_nan=False),
    }[model]
    ids = st.one_of(st.text(min_size=1, max_size=4), st.integers(-(2**63), 2**63 - 1))
    pick = (lambda s: draw(s)) if valid else (lambda s: draw(st.one_of(s, anything)))
    out = {"model": model if valid or draw(st.integers(0, 9)) else "nope"}
    if valid or draw(st.integers(0, 9)):
        out["id"] = pick(ids)
    if valid or draw(st.integers(0, 9)):
        out["label"] = pick(values)
    if not valid and draw(st.integers(0, 9)) == 0:
        out["prediction"] = "stay"
    return out


label_bodies = st.one_of(
    st.builds(lambda items: {"labels": items}, st.lists(label_item(valid=True), min_size=1, max_size=8)),
    st.builds(lambda items: {"labels": items}, st.lists(label_item(), min_size=0, max_size=9)),
    label_item(),
)


@settings(max_examples=800, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(label_bodies)
def test_fast_labels_agree_with_the_general_path(body):
    raw = json.dumps(body).encode()
    expected, got = general_labels(raw), fast.labels(raw)
    if got is not None:
        assert expected is not None, "the fast path took a body the general path rejects"
        assert [(x.model, x.id, x.label, type(x.label)) for x in got] == [
            (x.model, x.id, x.label, type(x.label)) for x in expected
        ]
    elif expected is not None:
        assert "9223372036854775808" in raw.decode() or "18446744073709551616" in raw.decode(), raw


# -- a config of one model: "model" stays required --------------------------------------------------

single_validator = Validator(parse_config(CONFIG[: CONFIG.index("  - name: iris")]), lambda: NOW)
single_fast = fastpath.FastDecoder(single_validator)


def _drop_models(draw, body):
    """The body with "model" left out of some of its items (msgspec does not require the tag of a lone
    tagged struct, which is how an item without a model once passed the fast path)."""
    items = body.get("predictions", body.get("labels")) if isinstance(body, dict) else None
    for one in items if isinstance(items, list) else [body]:
        if isinstance(one, dict) and draw(st.integers(0, 2)) == 0:
            one.pop("model", None)
    return body


def _single(parse, raw):
    try:
        return parse(orjson.loads(raw))
    except (Invalid, orjson.JSONDecodeError):
        return None


@settings(max_examples=800, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_one_model_config_paths_agree_with_items_without_a_model(data):
    body = _drop_models(data.draw, data.draw(bodies))
    raw = json.dumps(body).encode()
    expected = _single(lambda b: single_validator.predictions(b, NOW), raw)
    got = single_fast.predictions(raw, NOW)
    if got is not None:
        assert expected is not None, "the fast path took a body the general path rejects"
        same(got, expected)
    body = _drop_models(data.draw, data.draw(label_bodies))
    raw = json.dumps(body).encode()
    expected, got = _single(single_validator.labels, raw), single_fast.labels(raw)
    if got is not None:
        assert expected is not None, "the fast path took a label body the general path rejects"
        assert [(x.model, x.id, x.label) for x in got] == [(x.model, x.id, x.label) for x in expected]


def test_one_model_config_fast_path_still_takes_the_common_batch():
    """The guard against a missing model must not make the fast path decline every body."""
    item = {"model": "churn", "id": "a", "prediction": "stay", "features": {"tenure": 1.0}}
    assert single_fast.predictions(json.dumps({"predictions": [item] * 3}).encode(), NOW) is not None
    assert single_fast.labels(b'{"labels": [{"model": "churn", "id": "a", "label": "stay"}]}') is not None
    assert single_fast.predictions(b'{"id": "a", "prediction": "stay"}', NOW) is None
    assert single_fast.labels(b'{"id": "a", "label": "stay"}') is None
    assert single_fast.predictions(b'{"model": "\\u0000", "prediction": "stay"}', NOW) is None


def test_categorical_counts_match_a_direct_count():
    """The binner's categorical counts (all-string columns take a shortcut) against collections.Counter."""
    from collections import Counter

    from exporter.stats.reference import category

    rng = np.random.default_rng(11)
    model = config.models[0]
    columns = {
        "tenure": list(rng.normal(size=300)),
        "user.age": list(rng.normal(size=300)),
        "plan-type": list(rng.choice(["a", "b", "c", "1", "true"], 300)),
        "region": list(rng.choice(["eu", "us"], 300)),
        "mean radius (cm)": list(rng.normal(size=300)),
        "od280/od315 ratio": list(rng.choice(["x", "y"], 300)),
    }
    binner = Binner(model, build_profile(columns, model))
    ref = binner.refs["plan-type"]
    for values in (
        [str(v) for v in rng.choice(["a", "b", "c", "zz", "1"], 200)],  # strings only: the shortcut
        [["a", "b", 1, 1.0, True, "", None, "zz"][i % 8] for i in range(200)],  # mixed: the general way
    ):
        rows = [{"tenure": 0.0, "user.age": 0.0, "plan-type": v, "region": "eu"} for v in values]
        out = bin_rows(binner, rows, [0] * len(rows))
        ev, idx, _ = out.scatter["cat_counts"]
        j = binner.categorical.index("plan-type")
        sel = (idx // CAT_SLOTS) == j
        got = Counter(int(i) % CAT_SLOTS for i in idx[sel])
        keys = [category(v) for v in values if v is not None and v != ""]
        slot = {c: i for i, c in enumerate(ref.categories)}
        expected = Counter(slot.get(k, len(ref.categories)) for k in keys)
        assert got == expected
        unseen_ev, unseen_idx, _ = out.scatter.get("cat_unseen", (np.array([], int), np.array([], int), None))
        expected_unseen = [
            i for i, v in enumerate(values) if v is not None and v != "" and category(v) not in ref.known
        ]
        assert sorted(unseen_ev[unseen_idx == j].tolist()) == expected_unseen
        assert np.array_equal(np.sort(ev[sel]), [i for i, v in enumerate(values) if v is not None and v != ""])


def test_each_distinct_registry_entry_is_checked_once(monkeypatch):
    decoder = fastpath.FastDecoder(validator)
    checked = []
    check = validator._registry
    monkeypatch.setattr(validator, "_registry", lambda it, value: checked.append(value) or check(it, value))
    item = {"model": "price", "prediction": 1.0, "registry": {"name": "price-model", "version": 3}}
    same_as_text = {**item, "registry": {"name": "price-model", "version": "3"}}
    raw = json.dumps({"predictions": [item] * 5 + [same_as_text]}).encode()
    items = decoder.predictions(raw, NOW)
    assert [(p.registry.name, p.registry.version) for p in items] == [("price-model", "3")] * 6
    assert checked == [{"name": "price-model", "version": 3}, {"name": "price-model", "version": "3"}]
