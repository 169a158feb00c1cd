"""Fuzz tests of the HTTP API (issue 8): generated inputs, in process, against the contract of docs/api.md.

Properties, for every generated request:

- the status is never 5xx (and the app never raises);
- every 4xx is the JSON error shape, with reasons from the documented set and the documented status;
- a rejected (4xx) request changes no state series of /metrics: only ``mlmon_ingest_errors_total`` (by
  exactly one per invalid item, under the item's first reason), the HTTP request counters, the scrape's own
  duration and the process/python families may move;
- an accepted request moves the counters by exactly what the answer says was accepted.

Hypothesis drives the Flask test client with our own strategies (bodies, items, headers, paths); then
Schemathesis generates requests from the served OpenAPI document. Small limits (4 KiB bodies, 5 items per
batch) keep the boundaries cheap to reach. Runs are derandomized, with a caveat: Hypothesis also draws
literals it finds in the project's modules loaded so far (hypothesis.internal.constants_ast), so the inputs
change with the code and with which tests ran before in the process; a failure that shows in a full run and
not alone (or the other way round) is no flake, and its input is in the failure's report.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import string
import struct
from collections import Counter
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.ingest.validation import REASONS, parse_rfc3339
from tests.conftest import T0, Metrics, make_app
from tests.ingest.columnar_forms import arrow_stream, transpose

# Huge values (1e308) once overflowed the squared-error sums into +Inf; numbers mlmon sums are now bounded to
# ±1e100 (exporter/ingest/validation.py MAX_MAGNITUDE). An overflow anywhere is a failure, not a warning.
pytestmark = pytest.mark.filterwarnings("error:overflow encountered:RuntimeWarning")

# Every Harness is a fresh app: with the default sqlite storage, the examples of one test would share a data
# directory (the test's cwd) and see each other's journal and Idempotency-Keys. The journal is exercised by
# tests/engine/test_durability.py; here the API's answers are.
FUZZ_CONFIG = """
windows: ["5m"]
storage: {backend: memory}
limits: {max_body_bytes: 4096, max_batch_size: 5, max_versions_per_model: 1000, max_servers: 4}
models:
  - name: churn
    task: binary
    classes: ["stay", "churn"]
    positive_class: "churn"
    features:
      - {name: tenure, type: numeric}
      - {name: plan, type: categorical}
  - name: iris
    task: multiclass
    classes: [setosa, versicolor, virginica]
    features:
      - {name: petal_length, type: numeric}
  - name: price
    task: regression
    features:
      - {name: bmi, type: numeric}
  - name: codes
    task: binary
    classes: [0, 1]
    positive_class: 1
    invalid_features: count
    features:
      - {name: x, type: numeric}
      - {name: c, type: categorical}
"""
MAX_BODY = 4096
MAX_BATCH = 5
MODELS = ("churn", "iris", "price", "codes")
CLASSES = {"churn": ("stay", "churn"), "iris": ("setosa", "versicolor", "virginica"), "codes": ("0", "1")}
FEATURES = {"churn": {"tenure": "numeric", "plan": "categorical"}, "iris": {"petal_length": "numeric"}}
FEATURES |= {"price": {"bmi": "numeric"}, "codes": {"x": "numeric", "c": "categorical"}}
POSITIVE = {"churn": "churn", "codes": "1"}

# Fast and derandomized (the same code and the same tests before it: the same inputs), no example database.
FUZZ = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}

# The documented status of each reason (docs/api.md, Reason codes).
REASON_STATUS = {r: {400} for r in REASONS}
REASON_STATUS |= {"body_too_large": {413}, "batch_too_large": {413}, "unknown_model": {404, 400}}
REASON_STATUS |= {"idempotency_key_reused": {422}}

# Families a rejected request may move: the error and request counters, the scrape's own timing, the process.
NOT_STATE = (
    "mlmon_ingest_errors_total",
    "mlmon_http_requests_total",
    "mlmon_http_request_duration_seconds",
    "mlmon_collect_duration_seconds",
    "process_",
    "python_",
)


# -- comparing scrapes -----------------------------------------------------------------------------------


class Scrape:
    """One scrape of /metrics as {series: value text}; parsed by hand (the full parser is too slow for
    thousands of scrapes). Values stay text, so NaN equals NaN."""

    def __init__(self, text: str):
        self.text = text
        self.series = {}
        for line in text.split("\n"):
            if line and line[0] != "#":
                key, _, value = line.rpartition(" ")
                self.series[key] = value

    def total(self, name: str, *labels: str) -> float:
        """Sum of the samples of ``name`` whose labels contain every ``label="value"`` given."""
        return sum(
            float(v)
            for k, v in self.series.items()
            if (k == name or k.startswith(name + "{")) and all(lab in k for lab in labels)
        )

    def state(self) -> dict:
        return {k: v for k, v in self.series.items() if not k.startswith(NOT_STATE)}

    def error_counts(self) -> Counter:
        out: Counter = Counter()
        for k, v in self.series.items():
            if k.startswith("mlmon_ingest_errors_total{"):
                out[re.search(r'reason="([a-z_]+)"', k).group(1)] += float(v)
        return +out


def take_scrape(client) -> Scrape:
    response = client.get("/metrics")
    assert response.status_code == 200
    return Scrape(response.get_data(as_text=True))


def assert_same_state(before: Scrape, after: Scrape, what: str, but: tuple[str, ...] = ()) -> None:
    a, b = before.state(), after.state()
    if but:
        a, b = ({k: v for k, v in x.items() if not k.startswith(but)} for x in (a, b))
    if a != b:
        changed = sorted({k for k in a.keys() | b.keys() if a.get(k) != b.get(k)})[:10]
        lines = [f"  {k}: {a.get(k)} -> {b.get(k)}" for k in changed]
        raise AssertionError(f"{what} changed the state:\n" + "\n".join(lines))


def check_error_shape(r) -> list[dict]:
    """The JSON error shape of docs/api.md#errors; returns the details."""
    assert r.mimetype == "application/json", f"{r.status_code} answered {r.mimetype}: {r.data[:200]!r}"
    body = json.loads(r.data)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert set(err) <= {"code", "name", "message", "details"}, err
    assert err["code"] == r.status_code, err
    assert isinstance(err["name"], str) and err["name"], err
    assert isinstance(err["message"], str) and err["message"], err
    details = err.get("details", [])
    if r.status_code in (400, 413, 422):
        assert details, f"an input error without details: {err}"
    assert isinstance(details, list) and len(details) <= 1000
    for d in details:
        assert set(d) == {"index", "field", "reason", "message"}, d
        assert isinstance(d["index"], int) and not isinstance(d["index"], bool) and d["index"] >= 0, d
        assert isinstance(d["field"], str) and isinstance(d["message"], str), d
        assert d["reason"] in REASONS, d
        assert r.status_code in REASON_STATUS[d["reason"]], (r.status_code, d)
    if r.status_code == 404 and details:
        assert all(d["reason"] == "unknown_model" for d in details), details
    return details


