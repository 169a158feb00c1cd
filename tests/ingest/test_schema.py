"""The ingest schema (exporter/ingest/schema.py) is what the validator, the fast decoder and the OpenAPI
document all follow: each required field, each optional one, and what null means for it."""

from __future__ import annotations

import msgspec
import orjson
import pytest

from exporter.ingest import fastpath, schema
from tests.conftest import make_app

CONFIG = """
windows: ["5m"]
storage: {backend: memory}
models:
  - name: churn
    task: binary
    classes: ["stay", "churn"]
    positive_class: "churn"
    features:
      - {name: tenure, type: numeric}
"""
VALID = {
    "predictions": {
        "model": "churn",
        "version": "v1",
        "id": "a1",
        "timestamp": 1_800_000_000.0 - 5,
        "features": {"tenure": 3.0},
        "prediction": "churn",
        "score": 0.7,
        "latency_seconds": 0.01,
        "label": "stay",
        "registry": {"run_id": "a1b2c3", "model_uri": "models:/churn-clf/3", "name": "churn-clf", "version": 3},
    },
    "labels": {"model": "churn", "id": "a1", "label": "churn"},
}
ITEMS = {"predictions": schema.PREDICTION, "labels": schema.LABEL}


def post(fast: bool, kind: str, body: dict):
    app, _ = make_app(CONFIG)
    app.extensions["mlmon"].fast.enabled = fast
    return app.test_client().post(f"/api/v1/{kind}", data=orjson.dumps(body), content_type="application/json")


def cases():
    for kind, item in ITEMS.items():
        for field in item.fields:
            yield kind, field


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "general"])
@pytest.mark.parametrize(("kind", "field"), list(cases()), ids=lambda x: getattr(x, "name", x))
def test_each_field_is_required_or_optional_and_null_as_the_schema_says(fast, kind, field):
    assert post(fast, kind, VALID[kind]).status_code == 202  # the whole valid item is valid
    without = {k: v for k, v in VALID[kind].items() if k != field.name}
    nulled = {**VALID[kind], field.name: None}
    r = post(fast, kind, without)
    if field.required:
        assert r.status_code == 400
        assert [(p["field"], p["reason"]) for p in r.get_json()["error"]["details"]] == [(field.name, "missing_field")]
    else:
        assert r.status_code == 202, r.get_json()
    r = post(fast, kind, nulled)
    if field.required and field.nullable:  # null stands for absent: missing
        assert [(p["field"], p["reason"]) for p in r.get_json()["error"]["details"]] == [(field.name, "missing_field")]
    elif field.nullable:
        assert r.status_code == 202, r.get_json()
    else:  # null is a value, and a wrong one
        assert r.status_code == 400
        assert [p["field"] for p in r.get_json()["error"]["details"]] == [field.name]


def test_an_unknown_field_is_refused_by_name():
    for kind in ITEMS:
        for fast in (True, False):
            r = post(fast, kind, {**VALID[kind], "extra": 1})
            assert r.status_code == 400
            assert [(p["field"], p["reason"]) for p in r.get_json()["error"]["details"]] == [("extra", "unknown_field")]


def test_the_fast_structs_have_the_schemas_fields():
    app, _ = make_app(CONFIG)
    model = app.extensions["mlmon"].config.models[0]
    prediction = fastpath.item_type(model, fastpath.features_type(model))
    label = fastpath.label_type(model)
    for struct, item in ((prediction, schema.PREDICTION), (label, schema.LABEL)):
        info = msgspec.inspect.type_info(struct)
        assert info.tag_field == "model"
        fields = {f.encode_name: f for f in info.fields}
        assert set(fields) | {"model"} == item.names
        for f in item.fields:
            if f.name != "model":
                assert fields[f.name].required == f.required, f.name


def test_the_openapi_document_holds_the_schemas_items():
    app, _ = make_app(CONFIG)
    doc = app.test_client().get("/api/v1/openapi.json").get_json()
    components = doc["components"]["schemas"]
    for item in schema.ITEMS:
        assert components[item.name] == orjson.loads(orjson.dumps(schema.json_schema(item)))
        assert set(components[item.name]["properties"]) == item.names
        assert components[item.name]["required"] == list(item.required)
    body = doc["paths"]["/api/v1/resources"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ResourceReport"}


def test_every_kind_has_a_rule_and_a_json_schema():
    kinds = {f.kind for item in schema.ITEMS for f in item.fields}
    assert kinds == set(schema.KINDS)
    for item in schema.ITEMS:
        schema.json_schema(item)  # a kind without a JSON schema raises
