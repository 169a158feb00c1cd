"""mlmon Python client: send predictions and ground-truth labels to an mlmon exporter.

Instrumenting a model server takes two lines (``pip install mlmon-client``: it needs ``requests`` and
nothing else; inside the exporter's own package it is also ``exporter.client``)::

    import mlmon_client as mlmon

    mlmon.configure(url="http://127.0.0.1:8490")            # optional; env MLMON_URL otherwise
    mlmon.log_prediction("churn", pred, id=request_id, features=x, score=p)
    ...
    mlmon.log_label("churn", request_id, true_label)        # later, when the truth is known

or, with an explicit client::

    with Client("http://mlmon:8490", token="...") as mon:
        mon.log_prediction("churn", 1, id="r-1", scores={"0": 0.2, "1": 0.8})

Guarantees: ``log_prediction``/``log_label`` never block and never raise; they put the event
into a bounded in-memory queue (dropping and counting it when the queue is full) and a single
background daemon thread batches and sends events, retrying transient failures (connection
errors, 5xx, 429) with exponential backoff and dropping (and counting) what is rejected (4xx)
or cannot be delivered within ``max_retry_seconds``. ``stats()`` returns the counters.
Everything is logged through ``logging.getLogger("mlmon.client")``.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import datetime as _dt
import decimal
import email.utils
import io
import json
import logging
import math
import os
import random
import socket
import sys
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Mapping
from typing import Any

import requests

try:  # not available on Windows
    import resource as _resource
except ImportError:  # pragma: no cover - platform dependent
    _resource = None  # type: ignore[assignment]

__all__ = ["Client", "configure", "get_client", "log_label", "log_prediction", "shap_attributions"]

logger = logging.getLogger("mlmon.client")

DEFAULT_URL = "http://127.0.0.1:8490"
PREDICTIONS_PATH = "/api/v1/predictions"
LABELS_PATH = "/api/v1/labels"
RESOURCES_PATH = "/api/v1/resources"

_USER_AGENT = "mlmon-python-client/1"
_ATEXIT_TIMEOUT = 2.0  # seconds the interpreter exit may wait for pending events
_MAX_RETRY_AFTER = 300.0  # never honour a Retry-After longer than this (seconds)
_WARN_INTERVAL = 60.0  # a given warning is logged at most once per this many seconds
_MAX_MODELS = 1000  # bound on the set of model names remembered for resource reports
_MAX_DEPTH = 32  # nesting depth beyond which values are stringified

_PRED = 0
_LABEL = 1

_COUNTERS = (
    "queued",  # events accepted into the queue (total)
    "sent",  # events acknowledged by the exporter (2xx)
    "dropped_queue_full",  # log_* returned False: queue was full
    "dropped_rejected",  # exporter answered 4xx (not retried)
    "dropped_retries_exhausted",  # transient failures outlasted the retry budget
    "dropped_closed",  # logged after close(), or still pending when close() gave up
    "dropped_invalid",  # the event could not even be converted to JSON
    "retries",  # HTTP attempts that were retries
    "resource_reports",  # resource reports acknowledged by the exporter
)


# --------------------------------------------------------------------------- value conversion


def _plain(value: Any, depth: int = 0) -> Any:
    """Return ``value`` as plain JSON-encodable Python data (never raises for normal objects).

    numpy scalars/arrays become Python numbers/lists, mappings become dicts with ``str`` keys,
    datetimes become unix seconds, timedeltas seconds, NaN/inf become ``None`` (JSON has no NaN;
    for features ``None`` means "missing"), anything unknown becomes ``str(value)``.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        value = float(value)
        return value if math.isfinite(value) else None
    if depth > _MAX_DEPTH:
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, _dt.datetime):
        return value.timestamp()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return _plain(float(value), depth + 1)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    # numpy (and numpy-like) scalars and arrays: .tolist() gives Python scalars / nested lists.
    for method in ("tolist", "item"):
        convert = getattr(value, method, None)
        if callable(convert):
            with contextlib.suppress(Exception):  # fall back to str() below
                return _plain(convert(), depth + 1)
    return str(value)


def _features(value: Any) -> Any:
    """Features as a plain dict; accepts any mapping or a pandas Series (``to_dict``)."""
    if not isinstance(value, Mapping):
        to_dict = getattr(value, "to_dict", None)
        if callable(to_dict):
            value = to_dict()
    return _plain(value)


