"""The HTTP contract: what is accepted, how every kind of bad input is answered, and that it changes nothing."""

from __future__ import annotations

import pytest

from tests.conftest import make_app, scrape

VOLATILE = ("mlmon_ingest_errors", "mlmon_http_", "mlmon_collect_duration")


def state(client) -> dict:
    """Every mlmon series except the ones that count requests and errors."""
    return {k: v for k, v in scrape(client).series().items() if not k[0].startswith(VOLATILE)}


def churn(**extra):
    return {
        "model": "churn",
        "id": "p1",
        "prediction": "churn",
        "score": 0.7,
        "features": {"tenure": 3, "plan": "pro"},
        **extra,
    }


def test_single_prediction_is_accepted(client):
    r = client.post("/api/v1/predictions", json=churn())
    assert r.status_code == 202
    assert r.get_json() == {"accepted": 1, "duplicates": 0}
    m = scrape(client)
    assert m.get("mlmon_predictions_total", model="churn", version="default") == 1
    assert m.get("mlmon_pending_labels", model="churn") == 1
    assert m.get("mlmon_predicted_class_total", model="churn", version="default", **{"class": "churn"}) == 1


def test_batch_and_label_join(client):
    preds = [churn(id=f"p{i}", prediction="stay", score=0.2) for i in range(5)]
    assert client.post("/api/v1/predictions", json={"predictions": preds}).status_code == 202
    r = client.post(
        "/api/v1/labels", json={"labels": [{"model": "churn", "id": f"p{i}", "label": "stay"} for i in range(3)]}
    )
    assert r.status_code == 202 and r.get_json()["accepted"] == 3
    m = scrape(client)
    assert m.get("mlmon_labels_total", model="churn", version="default") == 3
    assert m.get("mlmon_pending_labels", model="churn") == 2
    assert m.get("mlmon_accuracy", model="churn", version="default", window="5m") == 1.0


def test_duplicate_prediction_is_ignored_and_counted(client):
    client.post("/api/v1/predictions", json=churn())
    r = client.post("/api/v1/predictions", json={"predictions": [churn(), churn(id="p2")]})
    assert r.get_json() == {"accepted": 1, "duplicates": 1}
    m = scrape(client)
    assert m.get("mlmon_predictions_total", model="churn", version="default") == 2
    assert m.get("mlmon_duplicates_total", model="churn", kind="prediction") == 1


def test_duplicate_label_is_ignored_and_counted(client):
    client.post("/api/v1/predictions", json=churn())
    client.post("/api/v1/labels", json={"model": "churn", "id": "p1", "label": "stay"})
    r = client.post("/api/v1/labels", json={"model": "churn", "id": "p1", "label": "churn"})
    assert r.get_json() == {"accepted": 0, "duplicates": 1}
    m = scrape(client)
    assert m.get("mlmon_labels_total", model="churn", version="default") == 1
    assert m.get("mlmon_duplicates_total", model="churn", kind="label") == 1


def test_label_before_prediction_waits_then_joins(client):
    client.post("/api/v1/labels", json={"model": "churn", "id": "p1", "label": "churn"})
    assert scrape(client).get("mlmon_early_labels", model="churn") == 1
    client.post("/api/v1/predictions", json=churn())
    m = scrape(client)
    assert m.get("mlmon_early_labels", model="churn") == 0
    assert m.get("mlmon_labels_total", model="churn", version="default") == 1


def test_empty_window_publishes_no_quality_figures(client, clock):
    client.post("/api/v1/predictions", json=churn(label="churn"))
    assert scrape(client).get("mlmon_accuracy", model="churn", version="default", window="5m") == 1.0
    clock.advance(400)
    m = scrape(client)
    assert m.get("mlmon_accuracy", model="churn", version="default", window="5m") is None
    assert m.get("mlmon_roc_auc", model="churn", version="default", window="5m") is None
    assert m.get("mlmon_window_samples", model="churn", version="default", window="5m", kind="labeled") == 0
    assert m.get("mlmon_accuracy", model="churn", version="default", window="1h") == 1.0


