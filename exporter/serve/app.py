"""The HTTP surface: a Flask app factory wiring state, validation, the collector and /metrics.

Every error, ours or Werkzeug's, answers with the JSON error shape of docs/api.md; bad input is a 4xx
that names the problem and is counted, never a 5xx. (Only a body over twice limits.max_body_bytes is
refused by waitress itself, with its plain-text 413, before it is read.)
"""

from __future__ import annotations

import gc
import logging
import math
import re
import sqlite3
import time
from collections.abc import Callable
from html import escape

import orjson
from flask import Blueprint, Flask, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from exporter import __version__
from exporter.config import Config
from exporter.engine import storage
from exporter.engine.core import AnsweredBefore, Busy, Mlmon
from exporter.engine.state import ModelState
from exporter.ingest import columnar
from exporter.ingest.validation import Invalid, Problem
from exporter.serve.collector import MlmonCollector
from exporter.serve.exposition import metrics_app, status_name
from exporter.serve.openapi import openapi_document
from exporter.stats import reference

log = logging.getLogger("mlmon.app")
access_log = logging.getLogger("mlmon.access")

# The action each endpoint needs when authentication is on (exporter/security/auth.py); others are open.
ENDPOINT_ACTIONS = {
    "api_v1.post_predictions": "write",
    "api_v1.post_labels": "write",
    "api_v1.post_resources": "write",
    "api_v1.list_models": "read",
    "api_v1.get_model": "read",
    "api_v1.put_reference": "admin",
    "api_v1.reset_model": "admin",
}


INGEST_ENDPOINTS = ("api_v1.post_predictions", "api_v1.post_labels")