def uncounted_in_app(path: str, details: list[dict]) -> bool:
    """Known deviation in exporter/serve/app.py (see test_resources_body_that_is_not_an_object_is_counted): a
    resource report whose body is not a JSON object is rejected but not counted."""
    return path == "/api/v1/resources" and [d["reason"] for d in details] == ["invalid_body"]


class Harness:
    """One app (small limits) and its last scrape; every request goes through :meth:`send`, which checks
    the properties above. The scrape after a request is the scrape before the next one."""

    def __init__(self, config: str = FUZZ_CONFIG):
        self.app, self.clock = make_app(config)
        self.client = self.app.test_client()
        self.metrics = take_scrape(self.client)
        self.statuses: Counter = Counter()

    def send(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None, items=None):
        before = self.metrics
        r = self.client.open(path, method=method, data=body, headers=headers or {})
        self.metrics = after = take_scrape(self.client)
        what = f"{method} {path} {headers or {}} {body[:300] if body else body!r}"
        self.statuses[r.status_code] += 1
        assert r.status_code < 500, f"{what} answered {r.status_code}: {r.data[:500]!r}"
        if r.status_code >= 400:
            details = check_error_shape(r) if method != "HEAD" else []
            assert_same_state(before, after, what)
            # One count per invalid item (index), under the reason of its first problem; none without details.
            first: dict[int, str] = {}
            for d in details:
                first.setdefault(d["index"], d["reason"])
            counted = after.error_counts() - before.error_counts()
            if not uncounted_in_app(path, details):
                assert counted == Counter(first.values()), (what, counted, details)
            if items is not None:
                assert all(d["index"] < max(items, 1) for d in details), details
        else:
            assert after.error_counts() == before.error_counts(), what
        if r.status_code == 202 and path in ("/api/v1/predictions", "/api/v1/labels"):
            self._check_accepted(path, r, before, after, items)
        return r

    @staticmethod
    def _check_accepted(path: str, r, before: Scrape, after: Scrape, items) -> None:
        answer = r.get_json()
        assert set(answer) == {"accepted", "duplicates"}, answer
        if items is not None:
            assert answer["accepted"] + answer["duplicates"] == items, answer
        replays = after.total("mlmon_idempotent_replays_total") - before.total("mlmon_idempotent_replays_total")
        if r.headers.get("Idempotent-Replayed") == "true":
            assert replays == 1
            assert_same_state(before, after, "a replay", but=("mlmon_idempotent_replays_total",))
            return
        assert replays == 0

        def delta(name: str, *labels: str) -> float:
            return after.total(name, *labels) - before.total(name, *labels)

        if path == "/api/v1/predictions":
            assert delta("mlmon_predictions_total") == answer["accepted"], answer
            assert delta("mlmon_duplicates_total", 'kind="prediction"') == answer["duplicates"], answer
        else:
            # A label is joined (labels_total) or waits for its prediction (early_labels).
            assert delta("mlmon_labels_total") + delta("mlmon_early_labels") == answer["accepted"], answer
            assert delta("mlmon_duplicates_total", 'kind="label"') == answer["duplicates"], answer


# -- writing JSON the way clients (and attackers) do -------------------------------------------------------


class Raw(str):
    """JSON text written into the body as is: numbers json.dumps cannot write, deep nesting, junk."""


class Obj(tuple):
    """A JSON object as (key, value) pairs: a key may repeat (the last one wins)."""


def dump(value, ascii_only: bool = True) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, (Obj, dict)):
        pairs = value if isinstance(value, Obj) else value.items()
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=ascii_only)}:{dump(v, ascii_only)}" for k, v in pairs) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dump(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True)


def encode(value, ascii_only: bool = True) -> bytes:
    return dump(value, ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def bodies(draw, value) -> bytes:
    """``value`` written as JSON, sometimes non-ASCII as is, sometimes with a prefix or suffix."""
    raw = encode(value, ascii_only=draw(st.booleans()))
    affix = draw(st.sampled_from(["", "", "", "", " \n\t", "\ufeff", "x", "\x00", "}", "//"]))
    if affix and draw(st.booleans()):
        return affix.encode("utf-8") + raw
    return raw + affix.encode("utf-8") if affix else raw


# -- strategies: values -----------------------------------------------------------------------------------

ODD_NUMBERS = [
    "1e308", "-1e308", "1.7976931348623157e308", "1e309", "-1e400", "4.9e-324", "1e-400", "-0", "-0.0", "0e0",
    "1E+2", "NaN", "Infinity", "-Infinity", "nan", "inf", "1" * 40, "-" + "9" * 25, "18446744073709551615",
    "18446744073709551616", "9223372036854775807", "-9223372036854775809", "0.1e1", "01", "1.", ".5", "+1",
    "0x10", "1_000", "1e", "-",
]  # fmt: skip
ODD_STRINGS = [
    "", " ", "\x00", "a\x00b", "\ud800", "\udfff", "\ud83d\ude00", "\u202e\u202dRTL", "\u200f", "\ufeff", "\uffff",
    "e\u0301", "\U0001f642", "\n", "\r\n", "\t", '"', "\\", "٢٠٢٦", "１", "NaN", "null", "true", "0", "-1",
    "x" * 255, "x" * 256, "x" * 257, "é" * 300, "y" * 1024, "y" * 1025, "z" * 3000,
]  # fmt: skip
odd_numbers = st.sampled_from(ODD_NUMBERS).map(Raw)
odd_strings = st.sampled_from(ODD_STRINGS)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20)
    | odd_strings
    | odd_numbers
)
json_values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=8), c, max_size=5), max_leaves=15
)