def test_pending_predictions_expire_after_the_ttl():
    app, clock = make_app("limits: {pending_ttl: 1h}\nmodels:\n  - {name: m, task: regression}\n")
    client = app.test_client()
    client.post("/api/v1/predictions", json={"model": "m", "id": "a", "prediction": 1.0})
    clock.advance(3601)
    app.extensions["mlmon"].maintain()
    m = scrape(client)
    assert m.get("mlmon_pending_labels", model="m") == 0
    assert m.get("mlmon_pending_dropped_total", model="m", kind="prediction", reason="expired") == 1


def test_versions_are_capped_oldest_retired():
    app, clock = make_app("limits: {max_versions_per_model: 2}\nmodels:\n  - {name: m, task: regression}\n")
    client = app.test_client()
    for v in ("a", "b", "c"):
        client.post("/api/v1/predictions", json={"model": "m", "version": v, "prediction": 1.0})
        clock.advance(1)
    m = scrape(client)
    assert {s.labels["version"] for s in m.all("mlmon_model_info")} == {"b", "c"}
    assert m.get("mlmon_retired_versions_total", model="m") == 1


def test_a_version_first_seen_time_is_its_first_prediction_arrival():
    app, clock = make_app("models:\n  - {name: m, task: regression}\n")
    client = app.test_client()
    assert scrape(client).all("mlmon_model_version_first_seen_timestamp_seconds") == []  # no version yet
    first = clock()
    # An old timestamp is the prediction's time, not when the version was first served here.
    client.post(
        "/api/v1/predictions", json={"model": "m", "version": "v1", "prediction": 1.0, "timestamp": first - 600}
    )
    clock.advance(30)
    client.post("/api/v1/predictions", json={"model": "m", "version": "v1", "prediction": 1.0})
    client.post("/api/v1/predictions", json={"model": "m", "version": "v2", "prediction": 1.0})
    m = scrape(client)
    assert m.get("mlmon_model_version_first_seen_timestamp_seconds", model="m", version="v1") == first
    assert m.get("mlmon_model_version_first_seen_timestamp_seconds", model="m", version="v2") == first + 30


def test_a_version_known_only_from_labels_has_no_first_seen_time():
    from exporter.engine.state import ModelState

    app, clock = make_app("models:\n  - {name: m, task: regression}\n")
    state: ModelState = app.extensions["mlmon"].models["m"]
    state._version("v1", clock())  # as a replica of a shared join store learns of a version from a label
    m = scrape(app.test_client())
    assert m.get("mlmon_model_info", model="m", version="v1") == 1
    assert m.all("mlmon_model_version_first_seen_timestamp_seconds") == []


def test_known_label_sets_start_at_zero(client):
    m = scrape(client)
    assert m.get("mlmon_ingest_errors_total", model="churn", reason="invalid_value") == 0
    assert m.get("mlmon_pending_labels", model="iris") == 0
    assert m.get("mlmon_duplicates_total", model="price", kind="label") == 0


