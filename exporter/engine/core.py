"""The engine: one app instance's state, its ingest turn, and its durability (restore, replay, checkpoint).

A request reaches :meth:`Mlmon.ingest` decoded and validated (exporter/ingest); it is journalled
(exporter/engine/storage.py), then applied to the per-model state (exporter/engine/state.py), one request at a
time under ``ingest_lock``: the journal order is the order of the state changes, which is what makes a replay
exact. The HTTP routes (exporter/serve/app.py) and /metrics sit on top of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import sqlite3
import threading
import time
from collections.abc import Callable

import orjson
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from exporter.config import Config
from exporter.engine import storage
from exporter.engine.joins import JoinStoreUnavailable
from exporter.engine.model_registry import RegistryLinks
from exporter.engine.state import ModelState, ServerReports
from exporter.ingest import columnar, fastpath
from exporter.ingest.validation import IngestErrors, Invalid, Validator
from exporter.security.audit import AuditLog
from exporter.security.auth import Authenticator
from exporter.stats import reference

log = logging.getLogger("mlmon.engine")

SNAPSHOT_FORMAT = 1
AUTH_FAILURE_REASONS = ("missing_token", "invalid_token", "forbidden")
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

    Ingest is journalled, then applied, one request at a time under ``ingest_lock`` (exporter/engine/storage.py):
    the journal order is the order of the state changes, which is what makes a replay exact.
    """

    def __init__(self, config: Config, clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock
        self.validator = Validator(config, clock)
        self.fast = fastpath.FastDecoder(self.validator)  # valid prediction and label batches, decoded in C
        self.columnar = columnar.ColumnarDecoder(self.validator, self.fast)  # columnar batches (JSON and Arrow)
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
        # Registry links of the versions (labels of mlmon_model_info), looked up in MLflow off the ingest path.
        self.links = RegistryLinks(config.registry, self.models.values(), clock)

        disable_created_metrics()
        self.registry = CollectorRegistry()
        for c in (ProcessCollector, GCCollector, PlatformCollector):
            c(registry=self.registry)
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
            "mlmon_storage_bytes",
            "Size of the data directory's files: the database, its WAL and the journal's segments.",
            registry=self.registry,
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
        from exporter.engine import redis_joins

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
            except (sqlite3.Error, OSError) as exc:
                log.error("cannot write the journal: %s", exc)
                raise Busy(503, "storage_error", f"cannot write the journal: {exc}", 5.0) from None
            try:
                if shared is not None:
                    shared.confirm(key, self.replica)  # type: ignore[arg-type]
                result = self._apply(kind.partition("/")[0], items, now, self.token(key, seq))
            except JoinStoreUnavailable as exc:
                self.store.abort(seq, key)
                raise Busy(503, "join_store_unavailable", str(exc), 2.0) from None
            if key is not None:  # the answer kept for a retry (the HTTP layer writes its own the same way)
                response = orjson.dumps(result)
                self.store.set_response(key, response)
                if shared is not None:  # (only with a key)
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
        if isinstance(items, columnar.Columns):  # one model's columnar batch, taken whole
            state = self.models[items.model]
            if kind != "predictions":
                raise KeyError(f"a columnar batch of {kind}")
            plan = state.decide_columns(items, now, token)
            accepted, duplicates = state.add_columns(items, now, token, plan)
            return {"accepted": accepted, "duplicates": duplicates}
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
            snap = storage.unpickle(blob)
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
        reads_arrow = columnar.ARROW_STREAM in columnar.accepted()
        for record in self.store.records(seq):
            if record.kind.endswith("/arrow") and not reads_arrow:
                # Acknowledged batches: skipping them would lose them for good once the next checkpoint lands.
                raise storage.StorageError(
                    f"the journal in {self.store.file} holds Arrow batches (record {record.seq} and maybe more), "
                    "which only pyarrow reads: install it (pip install 'mlmon[arrow]') and start again"
                )
            try:
                self._replay(record)
                done["replayed"] += 1
            except (
                Invalid,
                columnar.Refused,
                reference.ReferenceError,
                orjson.JSONDecodeError,
                KeyError,
                TakenOver,
            ) as exc:
                done["skipped"] += 1
                log.warning("journal record %d (%s) skipped: %s", record.seq, record.kind, exc)
        done["seconds"] = round(time.perf_counter() - started, 3)
        return done

    def _replay(self, record: storage.Record) -> None:
        body = orjson.loads(record.body) if record.kind in ("reference", "reset") else None
        key = record.key
        token = self.token(key, record.seq)
        if key is not None and self.shared_requests is not None:
            owner = self.shared_requests.owner(key)
            if owner not in (None, self.replica):
                # This replica died before confirming the key; another one took it and counted the request.
                raise TakenOver(f"Idempotency-Key {key!r} was applied by replica {owner}")
            self.shared_requests.confirm(key, self.replica)
        kind, _, fmt = record.kind.partition("/")  # a columnar body's record: "predictions/arrow", ...
        if fmt and fmt not in columnar.FORMATS.values():
            raise KeyError(f"unknown record kind {record.kind!r}")
        if fmt and kind == "predictions":
            items = self.columnar.predictions(fmt, record.body, record.at)
        elif fmt and kind == "labels":
            items = self.columnar.labels(fmt, record.body)
        elif record.kind == "predictions":
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
        result = self._apply(kind, items, record.at, token)
        if key is not None:
            self.store.set_response(key, orjson.dumps(result))
            if self.shared_requests is not None:
                self.shared_requests.respond(key, self.replica, orjson.dumps(result))

    def checkpoint(self, final: bool = False) -> None:
        """Snapshot the state and drop the journal it covers. Ingest waits while the state is copied. The
        ``final`` snapshot of a clean stop is written in a form that an earlier release reads too."""
        if not self.store.durable:
            return
        started = time.perf_counter()
        with self.ingest_lock:  # ingest waits only for the copy; the pickling is done outside
            seq = self.store.cut()
            at = self.clock()
            captured = {name: state.capture(final) for name, state in self.models.items()}
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
            self.checkpoint(final=True)
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
        self.links.start(stop)  # registry look-ups, when registry.tracking_uri is set
        return stop


def _by_model(events: list) -> dict[str, list]:
    out: dict[str, list] = {}
    for e in events:
        out.setdefault(e.model, []).append(e)
    return out