def deep(depth: int, kind: str) -> Raw:
    if kind == "list":
        return Raw("[" * depth + "1" + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


deep_values = st.builds(deep, st.integers(1, 1400), st.sampled_from(["list", "object"]))
anything = st.one_of(scalars, scalars, json_values, deep_values)

VERSIONS = ["default", "v1", "A-z_0.9+x:y@z" + "9" * 51]
BAD_VERSIONS = ["", "a b", "v1\n", "x" * 65, "v/1", "é", "\x00", "v1 ", " v1", "v1\r", "٢"]
versions = st.sampled_from(VERSIONS)
any_version = versions | st.sampled_from(BAD_VERSIONS) | st.text(max_size=70) | anything

ID_POOL = ["a", "b", "c", "1", 1, 2, -3, "x" * 256, "\x00", "é"]
valid_ids = st.sampled_from(ID_POOL) | st.text(min_size=1, max_size=256) | st.integers(-(2**63), 2**64 - 1)
any_id = valid_ids | st.just("") | st.text(min_size=257, max_size=300) | st.integers(2**64, 2**70) | anything


def rfc3339(ts: float, form: int) -> str:
    """One of the RFC 3339 forms of ``ts`` (all valid)."""
    zones = [timezone.utc, timezone(timedelta(hours=2)), timezone(timedelta(hours=-9, minutes=-30))]
    moment = datetime.fromtimestamp(ts, zones[form % 3])
    text = moment.strftime("%Y-%m-%d" + ("T", "t", " ")[form % 3] + "%H:%M:%S")
    if form % 2:
        text += "." + f"{moment.microsecond:06d}" + "0" * (form % 4)
    offset = moment.strftime("%z")
    zone = ("Z" if form % 5 else "z") if offset == "+0000" and form % 7 else offset[:3] + ":" + offset[3:]
    return text + zone


ages = st.floats(min_value=-300, max_value=1e8, allow_nan=False)  # seconds before now (negative: skew)
valid_timestamps = st.builds(lambda a: T0 - a, ages) | st.builds(
    lambda a, f: rfc3339(math.floor(T0 - max(a, 0)), f), ages, st.integers(0, 20)
)
ODD_TIMESTAMPS = [
    "2026-01-01T00:00:00", "2026-01-01", "1795442000", "2026-01-01T00:00:00+00:99", "2026-01-01T00:00:00Z\n",
    "٢٠٢٦-01-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-01-01T24:00:00Z", "2026-01-01T00:00:60Z",
    "2026-W01-1T00:00:00Z", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59",
    "2026-01-01T00:00:00.1234567890Z", "2026-01-01T00:00:00+0100", "2026-01-01T00:00:00+01", "1970-01-01T00:00:00Z",
    "1969-12-31T23:59:59Z", "2026-01-01T00:00:00,5Z", "+2026-01-01T00:00:00Z", "x" * 65,
]  # fmt: skip
any_timestamp = (
    valid_timestamps
    | st.sampled_from(ODD_TIMESTAMPS)
    | st.sampled_from([0, -1, 1e-300, 1.7e12, T0 + 301, T0 + 300, 2**63, True])
    | st.text(max_size=70)
    | anything
)

finite = st.floats(allow_nan=False, allow_infinity=False)
bounded = st.floats(min_value=-1e100, max_value=1e100)  # what mlmon sums (validation.MAX_MAGNITUDE)
probabilities = st.floats(min_value=0, max_value=1)
any_number = finite | st.integers() | odd_numbers | st.sampled_from([-1e-9, 1.0000001, 2, -0.0, True, "0.5", None])


def valid_outcome(model: str):
    if model == "price":
        return bounded | st.integers(-(2**63), 2**63 - 1)
    classes = st.sampled_from(CLASSES[model])
    return classes | st.sampled_from([0, 1]) if model == "codes" else classes


def any_outcome(model: str):
    wrong = st.sampled_from(["STAY", "stay ", "churn\x00", "Setosa", "0.0", 1.0, 0.0, 2, -1, True, False, None])
    return st.one_of(valid_outcome(model), valid_outcome(model), wrong, anything)


@st.composite
def valid_scores(draw, model: str):
    if model == "price":
        return None
    if model in POSITIVE:
        p = draw(probabilities)
        if draw(st.booleans()):
            return {"score": p}
        other = next(c for c in CLASSES[model] if c != POSITIVE[model])
        return {"scores": {POSITIVE[model]: p, **({other: 1 - p} if draw(st.booleans()) else {})}}
    weights = draw(st.lists(st.floats(0.01, 1), min_size=3, max_size=3))
    return {"scores": {c: w / sum(weights) for c, w in zip(CLASSES[model], weights)}}


@st.composite
def any_scores(draw, model: str):
    classes = list(CLASSES.get(model, ("stay", "churn")))
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return draw(valid_scores(model)) or {}
    if choice == 1:  # not summing to 1, or out of range
        scale = draw(st.floats(0, 3) | st.sampled_from([1.02, 0.98, 1.0101, -1]))
        return {"scores": {c: scale / len(classes) for c in classes}}
    if choice == 2:  # a subset, unknown classes, odd values
        keys = draw(st.lists(st.sampled_from([*classes, "other", "", "STAY"]) | st.text(max_size=5), max_size=5))
        return {"scores": {k: draw(any_number | probabilities) for k in keys}}
    if choice == 3:
        return {"score": draw(any_number | probabilities)}
    if choice == 4:  # both
        return {"score": draw(probabilities), "scores": {c: 1 / len(classes) for c in classes}}
    return {draw(st.sampled_from(["score", "scores"])): draw(anything)}


def valid_features(model: str):
    names = FEATURES[model]
    values = {
        "numeric": bounded | st.integers(-(2**63), 2**63 - 1) | st.none(),
        "categorical": st.text(max_size=40) | st.sampled_from(["y" * 1024, "é" * 1024]) | finite | st.booleans()
        | st.none(),
    }  # fmt: skip
    fixed = st.fixed_dictionaries({}, optional={n: values[t] for n, t in names.items()})
    if model == "codes":  # invalid_features: count takes anything, counting what it leaves out
        extra = st.dictionaries(
            st.text(max_size=6), st.none() | st.booleans() | finite | st.text(max_size=5), max_size=4
        )
        return st.builds(lambda a, b: {**b, **a}, fixed, extra)
    return fixed


def any_features(model: str):
    names = list(FEATURES[model])
    return st.one_of(
        valid_features(model),
        st.dictionaries(st.sampled_from([*names, "age", "", "Tenure", "x" * 101]), anything, max_size=5),
        st.dictionaries(st.text(max_size=4), scalars, max_size=80),  # many features
        anything,
    )


@st.composite
def valid_prediction(draw, model: str | None = None) -> dict:
    model = model or draw(st.sampled_from(MODELS))
    item = {"model": model, "prediction": draw(valid_outcome(model))}
    optional = {
        "version": versions,
        "id": valid_ids,
        "timestamp": valid_timestamps,
        "features": valid_features(model),
        "latency_seconds": st.floats(0, 1e6) | st.integers(0, 10**6),
        "label": valid_outcome(model) | st.none(),
    }
    item |= draw(st.fixed_dictionaries({}, optional=optional))
    if draw(st.booleans()):
        item |= draw(valid_scores(model)) or {}
    return item


@st.composite
def plausible_prediction(draw) -> Obj:
    """A prediction item with some fields wrong: types, ranges, encodings, unknown and repeated keys."""
    model = draw(st.sampled_from(MODELS))
    name = draw(st.one_of(st.just(model), st.just(model), st.sampled_from(["CHURN", "churn ", "nope", ""]), anything))
    optional = {
        "version": any_version,
        "id": any_id,
        "timestamp": any_timestamp,
        "features": any_features(model),
        "latency_seconds": any_number | st.floats(0, 10),
        "label": any_outcome(model),
    }
    fields = {"model": name, "prediction": draw(any_outcome(model))}
    fields |= draw(st.fixed_dictionaries({}, optional=optional))
    fields |= draw(any_scores(model))
    for key in draw(st.lists(st.sampled_from(list(fields)), max_size=2)):  # drop required or optional fields
        fields.pop(key, None)
    pairs = list(fields.items())
    pairs += draw(st.lists(st.tuples(st.text(max_size=10) | odd_strings, anything), max_size=2))  # unknown keys
    if pairs and draw(st.integers(0, 4)) == 0:  # a repeated key: the last one wins
        key = draw(st.sampled_from([k for k, _ in pairs]))
        pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(anything)))
    return Obj(draw(st.permutations(pairs)) if draw(st.booleans()) else pairs)