BAD_PREDICTIONS = [
    # (payload, status, field, reason)
    ([churn()], 400, "", "invalid_body"),
    ({"predictions": "x"}, 400, "predictions", "invalid_body"),
    ({"predictions": []}, 400, "predictions", "invalid_body"),
    ({"predictions": [3]}, 400, "", "invalid_body"),
    (churn(model="nope"), 404, "model", "unknown_model"),
    ({"prediction": "churn"}, 400, "model", "missing_field"),
    ({"model": "churn"}, 400, "prediction", "missing_field"),
    (churn(prediction="maybe"), 400, "prediction", "unknown_class"),
    (churn(prediction=True), 400, "prediction", "unknown_class"),
    (churn(colour="red"), 400, "colour", "unknown_field"),
    (churn(version="a b"), 400, "version", "invalid_value"),
    (churn(id="x" * 300), 400, "id", "invalid_value"),
    (churn(id=True), 400, "id", "invalid_value"),
    (churn(timestamp="yesterday"), 400, "timestamp", "invalid_value"),
    (churn(timestamp="2026-01-01T00:00:00"), 400, "timestamp", "invalid_value"),
    (churn(timestamp=1e12), 400, "timestamp", "invalid_value"),
    (churn(timestamp=-5), 400, "timestamp", "invalid_value"),
    (churn(latency_seconds=-1), 400, "latency_seconds", "invalid_value"),
    (churn(latency_seconds="fast"), 400, "latency_seconds", "invalid_value"),
    (churn(score=1.5), 400, "score", "invalid_value"),
    (churn(score=None, scores={"churn": 0.7, "stay": 0.7}), 400, "scores", "invalid_value"),
    (churn(score=None, scores={"stay": 0.3}), 400, "scores.churn", "missing_field"),
    (churn(score=None, scores={"churn": 0.7, "other": 0.3}), 400, "scores.other", "unknown_class"),
    (churn(scores={"churn": 0.7}), 400, "score", "invalid_value"),
    (churn(features={"age": 3}), 400, "features.age", "unknown_feature"),
    (churn(features={"tenure": "long"}), 400, "features.tenure", "invalid_value"),
    (churn(features={"plan": {"a": 1}}), 400, "features.plan", "invalid_value"),
    (churn(features=[1, 2]), 400, "features", "invalid_value"),
    (churn(label="maybe"), 400, "label", "unknown_class"),
    ({"model": "iris", "prediction": "setosa", "score": 0.5}, 400, "score", "invalid_value"),
    ({"model": "iris", "prediction": "setosa", "scores": {"setosa": 1.0}}, 400, "scores", "missing_field"),
    (
        {"model": "iris", "prediction": "setosa", "scores": {"setosa": 0.5, "versicolor": 0.2, "virginica": 0.1}},
        400,
        "scores",
        "invalid_value",
    ),
    ({"model": "price", "prediction": "high"}, 400, "prediction", "invalid_value"),
    ({"model": "price", "prediction": 3.0, "scores": {"a": 1}}, 400, "scores", "invalid_value"),
]


@pytest.mark.parametrize("payload, status, field, reason", BAD_PREDICTIONS)
def test_bad_prediction_is_rejected_naming_the_field_and_changes_nothing(client, payload, status, field, reason):
    client.post("/api/v1/predictions", json=churn(id="seed", label="stay"))
    before = state(client)
    errors_before = scrape(client).get("mlmon_ingest_errors_total", model=_model_of(payload), reason=reason)
    r = client.post("/api/v1/predictions", json=payload)
    assert r.status_code == status
    body = r.get_json()["error"]
    assert body["code"] == status
    assert {"field": field, "reason": reason} in [{"field": d["field"], "reason": d["reason"]} for d in body["details"]]
    assert state(client) == before
    errors_after = scrape(client).get("mlmon_ingest_errors_total", model=_model_of(payload), reason=reason)
    assert errors_after == errors_before + 1


def _model_of(payload) -> str:
    if isinstance(payload, dict) and payload.get("model") in ("churn", "iris", "price"):
        return payload["model"]
    return ""


def test_unknown_model_answer_names_the_known_ones(client):
    r = client.post("/api/v1/predictions", json=churn(model="nope"))
    assert r.status_code == 404
    assert "churn, iris, price" in r.get_json()["error"]["details"][0]["message"]


