"""Bearer tokens scoped to models and actions, the audit log, and tokens never reaching a log."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import requests

from exporter.client import Client
from exporter.config import ConfigError, parse_config
from exporter.serve.app import create_app
from tests.conftest import Clock, scrape
from tests.serve.test_server import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]

WRITER = "w" * 8 + "churn-writer-token"  # write churn
READER = "r" * 8 + "all-models-reader"  # read every model
ADMIN = "a" * 8 + "price-admin-token!"  # admin price
OMNI = "o" * 8 + "every-action-token"  # everything, every model
ALL_TOKENS = (WRITER, READER, ADMIN, OMNI)


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def config_text(tmp_path: Path, extra: str = "") -> str:
    (tmp_path / "admin_token").write_text(ADMIN + "\n")
    return (
        textwrap.dedent(
            f"""
        windows: ["5m", "1h"]
        storage: {{path: "{tmp_path / "data"}"}}
        auth:
          tokens:
            - {{name: churn-writer, sha256: {sha(WRITER)}, models: [churn], actions: [write]}}
            - {{name: reader, token_env: MLMON_TEST_READER, actions: [read]}}
            - {{name: price-admin, token_file: admin_token, models: [price], actions: [admin, write, read]}}
            - {{name: omni, sha256: {sha(OMNI)}, models: ["*"], actions: [write, read, admin]}}
        models:
          - name: churn
            task: binary
            classes: ["stay", "churn"]
            positive_class: "churn"
            features:
              - {{name: tenure, type: numeric}}
          - name: price
            task: regression
            features:
              - {{name: size, type: numeric}}
        """
        )
        + extra
    )


@pytest.fixture
def secured(tmp_path, monkeypatch):
    monkeypatch.setenv("MLMON_TEST_READER", READER)
    config = parse_config(config_text(tmp_path), "mlmon.yml", str(tmp_path))
    app = create_app(config, clock=Clock())
    return app, tmp_path


def bearer(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def audit_lines(tmp_path: Path) -> list[dict]:
    path = tmp_path / "data" / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


PRED = {"model": "churn", "id": "p1", "prediction": "stay", "features": {"tenure": 3}}
PRICE = {"model": "price", "id": "q1", "prediction": 3.5}
RESOURCES = {"server": "s1", "models": ["churn"], "cpu_seconds_total": 1.0, "resident_memory_bytes": 1e6}
CSV = "size,prediction\n" + "\n".join(f"{i},{i % 7}" for i in range(50))

# (method, path, body, token, expected status): every endpoint that needs a token, with each kind of caller.
CASES = [
    # POST /api/v1/predictions: write, on every model of the batch
    ("post", "/api/v1/predictions", PRED, None, 401),
    ("post", "/api/v1/predictions", PRED, "not-a-known-token-at-all", 401),
    ("post", "/api/v1/predictions", PRED, READER, 403),  # no write
    ("post", "/api/v1/predictions", PRICE, WRITER, 403),  # another model
    ("post", "/api/v1/predictions", {"predictions": [PRED, PRICE]}, WRITER, 403),  # one model outside
    ("post", "/api/v1/predictions", PRED, WRITER, 202),
    ("post", "/api/v1/predictions", {"predictions": [PRED, PRICE]}, OMNI, 202),
    # POST /api/v1/labels
    ("post", "/api/v1/labels", {"model": "churn", "id": "p1", "label": "churn"}, None, 401),
    ("post", "/api/v1/labels", {"model": "price", "id": "q1", "label": 3.0}, WRITER, 403),
    ("post", "/api/v1/labels", {"model": "churn", "id": "p1", "label": "churn"}, WRITER, 202),
    # POST /api/v1/resources: write on the models it reports
    ("post", "/api/v1/resources", RESOURCES, None, 401),
    ("post", "/api/v1/resources", {**RESOURCES, "models": ["price"]}, WRITER, 403),
    ("post", "/api/v1/resources", RESOURCES, WRITER, 202),
    # GET /api/v1/models, /api/v1/models/{name}: read
    ("get", "/api/v1/models", None, None, 401),
    ("get", "/api/v1/models", None, WRITER, 200),  # listed models are filtered to the token's read scope
    ("get", "/api/v1/models/churn", None, None, 401),
    ("get", "/api/v1/models/churn", None, WRITER, 403),
    ("get", "/api/v1/models/churn", None, ADMIN, 403),
    ("get", "/api/v1/models/churn", None, READER, 200),
    # PUT /api/v1/models/{name}/reference: admin
    ("put", "/api/v1/models/price/reference", CSV, None, 401),
    ("put", "/api/v1/models/price/reference", CSV, WRITER, 403),
    ("put", "/api/v1/models/churn/reference", CSV, ADMIN, 403),
    ("put", "/api/v1/models/price/reference", CSV, ADMIN, 200),
    # POST /api/v1/models/{name}/reset: admin
    ("post", "/api/v1/models/price/reset", None, None, 401),
    ("post", "/api/v1/models/price/reset", None, READER, 403),
    ("post", "/api/v1/models/price/reset", None, ADMIN, 200),
    # Open: probes, the landing page, the OpenAPI document (/metrics: the web config's basic auth).
    ("get", "/healthz", None, None, 200),
    ("get", "/readyz", None, None, 200),
    ("get", "/", None, None, 200),
    ("get", "/api/v1/openapi.json", None, None, 200),
    ("get", "/metrics", None, None, 200),
]


@pytest.mark.parametrize("method, path, body, token, status", CASES)
def test_every_endpoint_needs_the_right_token(secured, method, path, body, token, status):
    app, _ = secured
    client = app.test_client()
    kwargs: dict = {"headers": bearer(token)}
    if isinstance(body, str):
        kwargs.update(data=body, content_type="text/csv")
    elif body is not None:
        kwargs["json"] = body
    before = scrape(client).series()
    r = getattr(client, method)(path, **kwargs)
    assert r.status_code == status, r.get_data(as_text=True)
    if status in (401, 403):
        error = r.get_json()["error"]
        assert error["code"] == status and error["details"][0]["reason"] in (
            "missing_token",
            "invalid_token",
            "forbidden",
        )
        if status == 401:
            assert r.headers["WWW-Authenticate"].startswith('Bearer realm="mlmon"')
        after = scrape(client).series()
        changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
        bookkeeping = ("mlmon_auth_failures_total", "mlmon_http_request", "mlmon_collect_duration_seconds")
        assert all(k[0].startswith(bookkeeping) for k in changed), changed


def test_the_model_list_shows_only_the_tokens_models(secured):
    app, _ = secured
    client = app.test_client()
    names = lambda token: [m["name"] for m in client.get("/api/v1/models", headers=bearer(token)).get_json()["models"]]  # noqa: E731
    assert names(READER) == ["churn", "price"]
    assert names(ADMIN) == ["price"]
    assert names(WRITER) == []  # a token without read lists nothing


def test_failures_are_counted_and_audited_without_token_values(secured):
    app, tmp_path = secured
    client = app.test_client()
    client.post("/api/v1/predictions", json=PRED)
    client.post("/api/v1/predictions", json=PRED, headers=bearer("guess-guess-guess-guess"))
    client.post("/api/v1/predictions", json=PRICE, headers=bearer(WRITER))
    client.put("/api/v1/models/price/reference", data=CSV, content_type="text/csv", headers=bearer(ADMIN))
    client.post("/api/v1/models/price/reset", headers=bearer(ADMIN))
    metrics = scrape(client)
    assert metrics.get("mlmon_auth_failures_total", reason="missing_token") == 1
    assert metrics.get("mlmon_auth_failures_total", reason="invalid_token") == 1
    assert metrics.get("mlmon_auth_failures_total", reason="forbidden") == 1
    lines = audit_lines(tmp_path)
    assert [(x["event"], x["status"], x["token"]) for x in lines] == [
        ("auth_failure", 401, None),
        ("auth_failure", 401, None),
        ("forbidden", 403, "churn-writer"),
        ("reference_replaced", 200, "price-admin"),
        ("model_reset", 200, "price-admin"),
    ]
    assert lines[0]["reason"] == "missing_token" and lines[1]["reason"] == "invalid_token"
    assert lines[2]["models"] == ["price"] and lines[2]["action"] == "write"
    assert all({"ts", "client", "method", "path"} <= set(x) for x in lines)
    text = (tmp_path / "data" / "audit.log").read_text()
    for secret in (*ALL_TOKENS, "guess-guess-guess-guess"):
        assert secret not in text


def test_idempotency_keys_belong_to_their_token(secured):
    app, _ = secured
    client = app.test_client()
    headers = {**bearer(OMNI), "Idempotency-Key": "k1"}
    assert client.post("/api/v1/predictions", json=PRED, headers=headers).status_code == 202
    # The same key from another token is another request: applied (a duplicate id here), not replayed.
    r = client.post("/api/v1/predictions", json=PRED, headers={**bearer(WRITER), "Idempotency-Key": "k1"})
    assert r.status_code == 202 and "Idempotent-Replayed" not in r.headers
    assert r.get_json() == {"accepted": 0, "duplicates": 1}


def test_reset_forgets_a_model_durably_and_keeps_its_reference(secured):
    app, tmp_path = secured
    client = app.test_client()
    client.put("/api/v1/models/price/reference", data=CSV, content_type="text/csv", headers=bearer(ADMIN))
    client.post("/api/v1/predictions", json={"predictions": [PRED, PRICE]}, headers=bearer(OMNI))
    assert scrape(client).get("mlmon_predictions_total", model="price", version="default") == 1
    r = client.post("/api/v1/models/price/reset", headers=bearer(ADMIN))
    assert r.status_code == 200 and r.get_json() == {"model": "price", "reset": True}
    metrics = scrape(client)
    assert metrics.get("mlmon_predictions_total", model="price", version="default") is None
    assert metrics.get("mlmon_predictions_total", model="churn", version="default") == 1
    assert metrics.get("mlmon_pending_labels", model="price") == 0
    assert metrics.get("mlmon_reference_rows", model="price") == 50
    again = create_app(parse_config(config_text(tmp_path), "mlmon.yml", str(tmp_path)), clock=Clock())
    assert state(scrape(again.test_client())) == state(metrics)  # the reset was journalled


def state(metrics) -> dict:
    bookkeeping = ("mlmon_http", "mlmon_auth", "mlmon_storage", "mlmon_collect", "mlmon_idempotent")
    return {k: v for k, v in metrics.series().items() if not k[0].startswith(bookkeeping)}


def test_auth_off_needs_no_token(tmp_path, monkeypatch):
    monkeypatch.setenv("MLMON_TEST_READER", READER)
    app = create_app(
        parse_config(config_text(tmp_path, "").replace("auth:\n", "auth:\n  enabled: false\n"), "x", str(tmp_path))
    )
    assert app.test_client().post("/api/v1/predictions", json=PRED).status_code == 202


@pytest.mark.parametrize(
    "tokens, message",
    [
        ("[{name: a, sha256: abc, actions: [write]}]", "64 hex digits"),
        ("[{name: a, token_env: MLMON_TEST_UNSET_VAR, actions: [write]}]", "MLMON_TEST_UNSET_VAR is not set"),
        ("[{name: a, token_file: nope, actions: [write]}]", "cannot read"),
        ("[{name: a, token_file: short, actions: [write]}]", "the token is 5 characters; use at least 16"),
        (f"[{{name: a, sha256: {'0' * 64}, actions: [fly]}}]", "unknown action 'fly'"),
        (f"[{{name: a, sha256: {'0' * 64}, models: [ghost], actions: [read]}}]", "unknown model 'ghost'"),
        (f"[{{name: a, sha256: {'0' * 64}, token_env: X, actions: [read]}}]", "exactly one of"),
        (
            f"[{{name: a, sha256: {'0' * 64}, actions: [read]}}, {{name: a, sha256: {'1' * 64}, actions: [read]}}]",
            "duplicate token name",
        ),
        ("[]", "no token is configured"),
    ],
)
def test_token_config_errors_name_the_problem_never_the_value(tmp_path, tokens, message):
    (tmp_path / "short").write_text("hello\n")
    text = f"auth:\n  tokens: {tokens}\nmodels: [{{name: churn, task: regression}}]\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, "mlmon.yml", str(tmp_path))
    assert message in str(err.value)
    assert "hello" not in str(err.value)


def test_no_token_value_reaches_the_logs_of_a_served_exporter(tmp_path, monkeypatch):
    """A real `mlmon serve` at debug level, a client with a token, bad tokens: grep every log for the values."""
    monkeypatch.setenv("MLMON_TEST_READER", READER)
    (tmp_path / "mlmon.yml").write_text(config_text(tmp_path))
    port = free_port()
    args = [sys.executable, "-m", "exporter", "serve", "--config", str(tmp_path / "mlmon.yml"), "--port", str(port)]
    proc = subprocess.Popen(
        [*args, "--log.level", "debug", "--log.format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**__import__("os").environ, "MLMON_TEST_READER": READER},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        with Client(url, token=OMNI, flush_interval=0.05, report_resources_every=0.1, server="s1") as mon:
            for i in range(20):
                mon.log_prediction("churn", "stay", id=f"x{i}", features={"tenure": i})
                mon.log_label("churn", f"x{i}", "churn")
            assert mon.flush(10)
            assert mon.stats()["sent"] == 40
        bad = "definitely-wrong-token-value-123"
        assert requests.post(f"{url}/api/v1/predictions", json=PRED, headers=bearer(bad), timeout=5).status_code == 401
        assert (
            requests.post(f"{url}/api/v1/predictions", json=PRICE, headers=bearer(WRITER), timeout=5).status_code == 403
        )
        logging.getLogger("mlmon.client").debug("client side done")
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    audit = (tmp_path / "data" / "audit.log").read_text()
    assert '"event":"auth_failure"' in audit and '"event":"forbidden"' in audit
    for secret in (*ALL_TOKENS, bad):
        assert secret not in stderr
        assert secret not in audit
    # The check read real output: the access log (debug) has every request, naming the token, not its value.
    access = [json.loads(line) for line in stderr.splitlines() if '"logger": "mlmon.access"' in line]
    assert any(x["token"] == "omni" and x["path"] == "/api/v1/predictions" for x in access)
    assert any(x["status"] == 401 for x in access) and any(x["status"] == 403 for x in access)


def test_the_client_reads_its_token_from_a_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MLMON_TOKEN", raising=False)
    (tmp_path / "token").write_text(OMNI + "\n")
    monkeypatch.setenv("MLMON_TOKEN_FILE", str(tmp_path / "token"))
    client = Client("http://127.0.0.1:9", report_resources_every=None)
    try:
        assert client._headers["Authorization"] == f"Bearer {OMNI}"
        assert OMNI not in repr(client)
    finally:
        client.close(timeout=0.1)
    monkeypatch.setenv("MLMON_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="MLMON_TOKEN_FILE"):
        Client("http://127.0.0.1:9", report_resources_every=None)