@st.composite
def batch_body(draw, key: str, valid, plausible, max_items: int = MAX_BATCH + 1):
    """(body value, number of items): one item, or a batch of valid and plausible items mixed."""
    item = st.one_of(valid, plausible)
    if draw(st.integers(0, 3)) == 0:
        return draw(item), 1
    items = draw(st.lists(item, min_size=1, max_size=max_items))
    if items and draw(st.integers(0, 4)) == 0:  # a duplicate id in the batch: the same item twice
        items.append(items[0])
    return {key: items}, len(items)


idempotency_keys = st.one_of(
    st.none(),
    st.none(),
    st.sampled_from(["k1", "k2", '"k1"', " k2 ", "k3"]),
    st.text(alphabet=[chr(c) for c in range(0x21, 0x7F)], min_size=1, max_size=255),
    st.sampled_from(["", '""', "a b", "k" * 256, "é", "\t", "\x7f", "k\x01"]),
    st.text(alphabet=[chr(c) for c in range(1, 256) if chr(c) not in "\r\n"], max_size=20),
)
content_types = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=latin-1",
        "text/csv",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "multipart/form-data; boundary=x",
        "application/octet-stream",
        "garbage/;;;=",
        "application/vnd.mlmon.columns+json",
        "application/vnd.apache.arrow.stream",
    ]
)


def headers_of(key, ctype) -> dict:
    out = {}
    if key is not None:
        out["Idempotency-Key"] = key
    if ctype is not None:
        out["Content-Type"] = ctype
    return out


# -- 1. arbitrary bodies on every endpoint ----------------------------------------------------------------

ENDPOINTS = [
    ("POST", "/api/v1/predictions"),
    ("POST", "/api/v1/labels"),
    ("POST", "/api/v1/resources"),
    ("PUT", "/api/v1/models/churn/reference"),
    ("PUT", "/api/v1/models/price/reference"),
]


def test_arbitrary_bodies_are_rejected_cleanly():
    h = Harness()

    @given(
        endpoint=st.sampled_from(ENDPOINTS),
        body=st.one_of(json_values.flatmap(bodies), st.binary(max_size=600), deep_values.flatmap(bodies)),
        ctype=content_types,
        key=idempotency_keys,
    )
    @settings(max_examples=700, **FUZZ)
    def run(endpoint, body, ctype, key):
        h.send(*endpoint, body, headers_of(key, ctype))

    run()
    assert h.statuses[400] > 300


# -- 2. predictions: plausible items, valid ones mixed in, batches around the limits -----------------------


def test_plausible_predictions_never_break_the_contract():
    h = Harness()

    @given(
        body=batch_body("predictions", valid_prediction(), plausible_prediction()),
        ascii_only=st.booleans(),
        key=idempotency_keys,
    )
    @settings(max_examples=600, **FUZZ)
    def run(body, ascii_only, key):
        value, n = body
        h.send("POST", "/api/v1/predictions", encode(value, ascii_only), headers_of(key, "application/json"), n)

    run()
    assert h.statuses[202] > 20 and h.statuses[400] > 150 and h.statuses[413] > 10, h.statuses


def test_valid_predictions_are_accepted_and_counted():
    """Every batch of valid items is accepted (202), unless the body or the batch is over its limit."""
    h = Harness()

    @given(
        items=st.lists(valid_prediction(), min_size=1, max_size=MAX_BATCH + 1),
        single=st.booleans(),
        ascii_only=st.booleans(),
    )
    @settings(max_examples=300, **FUZZ)
    def run(items, single, ascii_only):
        value = items[0] if single else {"predictions": items}
        n = 1 if single else len(items)
        body = encode(value, ascii_only)
        r = h.send("POST", "/api/v1/predictions", body, {"Content-Type": "application/json"}, n)
        expected = 413 if len(body) > MAX_BODY or n > MAX_BATCH else 202
        assert r.status_code == expected, (value, r.get_json())

    run()
    assert h.statuses[202] > 200


# -- 3. labels ---------------------------------------------------------------------------------------------


@st.composite
def valid_label(draw) -> dict:
    model = draw(st.sampled_from(MODELS))
    return {"model": model, "id": draw(valid_ids), "label": draw(valid_outcome(model))}


@st.composite
def plausible_label(draw) -> Obj:
    model = draw(st.sampled_from(MODELS))
    fields = {
        "model": draw(st.one_of(st.just(model), st.just(model), anything)),
        "id": draw(any_id),
        "label": draw(any_outcome(model)),
    }
    fields |= draw(st.fixed_dictionaries({}, optional={"version": any_version, "prediction": anything}))
    for key in draw(st.lists(st.sampled_from(list(fields)), max_size=2)):
        fields.pop(key, None)
    pairs = list(fields.items()) + draw(st.lists(st.tuples(st.text(max_size=10), anything), max_size=2))
    return Obj(pairs)


def test_plausible_labels_never_break_the_contract():
    h = Harness()
    # Predictions for some of the pool's ids, so labels join as well as wait.
    seed = [{"model": m, "id": i, "prediction": 1.0 if m == "price" else CLASSES[m][0]} for m in MODELS for i in "ab"]
    assert h.send("POST", "/api/v1/predictions", encode({"predictions": seed[:5]})).status_code == 202

    @given(
        body=batch_body("labels", valid_label(), plausible_label()),
        all_valid=st.lists(valid_label(), min_size=1, max_size=MAX_BATCH),
        key=idempotency_keys,
    )
    @settings(max_examples=350, **FUZZ)
    def run(body, all_valid, key):
        value, n = body
        h.send("POST", "/api/v1/labels", encode(value), headers_of(key, None), n)
        r = h.send("POST", "/api/v1/labels", encode({"labels": all_valid}), {}, len(all_valid))
        assert r.status_code == 202, (all_valid, r.get_json())

    run()
    assert h.statuses[400] > 100, h.statuses


# -- 4. resources ------------------------------------------------------------------------------------------

SERVERS = ["web-1", "web-2:4242", "é", "a" * 128, "a" * 129, "", "tab\t", "nul\x00", '"q"', "\\", "\u202eevil"]


valid_reports = st.fixed_dictionaries(
    {
        "server": st.sampled_from(SERVERS[:4]),
        "models": st.lists(st.sampled_from(MODELS), min_size=1, max_size=5),
        "cpu_seconds_total": st.floats(0, 1e17) | st.integers(0, 10**17),
        "resident_memory_bytes": st.floats(0, 1e17),
    }
).map(lambda d: Obj(d.items()))


@st.composite
def resource_reports(draw):
    fields = {
        "server": draw(st.sampled_from(SERVERS) | st.text(max_size=130) | anything),
        "models": draw(
            st.lists(st.sampled_from([*MODELS, "nope", ""]), max_size=5) | st.lists(anything, max_size=3) | anything
        ),
        "cpu_seconds_total": draw(finite | st.floats(0, 1e6) | st.sampled_from([1e18, 1e18 - 1e3, 0]) | any_number),
        "resident_memory_bytes": draw(st.floats(0, 1e12) | st.integers(0, 10**18) | any_number),
    }
    for key in draw(st.lists(st.sampled_from(list(fields)), max_size=2)):
        fields.pop(key, None)
    return Obj(list(fields.items()) + draw(st.lists(st.tuples(st.text(max_size=8), anything), max_size=1)))