def test_one_bad_item_rejects_the_whole_batch_and_lists_every_bad_item(client):
    before = state(client)
    items = [churn(id="a"), churn(id="b", prediction="x"), churn(id="c"), churn(id="d", score=3)]
    r = client.post("/api/v1/predictions", json={"predictions": items})
    assert r.status_code == 400
    details = r.get_json()["error"]["details"]
    assert [(d["index"], d["field"]) for d in details] == [(1, "prediction"), (3, "score")]
    assert "2 of 4 items are invalid" in r.get_json()["error"]["message"]
    assert state(client) == before
    assert client.post("/api/v1/predictions", json={"predictions": [items[0], items[2]]}).status_code == 202


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"{bad", "malformed_json"),
        (b'{"model": NaN}', "malformed_json"),
        (b"[" * 100000, "malformed_json"),
        (b"", "malformed_json"),
    ],
)
def test_malformed_json_is_a_400(client, body, reason):
    before = state(client)
    r = client.post("/api/v1/predictions", data=body, content_type="application/json")
    assert r.status_code == 400
    assert r.get_json()["error"]["details"][0]["reason"] == reason
    assert state(client) == before
    assert scrape(client).get("mlmon_ingest_errors_total", model="", reason=reason) == 1


def test_body_over_the_limit_is_a_413():
    app, _ = make_app("limits: {max_body_bytes: 2048}\nmodels:\n  - {name: m, task: regression}\n")
    client = app.test_client()
    r = client.post("/api/v1/predictions", data=b" " * 4096, content_type="application/json")
    assert r.status_code == 413
    assert r.get_json()["error"]["details"][0]["reason"] == "body_too_large"
    assert scrape(client).get("mlmon_ingest_errors_total", model="", reason="body_too_large") == 1


def test_batch_over_the_limit_is_a_413():
    app, _ = make_app("limits: {max_batch_size: 3}\nmodels:\n  - {name: m, task: regression}\n")
    client = app.test_client()
    r = client.post("/api/v1/predictions", json={"predictions": [{"model": "m", "prediction": 1}] * 4})
    assert r.status_code == 413
    assert "max_batch_size" in r.get_json()["error"]["message"]


@pytest.mark.parametrize(
    "payload, field, reason",
    [
        ({"model": "churn", "label": "stay"}, "id", "missing_field"),
        ({"model": "churn", "id": "a"}, "label", "missing_field"),
        ({"model": "churn", "id": "a", "label": "maybe"}, "label", "unknown_class"),
        ({"model": "price", "id": "a", "label": "high"}, "label", "invalid_value"),
        ({"model": "churn", "id": "a", "label": "stay", "version": "v1"}, "version", "unknown_field"),
    ],
)
def test_bad_label_is_rejected(client, payload, field, reason):
    before = state(client)
    r = client.post("/api/v1/labels", json=payload)
    assert r.status_code == 400
    assert r.get_json()["error"]["details"][0] == {
        **r.get_json()["error"]["details"][0],
        "field": field,
        "reason": reason,
    }
    assert state(client) == before


@pytest.mark.parametrize(
    "path, item",
    [
        ("/api/v1/predictions", {"id": "a", "prediction": 1.5}),
        ("/api/v1/predictions", {"predictions": [{"id": "a", "prediction": 1.5}]}),
        ("/api/v1/labels", {"id": "a", "label": 2.0}),
        ("/api/v1/labels", {"labels": [{"id": "a", "label": 2.0}]}),
    ],
)
def test_an_item_without_its_model_is_rejected_with_one_model_configured(path, item):
    """With a single model there is no doubt which model is meant, but "model" is still required: both
    the fast decoder and the general validator must say so, and nothing is counted."""
    app, _ = make_app("models:\n  - {name: m, task: regression}\n")
    client = app.test_client()
    before = state(client)
    r = client.post(path, json=item)
    assert r.status_code == 400, r.get_json()
    assert {"field": "model", "reason": "missing_field"} in [
        {"field": d["field"], "reason": d["reason"]} for d in r.get_json()["error"]["details"]
    ]
    assert state(client) == before
    assert scrape(client).get("mlmon_ingest_errors_total", model="", reason="missing_field") == 1


