"""The HTTP surface: a Flask app factory wiring state, validation, the collector and /metrics.

Every error, ours or Werkzeug's, answers with the JSON error shape of docs/api.md; bad input is a 4xx
that names the problem and is counted, never a 5xx. (Only a body over twice limits.max_body_bytes is
refused by waitress itself, with its plain-text 413, before it is read.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from html import escape
from http import HTTPStatus

import orjson
from flask import Blueprint, Flask, current_app, g, jsonify, request
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    make_wsgi_app,
)
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from exporter import __version__, reference
from exporter.collector import IngestErrors, MlmonCollector
from exporter.config import Config
from exporter.openapi import openapi_document
from exporter.state import ModelState, ServerReports
from exporter.validation import Invalid, Problem, Validator

log = logging.getLogger("mlmon.app")


class Mlmon:
    """Everything one app instance owns: config, per-model state, counters and its private registry."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock
        self.validator = Validator(config, clock)
        self.models = {m.name: ModelState(m, config) for m in config.models}
        self.errors = IngestErrors(list(self.models))
        self.servers = ServerReports(config.limits.max_servers, config.limits.server_stale_seconds)
        self.ready = True
        self.maintenance_thread: threading.Thread | None = None
        for name, profile in reference.load_all(config).items():
            self.models[name].set_reference(profile)

        disable_created_metrics()
        self.registry = CollectorRegistry()
        for c in (ProcessCollector, GCCollector, PlatformCollector):
            c(registry=self.registry)
        self.registry.register(MlmonCollector(list(self.models.values()), self.errors, self.servers, clock))
        self.http_requests = Counter(
            "mlmon_http_requests",
            "HTTP requests served, by URL rule and status code.",
            ["handler", "code"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "mlmon_http_request_duration_seconds",
            "Time to serve an HTTP request.",
            ["handler"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )

    def maintain(self) -> None:
        """Expire what outlived its TTL; run every few seconds by the server, by hand in tests."""
        now = self.clock()
        for state in self.models.values():
            state.expire(now)
        self.servers.expire(now)

    def start_maintenance(self, every: float = 5.0) -> threading.Event:
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every):
                try:
                    self.maintain()
                except Exception:  # keep expiring even if one pass fails
                    log.exception("maintenance pass failed")

        self.maintenance_thread = threading.Thread(target=loop, name="mlmon-maintenance", daemon=True)
        self.maintenance_thread.start()
        return stop


class APIError(Exception):
    def __init__(self, status: int, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.status, self.message, self.problems = status, message, problems or []


def error_body(status: int, name: str, message: str, problems: list[Problem] | None = None):
    body = {"error": {"code": status, "name": name, "message": message}}
    if problems:
        body["error"]["details"] = [p.as_json() for p in problems[:1000]]
    return jsonify(body), status


def _mlmon() -> Mlmon:
    return current_app.extensions["mlmon"]


def _json_body():
    """Parse the request body as JSON, counting and answering malformed input as 400."""
    raw = request.get_data(cache=False)
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
    m = _mlmon()
    body = _json_body()
    try:
        events = m.validator.predictions(body)
    except Invalid as err:
        _count_rejection(err)
        raise APIError(err.status, err.message, err.problems) from None
    accepted = duplicates = 0
    now = m.clock()
    for name, batch in _by_model(events).items():
        a, d = m.models[name].add_predictions(batch, now)
        accepted, duplicates = accepted + a, duplicates + d
    return jsonify({"accepted": accepted, "duplicates": duplicates}), 202


@api.post("/labels")
def post_labels():
    m = _mlmon()
    body = _json_body()
    try:
        labels = m.validator.labels(body)
    except Invalid as err:
        _count_rejection(err)
        raise APIError(err.status, err.message, err.problems) from None
    accepted = duplicates = 0
    now = m.clock()
    for name, batch in _by_model(labels).items():
        a, d = m.models[name].add_labels(batch, now)
        accepted, duplicates = accepted + a, duplicates + d
    return jsonify({"accepted": accepted, "duplicates": duplicates}), 202


@api.post("/resources")
def post_resources():
    m = _mlmon()
    body = _json_body()
    problems = []
    if not isinstance(body, dict):
        raise APIError(400, "the body must be a JSON object", [Problem(0, "", "invalid_body", "must be an object")])
    allowed = {"server", "models", "cpu_seconds_total", "resident_memory_bytes"}
    for key in body:
        if key not in allowed:
            problems.append(Problem(0, str(key)[:100], "unknown_field", f"allowed: {', '.join(sorted(allowed))}"))
    server = body.get("server")
    if not (isinstance(server, str) and 0 < len(server) <= 128 and server.isprintable()):
        problems.append(Problem(0, "server", "invalid_value", "must be a printable string of 1 to 128 characters"))
    models = body.get("models")
    if not (isinstance(models, list) and models and all(isinstance(x, str) for x in models)):
        problems.append(Problem(0, "models", "invalid_value", "must be a non-empty list of model names"))
        models = []
    unknown = [x for x in models if x not in m.models]
    if unknown:
        problems.append(
            Problem(0, "models", "unknown_model", f"unknown models {unknown[:10]}; known: {sorted(m.models)}")
        )
    for key in ("cpu_seconds_total", "resident_memory_bytes"):
        v = body.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1e18:
            problems.append(Problem(0, key, "invalid_value", "must be a number >= 0"))
    if problems:
        for p in problems[:1]:
            m.errors.inc("", p.reason)
        raise APIError(400, "invalid resource report", problems)
    if not m.servers.report(
        server,
        tuple(dict.fromkeys(models)),
        float(body["cpu_seconds_total"]),
        float(body["resident_memory_bytes"]),
        m.clock(),
    ):
        raise APIError(429, f"too many model servers reporting (limits.max_servers = {m.config.limits.max_servers})")
    return jsonify({"accepted": 1}), 202


@api.get("/models")
def list_models():
    m = _mlmon()
    now = m.clock()
    return jsonify({"models": [s.summary(now) for s in m.models.values()]})


def _model_state(name: str) -> ModelState:
    m = _mlmon()
    state = m.models.get(name)
    if state is None:
        raise APIError(404, f"unknown model {name[:100]!r}; known models: {', '.join(sorted(m.models))}")
    return state


@api.get("/models/<name>")
def get_model(name: str):
    return jsonify(_model_state(name).summary(_mlmon().clock()))


@api.put("/models/<name>/reference")
def put_reference(name: str):
    """Replace a model's reference: a CSV of raw rows (Content-Type text/csv) or a profile (JSON)."""
    m = _mlmon()
    state = _model_state(name)
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
    state.set_reference(profile)
    log.info("reference replaced", extra={"fields": {"model": name, "rows": profile.rows}})
    return jsonify({"model": name, "rows": profile.rows, "features": len(profile.features)})


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


def _by_model(events: list) -> dict[str, list]:
    out: dict[str, list] = {}
    for e in events:
        out.setdefault(e.model, []).append(e)
    return out


def create_app(config: Config, *, clock: Callable[[], float] = time.time) -> Flask:
    """Build the exporter's WSGI app: API, ops endpoints and /metrics on a private registry."""
    app = Flask("exporter")
    app.config["MAX_CONTENT_LENGTH"] = config.limits.max_body_bytes
    app.json.sort_keys = False
    m = app.extensions["mlmon"] = Mlmon(config, clock)
    app.register_blueprint(api)
    app.register_blueprint(ops)

    @app.before_request
    def _start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def _count_request(response):
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        m.http_requests.labels(rule, str(response.status_code)).inc()
        if "started" in g:
            m.http_duration.labels(rule).observe(time.perf_counter() - g.started)
        return response

    @app.errorhandler(APIError)
    def _api_error(err: APIError):
        return error_body(err.status, _status_name(err.status), err.message, err.problems)

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
        response, status = error_body(err.code or 500, _status_name(err.code or 500), err.description or err.name)
        for key, value in err.get_headers():  # keeps e.g. the Allow header of a 405
            if key.lower() != "content-type":
                response.headers[key] = value
        return response, status

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return error_body(500, "Internal Server Error", "an unexpected error occurred; see the exporter's log")

    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/metrics": make_wsgi_app(m.registry)})
    return app


def _status_name(status: int) -> str:
    # Fixed names: Python's own phrases change between versions (413 became "Content Too Large").
    return {413: "Payload Too Large"}.get(status) or HTTPStatus(status).phrase