def test_resource_reports_never_break_the_contract():
    h = Harness()

    @given(report=valid_reports | resource_reports(), ascii_only=st.booleans())
    @settings(max_examples=400, **FUZZ)
    def run(report, ascii_only):
        r = h.send("POST", "/api/v1/resources", encode(report, ascii_only), {"Content-Type": "application/json"})
        if r.status_code == 202:
            fields = dict(report)
            for model in set(fields["models"]):
                got = Metrics(h.metrics.text).get(
                    "mlmon_model_server_cpu_seconds_total", model=model, server=fields["server"]
                )
                assert got == float(fields["cpu_seconds_total"]), (report, got)

    run()
    assert h.statuses[202] > 10 and h.statuses[400] > 100, h.statuses


# -- 5. reference uploads ----------------------------------------------------------------------------------

CSV_CELLS = ["", "1", "-2.5", "1e308", "1e309", "nan", "inf", "x", "stay", "churn", "pro", '"q,uoted"', '"a""b"', "é"]


@st.composite
def csv_texts(draw) -> str:
    columns = draw(
        st.lists(st.sampled_from(["tenure", "plan", "prediction", "label", "id", "timestamp", "age", "", "tenure"]))
    )
    rows = draw(st.integers(0, 45))
    cell = st.sampled_from(CSV_CELLS) | st.floats(-100, 100).map(str) | st.text(max_size=4)
    terminator = draw(st.sampled_from(["\n", "\r\n", "\n\n"]))
    width = len(columns) + draw(st.sampled_from([0, 0, 0, 1, -1]))
    lines = [",".join(columns)] + [",".join(draw(cell) for _ in range(max(width, 0))) for _ in range(rows)]
    return terminator.join(lines)


@st.composite
def profiles(draw):
    """A profile as `mlmon reference build` writes it, with odd values put in."""
    edges = sorted(draw(st.lists(finite, min_size=2, max_size=6)))
    numeric = {"type": "numeric", "edges": edges, "counts": [1] * (len(edges) + 1), "mean": 0.0, "std": 1.0}
    numeric["missing"] = 0
    categorical = {"type": "categorical", "categories": ["a"], "counts": [20, 0], "known": ["a"], "missing": 0}
    features = {"tenure": numeric, "plan": categorical}
    profile = {"format": "mlmon-reference/1", "model": "churn", "rows": 20, "features": features}
    odd = st.one_of(any_number, st.lists(any_number, max_size=4), st.text(max_size=5), st.sampled_from(["nan", "-1"]))
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["top", "tenure", "plan"]))
        target = profile if where == "top" else features[where]
        target[draw(st.sampled_from([*target, "prediction", "label"]))] = draw(odd | anything)
    return profile


def test_reference_uploads_never_break_the_contract():
    h = Harness()

    @given(
        upload=st.one_of(
            csv_texts().map(lambda t: ("text/csv", t.encode("utf-8", "surrogatepass"))),
            profiles().map(lambda p: ("application/json", encode(p))),
            st.tuples(content_types, json_values.flatmap(bodies)),
        ),
        name=st.sampled_from(["churn", "churn", "price", "nope"]),
    )
    @settings(max_examples=400, **FUZZ)
    def run(upload, name):
        ctype, body = upload
        r = h.send("PUT", f"/api/v1/models/{name}/reference", body, headers_of(None, ctype))
        if r.status_code == 200:
            assert set(r.get_json()) == {"model", "rows", "features", "calibration"}

    run()
    assert h.statuses[200] > 5 and h.statuses[400] > 100, h.statuses


# -- 6. odd paths, methods and headers ---------------------------------------------------------------------

PATHS = ["/api/v1/predictions", "/api/v1/labels", "/api/v1/resources", "/api/v1/models", "/api/v1/openapi.json"]
PATHS += ["/healthz", "/readyz", "/", "/api/v1/models/churn", "/api/v1/models/churn/reference", "/api/v1/nope"]