def test_a_millisecond_timestamp_gets_a_hint(client, clock):
    r = client.post("/api/v1/predictions", json=churn(timestamp=clock.now * 1000))
    assert r.status_code == 400
    detail = r.get_json()["error"]["details"][0]
    assert detail["field"] == "timestamp" and "looks like milliseconds" in detail["message"]
    r = client.post("/api/v1/predictions", json=churn(timestamp=clock.now + 10 * 86400))
    assert r.status_code == 400 and "milliseconds" not in r.get_json()["error"]["details"][0]["message"]


def test_rfc3339_and_unix_timestamps(client, clock):
    from datetime import datetime, timezone

    stamp = datetime.fromtimestamp(clock.now - 400, timezone.utc).isoformat().replace("+00:00", "Z")
    assert client.post("/api/v1/predictions", json=churn(timestamp=stamp)).status_code == 202
    assert client.post("/api/v1/predictions", json=churn(id="p2", timestamp=clock.now - 30)).status_code == 202
    m = scrape(client)
    samples = {"model": "churn", "version": "default", "kind": "predictions"}
    assert m.get("mlmon_window_samples", window="5m", **samples) == 1  # 400 s ago is before the 5m window
    assert m.get("mlmon_window_samples", window="1h", **samples) == 2
    # Freshness is the arrival time, whatever the client's clock says.
    assert m.get("mlmon_last_prediction_timestamp_seconds", model="churn", version="default") == clock.now


def test_resources_report_is_published(client):
    r = client.post(
        "/api/v1/resources",
        json={"server": "web-1", "models": ["churn"], "cpu_seconds_total": 12.5, "resident_memory_bytes": 1e8},
    )
    assert r.status_code == 202
    m = scrape(client)
    assert m.get("mlmon_model_server_cpu_seconds_total", model="churn", server="web-1") == 12.5
    assert m.get("mlmon_model_server_resident_memory_bytes", model="churn", server="web-1") == 1e8
    bad = client.post(
        "/api/v1/resources",
        json={"server": "web-1", "models": ["nope"], "cpu_seconds_total": -1, "resident_memory_bytes": 1},
    )
    assert bad.status_code == 400
    assert {d["field"] for d in bad.get_json()["error"]["details"]} == {"models", "cpu_seconds_total"}


def test_models_endpoint(client):
    client.post("/api/v1/predictions", json=churn(version="v2"))
    body = client.get("/api/v1/models").get_json()
    churn_model = next(m for m in body["models"] if m["name"] == "churn")
    assert churn_model["task"] == "binary" and churn_model["pending_labels"] == 1
    (version,) = churn_model["versions"]
    assert version["version"] == "v2" and version["predictions"] == 1
    assert version["windows"]["5m"] == {"predictions": 1, "labeled": 0}
    assert client.get("/api/v1/models/churn").get_json()["name"] == "churn"
    assert client.get("/api/v1/models/nope").status_code == 404


