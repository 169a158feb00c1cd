"""Tests of exporter.client against a real HTTP server on a free loopback port."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from exporter import client as mlmon
from exporter.client import Client

PREDICTIONS = "/api/v1/predictions"
LABELS = "/api/v1/labels"
RESOURCES = "/api/v1/resources"


# --------------------------------------------------------------------------- fake exporter


@dataclass
class Reply:
    status: int = 202
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any
    at: float  # time.monotonic() on arrival


class FakeExporter:
    """Records every POST; answers scripted replies (for predictions and labels) in order, then
    202. ``hang`` makes every answer wait until ``release`` is set."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[Received] = []
        self.script: deque[Reply] = deque()
        self.always: Reply | None = None
        self.hang = False
        self.legacy = False  # answer as a release that reads no columnar batches
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw)
                columnar = self.headers.get("Content-Type") == COLUMNS
                with fake._lock:
                    fake.received.append(Received(self.path, dict(self.headers), body, time.monotonic()))
                    reply = Reply()
                    if self.path != RESOURCES:
                        if columnar and fake.legacy:  # an older exporter reads a columnar body as one bad item
                            reply = error_reply(400, "1 of 1 items is invalid; nothing was accepted")
                        elif fake.script:
                            reply = fake.script.popleft()
                        elif fake.always is not None:
                            reply = fake.always
                if fake.hang:
                    fake.release.wait(10)
                payload = reply.body
                if payload is None:
                    n = sum(len(v) for v in body.values() if isinstance(v, list))
                    if columnar:
                        n = len(body.get("predictions") or body.get("labels") or [])
                    payload = {"accepted": n, "duplicates": 0}
                data = json.dumps(payload).encode()
                self.send_response(reply.status)
                if not fake.legacy and self.path != RESOURCES:
                    self.send_header("Accept-Post", f"application/json, {COLUMNS}")
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def posts(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def items(self, path: str = PREDICTIONS) -> list[dict[str, Any]]:
        """The items of the batches received, rows or columns alike (a columnar batch read as its rows)."""
        key = "predictions" if path == PREDICTIONS else "labels"
        out = []
        for r in self.posts(path):
            if r.headers.get("Content-Type") == COLUMNS:
                out.extend(rows_of(r.body, key))
            else:
                out.extend(r.body[key])
        return out

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


COLUMNS = "application/vnd.mlmon.columns+json"
COLUMN_OF = {"ids": "id", "timestamps": "timestamp", "predictions": "prediction", "labels": "label"}


def rows_of(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The rows a columnar batch stands for (docs/api.md): batch-wide fields in every row, the i-th value of
    each column, object fields without their nulls."""
    n = len(body[key])
    rows: list[dict[str, Any]] = [{} for _ in range(n)]
    for name, value in body.items():
        if name in ("model", "version", "registry"):
            for row in rows:
                row[name] = value
        elif isinstance(value, dict):
            for sub, column in value.items():
                for row, v in zip(rows, column):
                    if v is not None:
                        row.setdefault(name, {})[sub] = v
        else:
            for row, v in zip(rows, value):
                if v is not None:
                    row[COLUMN_OF.get(name, name)] = v
    return rows


def error_reply(status: int, message: str) -> Reply:
    name = {400: "Bad Request", 404: "Not Found", 413: "Payload Too Large"}[status]
    return Reply(
        status,
        body={"error": {"code": status, "name": name, "message": message, "details": []}},
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture
def start_exporter() -> Iterator[Callable[..., FakeExporter]]:
    servers: list[FakeExporter] = []

    def start(port: int = 0) -> FakeExporter:
        server = FakeExporter(port)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def exporter(start_exporter: Callable[..., FakeExporter]) -> FakeExporter:
    return start_exporter()


@pytest.fixture
def make_client() -> Iterator[Callable[..., Client]]:
    clients: list[Client] = []

    def make(url: str, **kwargs: Any) -> Client:
        options: dict[str, Any] = {
            "flush_interval": 0.05,
            "backoff_base": 0.01,
            "backoff_max": 0.05,
            "timeout": 2.0,
            "report_resources_every": None,
        }
        options.update(kwargs)
        c = Client(url, **options)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close(timeout=1.0)


# --------------------------------------------------------------------------- batching, encoding


def test_events_are_batched_into_ceil_n_over_batch_size_requests(exporter, make_client):
    c = make_client(exporter.url, batch_size=10, flush_interval=10.0)
    for i in range(25):
        assert c.log_prediction("churn", i % 2, id=f"r{i}")
    assert c.flush(timeout=5)
    sizes = [len(r.body["predictions"]) for r in exporter.posts(PREDICTIONS)]
    assert sizes == [10, 10, 5]
    assert [item["id"] for item in exporter.items()] == [f"r{i}" for i in range(25)]


def test_fields_are_sent_intact_with_none_keys_omitted(exporter, make_client):
    c = make_client(exporter.url, format="rows")  # rows keep a feature's null; columns leave it out (the same)
    when = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
    c.log_prediction(
        "churn",
        "yes",
        id=42,
        features={"age": 31, "plan": "gold", "income": None},
        scores={"yes": 0.8, "no": 0.2},
        score=0.8,
        version="v2",
        latency_seconds=0.012,
        timestamp=when,
        label="no",
        registry={"run_id": "ab12", "name": "churn-clf", "version": 3},
    )
    c.log_prediction("price", 12.5)
    c.log_label("churn", 42, "yes")
    assert c.flush(timeout=5)
    full, minimal = exporter.items()
    assert full == {
        "model": "churn",
        "version": "v2",
        "id": "42",
        "timestamp": when.timestamp(),
        "features": {"age": 31, "plan": "gold", "income": None},
        "prediction": "yes",
        "scores": {"yes": 0.8, "no": 0.2},
        "score": 0.8,
        "latency_seconds": 0.012,
        "label": "no",
        "registry": {"run_id": "ab12", "name": "churn-clf", "version": 3},
    }
    assert set(minimal) == {"model", "prediction", "timestamp"}
    assert minimal["prediction"] == 12.5
    assert abs(minimal["timestamp"] - time.time()) < 60
    assert exporter.items(LABELS) == [{"model": "churn", "id": "42", "label": "yes"}]


def test_numpy_values_are_converted_to_plain_json(exporter, make_client):
    np = pytest.importorskip("numpy")
    c = make_client(exporter.url, format="rows")
    c.log_prediction(
        "churn",
        np.int64(1),
        id=np.int32(7),
        features={
            "x": np.float32(0.5),
            "v": np.array([1, 2]),
            "nan": np.nan,
            "b": np.bool_(True),
        },
        scores={np.int64(0): np.float64(0.25), np.int64(1): np.float64(0.75)},
        score=np.float16(0.75),
        latency_seconds=np.float64(0.5),
    )
    assert c.flush(timeout=5)
    [item] = exporter.items()
    assert item["prediction"] == 1
    assert item["id"] == "7"
    assert item["features"] == {"x": 0.5, "v": [1, 2], "nan": None, "b": True}
    assert item["scores"] == {"0": 0.25, "1": 0.75}
    assert item["score"] == 0.75
    assert item["latency_seconds"] == 0.5


def test_unencodable_caller_data_never_raises(exporter, make_client):
    c = make_client(exporter.url)

    class Odd:
        def __str__(self) -> str:
            return "odd"

    assert c.log_prediction("m", Odd(), features={"o": Odd(), 3: {1, 2}}, score=math.inf)
    assert c.flush(timeout=5)
    [item] = exporter.items()
    assert item["prediction"] == "odd"
    assert item["features"] == {"o": "odd", "3": [1, 2]}
    assert "score" not in item


# --------------------------------------------------------------------------- flush and close


def test_flush_delivers_everything_queued(exporter, make_client):
    c = make_client(exporter.url, batch_size=7, flush_interval=10.0)
    for i in range(20):
        c.log_prediction("m", 0, id=str(i))
    assert c.flush(timeout=5)
    assert len(exporter.items()) == 20
    assert c.stats()["sent"] == 20
    assert c.stats()["pending"] == 0


def test_close_delivers_everything_and_is_idempotent(exporter, make_client):
    c = make_client(exporter.url, flush_interval=10.0)
    for i in range(5):
        c.log_prediction("m", 0, id=str(i))
    c.log_label("m", "0", 1)
    c.close()
    c.close()
    assert len(exporter.items()) == 5
    assert len(exporter.items(LABELS)) == 1
    assert not c.log_prediction("m", 0)
    assert c.stats()["dropped_closed"] == 1


def test_context_manager_closes_the_client(exporter):
    with Client(exporter.url, report_resources_every=None, flush_interval=10.0) as c:
        c.log_prediction("m", 1)
    assert len(exporter.items()) == 1


# --------------------------------------------------------------------------- failures and retries


def test_server_error_is_retried_and_delivered_exactly_once(exporter, make_client):
    exporter.script.append(Reply(500))
    c = make_client(exporter.url)
    c.log_prediction("m", 1, id="a")
    c.log_prediction("m", 0, id="b")
    assert c.flush(timeout=5)
    first, second = exporter.posts(PREDICTIONS)
    assert first.body == second.body
    stats = c.stats()
    assert stats["sent"] == 2
    assert stats["retries"] == 1
    assert stats["dropped_retries_exhausted"] == 0


def test_retry_after_of_429_is_honoured(exporter, make_client):
    exporter.script.append(Reply(429, headers={"Retry-After": "1"}))
    c = make_client(exporter.url)
    c.log_prediction("m", 1)
    assert c.flush(timeout=5)
    first, second = exporter.posts(PREDICTIONS)
    assert second.at - first.at >= 0.99
    assert c.stats()["sent"] == 1


def test_bad_request_is_not_retried_and_counted_as_rejected(exporter, make_client):
    exporter.script.append(error_reply(400, "predictions[0].model: unknown model"))
    c = make_client(exporter.url)
    c.log_prediction("nope", 1)
    c.log_prediction("nope", 0)
    assert c.flush(timeout=5)
    time.sleep(0.1)  # a retry, if any, would come within the 0.05 s backoff cap
    assert len(exporter.posts(PREDICTIONS)) == 1
    stats = c.stats()
    assert (stats["dropped_rejected"], stats["retries"], stats["sent"]) == (2, 0, 0)


def test_rejection_warning_is_logged_once_per_message(exporter, make_client, caplog):
    exporter.always = error_reply(400, "predictions[0].model: unknown model")
    c = make_client(exporter.url)
    with caplog.at_level(logging.WARNING, logger="mlmon.client"):
        for _ in range(3):
            c.log_prediction("nope", 1)
            assert c.flush(timeout=5)
    warnings = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(warnings) == 1
    assert "unknown model" in warnings[0].getMessage()
    assert c.stats()["dropped_rejected"] == 3


def test_retries_exhausted_drop_and_count_the_batch(exporter, make_client):
    exporter.always = Reply(500)
    c = make_client(exporter.url, max_retry_seconds=0.3)
    for i in range(3):
        c.log_prediction("m", 1, id=str(i))
    assert c.flush(timeout=5)
    stats = c.stats()
    assert (stats["dropped_retries_exhausted"], stats["sent"]) == (3, 0)
    assert stats["retries"] >= 1
    assert len(exporter.posts(PREDICTIONS)) == stats["retries"] + 1


def test_server_down_at_start_then_up_delivers_events(start_exporter, make_client):
    port = free_port()
    c = make_client(f"http://127.0.0.1:{port}", max_retry_seconds=10)
    for i in range(3):
        c.log_prediction("m", 1, id=str(i))
    assert wait_for(lambda: c.stats()["retries"] >= 2)
    exporter = start_exporter(port)
    assert c.flush(timeout=5)
    assert [item["id"] for item in exporter.items()] == ["0", "1", "2"]
    assert c.stats()["sent"] == 3


def test_full_queue_drops_and_counts_without_blocking(exporter, make_client):
    exporter.hang = True
    c = make_client(exporter.url, max_queue=10, batch_size=5, timeout=5.0)
    c.log_prediction("m", 1)
    # Once the first request has arrived the worker is stuck waiting for its answer.
    assert wait_for(lambda: len(exporter.posts(PREDICTIONS)) == 1)
    start = time.monotonic()
    accepted = [c.log_prediction("m", 1) for _ in range(50)]
    elapsed = time.monotonic() - start
    assert elapsed < 0.5
    assert accepted == [True] * 10 + [False] * 40
    assert c.stats()["dropped_queue_full"] == 40
    exporter.release.set()
    assert c.flush(timeout=5)
    assert c.stats()["sent"] == 11


# --------------------------------------------------------------------------- ordering


def test_labels_are_not_sent_before_predictions_queued_earlier(exporter, make_client):
    exporter.script.extend([Reply(500), Reply(500)])  # the predictions need retries
    c = make_client(exporter.url, batch_size=2)
    for i in range(5):
        c.log_prediction("m", 1, id=str(i))
        c.log_label("m", str(i), 1)
    assert c.flush(timeout=5)
    order = [r for r in exporter.received if r.path in (PREDICTIONS, LABELS)]
    delivered_at: dict[str, int] = {}
    for index, r in enumerate(order):
        if r.path == PREDICTIONS:
            for item in rows_of(r.body, "predictions"):
                delivered_at.setdefault(item["id"], index)
    for index, r in enumerate(order):
        if r.path == LABELS:
            for item in rows_of(r.body, "labels"):
                assert delivered_at[item["id"]] < index
    assert len(exporter.items(LABELS)) == 5


# --------------------------------------------------------------------------- resources, auth


def test_resource_report_posts_cpu_memory_and_models(exporter, make_client):
    c = make_client(exporter.url, report_resources_every=0.05, server="srv-1")
    c.log_prediction("churn", 1)
    c.log_prediction("price", 3.5)
    assert wait_for(lambda: any(r.body["models"] == ["churn", "price"] for r in exporter.posts(RESOURCES)))
    report = next(r.body for r in exporter.posts(RESOURCES) if len(r.body["models"]) == 2)
    assert report["server"] == "srv-1"
    assert isinstance(report["cpu_seconds_total"], float)
    assert report["cpu_seconds_total"] > 0
    assert isinstance(report["resident_memory_bytes"], int)
    assert report["resident_memory_bytes"] > 1_000_000


def test_bearer_token_header_is_sent(exporter, make_client):
    c = make_client(exporter.url, token="s3cret")
    c.log_prediction("m", 1)
    c.log_label("m", "1", 0)
    assert c.flush(timeout=5)
    assert {r.headers["Authorization"] for r in exporter.received} == {"Bearer s3cret"}


def test_url_token_and_server_default_to_the_environment(exporter, make_client, monkeypatch):
    monkeypatch.setenv("MLMON_URL", exporter.url + "/")
    monkeypatch.setenv("MLMON_TOKEN", "from-env")
    monkeypatch.setenv("MLMON_SERVER", "env-server")
    c = make_client(None)
    assert c.server == "env-server"
    c.log_prediction("m", 1)
    assert c.flush(timeout=5)
    [r] = exporter.posts(PREDICTIONS)
    assert r.headers["Authorization"] == "Bearer from-env"


def test_no_authorization_header_without_token(exporter, make_client, monkeypatch):
    monkeypatch.delenv("MLMON_TOKEN", raising=False)
    c = make_client(exporter.url)
    c.log_prediction("m", 1)
    assert c.flush(timeout=5)
    assert "Authorization" not in exporter.posts(PREDICTIONS)[0].headers


# --------------------------------------------------------------------------- module-level API


def test_module_functions_use_the_configured_default_client(exporter, monkeypatch):
    monkeypatch.setattr(mlmon, "_default", None)
    c = mlmon.configure(url=exporter.url, report_resources_every=None, flush_interval=10.0)
    try:
        assert mlmon.get_client() is c
        assert mlmon.log_prediction("m", 1, id="x", score=0.9)
        assert mlmon.log_label("m", "x", 1)
        assert c.flush(timeout=5)
    finally:
        c.close()
    assert exporter.items() == [
        {
            "model": "m",
            "id": "x",
            "prediction": 1,
            "score": 0.9,
            "timestamp": pytest.approx(time.time(), abs=60),
        }
    ]
    assert exporter.items(LABELS) == [{"model": "m", "id": "x", "label": 1}]


@pytest.mark.parametrize(
    ("header", "expected"),
    [("1", 1.0), ("0.5", 0.5), ("-3", 0.0), ("soon", None), (None, None)],
)
def test_retry_after_seconds_are_parsed(header, expected):
    assert mlmon._parse_retry_after(header) == expected


def test_retry_after_http_date_is_parsed():
    from email.utils import formatdate

    seconds = mlmon._parse_retry_after(formatdate(time.time() + 30, usegmt=True))
    assert seconds is not None
    assert 28 <= seconds <= 31


# --------------------------------------------------------------------------- columnar batches


def test_batches_go_as_columns_one_per_model_and_version(exporter, make_client):
    c = make_client(exporter.url, batch_size=100)
    sent = []
    for i in range(12):
        model, version = ("churn", "v1") if i % 3 else ("price", "v2")
        features = {"age": 30 + i, "plan": None if i == 4 else "gold"}
        c.log_prediction(model, i, id=f"r{i}", version=version, features=features, score=0.5 if i % 2 else None)
        sent.append({"model": model, "version": version, "id": f"r{i}", "prediction": i})
    assert c.flush(timeout=5)
    posts = exporter.posts(PREDICTIONS)
    assert {r.headers["Content-Type"] for r in posts} == {COLUMNS}
    assert sorted((r.body["model"], r.body["version"]) for r in posts) == [("churn", "v1"), ("price", "v2")]
    churn = next(r.body for r in posts if r.body["model"] == "churn")
    assert churn["ids"] == [f"r{i}" for i in range(12) if i % 3]  # in the order they were logged
    churn_rows = [i for i in range(12) if i % 3]
    assert churn["features"]["plan"] == [None if i == 4 else "gold" for i in churn_rows]
    assert churn["score"] == [0.5 if i % 2 else None for i in churn_rows]
    got = {item["id"]: item for item in exporter.items()}
    for want in sent:
        row = got[want["id"]]
        assert {k: row[k] for k in want} == want
        assert "timestamp" in row


def test_an_exporter_that_reads_no_columns_gets_rows_from_then_on(exporter, make_client, caplog):
    exporter.legacy = True
    c = make_client(exporter.url, batch_size=5)
    with caplog.at_level(logging.WARNING, logger="mlmon.client"):
        for i in range(12):
            c.log_prediction("churn", 1, id=str(i))
        assert c.flush(timeout=5)
    posts = exporter.posts(PREDICTIONS)
    assert [r.headers["Content-Type"] for r in posts] == [COLUMNS] + ["application/json"] * 3  # one try only
    assert [item["id"] for item in exporter.items()][-12:] == [str(i) for i in range(12)]
    assert c.stats()["sent"] == 12 and c.stats()["dropped_rejected"] == 0
    assert "reads no columnar batches" in caplog.text


def test_a_row_refused_in_a_columnar_batch_is_dropped_and_the_rest_resent(exporter, make_client):
    details = [{"index": 1, "field": "features.age", "reason": "invalid_value", "message": "bad"}]
    exporter.script.append(
        Reply(400, body={"error": {"code": 400, "name": "Bad Request", "message": "1 of 3", "details": details}})
    )
    c = make_client(exporter.url, batch_size=3)
    for i in range(3):
        c.log_prediction("churn", 1, id=str(i))
    assert c.flush(timeout=5)
    first, second = exporter.posts(PREDICTIONS)
    assert first.body["ids"] == ["0", "1", "2"] and second.body["ids"] == ["0", "2"]
    assert c.stats()["sent"] == 2 and c.stats()["dropped_rejected"] == 1


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A scripted HTTP server on loopback for the with-block; yields its URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_arrow_format_sends_an_arrow_stream(make_client):
    pa = pytest.importorskip("pyarrow")
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append((self.headers.get("Content-Type"), raw))
            data = b'{"accepted": 2, "duplicates": 0}'
            self.send_response(202)
            self.send_header("Accept-Post", f"application/json, {COLUMNS}, application/vnd.apache.arrow.stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Handler) as url:
        c = make_client(url, format="arrow")
        c.log_prediction("churn", "yes", id="a", features={"age": 31.5, "plan": "gold"}, score=0.9, version="v3")
        c.log_prediction("churn", "no", id="b", features={"age": None, "plan": "free"}, score=0.2, version="v3")
        assert c.flush(timeout=5)
    [(content_type, raw)] = received
    assert content_type == "application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(raw).read_all()
    assert table.schema.metadata[b"model"] == b"churn" and table.schema.metadata[b"version"] == b"v3"
    assert table.column("ids").to_pylist() == ["a", "b"]
    assert table.column("features.age").to_pylist() == [31.5, None]
    assert table.column("score").to_pylist() == [0.9, 0.2]


def test_the_client_names_columns_as_the_exporter_reads_them():
    """The light client cannot import the exporter, so its names of a columnar batch's fields are a copy of the
    exporter's (docs/api.md#columnar-batches): they must stay the same."""
    import mlmon_client

    from exporter.ingest import columnar, schema

    assert mlmon_client._PREDICTION_COLUMNS == schema.COLUMN_NAMES == columnar.PREDICTION_COLUMNS
    assert mlmon_client._OBJECT_FIELDS == schema.OBJECT_FIELDS
    assert mlmon_client._BATCH_FIELDS == schema.BATCH_FIELDS["Prediction"]
    assert columnar.FORMATS == {mlmon_client._COLUMNS_TYPE: "columns", mlmon_client._ARROW_TYPE: "arrow"}
    assert set(mlmon_client._FORMATS) == {"rows", *columnar.FORMATS.values()}


def test_a_refusal_that_says_nothing_of_the_format_keeps_columns(make_client, caplog):
    """Only a 400 or 415 without the exporter's list of formats means an exporter that reads no columns: a
    proxy's (or the HTTP server's own) plain 413 before the exporter drops that batch, and the next is columns
    again."""
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append(self.headers.get("Content-Type"))
            if len(received) == 1:
                data, status, headers = b"Request Entity Too Large", 413, {"Content-Type": "text/plain"}
            else:
                n = len(json.loads(raw)["predictions"])
                data, status = json.dumps({"accepted": n, "duplicates": 0}).encode(), 202
                headers = {"Accept-Post": f"application/json, {COLUMNS}", "Content-Type": "application/json"}
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Handler) as url, caplog.at_level(logging.WARNING, logger="mlmon.client"):
        c = make_client(url, batch_size=3)
        for i in range(3):
            c.log_prediction("churn", 1, id=str(i))
        assert c.flush(timeout=5)
        for i in range(3, 6):
            c.log_prediction("churn", 1, id=str(i))
        assert c.flush(timeout=5)
    assert received == [COLUMNS, COLUMNS]
    assert c.stats()["dropped_rejected"] == 3 and c.stats()["sent"] == 3
    assert "reads no columnar batches" not in caplog.text