def test_model_names_paths_and_methods():
    h = Harness()
    names = st.one_of(st.sampled_from([*MODELS, "CHURN", "churn ", "..", ".", "churn/reference", "%00"]), st.text())

    @given(
        name=names,
        method=st.sampled_from(["GET", "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
        path=st.none() | st.sampled_from(PATHS),
        key=idempotency_keys,
    )
    @settings(max_examples=400, **FUZZ)
    def run(name, method, path, key):
        generated = path is None
        if generated:
            path = "/api/v1/models/" + quote(name.encode("utf-8", "surrogatepass"), safe="")
        r = h.send(method, path, None, headers_of(key, None))
        if method == "GET" and generated and r.status_code == 200:
            assert r.get_json()["name"] == name

    run()
    assert h.statuses[404] > 50 and h.statuses[405] > 20, h.statuses


def test_idempotency_keys_are_answered_as_documented():
    """Reused keys: the same body is a replay, another body a 422; bad keys a 400; nothing is applied twice."""
    h = Harness()
    bodies_seen: dict[str, bytes] = {}

    @given(
        item=valid_prediction(),
        key=idempotency_keys,
        again=st.booleans(),
    )
    @settings(max_examples=300, **FUZZ)
    def run(item, key, again):
        body = encode(item)
        r = h.send("POST", "/api/v1/predictions", body, headers_of(key, None), 1)
        if key is None:
            return
        if len(body) > MAX_BODY:  # the body's size is checked first, whatever the key
            assert r.status_code == 413
            return
        clean = key.strip().strip('"')
        if not re.fullmatch(r"[!-~]{1,255}", clean):
            assert r.status_code == 400
            return
        first = bodies_seen.setdefault(clean, body)
        if first != body:
            assert r.status_code == 422
        elif r.status_code == 202 and again:
            replay = h.send("POST", "/api/v1/predictions", body, headers_of(key, None), 1)
            assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true"
            assert replay.get_json() == r.get_json()

    run()
    assert h.statuses[422] > 5 and h.statuses[400] > 5, h.statuses


# -- 7. limits: batch and body sizes at and over the bounds ------------------------------------------------


@pytest.mark.parametrize("path, item", [("/api/v1/predictions", "prediction"), ("/api/v1/labels", "label")])
def test_batch_and_body_limits(path, item):
    h = Harness()
    key = "predictions" if item == "prediction" else "labels"
    one = {"model": "price", "id": "q", "prediction": 1.5} if item == "prediction" else {"model": "price", "id": "q"}
    if item == "label":
        one["label"] = 1.5
    at_limit = encode({key: [dict(one, id=f"q{i}") for i in range(MAX_BATCH)]})
    assert h.send("POST", path, at_limit, {}, MAX_BATCH).status_code == 202
    over = encode({key: [dict(one, id=f"r{i}") for i in range(MAX_BATCH + 1)]})
    r = h.send("POST", path, over, {}, MAX_BATCH + 1)
    assert r.status_code == 413 and r.get_json()["error"]["details"][0]["reason"] == "batch_too_large"
    body = encode(dict(one, id="pad"))
    exact = body + b" " * (MAX_BODY - len(body))
    assert len(exact) == MAX_BODY and h.send("POST", path, exact, {}, 1).status_code == 202
    body = encode(dict(one, id="pad2"))
    r = h.send("POST", path, body + b" " * (MAX_BODY + 1 - len(body)), {}, 1)
    assert r.status_code == 413 and r.get_json()["error"]["details"][0]["reason"] == "body_too_large"


# -- 7b. columnar batches: columnar JSON and Arrow streams ---------------------------------------------------

COLUMNS = "application/vnd.mlmon.columns+json"
ARROW = "application/vnd.apache.arrow.stream"
# The Arrow tests' exporter: room for a stream's schema and metadata (a few KiB even for a handful of rows).
ARROW_CONFIG = FUZZ_CONFIG.replace("max_body_bytes: 4096", "max_body_bytes: 262144")


def column_values(model: str) -> dict:
    """Each plain column and what its values may be (right or wrong)."""
    return {
        "ids": any_id,
        "timestamps": any_timestamp,
        "predictions": any_outcome(model),
        "labels": any_outcome(model),
        "score": any_number | probabilities,
        "latency_seconds": any_number | st.floats(0, 10),
    }


@st.composite
def columnar_body(draw) -> tuple[Obj, int]:
    """(columnar body, its rows): each column right or wrong in its values, ragged now and then, not a list now
    and then; object fields of columns (features, scores) likewise; batch-wide fields right or wrong."""
    model = draw(st.sampled_from(MODELS))
    n = draw(st.integers(1, MAX_BATCH + 1))

    def column(values):
        shape = draw(st.integers(0, 14))
        if shape == 0:  # no list (a list drawn by chance has the batch's length: a valid body then has n rows)
            return draw(anything.filter(lambda v: not isinstance(v, list) or len(v) == n))
        length = draw(st.integers(0, n + 2)) if shape == 1 else n  # ragged
        return [draw(values) for _ in range(length)]

    pairs: list = []
    if draw(st.integers(0, 9)):
        pairs.append(("model", draw(st.one_of(st.just(model), st.just(model), st.just(model), anything))))
    if draw(st.booleans()):
        pairs.append(("version", draw(any_version)))
    if draw(st.integers(0, 5)) == 0:
        pairs.append(("registry", draw(anything)))
    for name, values in column_values(model).items():
        if (name == "predictions" and draw(st.integers(0, 9))) or draw(st.integers(0, 2)) == 0:
            pairs.append((name, column(values)))
    if draw(st.booleans()):
        names = st.sampled_from([*FEATURES[model], "age", "", "x" * 101])
        numeric = bounded | st.integers(-(2**63), 2**63 - 1) | st.none()
        values = numeric | st.text(max_size=10) | st.booleans() | anything
        features = draw(st.lists(names, max_size=4, unique=True))
        pairs.append(("features", {f: column(values) for f in features} if draw(st.integers(0, 9)) else draw(anything)))
    if model != "price" and draw(st.booleans()):
        classes = draw(st.lists(st.sampled_from([*CLASSES[model], "other"]), max_size=4, unique=True))
        pairs.append(("scores", {c: column(probabilities | any_number) for c in classes}))
    if draw(st.integers(0, 9)) == 0:
        pairs.append((draw(st.text(max_size=10) | st.sampled_from(["prediction", "id", "attributes"])), draw(anything)))
    return Obj(pairs), n


def test_columnar_json_batches_never_break_the_contract():
    h = Harness()

    @given(body=columnar_body(), key=idempotency_keys, ascii_only=st.booleans())
    @settings(max_examples=500, **FUZZ)
    def run(body, key, ascii_only):
        value, n = body
        h.send("POST", "/api/v1/predictions", encode(value, ascii_only), headers_of(key, COLUMNS), n)

    run()
    # (valid batches: test_valid_columnar_batches_are_accepted_and_counted)
    assert h.statuses[400] > 200 and h.statuses[413] > 20 and h.statuses[404] > 10, h.statuses


def test_valid_columnar_batches_are_accepted_and_counted():
    """Valid rows of one model and version, sent as columns, are accepted (202) and counted."""
    h = Harness(ARROW_CONFIG)

    has_arrow = importlib.util.find_spec("pyarrow") is not None  # without it, columnar JSON only

    @given(model=st.sampled_from(MODELS), data=st.data(), arrow=st.booleans() if has_arrow else st.just(False))
    @settings(max_examples=150, **FUZZ)
    def run(model, data, arrow):
        items = data.draw(st.lists(valid_prediction(model), min_size=1, max_size=MAX_BATCH))
        for item in items:
            item.pop("version", None)
        body = transpose(items, model)
        if arrow:
            stream = arrow_stream(body)
            if stream is None:  # numbers and text in one column: Arrow types a column alike
                return
            r = h.send("POST", "/api/v1/predictions", stream, {"Content-Type": ARROW}, len(items))
        else:
            r = h.send("POST", "/api/v1/predictions", encode(body), {"Content-Type": COLUMNS}, len(items))
        assert r.status_code == 202, (body, r.get_json())

    run()
    assert h.statuses[202] > 100, h.statuses


def arrow_text(size: int):
    """Text Arrow can hold: UTF-8, so no lone surrogates (JSON can carry those; they are malformed_json)."""
    return st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=size)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@st.composite
def arrow_bodies(draw) -> tuple[bytes, int]:
    """(Arrow stream, rows): typed columns of right and wrong types (floats with NaN and infinities, huge
    integers, long text, dictionaries, timestamps, decimals, lists, structs, bytes, nulls), metadata right or
    wrong; then now and then compressed, cut short, a byte flipped, or junk appended."""
    pa = pytest.importorskip("pyarrow")
    model = draw(st.sampled_from(MODELS))
    n = draw(st.integers(1, MAX_BATCH + 1))
    floats = st.floats() | st.sampled_from([math.nan, math.inf, 1e101, -0.0])

    decimals = st.decimals(-(10**30), 10**30, allow_nan=False, allow_infinity=False, places=2)

    def typed_column():
        kind = draw(st.integers(0, 11))
        values = {
            0: (floats | st.none(), pa.float64()),
            1: (st.floats(width=32) | st.none(), pa.float32()),
            2: (st.integers(-(2**63), 2**63 - 1) | st.none(), pa.int64()),
            3: (arrow_text(5) | st.sampled_from(["y" * 1025, "", "é"]) | st.none(), pa.string()),
            4: (st.booleans() | st.none(), pa.bool_()),
            5: (st.none(), pa.null()),
            6: (st.sampled_from(list(CLASSES.get(model, ["a"])) + ["x" * 300, ""]) | st.none(), None),
            7: (st.integers(0, 2**62) | st.none(), pa.timestamp("ms")),
            8: (st.lists(st.integers(0, 5), max_size=3) | st.none(), pa.list_(pa.int64())),
            9: (st.binary(max_size=4) | st.none(), pa.binary()),
            10: (st.integers(0, 2**64 - 1) | st.none(), pa.uint64()),
            11: (decimals | st.none(), pa.decimal128(38, 2)),
        }[kind]
        data = [draw(values[0]) for _ in range(n)]
        if kind == 6:
            return pa.array(data, pa.string()).dictionary_encode()
        return pa.array(data, values[1])

    names = ["ids", "timestamps", "predictions", "labels", "score", "latency_seconds"]
    names += [f"features.{f}" for f in FEATURES[model]] + [f"scores.{c}" for c in CLASSES.get(model, ())]
    names += ["features.age", "extra", "model"]
    chosen = draw(st.lists(st.sampled_from(names), max_size=6, unique=True))
    if draw(st.integers(0, 4)) and "predictions" not in chosen:
        chosen.append("predictions")
    arrays = {name: typed_column() for name in chosen}
    if "predictions" in arrays and draw(st.booleans()):  # mostly right predictions, for the fast path's sake
        good = [draw(valid_outcome(model)) for _ in range(n)]
        arrays["predictions"] = pa.array([str(v) if model != "price" else float(v) for v in good])
    meta = {}
    if draw(st.integers(0, 9)):
        meta["model"] = draw(st.one_of(st.just(model), st.just(model), arrow_text(6)))
    if draw(st.integers(0, 4)) == 0:
        meta["version"] = draw(any_version.filter(lambda v: isinstance(v, str) and _utf8(v)))
    if draw(st.integers(0, 5)) == 0:
        meta["registry"] = draw(st.sampled_from(['{"version": 3}', "{", "[]", '{"x": 1}', '{"version": "01"}']))
    table = pa.table(arrays or {"predictions": pa.array(["stay"] * n)}).replace_schema_metadata(meta)
    compression = draw(st.sampled_from([None] * 8 + ["zstd", "lz4"]))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as writer:
        for batch in table.to_batches(max_chunksize=draw(st.integers(1, n))):
            writer.write_batch(batch)
    raw = sink.getvalue().to_pybytes()
    damage = draw(st.integers(0, 9))
    if damage == 0:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif damage == 1:
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1 :]
    elif damage == 2:
        raw += draw(st.binary(min_size=1, max_size=16))
    return raw, n