def test_openapi_document_lists_every_route(app, client):
    doc = client.get("/api/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    routes = {r.rule.replace("<name>", "{name}") for r in app.url_map.iter_rules() if r.endpoint != "static"}
    assert routes - {"/"} <= set(doc["paths"])


def test_ops_endpoints(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    assert b"/metrics" in client.get("/").data or b"metrics" in client.get("/").data


def test_errors_are_json_for_unknown_routes_and_methods(client):
    r = client.get("/nope")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == 404
    r = client.get("/api/v1/predictions")
    assert r.status_code == 405 and r.get_json()["error"]["code"] == 405


def test_http_requests_are_counted_by_url_rule(client):
    client.post("/api/v1/predictions", json=churn())
    client.get("/api/v1/models/nope")
    m = scrape(client)
    assert m.get("mlmon_http_requests_total", handler="/api/v1/predictions", code="202") == 1
    assert m.get("mlmon_http_requests_total", handler="/api/v1/models/<name>", code="404") == 1


def test_method_not_allowed_names_the_allowed_methods(client):
    r = client.get("/api/v1/labels")
    assert r.status_code == 405 and "POST" in r.headers["Allow"]


@pytest.mark.parametrize(
    "method, path, status",
    [
        ("POST", "/metrics", 405),
        ("HEAD", "/metrics", 405),
        ("DELETE", "/metrics", 405),
        ("GET", "/metrics/foo", 404),
        ("GET", "/metrics/x/y", 404),
    ],
)
def test_metrics_other_paths_and_methods_answer_the_json_error(client, method, path, status):
    r = client.open(path, method=method)
    assert r.status_code == status
    assert r.headers["Content-Type"] == "application/json"
    if method != "HEAD":
        error = r.get_json()["error"]
        assert error["code"] == status and error["message"]
    if status == 405:
        assert r.headers["Allow"] == "GET"


def test_metrics_answers_with_a_trailing_slash(client):
    r = client.get("/metrics/")
    assert r.status_code == 200 and b"mlmon_" in r.data


def test_metrics_can_be_filtered_by_name(client):
    client.post("/api/v1/predictions", json=churn(label="stay"))
    text = client.get("/metrics?name[]=mlmon_accuracy&name[]=mlmon_predictions_total").get_data(as_text=True)
    names = {line.split("{")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert names == {"mlmon_accuracy", "mlmon_predictions_total"}


@pytest.mark.parametrize(
    "text, offset",
    [
        ("2026-01-01T00:00:00Z", 0.0),
        ("2026-01-01T01:00:00+01:00", 0.0),
        ("2026-01-01 00:00:00.25z", 0.25),
        ("2025-12-31T23:30:00.123456789-00:30", 0.123456789),
    ],
)
def test_rfc3339_forms(text, offset):
    from exporter.ingest.validation import parse_rfc3339

    assert parse_rfc3339(text) == pytest.approx(1767225600.0 + offset, abs=1e-6)


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-01T00:00:00",
        "2026-01-01",
        "2026-02-30T00:00:00Z",
        "01/01/2026 00:00Z",
        "2026-01-01T00:00:00+25:00",
        "2026-W01-1T00:00:00Z",
    ],
)
def test_not_rfc3339(text):
    from exporter.ingest.validation import parse_rfc3339

    assert parse_rfc3339(text) is None


def test_alert_thresholds_are_published_for_every_model(client):
    m = scrape(client)
    assert m.get("mlmon_alert_threshold", model="iris", threshold="accuracy_min") == 0.7
    assert {s.labels["threshold"] for s in m.all("mlmon_alert_threshold", model="price")} >= {
        "min_labeled_samples",
        "error_rise",
        "latency_p99_seconds",
    }


# Found by tests/ingest/test_fuzz.py (issue 8).


@pytest.mark.parametrize("version", ["v1\n", "a" * 64 + "\n"])
def test_version_with_a_trailing_newline_is_rejected(client, version):
    r = client.post("/api/v1/predictions", json=churn(version=version))
    assert r.status_code == 400
    assert r.get_json()["error"]["details"][0]["field"] == "version"


@pytest.mark.parametrize(
    "text",
    ["٢٠٢٦-01-01T00:00:00Z", "2026-01-01T00:00:00+00:99", "2026-01-01T00:00:00Z\n", "2026-01-01T00:00:00+00:60"],
)
def test_rfc3339_rejects_non_ascii_digits_bad_offsets_and_a_trailing_newline(client, text):
    from exporter.ingest.validation import parse_rfc3339

    assert parse_rfc3339(text) is None
    r = client.post("/api/v1/predictions", json=churn(timestamp=text))
    assert r.status_code == 400 and r.get_json()["error"]["details"][0]["field"] == "timestamp"


def test_openapi_document_is_valid_openapi_3_0(client):
    doc = client.get("/api/v1/openapi.json").get_json()
    timestamp = doc["components"]["schemas"]["Prediction"]["properties"]["timestamp"]["oneOf"][0]
    assert timestamp["exclusiveMinimum"] is True and timestamp["minimum"] == 0  # a boolean in 3.0, not a number
    for path in ("/healthz", "/readyz"):  # their 503 is {"status": ...}, not the error shape
        assert doc["paths"][path]["get"]["responses"]["503"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Status"
        }


def test_metrics_text_of_changing_series():
    """The sample heads text_exposition keeps between scrapes never publish a series that went away, and
    stay bounded however many series come and go (a version retired each scrape, say), whether the samples
    come one by one or in groups (GaugeFamily.add_group), with the groups' shared labels changing or not."""
    from prometheus_client import CollectorRegistry, generate_latest

    from exporter.serve import exposition

    class Churn:
        scrape = 0

        def collect(self):
            g = exposition.GaugeFamily("churned_series", "series that change", labels=["version"])
            for v in range(50):
                g.add_metric([f"v{self.scrape}-{v}"], v)
            yield g
            grouped = exposition.GaugeFamily("churned_groups", "groups that change", labels=["version", "feature"])
            for v in range(10):
                grouped.add_group((f"v{self.scrape}-{v}",), {f"f{f}": f / 2 for f in range(5)})
            grouped.add_group(("stays",), {f"f{self.scrape}-{f}": f for f in range(5)})
            yield grouped

    churn = Churn()
    registry = CollectorRegistry()
    registry.register(churn)
    for n in range(100):
        churn.scrape = n
        text = exposition.text_exposition(registry)
        assert text == generate_latest(registry)
        assert text.count(b"churned_series{") == 50 and f'"v{n}-49"'.encode() in text
        assert text.count(b"churned_groups{") == 55 and f'feature="f{n}-4",version="stays"'.encode() in text
    assert len(exposition._HEADS[("churned_series", ("version",))].rows) <= 2 * 50 + 1024
    groups = exposition._HEADS[("churned_groups", ("version", "feature"))].groups
    assert len(groups) <= 2 * 11 + 1024 and len(groups[("stays",)]) <= 2 * 5 + 64


def test_metrics_text_is_client_pythons_byte_for_byte(client):
    """/metrics writes the text format itself (exposition.text_exposition, for speed): the same bytes as
    prometheus_client.generate_latest, escapes, special values and OpenMetrics-only samples included."""
    import gzip

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        InfoMetricFamily,
        Metric,
    )

    from exporter.serve.exposition import CounterFamily, GaugeFamily, SeriesBlock, text_exposition

    def odd_samples(g):
        """Label values to escape, and numbers the text format writes its own way."""
        g.add_metric(['x"y', "back\\slash\nnl"], 1.5)
        g.add_metric(["é", ""], float("nan"))
        for v in (float("inf"), float("-inf"), 1e6, 123456789.0, -2.5e7, 1e-7, 3, True, 1e22):
            g.add_metric([repr(v), "v"], v)
        return g

    class Odd:
        def collect(self):
            yield odd_samples(GaugeMetricFamily("odd_gauge", 'help with \\ and\nnewline "quoted"', labels=["b", "a"]))
            c = CounterMetricFamily("odd_things", "a counter", labels=["k"], created=1.5)
            c.add_metric(["1"], 7, created=1700000000.25)
            yield c
            yield InfoMetricFamily("odd_build", "info", value={"version": "1.2"})
            h = HistogramMetricFamily("odd_seconds", "histogram", labels=["h"])
            h.add_metric(["z"], [("0.5", 1), ("+Inf", 3)], 2.25)
            yield h
            m = Metric("odd_untyped", "untyped", "unknown")
            m.add_sample("odd_untyped", {}, 4, timestamp=1234.5678)
            yield m

    odd = odd_samples(GaugeMetricFamily("odd", "", labels=["b", "a"])).samples
    block = SeriesBlock([((s.labels["b"], s.labels["a"]), s.value) for s in odd])

    class OddRows:
        """The same odd label values and numbers through mlmon's own families (exposition._Rows), which
        text_exposition writes from their rows, groups and blocks and generate_latest reads through their
        samples."""

        def collect(self):
            yield odd_samples(GaugeFamily("odd_rows", 'help with \\ and\nnewline "quoted"', labels=["b", "a"]))
            c = CounterFamily("odd_row_things", "a counter", labels=["k"])
            c.add_metric(["1"], 7)
            yield c
            yield GaugeFamily("odd_row_single", "no labels", value=2)
            grouped = GaugeFamily("odd_groups", "groups", labels=["b", "a"])
            for sample in odd:  # a for each b, then the rest with b="x"
                grouped.add_group((sample.labels["b"],), {sample.labels["a"]: sample.value})
            grouped.add_group(("x",), {s.labels["b"]: s.value for s in odd})
            grouped.add_metric(["y", "z"], 1)
            yield grouped
            blocked = CounterFamily("odd_blocks", "blocks", labels=["b", "a"])
            blocked.add_block(block)  # the same block at every scrape, as the collector's static series
            blocked.add_group(("g",), {"h": 2.0})
            yield blocked

    registry = CollectorRegistry()
    registry.register(Odd())
    registry.register(OddRows())
    assert text_exposition(registry) == generate_latest(registry)
    assert text_exposition(registry) == generate_latest(registry)  # the block's text, kept, and the heads
    assert b'odd_rows{a="back\\\\slash\\nnl",b="x\\"y"} 1.5\n' in text_exposition(registry)

    client.post("/api/v1/predictions", json={"predictions": [churn(id=f"p{i}", label="stay") for i in range(30)]})
    registry = client.application.extensions["mlmon"].registry
    volatile = (b"process_", b"python_gc_", b"mlmon_collect_duration", b"mlmon_http_")  # change between scrapes

    def name(line: bytes) -> bytes:
        return line.split(b" ")[2] if line.startswith(b"#") else line.split(b"{")[0].split(b" ")[0]

    def stable(text: bytes) -> list[bytes]:
        lines = [line for line in text.splitlines() if not name(line).startswith(volatile)]
        assert len(lines) > 100
        return lines

    assert stable(text_exposition(registry)) == stable(generate_latest(registry))
    r = client.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert r.headers["Content-Encoding"] == "gzip"
    assert stable(gzip.decompress(r.data)) == stable(generate_latest(registry))
    openmetrics = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert openmetrics.get_data(as_text=True).endswith("# EOF\n")