def shap_attributions(row: Any, output: Any = None, feature_names: Any = None) -> dict[str, float]:
    """The ``attributions`` of one prediction from a row of a ``shap.Explanation`` (``explanation[i]``):
    feature name -> SHAP value. For a model with several outputs (a classifier's classes: values of shape
    features x outputs), ``output`` picks one, by position or by name when the explanation has
    ``output_names``; monitor one output per model, the positive class of a binary classifier or the
    predicted class. ``feature_names`` overrides the explanation's own. shap need not be importable here:
    any object with ``values`` (and ``feature_names``) will do.
    """
    values = getattr(row, "values", row)
    names = feature_names if feature_names is not None else getattr(row, "feature_names", None)
    if names is None:
        raise ValueError("the explanation row has no feature_names: pass feature_names")
    names = [str(n) for n in names]
    try:
        shape = tuple(values.shape)
    except AttributeError:
        shape = (
            (len(values),) if not values or not isinstance(values[0], (list, tuple)) else (len(values), len(values[0]))
        )
    if len(shape) == 2:
        if output is None:
            raise ValueError(f"the explanation has {shape[1]} outputs: pick one with output= (a position or a name)")
        if isinstance(output, str):
            outputs = [str(o) for o in (getattr(row, "output_names", None) or [])]
            if output not in outputs:
                raise ValueError(f"unknown output {output!r}: the explanation's outputs are {outputs}")
            output = outputs.index(output)
        values = [r[output] for r in values]
    elif len(shape) != 1:
        raise ValueError(f"expected one row of an explanation (features, or features x outputs), got shape {shape}")
    values = list(values)
    if len(values) != len(names):
        raise ValueError(f"{len(values)} values for {len(names)} feature names")
    return {n: float(v) for n, v in zip(names, values)}


def _timestamp(value: Any) -> Any:
    if value is None:
        return time.time()
    if isinstance(value, _dt.datetime):
        return value.timestamp()  # naive datetimes are taken as local time
    return _plain(value)


def _compact(item: dict[str, Any]) -> dict[str, Any]:
    """Drop top-level keys whose value is None."""
    return {k: v for k, v in item.items() if v is not None}


