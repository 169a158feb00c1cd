"""The HTTP surface: a Flask app factory wiring state, validation, the collector and /metrics.

Every error, ours or Werkzeug's, answers with the JSON error shape of docs/api.md; bad input is a 4xx
that names the problem and is counted, never a 5xx. (Only a body over twice limits.max_body_bytes is
refused by waitress itself, with its plain-text 413, before it is read.)
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import logging
import math
import os
import pickle
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from html import escape
from http import HTTPStatus
from urllib.parse import parse_qs

import orjson
from flask import Blueprint, Flask, current_app, g, jsonify, request
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.exposition import choose_encoder, gzip_accepted
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from exporter import __version__, fastpath, reference, storage
from exporter.audit import AuditLog
from exporter.auth import Authenticator
from exporter.collector import IngestErrors, MlmonCollector, text_exposition
from exporter.config import Config
from exporter.joins import JoinStoreUnavailable
from exporter.openapi import openapi_document
from exporter.state import ModelState, ServerReports
from exporter.validation import Invalid, Problem, Validator

log = logging.getLogger("mlmon.app")
access_log = logging.getLogger("mlmon.access")

SNAPSHOT_FORMAT = 1
AUTH_FAILURE_REASONS = ("missing_token", "invalid_token", "forbidden")
# The action each endpoint needs when authentication is on (exporter/auth.py); others are open.
ENDPOINT_ACTIONS = {
    "api_v1.post_predictions": "write",
    "api_v1.post_labels": "write",
    "api_v1.post_resources": "write",
    "api_v1.list_models": "read",
    "api_v1.get_model": "read",
    "api_v1.put_reference": "admin",
    "api_v1.reset_model": "admin",
}
THROTTLE_REASONS = ("queue_timeout", "journal_full", "storage_error", "join_store_unavailable")


class AnsweredBefore(Exception):
    """The Idempotency-Key was used before (on this replica or another): answer as then, apply nothing."""

    def __init__(self, seen: storage.Seen):
        super().__init__("answered before")
        self.seen = seen


class TakenOver(Exception):
    """A journalled request that another replica applied (see RedisRequests)."""


class Busy(Exception):
    """Ingest cannot take this request now: answered 429 (or 503) with Retry-After, nothing was kept."""

    def __init__(self, status: int, reason: str, message: str, retry_after: float):
        super().__init__(message)
        self.status, self.reason, self.message, self.retry_after = status, reason, message, retry_after


class Mlmon:
    """Everything one app instance owns: config, per-model state, counters, storage and its private registry.

    Ingest is journalled, then applied, one request at a time under ``ingest_lock`` (exporter/storage.py):
    the journal order is the order of the state changes, which is what makes a replay exact.
    """

    def __init__(self, config: Config, clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock
        self.validator = Validator(config, clock)
        self.fast = fastpath.FastDecoder(self.validator)  # valid prediction and label batches, decoded in C
        self.models = {m.name: ModelState(m, config) for m in config.models}
        self.errors = IngestErrors(list(self.models))
        self.servers = ServerReports(config.limits.max_servers, config.limits.server_stale_seconds)
        self.ready = True
        self.maintenance_thread: threading.Thread | None = None
        # One request at a time decodes, journals and applies its body (turn()). The work holds the interpreter
        # lock but for the journal's write: a second thread decoding meanwhile would only make the holder wait
        # for the interpreter lock, with ingest_lock held, after its write (a convoy: more CPU per batch and
        # fewer batches per second with several clients; docs/performance.md). Re-entrant: ingest() takes
        # it too, for callers that decode on their own.
        self.ingest_lock = threading.RLock()
        self.checkpoint_due = threading.Event()
        self.config_refs: dict[str, str] = {}  # model -> digest of the profile its config file names
        config_profiles = reference.load_all(config)
        for name, profile in config_profiles.items():
            self.models[name].set_reference(profile)
            self.config_refs[name] = storage.digest(profile.dumps().encode()).hex()
        self.shared_requests = None  # Idempotency-Keys in Redis, with joins.backend: redis
        if config.joins.backend == "redis":
            self._use_redis()
        self.store = storage.Store(config.storage)
        self.replica = self.store.replica
        self.auth = Authenticator(config.auth.tokens, config.auth.enabled)
        self.audit = AuditLog(config.auth.audit_path or self._default_audit_path())
        self.last_checkpoint = clock()
        self.restored = self._restore(config_profiles)

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
        self.throttled = Counter(
            "mlmon_ingest_throttled",
            "Ingest requests answered 429 or 503 with Retry-After, nothing kept, by reason.",
            ["reason"],
            registry=self.registry,
        )
        for reason in THROTTLE_REASONS:
            self.throttled.labels(reason)
        self.auth_failures = Counter(
            "mlmon_auth_failures",
            "API requests refused: 401 without a valid bearer token, 403 outside the token's models or actions.",
            ["reason"],
            registry=self.registry,
        )
        for reason in AUTH_FAILURE_REASONS:
            self.auth_failures.labels(reason)
        self.idempotent_replays = Counter(
            "mlmon_idempotent_replays",
            "Ingest requests answered from an earlier request with the same Idempotency-Key.",
            registry=self.registry,
        )
        self.checkpoints = Counter(
            "mlmon_storage_checkpoints", "Snapshots of the state written to the data directory.", registry=self.registry
        )
        self.checkpoint_stall = Gauge(
            "mlmon_storage_checkpoint_stall_seconds",
            "Time ingest waited for the last checkpoint's copy of the state.",
            registry=self.registry,
        )
        self.checkpoint_seconds = Gauge(
            "mlmon_storage_checkpoint_duration_seconds",
            "Time the last checkpoint took (ingest waits for its first part, the copy of the state).",
            registry=self.registry,
        )
        Gauge(
            "mlmon_storage_journal_bytes",
            "Bytes of request bodies in the journal since the last checkpoint.",
            registry=self.registry,
        ).set_function(lambda: self.store.journal_bytes)
        Gauge(
            "mlmon_storage_bytes", "Size of the database in the data directory, with its WAL.", registry=self.registry
        ).set_function(self.store.size_bytes)
        Gauge(
            "mlmon_storage_last_checkpoint_timestamp_seconds",
            "Time of the last checkpoint (of the start, before the first one).",
            registry=self.registry,
        ).set_function(lambda: self.last_checkpoint)
        Gauge(
            "mlmon_storage_checkpoint_interval_seconds",
            "storage.checkpoint_interval from the config.",
            registry=self.registry,
        ).set(config.storage.checkpoint_interval_seconds)

    def _default_audit_path(self) -> str:
        """audit.log in the data directory; stderr when nothing is kept on disk (storage.backend: memory)."""
        return os.path.join(self.config.storage.path, "audit.log") if self.store.durable else "-"

    def _use_redis(self) -> None:
        from exporter import redis_joins

        settings = self.config.joins
        client = redis_joins.connect(settings)
        for name, state in self.models.items():
            state.joins = redis_joins.RedisJoinStore(
                client,
                settings.redis_prefix,
                name,
                self.config.limits.pending_ttl_seconds,
                self.config.limits.max_pending_per_model,
            )
        # A key is claimed before its request waits for its turn (at most limits.ingest_queue_timeout) and is
        # journalled; the lease outlasts that by far, and bounds how long other replicas answer 409 for a
        # request whose replica died before journalling it.
        lease = 5 + 10 * self.config.limits.ingest_queue_timeout_seconds
        ttl = self.config.storage.idempotency_ttl_seconds
        self.shared_requests = redis_joins.RedisRequests(client, settings.redis_prefix, lease, ttl)

    # -- ingest -------------------------------------------------------------------------------------

    def token(self, key: str | None, seq: int) -> str:
        """The name of a request for the join store: its Idempotency-Key, or its journal sequence."""
        return f"{self.replica}:k:{key}" if key is not None else f"{self.replica}:s:{seq}"

    def _take_turn(self) -> None:
        timeout = self.config.limits.ingest_queue_timeout_seconds
        if not self.ingest_lock.acquire(timeout=timeout):
            raise Busy(
                429,
                "queue_timeout",
                f"ingest is busy: waited {timeout:g}s (limits.ingest_queue_timeout) for a turn; retry later",
                1.0,
            )

    @contextlib.contextmanager
    def turn(self):
        """Ingest's turn: the request's decoding, journal write and apply, one request at a time; raises Busy
        (429) after limits.ingest_queue_timeout."""
        self._take_turn()
        try:
            yield
        finally:
            self.ingest_lock.release()

    def ingest(self, kind: str, raw: bytes, items: list, now: float, key: str | None, body_digest: bytes) -> dict:
        """Journal a validated request, then apply it; raise Busy when it cannot be taken now."""
        settings = self.config.storage
        if self.store.journal_bytes > settings.max_journal_bytes:
            self.checkpoint_due.set()
            raise Busy(
                429,
                "journal_full",
                f"the journal is over storage.max_journal_bytes ({settings.max_journal_bytes}); a checkpoint is due",
                1.0,
            )
        self._take_turn()
        shared = self.shared_requests if key is not None else None
        try:
            if shared is not None:
                self._claim(shared, key, body_digest)  # type: ignore[arg-type]
            try:
                seq = self.store.append(kind, now, raw, key, body_digest)
            except sqlite3.IntegrityError:
                raise  # the same Idempotency-Key, journalled by a concurrent request: answered as a retry
            except sqlite3.Error as exc:
                log.error("cannot write the journal: %s", exc)
                raise Busy(503, "storage_error", f"cannot write the journal: {exc}", 5.0) from None
            try:
                if shared is not None:
                    shared.confirm(key, self.replica)  # type: ignore[arg-type]
                result = self._apply(kind, items, now, self.token(key, seq))
            except JoinStoreUnavailable as exc:
                self.store.abort(seq, key)
                raise Busy(503, "join_store_unavailable", str(exc), 2.0) from None
            response = orjson.dumps(result)
            if key is not None:
                self.store.set_response(key, response)
            if shared is not None:
                with contextlib.suppress(JoinStoreUnavailable):  # the replica's own table has it; others wait
                    shared.respond(key, self.replica, response)  # type: ignore[arg-type]
        except Busy:
            if shared is not None:
                with contextlib.suppress(JoinStoreUnavailable):
                    shared.release(key, self.replica)  # type: ignore[arg-type]
            raise
        finally:
            self.ingest_lock.release()
        if self.store.journal_bytes >= settings.checkpoint_bytes:
            self.checkpoint_due.set()
        return result

    def _claim(self, shared, key: str, body_digest: bytes) -> None:
        """Take an Idempotency-Key for this replica, or answer as its owner did (another replica)."""
        try:
            state, response = shared.claim(key, self.replica, body_digest)
        except JoinStoreUnavailable as exc:
            raise Busy(503, "join_store_unavailable", str(exc), 2.0) from None
        if state == "done":
            raise AnsweredBefore(storage.Seen(body_digest, response))
        if state == "conflict":
            raise AnsweredBefore(storage.Seen(b"", response))
        if state == "busy":
            raise AnsweredBefore(storage.Seen(body_digest, None))

    def _apply(self, kind: str, items: list, now: float, token: str) -> dict:
        """Apply one request to the state: every join-store call first (they can fail), then the windows."""
        if kind == "reference":
            name, profile = items
            self.models[name].set_reference(profile)
            return {"model": name, "rows": profile.rows, "features": len(profile.features)}
        if kind == "reset":
            self.models[items].reset()
            return {"model": items, "reset": True}
        groups = _by_model(items)
        accepted = duplicates = 0
        if kind == "predictions":
            plans = {name: self.models[name].decide_predictions(batch, now, token) for name, batch in groups.items()}
            for name, batch in groups.items():
                a, d = self.models[name].add_predictions(batch, now, token, plans[name])
                accepted, duplicates = accepted + a, duplicates + d
        elif kind == "labels":
            plans = {name: self.models[name].decide_labels(batch, now, token) for name, batch in groups.items()}
            for name, batch in groups.items():
                a, d = self.models[name].add_labels(batch, now, token, plans[name])
                accepted, duplicates = accepted + a, duplicates + d
        return {"accepted": accepted, "duplicates": duplicates}

    def set_reference(self, name: str, profile: reference.Profile) -> dict:
        """Replace a model's reference, durably (journalled like ingest; never throttled: an admin action)."""
        raw = orjson.dumps({"model": name, "profile": profile.as_json()})
        with self.ingest_lock:
            self.store.append("reference", self.clock(), raw)
            return self._apply("reference", (name, profile), self.clock(), "")

    def reset(self, name: str) -> dict:
        """Forget a model's windows, counters and waiting predictions (its reference stays), durably."""
        with self.ingest_lock:
            self.store.append("reset", self.clock(), orjson.dumps({"model": name}))
            return self._apply("reset", name, self.clock(), "")

    # -- restart ------------------------------------------------------------------------------------

    def _restore(self, config_profiles: dict) -> dict:
        """Load the snapshot and replay the journal after it; return what was done (logged by the server)."""
        if not self.store.durable:
            return {}
        started = time.perf_counter()
        seq, blob = self.store.load()
        done = {"snapshot_seq": seq, "models_restored": 0, "models_reset": [], "replayed": 0, "skipped": 0}
        if blob is not None:
            snap = pickle.loads(blob)
            if snap.get("format") != SNAPSHOT_FORMAT:
                log.warning("the snapshot in %s has another format; starting from empty windows", self.store.file)
            else:
                for name, part in snap["models"].items():
                    state = self.models.get(name)
                    if state is None:
                        continue  # the model left the config
                    if not state.restore(part):
                        done["models_reset"].append(name)
                        continue
                    done["models_restored"] += 1
                    current = self.config_refs.get(name)
                    if current is not None and snap["config_refs"].get(name) != current:
                        # The config names another reference file than the snapshot knew: use it.
                        state.set_reference(config_profiles[name])
        for record in self.store.records(seq):
            try:
                self._replay(record)
                done["replayed"] += 1
            except (Invalid, reference.ReferenceError, orjson.JSONDecodeError, KeyError, TakenOver) as exc:
                done["skipped"] += 1
                log.warning("journal record %d (%s) skipped: %s", record.seq, record.kind, exc)
        done["seconds"] = round(time.perf_counter() - started, 3)
        return done

    def _replay(self, record: storage.Record) -> None:
        body = orjson.loads(record.body) if record.kind not in ("predictions", "labels") else None
        key = record.key
        token = self.token(key, record.seq)
        if key is not None and self.shared_requests is not None:
            owner = self.shared_requests.owner(key)
            if owner not in (None, self.replica):
                # This replica died before confirming the key; another one took it and counted the request.
                raise TakenOver(f"Idempotency-Key {key!r} was applied by replica {owner}")
            self.shared_requests.confirm(key, self.replica)
        if record.kind == "predictions":
            items = self.fast.predictions(record.body, record.at)
            if items is None:
                items = self.validator.predictions(orjson.loads(record.body), record.at)
        elif record.kind == "labels":
            items = self.fast.labels(record.body)
            if items is None:
                items = self.validator.labels(orjson.loads(record.body))
        elif record.kind == "reference":
            name = body["model"]
            items = (name, reference.from_json(body["profile"], self.models[name].model))
        elif record.kind == "reset":
            items = body["model"]
            self.models[items]  # noqa: B018 - a KeyError skips a reset of a model that left the config
        else:
            raise KeyError(f"unknown record kind {record.kind!r}")
        result = self._apply(record.kind, items, record.at, token)
        if key is not None:
            self.store.set_response(key, orjson.dumps(result))
            if self.shared_requests is not None:
                self.shared_requests.respond(key, self.replica, orjson.dumps(result))

    def checkpoint(self) -> None:
        """Snapshot the state and drop the journal it covers. Ingest waits while the state is copied."""
        if not self.store.durable:
            return
        started = time.perf_counter()
        with self.ingest_lock:  # ingest waits only for the copy; the pickling is done outside
            seq = self.store.last_seq
            at = self.clock()
            captured = {name: state.capture() for name, state in self.models.items()}
        self.checkpoint_stall.set(time.perf_counter() - started)
        parts = {name: ModelState.dumps(c) for name, c in captured.items()}
        del captured
        blob = pickle.dumps(
            {"format": SNAPSHOT_FORMAT, "models": parts, "config_refs": self.config_refs},
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        self.store.checkpoint(seq, at, blob)
        self.last_checkpoint = at
        self.checkpoint_due.clear()
        self.checkpoints.inc()
        self.checkpoint_seconds.set(time.perf_counter() - started)

    def close(self) -> None:
        """A final checkpoint (the next start replays nothing) and the database closed."""
        try:
            self.checkpoint()
        finally:
            self.store.close()
            self.audit.close()

    # -- background work ----------------------------------------------------------------------------

    def maintain(self) -> None:
        """Expire what outlived its TTL, checkpoint when due; run every few seconds by the server, by hand in tests."""
        now = self.clock()
        for state in self.models.values():
            state.expire(now)
        self.servers.expire(now)
        self.store.forget_requests(now)
        interval = self.config.storage.checkpoint_interval_seconds
        if self.checkpoint_due.is_set() or now - self.last_checkpoint >= interval:
            self.checkpoint()

    def start_maintenance(self, every: float = 5.0) -> threading.Event:
        stop = threading.Event()
        every = min(every, self.config.storage.checkpoint_interval_seconds)

        def loop() -> None:
            while not stop.is_set():
                self.checkpoint_due.wait(every)  # wakes early when the journal asks for a checkpoint
                if stop.is_set():
                    return
                try:
                    self.maintain()
                except Exception:  # keep expiring even if one pass fails (a full disk: retry, do not spin)
                    log.exception("maintenance pass failed")
                    stop.wait(every)

        self.maintenance_thread = threading.Thread(target=loop, name="mlmon-maintenance", daemon=True)
        self.maintenance_thread.start()
        return stop


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
    try:
        with m.turn():
            items = _decode(m, kind, raw, now)
            _require("write", {item.model for item in items})
            result = m.ingest(kind, raw, items, now, key, body_digest)
    except Busy as busy:
        m.throttled.labels(busy.reason).inc()
        response, status = error_body(busy.status, _status_name(busy.status), busy.message)
        response.headers["Retry-After"] = str(max(1, math.ceil(busy.retry_after)))
        return response, status
    except AnsweredBefore as before:
        return _replayed(m, key, before.seen, body_digest)
    except sqlite3.IntegrityError:  # the same Idempotency-Key raced in on another thread: answer as a retry
        return _replayed(m, key, m.store.seen(key), body_digest)
    return jsonify(result), 202


def _decode(m: Mlmon, kind: str, raw: bytes, now: float) -> list:
    """The validated items of a body. A valid one is decoded and checked in C (exporter/fastpath.py); anything
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
    problems = []
    if not isinstance(body, dict):
        m.errors.inc("", "invalid_body")
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
    _require("write", set(models))
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
    return jsonify({"model": name, "rows": profile.rows, "features": len(profile.features)})


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


def _by_model(events: list) -> dict[str, list]:
    out: dict[str, list] = {}
    for e in events:
        out.setdefault(e.model, []).append(e)
    return out


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
    app.register_blueprint(api)
    app.register_blueprint(ops)

    @app.before_request
    def _start_timer():
        g.started = time.perf_counter()
        _authenticate()

    @app.after_request
    def _count_request(response):
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
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
        response, status = error_body(err.status, _status_name(err.status), err.message, err.problems)
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
        response, status = error_body(err.code or 500, _status_name(err.code or 500), err.description or err.name)
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


# gzip level of /metrics: level 1 compresses a scrape of 10,000 series (1 MiB) in 2 ms where client_python's
# level 9 takes 25 ms, for a body 30% larger (78 KB instead of 60 KB; docs/performance.md).
METRICS_GZIP_LEVEL = 1


def metrics_app(registry: CollectorRegistry) -> Callable:
    """client_python's /metrics app (make_wsgi_app), with the plain text format written by
    :func:`collector.text_exposition` (the same bytes, faster) and gzip at :data:`METRICS_GZIP_LEVEL`.

    Anything else (OpenMetrics, other escapings, methods other than GET) is client_python's own answer.
    """
    fallback = make_wsgi_app(registry)

    def app(environ, start_response):
        # Mounted at /metrics: only /metrics itself exists, for GET; the rest answers as the API does.
        if environ.get("PATH_INFO") not in ("", "/"):
            return _wsgi_error(start_response, 404, "no such path; the metrics are at /metrics")
        if environ["REQUEST_METHOD"] != "GET":
            return _wsgi_error(start_response, 405, "/metrics answers GET only", [("Allow", "GET")])
        encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT"))
        if encoder is not generate_latest:
            return fallback(environ, start_response)
        params = parse_qs(environ.get("QUERY_STRING", ""))
        target = registry.restricted_registry(params["name[]"]) if "name[]" in params else registry
        output = text_exposition(target)
        headers = [("Content-Type", content_type)]
        if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING")):
            output = gzip.compress(output, compresslevel=METRICS_GZIP_LEVEL)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [output]

    return app


def _wsgi_error(start_response, status: int, message: str, headers: list | None = None) -> list[bytes]:
    """The JSON error of :func:`error_body`, outside Flask (the /metrics app is mounted beside it)."""
    name = _status_name(status)
    body = orjson.dumps({"error": {"code": status, "name": name, "message": message}})
    start_response(f"{status} {name}", [("Content-Type", "application/json"), *(headers or [])])
    return [body]


def _status_name(status: int) -> str:
    # Fixed names: Python's own phrases change between versions (413 became "Content Too Large").
    return {413: "Payload Too Large"}.get(status) or HTTPStatus(status).phrase