def test_arrow_streams_never_break_the_contract():
    pytest.importorskip("pyarrow")
    h = Harness(ARROW_CONFIG)

    @given(body=arrow_bodies(), key=idempotency_keys)
    @settings(max_examples=700, **FUZZ)
    def run(body, key):
        raw, n = body
        h.send("POST", "/api/v1/predictions", raw, headers_of(key, ARROW), n)

    run()
    # (valid streams: test_valid_columnar_batches_are_accepted_and_counted)
    assert h.statuses[400] > 200 and h.statuses[404] > 10 and h.statuses[413] > 10, h.statuses


def test_arrow_dictionaries_and_compression_cost_what_the_body_holds():
    """A dictionary far larger than the rows, an entry far longer than any value, a compressed stream: refused
    or read without costing more than the body holds, nothing kept from a refused one."""
    pa = pytest.importorskip("pyarrow")
    h = Harness(ARROW_CONFIG.replace("max_body_bytes: 262144", "max_body_bytes: 33554432"))

    def stream(table, **options) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(**options)) as writer:
            writer.write_table(table)
        return sink.getvalue().to_pybytes()

    meta = {"model": "churn"}
    # 1.5 million dictionary entries for 3 rows: over the guard's limit on entries, refused before reading.
    huge = pa.DictionaryArray.from_arrays(
        pa.array([0, 1, 2], pa.int32()), pa.array([f"v{i}" for i in range(1_500_000)])
    )
    table = pa.table({"predictions": pa.array(["stay"] * 3), "features.plan": huge}).replace_schema_metadata(meta)
    r = h.send("POST", "/api/v1/predictions", stream(table), {"Content-Type": ARROW}, 3)
    assert r.status_code == 400 and r.get_json()["error"]["details"][0]["reason"] == "malformed_arrow", r.get_json()
    # One entry of 4 MiB taken by every row: decoding would copy it per row; refused, naming the column.
    long = pa.DictionaryArray.from_arrays(pa.array([0] * 5, pa.int32()), pa.array(["x" * (4 << 20)]))
    table = pa.table({"predictions": pa.array(["stay"] * 5), "features.plan": long}).replace_schema_metadata(meta)
    r = h.send("POST", "/api/v1/predictions", stream(table), {"Content-Type": ARROW}, 5)
    assert r.status_code == 400 and r.get_json()["error"]["details"][0]["field"] == "features.plan", r.get_json()
    # 200,000 entries for 5 rows (a category column with every value of a large vocabulary): read, accepted.
    wide = pa.DictionaryArray.from_arrays(
        pa.array([0, 7, 9, 7, 199_999], pa.int32()), pa.array([f"v{i}" for i in range(200_000)])
    )
    table = pa.table({"predictions": pa.array(["stay"] * 5), "features.plan": wide}).replace_schema_metadata(meta)
    assert h.send("POST", "/api/v1/predictions", stream(table), {"Content-Type": ARROW}, 5).status_code == 202
    # Compressed: refused whatever it holds (a small body could unpack to gigabytes).
    table = pa.table({"predictions": pa.array(["stay"] * 5)}).replace_schema_metadata(meta)
    for codec in ("zstd", "lz4"):
        r = h.send("POST", "/api/v1/predictions", stream(table, compression=codec), {"Content-Type": ARROW}, 5)
        assert r.status_code == 400 and "compressed" in r.get_json()["error"]["message"], r.get_json()


# -- 8. the validator's pieces against independent oracles ------------------------------------------------

DIGITS = st.sampled_from(list(string.digits) * 4 + ["٢", "０", "߁"])


def _num(draw, width: int) -> str:
    return "".join(draw(DIGITS) for _ in range(width))


@st.composite
def timestamp_texts(draw) -> str:
    zone = draw(st.sampled_from(["Z", "z", "+", "-", "", "+hhmm"]))
    frac = draw(st.integers(0, 10))
    text = f"{_num(draw, 4)}-{_num(draw, 2)}-{_num(draw, 2)}{draw(st.sampled_from('Tt _'))}"
    text += f"{_num(draw, 2)}:{_num(draw, 2)}:{_num(draw, 2)}"
    text += ("." + _num(draw, frac)) if frac else ""
    if zone in "+-" and zone:
        text += f"{zone}{_num(draw, 2)}:{_num(draw, 2)}"
    elif zone == "+hhmm":
        text += f"+{_num(draw, 4)}"
    else:
        text += zone
    return text + draw(st.sampled_from(["", "", "", "\n", " "]))