def test_feature_names_with_spaces_quotes_and_slashes_are_served_and_escaped():
    """scikit-learn's own column names, and the characters the exposition format must escape."""
    import json

    from prometheus_client.parser import text_string_to_metric_families

    names = ["mean radius", "petal length (cm)", "od280/od315_of_diluted_wines", 'quote"d', "back\\slash", "âge µ"]
    features = "".join(f"      - {{name: {json.dumps(n)}, type: numeric}}\n" for n in names)
    app, _ = make_app(f"models:\n  - name: m\n    task: regression\n    features:\n{features}")
    client = app.test_client()
    rows = [{"model": "m", "id": str(i), "prediction": 1.0, "features": {n: i / 10 for n in names}} for i in range(20)]
    rows[0]["features"]["petal length (cm)"] = None
    assert client.post("/api/v1/predictions", json={"predictions": rows}).status_code == 202
    r = client.post("/api/v1/predictions", json={"model": "m", "prediction": 1.0, "features": {'quote"d': "x"}})
    assert r.status_code == 400 and r.get_json()["error"]["details"][0]["field"] == 'features.quote"d'
    samples = [
        s
        for f in text_string_to_metric_families(client.get("/metrics").data.decode())
        for s in f.samples
        if s.name == "mlmon_feature_missing_total"
    ]
    assert {s.labels["feature"]: s.value for s in samples} == {
        n: (1.0 if n == "petal length (cm)" else 0.0) for n in names
    }