def _parse_retry_after(header: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    if not header:
        return None
    header = header.strip()
    try:
        seconds = float(header)
    except ValueError:
        parsed = email.utils.parsedate_tz(header)  # an HTTP date, always GMT
        if parsed is None:
            return None
        try:
            seconds = email.utils.mktime_tz(parsed) - time.time()
        except (OverflowError, ValueError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER)


def _token_file() -> str | None:
    """The token in the file named by ``MLMON_TOKEN_FILE`` (a compose or Kubernetes secret)."""
    path = os.environ.get("MLMON_TOKEN_FILE")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError as exc:
        raise ValueError(f"MLMON_TOKEN_FILE={path}: {exc.strerror}") from None


# What an exporter answers to a body it cannot read: an older release parses a columnar body as rows and finds
# them invalid (400); 415 is HTTP's own word for a media type not taken.
_FORMAT_REFUSALS = (400, 415)


def _retryable(status: int) -> bool:
    # 409: the exporter is still applying an earlier send of the same body (same Idempotency-Key).
    return status in (408, 409, 429) or status >= 500


# --------------------------------------------------------------------------- process resources


def _cpu_seconds() -> float:
    """User + system CPU seconds consumed by this process."""
    if _resource is not None:
        usage = _resource.getrusage(_resource.RUSAGE_SELF)
        return float(usage.ru_utime + usage.ru_stime)
    times = os.times()
    return float(times.user + times.system)


def _resident_memory_bytes() -> int:
    """Current resident set size (Linux); elsewhere the peak RSS (ru_maxrss)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    if _resource is not None:
        maxrss = _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss
        # ru_maxrss is in KiB on Linux and BSD, in bytes on macOS.
        return int(maxrss if sys.platform == "darwin" else maxrss * 1024)
    return 0


def _default_server_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# --------------------------------------------------------------------------- the client

_clients: weakref.WeakSet[Client] = weakref.WeakSet()


class Client:
    """Non-blocking, thread-safe client of an mlmon exporter.

    Args:
        url: exporter base URL; default env ``MLMON_URL``, else ``http://127.0.0.1:8490``.
        token: bearer token sent as ``Authorization: Bearer <token>``; default env ``MLMON_TOKEN``, or the
            file named by ``MLMON_TOKEN_FILE``.
        batch_size: maximum events per HTTP request (predictions and labels are batched apart).
        flush_interval: seconds after which a partial batch is sent.
        max_queue: maximum events waiting in memory; beyond it ``log_*`` drop and return False.
        timeout: HTTP timeout (seconds) of one request.
        max_retry_seconds: time budget for retrying one batch before dropping it.
        server: name of this model server in resource reports; default env ``MLMON_SERVER``,
            else ``"<hostname>:<pid>"``.
        report_resources_every: seconds between resource reports (CPU, RSS); None disables.
        session: a ``requests.Session`` to use (not closed by the client); default: own session.
        backoff_base: first retry delay (seconds); doubles on each consecutive failure.
        backoff_max: cap of the retry delay (seconds). Delays get a random jitter of -50%..0.
        max_attempts: optional cap on HTTP attempts per batch (None: only the time budget).
        format: how batches are sent: ``"columns"`` (default: one columnar JSON body per model and
            version, cheaper for the exporter to read than rows), ``"arrow"`` (an Apache
            Arrow IPC stream; needs pyarrow here, else columnar JSON is sent) or ``"rows"``. An exporter
            too old to read columnar batches is detected on its first answer, and sent rows from then on.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        max_queue: int = 100_000,
        timeout: float = 5.0,
        max_retry_seconds: float = 60.0,
        server: str | None = None,
        report_resources_every: float | None = 15.0,
        session: requests.Session | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_attempts: int | None = None,
        format: str = "columns",
    ) -> None:
        if format not in _FORMATS:
            raise ValueError(f"format must be one of {', '.join(_FORMATS)}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        if report_resources_every is not None and report_resources_every <= 0:
            raise ValueError("report_resources_every must be > 0 or None")
        url = (url or os.environ.get("MLMON_URL") or DEFAULT_URL).strip().rstrip("/")
        if "://" not in url:
            url = "http://" + url
        self.url = url
        token = token if token is not None else os.environ.get("MLMON_TOKEN") or _token_file() or None
        self._headers = {"Content-Type": "application/json", "User-Agent": _USER_AGENT}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._batch_size = int(batch_size)
        self._flush_interval = max(float(flush_interval), 0.0)
        self._max_queue = int(max_queue)
        self._timeout = float(timeout)
        self._max_retry_seconds = max(float(max_retry_seconds), 0.0)
        self._backoff_base = max(float(backoff_base), 0.0)
        self._backoff_max = max(float(backoff_max), self._backoff_base)
        self._max_attempts = max_attempts
        self._format = format if format != "arrow" or _arrow_available() else "columns"
        if self._format != format:
            logger.warning("mlmon client: pyarrow is not installed; sending columnar JSON instead of Arrow")
        self._report_every = report_resources_every
        self._server_arg = server or os.environ.get("MLMON_SERVER") or None
        self._own_session = session is None
        self._session = session if session is not None else requests.Session()
        self._closed = False
        self._init_state()
        self._atexit_registered = True
        atexit.register(self._atexit_close)
        _clients.add(self)
        with self._lock:
            self._start_thread_locked()

    def _init_state(self) -> None:
        """(Re)create all per-process state: locks, queue, counters (also after fork)."""
        self._lock = threading.Lock()
        self._bad_items: set[int] | None = None  # items named by the last rejection (worker thread only)
        self._work = threading.Condition(self._lock)  # wakes the worker
        self._idle = threading.Condition(self._lock)  # wakes flush() waiters
        self._stop = threading.Event()
        self._queue: deque[tuple[int, int, dict[str, Any], float]] = deque()
        # Every event gets a sequence number; flush() waits for all seqs <= its target,
        # and the worker sends partial batches at once while such events are queued.
        self._seq = 0
        self._flush_target = 0
        self._inflight_min: int | None = None  # lowest seq of the batch being sent
        self._inflight_n = 0
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._models: set[str] = set()
        self._thread: threading.Thread | None = None
        self._failures = 0  # consecutive transient failures: drives the backoff
        self._accept_post: str | None = None  # the body formats the exporter's last ingest answer listed
        self._rows_only = False  # the exporter reads no columnar batches: rows from now on
        self._resume_at = 0.0  # monotonic time before which nothing is sent
        self._next_report = None if self._report_every is None else time.monotonic() + self._report_every
        self._warned: dict[str, float] = {}
        self._warn_lock = threading.Lock()
        self.server = self._server_arg or _default_server_name()

    def _reset_after_fork(self) -> None:
        # The worker thread does not exist in the child and locks may be held by dead threads.
        # Events queued in the parent are the parent's to send: start empty.
        self._init_state()
        if self._own_session:
            self._session = requests.Session()
        if self._closed:
            self._stop.set()

    def _start_thread_locked(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="mlmon-client", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ public API

    def log_prediction(
        self,
        model: str,
        prediction: Any,
        *,
        id: Any = None,
        features: Any = None,
        scores: Any = None,
        score: Any = None,
        version: Any = None,
        latency_seconds: Any = None,
        timestamp: Any = None,
        label: Any = None,
        registry: Any = None,
        attributes: Any = None,
        attributions: Any = None,
    ) -> bool:
        """Queue one prediction; return True if queued, False if dropped. Never blocks or raises.

        ``prediction`` is a class (str/int) or a number (regression); ``scores`` maps class ->
        probability, ``score`` is P(positive) for binary models; ``features`` maps name -> number,
        str or None (missing). ``id`` (stringified) lets a later ``log_label`` join it.
        ``timestamp`` (unix seconds or datetime) defaults to now; ``latency_seconds`` may be a
        timedelta. numpy values are converted to plain Python numbers/lists. ``registry`` is the
        version's entry in a model registry, some of ``run_id``, ``model_uri``, ``name``, ``version``
        (sending it now and then is enough: the exporter keeps the latest per version). ``attributes``
        maps name -> str, number, bool or None: facts the model does not use (a sensitive group, a
        region) that split segments and fairness groups; the model's config must declare them.
        ``attributions`` maps feature -> number: the prediction's SHAP or LIME values (see
        :func:`shap_attributions` for a row of a ``shap.Explanation``), for models with
        ``attributions: true`` in the exporter's config.
        """
        try:
            item = _compact(
                {
                    "model": str(model),
                    "version": None if version is None else str(version),
                    "id": None if id is None else str(id),
                    "timestamp": _timestamp(timestamp),
                    "features": None if features is None else _features(features),
                    "attributes": None if attributes is None else _features(attributes),
                    "attributions": None if attributions is None else _features(attributions),
                    "prediction": _plain(prediction),
                    "scores": None if scores is None else _features(scores),
                    "score": _plain(score),
                    "latency_seconds": _plain(latency_seconds),
                    "label": _plain(label),
                    "registry": None if registry is None else _plain(dict(registry)),
                }
            )
        except Exception as exc:  # must never raise into the model server
            return self._invalid(exc)
        return self._enqueue(_PRED, item)

    def log_label(self, model: str, id: Any, label: Any) -> bool:
        """Queue the ground-truth ``label`` of the prediction ``id`` of ``model``.

        Return True if queued, False if dropped. Never blocks or raises. A label is never sent
        before a prediction queued earlier by this client.
        """
        try:
            item = _compact(
                {
                    "model": str(model),
                    "id": None if id is None else str(id),
                    "label": _plain(label),
                }
            )
        except Exception as exc:
            return self._invalid(exc)
        return self._enqueue(_LABEL, item)

    def upload_reference(self, model: str, columns: Mapping[str, Any], timeout: float = 60.0) -> dict:
        """Set the model's drift reference from columns of raw rows (feature name -> values; optionally
        ``prediction``, ``label`` and the scores ``scores.<class>``, which calibrate the estimated quality),
        typically held-out validation data. Synchronous, unlike ``log_*``: it raises ``requests.HTTPError``
        (with the exporter's message) when the exporter refuses it."""
        names = list(columns)
        lengths = {len(columns[n]) for n in names}
        if len(lengths) != 1:
            raise ValueError("every column needs the same number of rows")
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(names)
        for row in zip(*(columns[n] for n in names)):
            writer.writerow(["" if v is None else _plain(v) for v in row])
        headers = {**self._headers, "Content-Type": "text/csv"}
        resp = self._session.put(
            f"{self.url}/api/v1/models/{model}/reference",
            data=buf.getvalue().encode(),
            headers=headers,
            timeout=timeout,
        )
        if resp.status_code >= 400:
            raise requests.HTTPError(f"{resp.status_code}: {_error_detail(resp)}", response=resp)
        return resp.json()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event queued so far has been sent or dropped.

        Returns True if so, False if ``timeout`` (seconds; None = no limit) expired first.
        """
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        with self._lock:
            target = self._seq
            if self._done_locked(target):
                return True
            self._start_thread_locked()
            self._flush_target = max(self._flush_target, target)
            self._work.notify_all()
            while not self._done_locked(target):
                if deadline is None:
                    self._idle.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._idle.wait(remaining)
            return True

    def close(self, timeout: float = 5.0) -> None:
        """Flush (waiting at most ``timeout`` seconds), then stop the thread. Idempotent.

        Events still pending after ``timeout`` are dropped and counted as ``dropped_closed``;
        events logged after close() are dropped the same way.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._lock:
            if self._closed:
                return
            self._closed = True  # log_* now refuse new events
        if self._atexit_registered:
            self._atexit_registered = False
            atexit.unregister(self._atexit_close)
        self.flush(max(deadline - time.monotonic(), 0.0))
        with self._lock:
            self._stop.set()
            self._work.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(deadline - time.monotonic(), 0.05))
        if self._own_session and (thread is None or not thread.is_alive()):
            self._session.close()

    def stats(self) -> dict[str, int]:
        """Counters since start: queued, sent, dropped_queue_full, dropped_rejected,
        dropped_retries_exhausted, dropped_closed, dropped_invalid, retries, resource_reports;
        plus ``pending``: events currently queued or in flight."""
        with self._lock:
            out = dict(self._counts)
            out["pending"] = len(self._queue) + self._inflight_n
            return out

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<mlmon Client url={self.url!r} server={self.server!r}>"

    # ------------------------------------------------------------------ producer side

    def _enqueue(self, kind: int, item: dict[str, Any]) -> bool:
        full = False
        with self._lock:
            if self._closed:
                self._counts["dropped_closed"] += 1
                return False
            queue = self._queue
            if len(queue) >= self._max_queue:
                self._counts["dropped_queue_full"] += 1
                full = True
            else:
                self._seq += 1
                queue.append((self._seq, kind, item, time.monotonic()))
                self._counts["queued"] += 1
                model = item["model"]
                if model not in self._models and len(self._models) < _MAX_MODELS:
                    self._models.add(model)
                if self._thread is None:
                    self._start_thread_locked()
                if len(queue) == 1 or len(queue) >= self._batch_size:
                    self._work.notify()
        if full:
            self._warn(
                "queue-full",
                "mlmon client queue is full (%d events): dropping events; is the exporter at %s reachable?",
                self._max_queue,
                self.url,
            )
            return False
        return True

    def _invalid(self, exc: Exception) -> bool:
        with self._lock:
            self._counts["dropped_invalid"] += 1
        self._warn("invalid", "mlmon client could not encode an event, dropped: %r", exc)
        return False

    def _atexit_close(self) -> None:
        with contextlib.suppress(Exception):
            self.close(timeout=_ATEXIT_TIMEOUT)

    def _done_locked(self, target: int) -> bool:
        queue = self._queue
        return (not queue or queue[0][0] > target) and (self._inflight_min is None or self._inflight_min > target)

    # ------------------------------------------------------------------ worker side

    def _run(self) -> None:
        while True:
            try:
                chunk = self._next_chunk()
                if chunk is None:
                    break
                if chunk:
                    self._process(chunk)
                if self._next_report is not None and time.monotonic() >= self._next_report:
                    try:
                        self._report_resources()
                    finally:
                        if self._report_every is not None:
                            self._next_report = time.monotonic() + self._report_every
            except Exception:  # the thread must survive anything
                self._warn("worker", "mlmon client worker error", exc_info=True)
                self._stop.wait(0.1)
        with self._lock:
            dropped = len(self._queue)
            self._queue.clear()
            self._counts["dropped_closed"] += dropped
            self._idle.notify_all()
        if dropped:
            logger.warning("mlmon client closed with %d events not sent", dropped)

    def _next_chunk(self) -> list[tuple[int, int, dict[str, Any], float]] | None:
        """Block until a batch is due; return its events ([] if only a resource report is due,
        None when stopping)."""
        with self._lock:
            while True:
                if self._stop.is_set():
                    return None
                now = time.monotonic()
                queue = self._queue
                timeout: float | None = None
                if queue:
                    oldest_seq, _, _, oldest_t = queue[0]
                    due = oldest_t + self._flush_interval
                    if len(queue) >= self._batch_size or oldest_seq <= self._flush_target or now >= due:
                        return self._take_locked()
                    timeout = due - now
                if self._next_report is not None:
                    until_report = self._next_report - now
                    if until_report <= 0:
                        return []
                    timeout = until_report if timeout is None else min(timeout, until_report)
                self._work.wait(timeout)

    def _take_locked(self) -> list[tuple[int, int, dict[str, Any], float]]:
        queue = self._queue
        chunk = []
        n_pred = n_label = 0
        size = self._batch_size
        while queue and n_pred < size and n_label < size:
            entry = queue.popleft()
            if entry[1] == _PRED:
                n_pred += 1
            else:
                n_label += 1
            chunk.append(entry)
        self._inflight_min = chunk[0][0]
        self._inflight_n = len(chunk)
        return chunk

    def _process(self, chunk: list[tuple[int, int, dict[str, Any], float]]) -> None:
        # Predictions first: a label queued after its prediction must not overtake it.
        try:
            preds = [e[2] for e in chunk if e[1] == _PRED]
            labels = [e[2] for e in chunk if e[1] == _LABEL]
            if preds:
                self._deliver(PREDICTIONS_PATH, "predictions", preds)
            if labels:
                self._deliver(LABELS_PATH, "labels", labels)
        finally:
            with self._lock:
                self._inflight_min = None
                self._inflight_n = 0
                self._idle.notify_all()

    def _count(self, key: str, n: int) -> None:
        with self._lock:
            self._counts[key] += n

    def _backoff(self) -> float:
        exponent = min(max(self._failures - 1, 0), 60)
        delay = min(self._backoff_max, self._backoff_base * (2.0**exponent))
        return delay * random.uniform(0.5, 1.0)

    def _deliver(self, path: str, key: str, items: list[dict[str, Any]], resend: bool = True) -> None:
        """Send one chunk's predictions or labels: as columnar batches (one per model and version, in the
        order of their first item) or, for an exporter that reads none, as one batch of rows."""
        if self._format == "rows" or self._rows_only:
            self._send(path, key, items, None, resend)
            return
        for group in _groups(key, items):
            self._send(path, key, group, self._format, resend)

    def _send(self, path: str, key: str, items: list[dict[str, Any]], fmt: str | None, resend: bool = True) -> None:
        """Send one batch with retries (``fmt``: "columns", "arrow", or None for rows); count it as sent or
        dropped.

        The exporter rejects a batch as a whole but names every bad item; those are dropped and the
        rest of the batch is sent once more, so one bad event does not cost its neighbours.
        """
        n = len(items)
        try:
            body, content_type = _encode(key, items, fmt)
        except Exception as exc:  # pragma: no cover - _plain prevents this
            self._count("dropped_invalid", n)
            self._warn("encode", "mlmon client could not encode a batch, dropped: %r", exc)
            return
        if content_type is None:  # items a columnar batch cannot hold (a field that is no object): rows
            fmt = None
        # Honour an earlier Retry-After / backoff before spending this batch's budget.
        while not self._stop.is_set():
            wait = self._resume_at - time.monotonic()
            if wait <= 0:
                break
            self._stop.wait(wait)
        deadline = time.monotonic() + self._max_retry_seconds
        attempt = 0
        # One key per body, the same on every retry: the exporter applies a body once, however often it
        # arrives (a retry after a lost answer or an exporter restart is answered, not counted again).
        idempotency_key = uuid.uuid4().hex
        while True:
            attempt += 1
            if attempt > 1:
                self._count("retries", 1)
            status, retry_after, detail = self._post(path, body, idempotency_key, content_type)
            if status is not None and 200 <= status < 300:
                self._failures = 0
                self._count("sent", n)
                return
            if status in _FORMAT_REFUSALS and fmt is not None and not self._reads(content_type):
                # An exporter that does not list the format among those it reads (an older release): rows
                # from now on, this batch first (a refused body was not applied, so nothing counts twice).
                # Other answers without the list (a proxy's 413, a 401) say nothing of the format.
                self._failures = 0
                if fmt == "arrow" and self._reads(_COLUMNS_TYPE):
                    self._format = "columns"
                    logger.warning("mlmon exporter at %s reads no Arrow streams; sending columnar JSON", self.url)
                    self._send(path, key, items, "columns", resend)
                    return
                self._rows_only = True
                logger.warning("mlmon exporter at %s reads no columnar batches; sending rows", self.url)
                self._send(path, key, items, None, resend)
                return
            if status is not None and not _retryable(status):
                self._failures = 0
                bad = self._bad_items
                if resend and bad and len(bad) < n and max(bad) < n:
                    self._count("dropped_rejected", len(bad))
                    self._warn(
                        f"rejected items {path} {detail}",
                        "mlmon exporter rejected %d of %d %s (dropped; the rest is resent): %s",
                        len(bad),
                        n,
                        key,
                        detail,
                    )
                    rest = [item for i, item in enumerate(items) if i not in bad]
                    self._send(path, key, rest, fmt, resend=False)
                    return
                self._count("dropped_rejected", n)
                self._warn(
                    f"rejected {path} {status} {detail}",
                    "mlmon exporter rejected %d %s with HTTP %d (not retried): %s",
                    n,
                    key,
                    status,
                    detail,
                )
                return
            self._failures += 1
            delay = retry_after if retry_after is not None else self._backoff()
            now = time.monotonic()
            self._resume_at = max(self._resume_at, now + delay)
            reason = f"HTTP {status}" if status is not None else detail
            if (
                self._stop.is_set()
                or now + delay > deadline
                or (self._max_attempts is not None and attempt >= self._max_attempts)
            ):
                self._count("dropped_retries_exhausted", n)
                self._warn(
                    f"exhausted {path}",
                    "mlmon client dropped %d %s after %d attempts: %s",
                    n,
                    key,
                    attempt,
                    reason,
                )
                return
            logger.debug("mlmon %s failed (%s); retry in %.2fs", path, reason, delay)
            if self._stop.wait(delay):
                # close() gave up waiting: abandon the batch.
                self._count("dropped_retries_exhausted", n)
                return

    def _post(
        self, path: str, body: bytes, idempotency_key: str | None = None, content_type: str | None = None
    ) -> tuple[int | None, float | None, str]:
        """One HTTP POST: (status or None on connection error, Retry-After seconds, detail).

        After a rejection, ``self._bad_items`` holds the indexes of the items the exporter named as
        invalid (or None when the whole body was at fault).
        """
        self._bad_items = None
        headers = self._headers if idempotency_key is None else {**self._headers, "Idempotency-Key": idempotency_key}
        if content_type is not None:
            headers = {**headers, "Content-Type": content_type}
        try:
            resp = self._session.post(self.url + path, data=body, headers=headers, timeout=self._timeout)
        except Exception as exc:  # requests errors and anything else
            return None, None, f"{type(exc).__name__}: {exc}"
        try:
            status = resp.status_code
            if path != RESOURCES_PATH:
                self._accept_post = resp.headers.get("Accept-Post")
            retry_after = _parse_retry_after(resp.headers.get("Retry-After"))
            if 200 <= status < 300:
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("mlmon %s -> %d %s", path, status, resp.text[:200])
                return status, retry_after, ""
            if status in (400, 404):
                self._bad_items = _bad_items(resp)
            return (
                status,
                (retry_after if _retryable(status) else None),
                _error_detail(resp),
            )
        finally:
            resp.close()

    def _reads(self, content_type: str) -> bool:
        """Whether the exporter's last ingest answer listed ``content_type`` among the formats it reads."""
        listed = self._accept_post or ""
        return content_type in (t.strip().split(";")[0] for t in listed.split(","))

    def _report_resources(self) -> None:
        with self._lock:
            models = sorted(self._models)
        if not models or time.monotonic() < self._resume_at:
            return  # nothing to attribute yet / exporter asked us to back off
        report = {
            "server": self.server,
            "models": models,
            "cpu_seconds_total": _cpu_seconds(),
            "resident_memory_bytes": _resident_memory_bytes(),
        }
        status, retry_after, detail = self._post(RESOURCES_PATH, json.dumps(report, separators=(",", ":")).encode())
        if status is not None and 200 <= status < 300:
            self._count("resource_reports", 1)
        elif status == 404:
            self._next_report = None
            self._report_every = None
            logger.warning(
                "mlmon exporter has no %s (HTTP 404: %s); resource reporting disabled",
                RESOURCES_PATH,
                detail,
            )
        elif status == 429 and retry_after is not None:
            self._resume_at = max(self._resume_at, time.monotonic() + retry_after)
        else:
            self._warn(
                f"resources {status}",
                "mlmon resource report failed: %s",
                f"HTTP {status}: {detail}" if status is not None else detail,
            )

    def _warn(self, key: str, msg: str, *args: Any, exc_info: bool = False) -> None:
        """Log a warning at most once per ``_WARN_INTERVAL`` seconds per ``key``."""
        now = time.monotonic()
        with self._warn_lock:
            last = self._warned.get(key)
            if last is not None and now - last < _WARN_INTERVAL:
                return
            if len(self._warned) >= 256:
                self._warned = {k: t for k, t in self._warned.items() if now - t < _WARN_INTERVAL}
            self._warned[key] = now
        logger.warning(msg, *args, exc_info=exc_info)


_BODY_REASONS = frozenset({"malformed_json", "malformed_arrow", "invalid_body", "body_too_large", "batch_too_large"})

# -------------------------------------------------------------------------- columnar batches

_FORMATS = ("columns", "arrow", "rows")
_COLUMNS_TYPE = "application/vnd.mlmon.columns+json"
_ARROW_TYPE = "application/vnd.apache.arrow.stream"
# A prediction's fields as columns (docs/api.md, "Columnar batches"); the batch-wide ones are not columns.
_PREDICTION_COLUMNS = {
    "id": "ids",
    "timestamp": "timestamps",
    "prediction": "predictions",
    "label": "labels",
    "score": "score",
    "latency_seconds": "latency_seconds",
}
_OBJECT_FIELDS = ("features", "attributes", "attributions", "scores")
_BATCH_FIELDS = ("model", "version", "registry")


def _arrow_available() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def _groups(key: str, items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The items split into columnar batches: one per model (and version and registry entry, for
    predictions), in the order of each one's first item."""
    fields = _BATCH_FIELDS if key == "predictions" else ("model",)
    groups: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        batch = json.dumps([item.get(f) for f in fields], sort_keys=True, default=str)
        groups.setdefault(batch, []).append(item)
    return list(groups.values())


def _columns(key: str, items: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One batch of items (one model, version, registry entry) as columns; None if an object field of an
    item is no object (only rows can carry that to the exporter, which then names the item)."""
    first = items[0]
    plain = _PREDICTION_COLUMNS if key == "predictions" else {"id": "ids", "label": "labels"}
    objects = _OBJECT_FIELDS if key == "predictions" else ()
    body: dict[str, Any] = {f: first[f] for f in (_BATCH_FIELDS if key == "predictions" else ("model",)) if f in first}
    for field, column in plain.items():
        if any(field in item for item in items):
            body[column] = [item.get(field) for item in items]
    for field in objects:
        values = [item.get(field) for item in items]
        if any(v is not None and not isinstance(v, dict) for v in values):
            return None
        names = dict.fromkeys(name for v in values if v for name in v)
        if names:
            body[field] = {name: [(v or {}).get(name) for v in values] for name in names}
    return body


def _encode(key: str, items: list[dict[str, Any]], fmt: str | None) -> tuple[bytes, str | None]:
    """The body of a batch and its Content-Type (None: rows, as JSON)."""
    columns = _columns(key, items) if fmt is not None else None
    if columns is None:
        return json.dumps({key: items}, separators=(",", ":"), default=str).encode(), None
    if fmt == "arrow":
        arrow = _arrow_body(columns)
        if arrow is not None:
            return arrow, _ARROW_TYPE
    return json.dumps(columns, separators=(",", ":"), default=str).encode(), _COLUMNS_TYPE


def _arrow_body(columns: dict[str, Any]) -> bytes | None:
    """Columns as an Arrow IPC stream (the batch-wide fields in the schema's metadata); None when a column
    holds values Arrow cannot type alike (numbers and text in one feature): columnar JSON carries those."""
    import pyarrow as pa

    arrays: dict[str, Any] = {}
    meta: dict[str, str] = {}
    for name, value in columns.items():
        if name in _BATCH_FIELDS:
            meta[name] = value if isinstance(value, str) else json.dumps(value, default=str)
        elif name in _OBJECT_FIELDS:
            for sub, column in value.items():
                arrays[f"{name}.{sub}"] = column
        else:
            arrays[name] = value
    try:
        table = pa.table({n: pa.array(c) for n, c in arrays.items()}).replace_schema_metadata(meta)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return None
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _bad_items(resp: requests.Response) -> set[int] | None:
    """Indexes of the items an exporter error body names, or None if the body as a whole was refused."""
    try:
        details = resp.json()["error"]["details"]
        if any(d["reason"] in _BODY_REASONS for d in details):
            return None
        return {int(d["index"]) for d in details}
    except Exception:
        return None


def _error_detail(resp: requests.Response) -> str:
    """The message of an exporter error body ``{"error": {...}}``, else the start of the body."""
    try:
        err = resp.json()["error"]
        text = str(err.get("message") or err.get("name") or err)
        details = err.get("details")
        if details:
            text += f" {json.dumps(details[:3], default=str)[:300]}"
        return text
    except Exception:
        try:
            return resp.text[:200].strip() or resp.reason or ""
        except Exception:  # pragma: no cover
            return ""


def _after_fork_in_child() -> None:
    for c in list(_clients):
        with contextlib.suppress(Exception):
            c._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------------- module-level API

_default: Client | None = None
_default_lock = threading.Lock()


def configure(**kwargs: Any) -> Client:
    """Create the default client with ``Client(**kwargs)`` (closing a previous one); return it."""
    global _default
    new = Client(**kwargs)
    with _default_lock:
        old, _default = _default, new
    if old is not None:
        old.close()
    return new


def get_client() -> Client:
    """The default client, created with defaults (env MLMON_URL, ...) on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Client()
        return _default


def log_prediction(model: str, prediction: Any, **kwargs: Any) -> bool:
    """``Client.log_prediction`` on the default client. Never raises."""
    try:
        return get_client().log_prediction(model, prediction, **kwargs)
    except Exception:
        logger.debug("mlmon log_prediction failed", exc_info=True)
        return False


def log_label(model: str, id: Any, label: Any) -> bool:
    """``Client.log_label`` on the default client. Never raises."""
    try:
        return get_client().log_label(model, id, label)
    except Exception:
        logger.debug("mlmon log_label failed", exc_info=True)
        return False