def rfc3339_oracle(text: str) -> float | None:
    """RFC 3339 section 5.6, written out field by field (no leap seconds, as documented)."""
    m = re.fullmatch(
        r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,9})?"
        r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))",
        text,
    )
    if not m:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac, sign, tzh, tzm = m.group(7), m.group(8), m.group(9), m.group(10)
    if sign and not (int(tzh) <= 23 and int(tzm) <= 59):
        return None
    if not (year >= 1 and 1 <= month <= 12 and hour <= 23 and minute <= 59 and second <= 59):
        return None
    days = [31, 29 if year % 4 == 0 and (year % 100 or year % 400 == 0) else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30]
    if not 1 <= day <= (days + [31])[month - 1]:
        return None
    offset = 0 if not sign else (1 if sign == "+" else -1) * (int(tzh) * 3600 + int(tzm) * 60)
    base = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc).timestamp() - offset
    return base + (float("0" + frac) if frac else 0.0)


@given(text=timestamp_texts() | st.sampled_from(ODD_TIMESTAMPS) | st.text(max_size=40))
@settings(max_examples=1500, **FUZZ)
def test_rfc3339_parser_matches_an_independent_oracle(text):
    got, want = parse_rfc3339(text), rfc3339_oracle(text)
    if want is None:
        assert got is None, (text, got)
    else:
        assert got == pytest.approx(want, abs=1e-6), text


# -- 9. Schemathesis against the served OpenAPI document ----------------------------------------------------


def _schemathesis_operations():
    import schemathesis

    h = Harness()
    # A schema-violating request may also be too large for the small limits here (413): a rejection too.
    config = schemathesis.Config.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": [400, 404, 413, 422]}}}
    )
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", h.app, config=config)
    return h, {op.label: op for op in (result.ok() for result in schema.get_all_operations())}


OPERATIONS = [
    "POST /api/v1/predictions",
    "POST /api/v1/labels",
    "POST /api/v1/resources",
    "GET /api/v1/models",
    "GET /api/v1/models/{name}",
    "PUT /api/v1/models/{name}/reference",
    "POST /api/v1/models/{name}/reset",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
]


def test_openapi_document_lists_the_operations():
    _, operations = _schemathesis_operations()
    assert set(OPERATIONS) <= set(operations)


@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize("label", OPERATIONS)
def test_schemathesis(label, mode):
    """Generated from the document: no 5xx, and every answer conforms to it (status, content type, headers,
    body schema); schema-invalid requests are rejected. (Schema-valid requests are not all accepted: the
    document cannot know the configured models and classes, so positive_data_acceptance does not apply.)"""
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        negative_data_rejection,
    ]
    h, operations = _schemathesis_operations()
    operation = operations[label]
    if mode == "negative" and not operation.body:
        pytest.skip("nothing to make invalid (a path parameter of type string takes any string)")

    @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
    @settings(max_examples=60, **FUZZ)
    def run(case):
        before = h.metrics
        response = case.call_and_validate(checks=checks)
        if label != "GET /metrics":
            h.metrics = after = take_scrape(h.client)
            if response.status_code >= 400:
                assert_same_state(before, after, f"{label} {case.body!r}")

    run()


# -- found by the fuzzing, fixed: plain regression tests -------------------------------------------------------


def test_resources_body_that_is_not_an_object_is_counted():
    h = Harness()
    before = h.metrics.error_counts()
    r = h.client.post("/api/v1/resources", data=b"[]", content_type="application/json")
    assert r.status_code == 400
    assert take_scrape(h.client).error_counts() - before == Counter({"invalid_body": 1})


def test_reference_csv_with_a_carriage_return_is_a_400():
    h = Harness()
    r = h.client.put("/api/v1/models/churn/reference", data=b"tenure,plan\r1\rx,y\n", content_type="text/csv")
    assert r.status_code == 400


@pytest.mark.parametrize("field, value", [("rows", "many"), ("rows", [1]), ("counts", [2**63, 1, 1])])
def test_reference_profile_with_odd_numbers_is_a_400(field, value):
    h = Harness()
    numeric = {"type": "numeric", "edges": [0.0, 1.0], "counts": [1, 1, 1], "mean": 0.5, "std": 0.1, "missing": 0}
    categorical = {"type": "categorical", "categories": ["a"], "counts": [20, 0], "known": ["a"], "missing": 0}
    profile = {"format": "mlmon-reference/1", "model": "churn", "rows": 20}
    profile["features"] = {"tenure": numeric, "plan": categorical}
    (profile if field == "rows" else numeric)[field] = value
    r = h.client.put("/api/v1/models/churn/reference", data=json.dumps(profile), content_type="application/json")
    assert r.status_code == 400


@pytest.mark.parametrize(
    "item, ok",
    [
        ({"model": "price", "prediction": 1e100}, True),
        ({"model": "price", "prediction": -1e101}, False),
        ({"model": "price", "prediction": 1.0, "label": 1e300}, False),
        ({"model": "price", "prediction": 1.0, "latency_seconds": 1e200}, False),
        ({"model": "churn", "prediction": "stay", "features": {"tenure": 1e101}}, False),
        ({"model": "churn", "prediction": "stay", "features": {"tenure": -1e100}}, True),
    ],
)
def test_numbers_that_are_summed_are_bounded(item, ok):
    """Squares of values within ±1e100 cannot overflow; beyond, the value is invalid, never an infinite sum."""
    h = Harness()
    r = h.client.post("/api/v1/predictions", json=item)
    assert r.status_code == (202 if ok else 400), r.get_json()
    if not ok:
        assert r.get_json()["error"]["details"][0]["reason"] in ("invalid_value", "type_error")


def test_arrow_values_that_point_outside_the_stream_are_refused():
    """String offsets past the column's data, and text that is not UTF-8, in a stream whose framing and buffer
    sizes are right: pyarrow's reader takes them, and walking the values would read out of bounds (a crash).
    Refused as malformed, nothing kept."""
    pa = pytest.importorskip("pyarrow")
    h = Harness(ARROW_CONFIG)
    table = pa.table(
        {"ids": pa.array(["a", "bb", "ccc"]), "predictions": pa.array(["stay"] * 3)}
    ).replace_schema_metadata({"model": "churn"})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    raw = sink.getvalue().to_pybytes()
    offsets = struct.pack("<4i", 0, 1, 3, 6)
    assert raw.count(offsets) == 1 and raw.count(b"abbccc") == 1
    for damaged in (
        raw.replace(offsets, struct.pack("<4i", 0, 1, 3, 1 << 30)),  # the last id ends 1 GiB further
        raw.replace(offsets, struct.pack("<4i", 0, 1, -8, 6)),  # an id of negative length
        raw.replace(b"abbccc", b"a\xff\xfeccc"),  # not UTF-8
    ):
        r = h.send("POST", "/api/v1/predictions", damaged, {"Content-Type": ARROW}, 3)
        assert r.status_code == 400, r.get_json()
        assert r.get_json()["error"]["details"][0]["reason"] == "malformed_arrow", r.get_json()
    assert h.send("POST", "/api/v1/predictions", raw, {"Content-Type": ARROW}, 3).status_code == 202