class APIError(Exception):
    def __init__(self, status: int, message: str, problems: list[Problem] | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.problems = status, message, problems or []
        self.headers = headers or {}


def error_body(status: int, name: str, message: str, problems: list[Problem] | None = None):
    body = {"error": {"code": status, "name": name, "message": message}}
    if problems:
        body["error"]["details"] = [p.as_json() for p in problems[:1000]]
    return jsonify(body), status


def _mlmon() -> Mlmon:
    return current_app.extensions["mlmon"]


def _json_body():
    """Parse the request body as JSON, counting and answering malformed input as 400."""
    return _parse_json(request.get_data(cache=False))


def _parse_json(raw: bytes):
    try:
        # orjson: several times faster than json on ingest bodies, and strict: NaN, Infinity, numbers that
        # overflow to infinity, lone surrogates and nesting deeper than 1024 are all malformed JSON.
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        _mlmon().errors.inc("", "malformed_json")
        reason = str(exc)[:200]
        raise APIError(
            400, f"the body is not valid JSON: {reason}", [Problem(0, "", "malformed_json", reason)]
        ) from None


def _count_rejection(err: Invalid) -> None:
    errors = _mlmon().errors
    seen: set[int] = set()
    for p in err.problems:  # one count per bad item, under the reason of its first problem
        if p.index not in seen:
            seen.add(p.index)
            errors.inc(p.model, p.reason)


api = Blueprint("api_v1", __name__, url_prefix="/api/v1")
ops = Blueprint("ops", __name__)


@api.post("/predictions")
def post_predictions():
    return _ingest("predictions")


@api.post("/labels")
def post_labels():
    return _ingest("labels")


def _ingest(kind: str):
    """Shared path of predictions and labels: idempotency, validation, then journal and apply."""
    m = _mlmon()
    raw = request.get_data(cache=False)
    key = _idempotency_key()
    if key is not None and g.get("token") is not None:
        # Keys are per token: one client cannot read another's answers by guessing its keys.
        key = f"{len(g.token.name)}:{g.token.name}:{key}"
    # The body's digest tells a retry from another body under the same key: only computed when there is one.
    body_digest = storage.digest(raw) if key is not None else b""
    if key is not None:
        seen = m.store.seen(key)
        if seen is not None:
            return _replayed(m, key, seen, body_digest)
    now = m.clock()
    fmt = columnar.FORMATS.get(request.mimetype)  # a columnar batch (JSON or Arrow), or rows
    try:
        with m.turn():
            items = _decode(m, kind, raw, now) if fmt is None else _decode_columns(m, kind, fmt, raw, now)
            models = {items.model} if isinstance(items, columnar.Columns) else {item.model for item in items}
            _require("write", models)
            result = m.ingest(kind if fmt is None else f"{kind}/{fmt}", raw, items, now, key, body_digest)
    except Busy as busy:
        m.throttled.labels(busy.reason).inc()
        response, status = error_body(busy.status, status_name(busy.status), busy.message)
        response.headers["Retry-After"] = str(max(1, math.ceil(busy.retry_after)))
        return response, status
    except AnsweredBefore as before:
        return _replayed(m, key, before.seen, body_digest)
    except sqlite3.IntegrityError:  # the same Idempotency-Key raced in on another thread: answer as a retry
        return _replayed(m, key, m.store.seen(key), body_digest)
    # (orjson, as the answer kept for a retry: the same bytes, at a fraction of Flask's JSON provider's cost)
    return current_app.response_class(orjson.dumps(result), status=202, mimetype="application/json")


def _decode(m: Mlmon, kind: str, raw: bytes, now: float) -> list:
    """The validated items of a body. A valid one is decoded and checked in C (exporter/ingest/fastpath.py); anything
    else, and any problem, goes through the general validation, which words it (400 naming each field)."""
    items = m.fast.predictions(raw, now) if kind == "predictions" else m.fast.labels(raw)
    if items is not None:
        return items
    body = _parse_json(raw)
    try:
        return m.validator.predictions(body, now) if kind == "predictions" else m.validator.labels(body)
    except Invalid as err:
        _count_rejection(err)
        raise APIError(err.status, err.message, err.problems) from None


def _decode_columns(m: Mlmon, kind: str, fmt: str, raw: bytes, now: float):
    """The validated batch of a columnar body (exporter/ingest/columnar.py): columns when the fast path takes it,
    else the rows the general validation accepts; every problem a 4xx naming the field (and row), counted."""
    try:
        return m.columnar.predictions(fmt, raw, now) if kind == "predictions" else m.columnar.labels(fmt, raw)
    except columnar.Refused as err:
        m.errors.inc("", err.reason)
        raise APIError(err.status, err.invalid().message, err.invalid().problems) from None
    except Invalid as err:
        _count_rejection(err)
        raise APIError(err.status, err.message, err.problems) from None


IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def _idempotency_key() -> str | None:
    """The Idempotency-Key header (IETF draft-ietf-httpapi-idempotency-key-header), if the client sent one."""
    value = request.headers.get("Idempotency-Key")
    if value is None:
        return None
    value = value.strip().strip('"')  # the draft's form is a quoted string; a bare token is accepted too
    if not IDEMPOTENCY_KEY.match(value):
        _mlmon().errors.inc("", "invalid_idempotency_key")
        raise APIError(
            400,
            "the Idempotency-Key header must be 1 to 255 visible ASCII characters",
            [Problem(0, "Idempotency-Key", "invalid_idempotency_key", "1 to 255 visible ASCII characters")],
        )
    return value


def _replayed(m: Mlmon, key: str, seen: storage.Seen | None, body_digest: bytes):
    """Answer a request whose Idempotency-Key was used before, without applying it again."""
    if seen is not None and seen.digest != body_digest:
        m.errors.inc("", "idempotency_key_reused")
        raise APIError(
            422,
            "this Idempotency-Key was used with another body; use a new key for a new request",
            [Problem(0, "Idempotency-Key", "idempotency_key_reused", "the body differs from the first request's")],
        )
    if seen is None or seen.response is None:
        response, status = error_body(409, "Conflict", "a request with this Idempotency-Key is still being processed")
        response.headers["Retry-After"] = "1"
        return response, status
    m.idempotent_replays.inc()
    response = current_app.response_class(seen.response, status=202, mimetype="application/json")
    response.headers["Idempotent-Replayed"] = "true"
    return response


@api.post("/resources")
def post_resources():
    m = _mlmon()
    body = _json_body()
    try:
        report = m.validator.resources(body)
    except Invalid as err:
        m.errors.inc("", err.problems[0].reason)
        raise APIError(err.status, err.message, err.problems) from None
    _require("write", set(report.models))
    if not m.servers.report(report.server, report.models, report.cpu_seconds, report.resident_memory_bytes, m.clock()):
        raise APIError(429, f"too many model servers reporting (limits.max_servers = {m.config.limits.max_servers})")
    return jsonify({"accepted": 1}), 202


@api.get("/models")
def list_models():
    m = _mlmon()
    now = m.clock()
    token = g.get("token")
    visible = [s for name, s in m.models.items() if token is None or token.allows("read", name)]
    return jsonify({"models": [s.summary(now) for s in visible]})


def _model_state(name: str) -> ModelState:
    m = _mlmon()
    state = m.models.get(name)
    if state is None:
        raise APIError(404, f"unknown model {name[:100]!r}; known models: {', '.join(sorted(m.models))}")
    return state


@api.get("/models/<name>")
def get_model(name: str):
    state = _model_state(name)
    _require("read", {name})
    return jsonify(state.summary(_mlmon().clock()))


@api.put("/models/<name>/reference")
def put_reference(name: str):
    """Replace a model's reference: a CSV of raw rows (Content-Type text/csv) or a profile (JSON)."""
    m = _mlmon()
    state = _model_state(name)
    _require("admin", {name})
    try:
        if request.mimetype == "text/csv":
            profile = reference.from_csv(request.get_data(cache=False).decode("utf-8", "replace"), state.model)
        else:
            profile = reference.from_json(_json_body(), state.model)
    except reference.ReferenceError as exc:
        m.errors.inc(name, "invalid_reference")
        raise APIError(
            400, f"invalid reference: {exc}", [Problem(0, "", "invalid_reference", str(exc)[:500])]
        ) from None
    m.set_reference(name, profile)
    log.info("reference replaced", extra={"fields": {"model": name, "rows": profile.rows}})
    _audit("reference_replaced", 200, model=name, rows=profile.rows)
    return jsonify(
        {
            "model": name,
            "rows": profile.rows,
            "features": len(profile.features),
            "calibration": profile.calibration_summary(),
        }
    )


@api.post("/models/<name>/reset")
def reset_model(name: str):
    """Forget a model's windows, counters and waiting predictions; its reference stays."""
    m = _mlmon()
    _model_state(name)
    _require("admin", {name})
    result = m.reset(name)
    log.info("model reset", extra={"fields": {"model": name}})
    _audit("model_reset", 200, model=name)
    return jsonify(result)


def _client() -> str:
    return request.remote_addr or ""


def _audit(event: str, status: int, **fields) -> None:
    token = g.get("token")
    _mlmon().audit.write(
        event,
        client=_client(),
        token=token.name if token is not None else None,
        method=request.method,
        path=request.path,
        status=status,
        **fields,
    )


def _require(action: str, models: set[str]) -> None:
    """403 unless the request's token may do ``action`` on every model in ``models``."""
    m = _mlmon()
    token = g.get("token")
    if not m.auth.enabled or token is None:
        return
    denied = sorted(x for x in models if not token.allows(action, x))
    if denied:
        m.auth_failures.labels("forbidden").inc()
        _audit("forbidden", 403, action=action, models=denied[:20])
        message = f"token {token.name!r} may not {action} model(s) {', '.join(map(repr, denied[:20]))}"
        raise APIError(403, message, [Problem(0, "", "forbidden", message)])


def _authenticate() -> None:
    """Before every request: an endpoint that needs an action needs a valid bearer token (when auth is on)."""
    m = _mlmon()
    g.token = None
    action = ENDPOINT_ACTIONS.get(request.endpoint or "")
    if action is None or not m.auth.enabled:
        return
    token, reason = m.auth.identify(request.headers.get("Authorization"))
    if token is None:
        m.auth_failures.labels(reason).inc()
        _audit("auth_failure", 401, reason=reason)
        message = "a bearer token is required" if reason == "missing_token" else "the bearer token is not valid"
        raise APIError(
            401, message, [Problem(0, "Authorization", reason, message)], {"WWW-Authenticate": _challenge(reason)}
        )
    g.token = token


def _challenge(reason: str) -> str:
    return 'Bearer realm="mlmon"' + (', error="invalid_token"' if reason == "invalid_token" else "")


@api.get("/openapi.json")
def openapi():
    return jsonify(openapi_document())


@ops.get("/")
def landing():
    m = _mlmon()
    models = "".join(f"<li>{escape(n)} ({escape(s.model.task)})</li>" for n, s in m.models.items())
    html = (
        "<!doctype html><html><head><meta charset='utf-8'><title>mlmon exporter</title></head><body>"
        f"<h1>mlmon exporter</h1><p>Version {escape(__version__)}. Watches machine-learning models for "
        "Prometheus.</p><ul><li><a href='metrics'>Metrics</a></li><li><a href='api/v1/models'>Models</a></li>"
        "<li><a href='api/v1/openapi.json'>OpenAPI document</a></li><li><a href='healthz'>Health</a></li>"
        f"<li><a href='readyz'>Readiness</a></li></ul><h2>Models</h2><ul>{models}</ul></body></html>"
    )
    return html, 200, {"Content-Type": "text/html; charset=utf-8"}


@ops.get("/healthz")
def healthz():
    m = _mlmon()
    problems = []
    if m.maintenance_thread is not None and not m.maintenance_thread.is_alive():
        problems.append("the maintenance thread has stopped")
    for name, state in m.models.items():
        if not state.lock.acquire(timeout=2.0):
            problems.append(f"model {name!r} has been locked for over 2s")
        else:
            state.lock.release()
    if problems:
        return jsonify({"status": "unhealthy", "problems": problems}), 503
    return jsonify({"status": "ok"})


@ops.get("/readyz")
def readyz():
    if not _mlmon().ready:
        return jsonify({"status": "shutting down"}), 503
    return jsonify({"status": "ready"})


# Young-generation threshold of the garbage collector (CPython's default is 700 allocations), for the whole
# process. An ingest batch of 1000 events allocates a few thousand container objects that all die with the
# request: at 700 the collector ran about five times per batch, a tenth of ingest time, mostly moving live
# request data into older generations (docs/performance.md). The price: garbage in reference cycles waits
# for up to 20,000 allocations instead of 700 before it is freed.
GC_GEN0_THRESHOLD = 20_000


def tune_gc() -> None:
    """Raise the young-generation threshold; called by `mlmon serve` (a library user's process is theirs)."""
    gen0, gen1, gen2 = gc.get_threshold()
    if 0 < gen0 < GC_GEN0_THRESHOLD:  # 0: someone turned automatic collection off; leave it so
        gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def create_app(config: Config, *, clock: Callable[[], float] = time.time) -> Flask:
    """Build the exporter's WSGI app: API, ops endpoints and /metrics on a private registry."""
    app = Flask("exporter")
    app.config["MAX_CONTENT_LENGTH"] = config.limits.max_body_bytes
    app.json.sort_keys = False
    m = app.extensions["mlmon"] = Mlmon(config, clock)
    m.registry.register(MlmonCollector(list(m.models.values()), m.errors, m.servers, clock, links=m.links))
    app.register_blueprint(api)
    app.register_blueprint(ops)

    @app.before_request
    def _start_timer():
        g.started = time.perf_counter()
        _authenticate()

    accept_post = ", ".join(["application/json", *columnar.accepted()])

    @app.after_request
    def _count_request(response):
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        if request.endpoint in INGEST_ENDPOINTS:
            # The body formats ingest takes (the Accept-Post header of RFC 9110's registry): a client tells
            # from it, on any answer, whether the exporter reads columnar batches (older ones do not).
            response.headers["Accept-Post"] = accept_post
        m.http_requests.labels(rule, str(response.status_code)).inc()
        if "started" in g:
            m.http_duration.labels(rule).observe(time.perf_counter() - g.started)
        if access_log.isEnabledFor(logging.DEBUG):  # the access log: --log.level debug
            token = g.get("token")
            access_log.debug(
                "request",
                extra={
                    "fields": {
                        "method": request.method,
                        "path": request.path,
                        "status": response.status_code,
                        "client": request.remote_addr or "",
                        "token": token.name if token is not None else "",  # its name, never its value
                        "seconds": round(time.perf_counter() - g.started, 6) if "started" in g else None,
                    }
                },
            )
        return response

    @app.errorhandler(APIError)
    def _api_error(err: APIError):
        response, status = error_body(err.status, status_name(err.status), err.message, err.problems)
        response.headers.update(err.headers)
        return response, status

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        if err.code == 413 and request.path.startswith("/api/v1/"):
            m.errors.inc("", "body_too_large")
            limit = config.limits.max_body_bytes
            return error_body(
                413,
                "Payload Too Large",
                f"the body is larger than {limit} bytes (limits.max_body_bytes)",
                [Problem(0, "", "body_too_large", f"limit {limit} bytes")],
            )
        response, status = error_body(err.code or 500, status_name(err.code or 500), err.description or err.name)
        for key, value in err.get_headers():  # keeps e.g. the Allow header of a 405
            if key.lower() != "content-type":
                response.headers[key] = value
        return response, status

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return error_body(500, "Internal Server Error", "an unexpected error occurred; see the exporter's log")

    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/metrics": metrics_app(m.registry)})
    return app
