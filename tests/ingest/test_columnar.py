"""Columnar batches (JSON and Arrow) give the answers and the state of the rows they stand for.

A columnar body is the transposition of a row batch (docs/api.md, "Columnar batches"). Its fast path decodes
whole columns and updates the windows column-wise (exporter/ingest/columnar.py, ``ModelState.add_columns``);
anything the fast path declines goes through the general validation as rows. So for every body here, four
exporters of one config get the same predictions: the columnar JSON body, the rows it stands for (written by
this test, not by the exporter's own transposition), the same columns as an Arrow stream, and the rows that
stream stands for (Arrow types its columns: a column of 1 and 2.5 holds 1.0 and 2.5). Answers must be equal
pairwise, errors included (the row named by its index), and so must every series afterwards.

Bodies come from the generators of test_differential.py (rows of one model, each field valid, absent, null, of
another type or out of range), transposed; half of the batches are wholly valid, so the fast path is taken
often (counted). A second test sends large numpy-made batches (30 features, ids, inline labels, repeated ids,
labels sent later in both forms) through rows, columns and Arrow, and compares the three states.
"""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.ingest import columnar, schema
from tests.conftest import BASIC_CONFIG, T0, Clock, make_app, scrape
from tests.ingest.columnar_forms import OBJECTS, PLAIN, arrow_table, stream_of, transpose
from tests.ingest.test_differential import (
    ABSENT,
    CONFIGS,
    MODELS,
    SETTINGS,
    VALID_REGISTRY,
    VERSION,
    encode,
    item,
    valid,
)

pa = pytest.importorskip("pyarrow")

COLUMNS = columnar.JSON_COLUMNS
ARROW = columnar.ARROW_STREAM
BATCHES = 600  # per config: 600 x 4 requests


def rows_of(body: dict, n: int) -> list[dict]:
    """The rows a columnar body stands for (docs/api.md): the batch-wide fields in each, the i-th value of
    every column, object fields without their nulls (and none when all are null)."""
    out = [{k: body[k] for k in ("model", "version", "registry") if k in body} for _ in range(n)]
    for field, column in PLAIN.items():
        for row, v in zip(out, body.get(column) or []):
            if v is not None:
                row[field] = v
    for field in OBJECTS:
        for name, column in (body.get(field) or {}).items():
            for row, v in zip(out, column):
                if v is not None:
                    row.setdefault(field, {})[name] = v
    return out


def rows_in(body: dict) -> int:
    """How many rows a (well-shaped) columnar body holds."""
    for name, value in body.items():
        if name in OBJECTS and value:
            return len(next(iter(value.values())))
        if name not in ("model", "version", "registry"):
            return len(value)
    return 0


def arrow_of(body: dict) -> tuple[bytes, dict] | None:
    """The body as an Arrow stream, and the columnar body Arrow's typing makes of it (to_pylist of each
    column); None when a column's values have no common Arrow type (numbers and text mixed, huge integers)."""
    if any(not isinstance(body.get(name, ""), str) for name in ("model", "version")):
        return None
    table = arrow_table(body)
    if table is None:
        return None
    typed: dict = {k: v for k, v in body.items() if k in ("model", "version", "registry")}
    for name in table.column_names:
        values = table.column(name).to_pylist()
        if any(isinstance(v, float) and math.isnan(v) for v in values):
            return None  # NaN has no JSON row to stand for
        head, _, key = name.partition(".")
        if head in OBJECTS:
            typed.setdefault(head, {})[key] = values
        else:
            typed[name] = values
    return stream_of(table), typed


@st.composite
def batch(draw, models: tuple[str, ...]):
    """A columnar batch of one model: rows from test_differential's generators (all valid, or mutated), the
    batch-wide version and registry, transposed."""
    model = draw(st.sampled_from(models))
    if draw(st.booleans()):
        rows = draw(st.lists(valid_row(model), min_size=1, max_size=8))
    else:
        rows = draw(st.lists(item(schema.PREDICTION, (model,)), min_size=1, max_size=6))
    fields: dict = {}
    if draw(st.booleans()):
        fields["version"] = draw(st.one_of(st.sampled_from(["v1", "v2"]), VERSION))
    if draw(st.integers(0, 4)) == 0:
        fields["registry"] = draw(VALID_REGISTRY)
    for r in rows:  # a batch-wide field is not a row's
        for key in ("model", "version", "registry"):
            r.pop(key, None)
    return transpose(rows, model, fields)


@st.composite
def valid_row(draw, model: str) -> dict:
    """A valid row of ``model`` without the batch-wide fields."""
    out = {}
    for field in schema.PREDICTION.fields:
        if field.kind in ("model", "version", "registry") or not (field.required or draw(st.booleans())):
            continue
        v = draw(valid(field, model))
        if v is not ABSENT and not (field.name == "score" and "scores" in out):
            out[field.name] = v
    return out


def series(app) -> dict:
    skip = ("mlmon_http_", "mlmon_collect_duration", "process_", "python_")
    out = scrape(app.test_client()).series()
    return {k: v for k, v in out.items() if not k[0].startswith(skip) and not (isinstance(v, float) and math.isnan(v))}


def answer(r) -> tuple:
    return r.status_code, r.get_json()


class Four:
    """Four exporters of one config: columnar JSON, its rows, Arrow, its rows."""

    def __init__(self, config: str):
        self.clock = Clock(T0)
        self.apps = [make_app(config, self.clock)[0] for _ in range(4)]
        self.sent = self.accepted = self.fast = self.arrow_sent = self.arrow_fast = 0

    def post(self, i: int, path: str, raw: bytes, content_type: str):
        return self.apps[i].test_client().post(path, data=raw, content_type=content_type)

    def send(self, body: dict) -> None:
        n = rows_in(body)
        raw = encode(body)  # (json where orjson cannot: integers beyond 64 bits)
        m = self.apps[0].extensions["mlmon"]
        fast = _fast(m, "columns", raw, self.clock())
        a = self.post(0, "/api/v1/predictions", raw, COLUMNS)
        b = self.post(1, "/api/v1/predictions", encode({"predictions": rows_of(body, n)}), "application/json")
        assert answer(a) == answer(b), raw[:2000]
        self.sent += 1
        self.accepted += a.status_code == 202
        self.fast += fast
        if fast:
            assert a.status_code == 202, raw[:2000]
        made = arrow_of(body)
        if made is not None:
            stream, typed = made
            fast = _fast(self.apps[2].extensions["mlmon"], "arrow", stream, self.clock())
            c = self.post(2, "/api/v1/predictions", stream, ARROW)
            d_body = encode({"predictions": rows_of(typed, n)})
            d = self.post(3, "/api/v1/predictions", d_body, "application/json")
            assert answer(c) == answer(d), typed
            self.arrow_sent += 1
            self.arrow_fast += fast
            if fast:
                assert c.status_code == 202, typed
        if self.sent % 100 == 0:
            self.same_state()

    def same_state(self) -> None:
        a, b, c, d = (series(app) for app in self.apps)
        assert a == b
        assert c == d


def _fast(m, fmt: str, raw: bytes, now: float) -> bool:
    """Whether the fast path takes the body (decoded here, not applied)."""
    try:
        return isinstance(m.columnar.predictions(fmt, raw, now), columnar.Columns)
    except Exception:
        return False


def test_an_arrow_integer_column_with_nulls_past_2_to_the_53_is_answered_as_its_rows_are():
    """Found by the generator below: an int64 feature column with a null and a value past 2**53 made pyarrow's
    (safe) cast to float raise, a 500; it is read as the column without a null is (the nearest float), and
    answered as its rows are."""
    four = Four(CONFIGS["single"])
    four.send({"model": "churn", "predictions": ["churn", "stay"], "features": {"tenure": [None, -(2**63)]}})
    four.send({"model": "churn", "predictions": ["churn", "stay"], "features": {"tenure": [None, 2**53 + 1]}})
    assert four.arrow_sent == 2


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("tz", [None, "UTC"])
def test_arrow_timestamps_of_every_unit_are_read_as_the_seconds_they_stand_for(unit, tz):
    """A timestamp column in nanoseconds (pandas' datetime64[ns]) holds integers past 2**53 for any time of this
    century: pyarrow's safe cast to float refused them, a 500. Each unit is read as the unix seconds JSON sends
    (to the nearest float), and a time far past the allowed skew is refused (4xx) as its row is."""
    clock = Clock(T0)
    scale = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
    seconds = [T0 - 3600.25, T0 - 60.5, T0 - 1.0]
    ticks = [round(v * scale) if unit != "s" else int(v) for v in seconds]
    body = {"model": "churn", "predictions": ["churn", "stay", "churn"], "features": {"tenure": [1.0, 2.0, 3.0]}}
    sent = [float(t) / scale for t in ticks]
    json_app, arrow_app = make_app(CONFIGS["single"], clock)[0], make_app(CONFIGS["single"], clock)[0]
    table = pa.table(
        {
            "timestamps": pa.array(ticks, pa.timestamp(unit, tz=tz)),
            "predictions": body["predictions"],
            "features.tenure": body["features"]["tenure"],
        }
    ).replace_schema_metadata({"model": "churn"})
    a = json_app.test_client().post(
        "/api/v1/predictions", data=orjson.dumps({**body, "timestamps": sent}), content_type=COLUMNS
    )
    b = arrow_app.test_client().post("/api/v1/predictions", data=stream_of(table), content_type=ARROW)
    assert a.status_code == b.status_code == 202, (a.get_json(), b.get_json())
    assert series(json_app) == series(arrow_app)
    far = pa.table({"timestamps": pa.array([2**62], pa.timestamp(unit)), "predictions": ["churn"]})
    c = arrow_app.test_client().post(
        "/api/v1/predictions", data=stream_of(far.replace_schema_metadata({"model": "churn"})), content_type=ARROW
    )
    assert 400 <= c.status_code < 500, c.get_json()


@pytest.mark.parametrize("kind", ["date32", "date64", "time64"])
def test_arrow_dates_and_times_of_day_as_timestamps_are_refused_in_arrow_terms(kind):
    """A date (no time of day) or a time of day (no date) is no moment: the timestamps column refuses it with a
    message in Arrow's terms, not JSON's "unix seconds or an RFC 3339 string"; nothing is kept."""
    import datetime

    values = {
        "date32": pa.array([datetime.date(2027, 1, 15)] * 2, pa.date32()),
        "date64": pa.array([datetime.date(2027, 1, 15)] * 2, pa.date64()),
        "time64": pa.array([datetime.time(12, 30)] * 2, pa.time64("us")),
    }[kind]
    app = make_app(CONFIGS["single"], Clock(T0))[0]
    before = series(app)
    table = pa.table({"timestamps": values, "predictions": ["churn", "stay"]}).replace_schema_metadata(
        {"model": "churn"}
    )
    r = app.test_client().post("/api/v1/predictions", data=stream_of(table), content_type=ARROW)
    detail = r.get_json()["error"]["details"][0]
    assert r.status_code == 400 and detail["field"] == "timestamps", r.get_json()
    assert "not a moment" in detail["message"] and kind[:4] in detail["message"], detail
    after = series(app)
    assert {k: v for k, v in after.items() if "rejected" not in k[0] and "error" not in k[0]} == {
        k: v for k, v in before.items() if "rejected" not in k[0] and "error" not in k[0]
    }


@pytest.mark.parametrize("decimal_type", ["decimal128(20, 4)", "decimal256(40, 2)", "dictionary"])
def test_arrow_decimals_are_read_as_the_numbers_they_hold(decimal_type):
    """A database's NUMERIC or DECIMAL column comes to Arrow as decimals (DuckDB, ADBC drivers, pandas' Decimal
    objects): every numeric column, predictions and labels of a regression model too, is read as the floats
    JSON would send, to the same state; a decimal past the allowed range is refused (4xx) as its row is."""
    t = pa.decimal256(40, 2) if decimal_type.startswith("decimal256") else pa.decimal128(20, 4)

    def column(values):
        decimals = pa.array(values, pa.float64()).cast(t)  # (each value here is exact in both)
        return decimals.dictionary_encode() if decimal_type == "dictionary" else decimals

    clock = Clock(T0)
    json_app, arrow_app = make_app(CONFIGS["multi"], clock)[0], make_app(CONFIGS["multi"], clock)[0]
    tenure, score, latency = [1.25, None, 30.5], [0.75, 0.25, 0.5], [0.25, 0.5, None]
    bmi, price = [22.5, 31.25, None], [150.25, 99.5, 310.0]
    ids = [["c0", "c1", "c2"], ["p0", "p1", "p2"]]
    bodies = [
        {"model": "churn", "ids": ids[0], "predictions": ["churn", "stay", "churn"], "scores": {"churn": score},
         "features": {"tenure": tenure}, "latency_seconds": latency, "timestamps": [T0 - 30.5, T0 - 20.25, T0 - 1]},
        {"model": "price", "ids": ids[1], "predictions": price, "features": {"bmi": bmi}},
    ]  # fmt: skip
    tables = [
        pa.table(
            {"ids": ids[0], "predictions": bodies[0]["predictions"], "scores.churn": column(score),
             "features.tenure": column(tenure), "latency_seconds": column(latency),
             "timestamps": column(bodies[0]["timestamps"])}
        ).replace_schema_metadata({"model": "churn"}),
        pa.table({"ids": ids[1], "predictions": column(price), "features.bmi": column(bmi)})
        .replace_schema_metadata({"model": "price"}),
    ]  # fmt: skip
    labels = {"model": "price", "ids": ids[1], "labels": [151.5, 98.25, 300.0]}
    label_table = pa.table({"ids": ids[1], "labels": column(labels["labels"])}).replace_schema_metadata(
        {"model": "price"}
    )
    for body, table in zip(bodies, tables):
        a = json_app.test_client().post("/api/v1/predictions", data=orjson.dumps(body), content_type=COLUMNS)
        b = arrow_app.test_client().post("/api/v1/predictions", data=stream_of(table), content_type=ARROW)
        assert a.status_code == b.status_code == 202, (a.get_json(), b.get_json())
    a = json_app.test_client().post("/api/v1/labels", data=orjson.dumps(labels), content_type=COLUMNS)
    b = arrow_app.test_client().post("/api/v1/labels", data=stream_of(label_table), content_type=ARROW)
    assert a.status_code == b.status_code == 202, (a.get_json(), b.get_json())
    assert series(json_app) == series(arrow_app)
    huge = pa.array([1e101]).cast(pa.decimal256(76, -30))  # past +-1e100
    far = pa.table({"predictions": ["churn"], "features.tenure": huge}).replace_schema_metadata({"model": "churn"})
    c = arrow_app.test_client().post("/api/v1/predictions", data=stream_of(far), content_type=ARROW)
    assert 400 <= c.status_code < 500 and c.get_json()["error"]["details"][0]["field"] == "features.tenure"


@pytest.mark.parametrize("text_type", ["large_string", "string_view"])
def test_arrow_text_of_every_string_type_is_read_as_strings(text_type):
    """Polars and DuckDB hand text over as ``string_view`` or ``large_string``: ids, classes, categories and
    attributes of those types give the state their ``string`` columns give."""
    t = getattr(pa, text_type)()
    clock = Clock(T0)
    plain, other = make_app(CONFIGS["single"], clock)[0], make_app(CONFIGS["single"], clock)[0]
    text = {
        "ids": ["a", "bb", "a somewhat longer id than twelve bytes"],
        "predictions": ["churn", "stay", "churn"],
        "features.plan": ["gold", None, "a plan named at some length"],
        "attributes.sex": ["f", "m", None],
    }
    for app, kind in ((plain, pa.string()), (other, t)):
        table = pa.table({**{k: pa.array(v, kind) for k, v in text.items()}, "features.tenure": [1.0, 2.0, 3.0]})
        r = app.test_client().post(
            "/api/v1/predictions", data=stream_of(table.replace_schema_metadata({"model": "churn"})), content_type=ARROW
        )
        assert r.status_code == 202, r.get_json()
    labels = pa.table({"ids": pa.array(text["ids"][:2], t), "labels": pa.array(["churn", "churn"], t)})
    r = other.test_client().post(
        "/api/v1/labels", data=stream_of(labels.replace_schema_metadata({"model": "churn"})), content_type=ARROW
    )
    assert r.status_code == 202 and r.get_json()["accepted"] == 2, r.get_json()
    plain.test_client().post(
        "/api/v1/labels",
        data=orjson.dumps({"model": "churn", "ids": text["ids"][:2], "labels": ["churn", "churn"]}),
        content_type=COLUMNS,
    )
    assert series(plain) == series(other)


FLOAT = st.one_of(
    st.none(),
    st.floats(-10, 10),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e100, -1e100, 1.0000001e100, -0.0, 5e-324]),
)


@settings(max_examples=400, **SETTINGS)
@given(
    columns=st.integers(1, 6).flatmap(
        lambda rows: st.lists(st.lists(FLOAT, min_size=rows, max_size=rows), min_size=1, max_size=5)
    ),
    chunked=st.booleans(),
    absent=st.integers(0, 4),
    nulls=st.booleans(),
)
def test_numeric_features_read_together_agree_with_the_column_by_column_reading(columns, chunked, absent, nulls):
    """An Arrow batch's float64 feature columns are read and checked together (``_float_block``, one tensor),
    the others column by column (``_arrow_values``, then the range of those without nulls at once): on
    generated columns (nulls, NaN, infinities, the magnitude limit's edges), both take or decline the same
    columns and give the same values, NaN where null. Columns of several chunks are read as one array first,
    as ``arrow_table`` does."""
    names = [f"features.f{j}" for j in range(len(columns))]
    arrays = {}
    for name, values in zip(names, columns):
        if not nulls:  # (the common batch, checked apart: no column has a null)
            values = [0.5 if v is None else v for v in values]
        array = pa.array(values, pa.float64())
        if chunked and len(values) > 1:  # (a column sent in two record batches, combined)
            array = pa.chunked_array([array[:1], array[1:]]).combine_chunks()
        arrays[name] = array
    features = [f"features.f{j}" for j in range(len(columns) + 1)]  # one more: a feature not sent
    if absent < len(names):
        del arrays[names[absent]]
    block = columnar._float_block(arrays, features)
    unchecked: list[str] = []
    single = {
        name: columnar._arrow_values(name, array, frozenset(features), unchecked) for name, array in arrays.items()
    }
    declined = any(v is None for v in single.values()) or any(
        not (np.abs(single[name]) <= schema.MAX_MAGNITUDE).all() for name in unchecked
    )
    if len(arrays) < 2:
        assert block is None
        return
    assert (block is False) == declined, (block, single)
    if block is not False:
        taken, matrix = block
        assert taken == [name for name in features if name in arrays]
        assert matrix.shape == (len(columns[0]), len(taken)) and matrix.flags.f_contiguous
        for j, name in enumerate(taken):
            np.testing.assert_array_equal(matrix[:, j], single[name])


@settings(max_examples=500, **SETTINGS)
@given(
    values=st.lists(
        st.none() | st.text(st.sampled_from("ab\u00e9\u4e2d\U0001f600"), max_size=6), min_size=1, max_size=12
    ),
    large=st.booleans(),
    cut=st.integers(0, 3),
    limit=st.integers(0, 8),
    nonempty=st.booleans(),
)
def test_the_length_check_of_arrow_text_by_offsets_agrees_with_pyarrows_count(values, large, cut, limit, nonempty):
    """An Arrow string column's lengths are checked from its offsets (bytes) when that settles it, else counted
    in characters by pyarrow: both give the answer of the plain rule, for sliced and large string arrays too."""
    import pyarrow.compute as pc

    array = pa.array(values, pa.large_string() if large else pa.string()).slice(min(cut, len(values) - 1))
    present = [v for v in array.to_pylist() if v is not None]
    if not present:
        return
    expected = max(map(len, present)) <= limit and not (nonempty and min(map(len, present)) < 1)
    assert columnar._text_within(pa, pc, array, limit, nonempty) == expected


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_columnar_batches_get_the_answers_and_state_of_their_rows(config):
    four = Four(CONFIGS[config])

    @settings(max_examples=BATCHES, **SETTINGS)
    @given(batch(MODELS[config]))
    def run(body):
        four.send(body)

    run()
    four.same_state()
    # Both outcomes and both paths, in both formats, often enough to mean something.
    assert four.accepted >= four.sent // 5, (four.accepted, four.sent)
    assert four.fast >= four.sent // 5, (four.fast, four.sent)
    assert four.arrow_sent >= four.sent // 4 and four.arrow_fast >= four.arrow_sent // 10, (
        four.arrow_sent,
        four.arrow_fast,
    )


# -- large batches: rows, columns and Arrow ----------------------------------------------------------------------

LARGE = """
windows: ["5m", "1h"]
storage: {backend: memory}
limits: {max_batch_size: 2000, max_pending_per_model: 2500}
models:
  - name: m
    task: binary
    classes: ["no", "yes"]
    positive_class: "yes"
    reference: REFERENCE
    attributions: true
    segments: {features: [f9]}
    features:
FEATURES
"""
NF = 30


def _large_config(tmp_path) -> str:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3000, NF))
    lines = [",".join(f"f{j}" for j in range(NF))]
    for row in x:
        lines.append(",".join(f"c{int(abs(v) * 3)}" if j % 10 == 9 else f"{v:.4f}" for j, v in enumerate(row)))
    path = tmp_path / "ref.csv"
    path.write_text("\n".join(lines) + "\n")
    features = "\n".join(
        f"      - {{name: f{j}, type: {'categorical' if j % 10 == 9 else 'numeric'}}}" for j in range(NF)
    )
    return LARGE.replace("REFERENCE", str(path)).replace("FEATURES", features)


def _large_batch(rng, n: int, start: int, clock_now: float, plain: bool = False) -> dict:
    """A columnar batch: ids (some repeated, from earlier batches too), some missing values, scores, inline
    labels for a tenth, latencies, attributions for some rows, timestamps over the last ten minutes.
    ``plain``: the common batch instead, new ids and no labels (which the join store keeps as a block)."""
    x = rng.normal(size=(n, NF)) * rng.choice([1.0, 1.5])
    features: dict = {}
    for j in range(NF):
        if j % 10 == 9:
            column = [f"c{int(abs(v) * 3)}" for v in x[:, j]]
        else:
            column = [round(float(v), 4) for v in x[:, j]]
        if j % 7 == 3 or j % 10 == 9:
            for i in rng.choice(n, size=n // 20, replace=False):
                column[i] = None
        if j % 10 == 9:  # (missing as in a CSV)
            for i in rng.choice(n, size=n // 50, replace=False):
                column[i] = ""
        features[f"f{j}"] = column
    ids = [f"p{start + i}" for i in range(n)]
    for i in rng.choice(n, size=0 if plain else n // 50, replace=False):
        ids[i] = f"p{max(start - 5 - i, 0)}"  # a repeat of an earlier prediction
    p = rng.uniform(size=n).round(4)
    labels = [
        ("yes" if rng.uniform() < p[i] else "no") if rng.uniform() < 0.1 and not plain else None for i in range(n)
    ]
    attributions = {f"f{j}": [float(v) if i % 3 else None for i, v in enumerate(rng.normal(size=n))] for j in range(5)}
    body = {
        "model": "m",
        "version": "v1",
        "ids": ids,
        "timestamps": [clock_now - float(s) for s in rng.uniform(0, 600, size=n)],
        "predictions": ["yes" if v >= 0.5 else "no" for v in p],
        "score": p.tolist(),
        "labels": labels,
        "latency_seconds": rng.uniform(0, 0.05, size=n).round(5).tolist(),
        "features": features,
        "attributions": attributions,
    }
    if plain:
        del body["labels"]
    return body


def test_large_batches_give_one_state_in_rows_columns_and_arrow(tmp_path):
    config = _large_config(tmp_path)
    clock = Clock(T0)
    rows_app, cols_app, arrow_app = (make_app(config, clock)[0] for _ in range(3))
    rng = np.random.default_rng(11)
    taken = 0
    for k in range(6):
        # (odd batches: the common batch, whose rows wait as a block; the cap evicts some of them)
        body = _large_batch(rng, 1500, 1000 * k if k % 2 == 0 else 100_000 + 1500 * k, clock(), plain=k % 2 == 1)
        n = len(body["predictions"])
        stream, typed = arrow_of(body)
        assert typed == body  # every column typed as sent: the three formats carry the same predictions
        m = cols_app.extensions["mlmon"]
        taken += _fast(m, "columns", orjson.dumps(body), clock()) and _fast(m, "arrow", stream, clock())
        a = rows_app.test_client().post("/api/v1/predictions", json={"predictions": rows_of(body, n)})
        b = cols_app.test_client().post("/api/v1/predictions", data=orjson.dumps(body), content_type=COLUMNS)
        c = arrow_app.test_client().post("/api/v1/predictions", data=stream, content_type=ARROW)
        assert answer(a) == answer(b) == answer(c)
        assert (a.get_json()["duplicates"] > 0) == (k % 2 == 0)
        # Labels of some earlier predictions (and of unknown ids: they wait), as rows, columns and Arrow.
        ids = [f"p{i}" for i in rng.choice(1000 * (k + 1) + 500, size=400, replace=False)]
        ids[::3] = [
            f"p{100_000 + 1500 * j + i}" for j, i in zip(rng.integers(0, k + 1, 134), rng.integers(0, 1500, 134))
        ]
        values = ["yes" if v else "no" for v in rng.uniform(size=400) < 0.5]
        label_table = pa.table({"ids": ids, "labels": values}).replace_schema_metadata({"model": "m"})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, label_table.schema) as writer:
            writer.write_table(label_table)
        rows = [{"model": "m", "id": i, "label": v} for i, v in zip(ids, values)]
        a = rows_app.test_client().post("/api/v1/labels", json={"labels": rows})
        b = cols_app.test_client().post(
            "/api/v1/labels", data=orjson.dumps({"model": "m", "ids": ids, "labels": values}), content_type=COLUMNS
        )
        c = arrow_app.test_client().post("/api/v1/labels", data=sink.getvalue().to_pybytes(), content_type=ARROW)
        assert answer(a) == answer(b) == answer(c)
        clock.advance(45)
    assert taken == 6  # the fast path took every batch, in both formats
    for app in (cols_app, arrow_app):  # the plain batches' rows wait as blocks, partly evicted and joined
        joins = app.extensions["mlmon"].models["m"].joins
        assert joins._blocks
    a, b, c = series(rows_app), series(cols_app), series(arrow_app)
    assert a == b == c
    joined = [v for (name, labels), v in a.items() if name == "mlmon_labels_total" and dict(labels)["model"] == "m"]
    assert joined and sum(joined) > 0


# -- the journal, Idempotency-Key and tokens: as for rows ---------------------------------------------------------

DURABLE = BASIC_CONFIG.replace(
    "models:\n",
    'storage: {path: "DATA", checkpoint_interval: 1h}\n'
    "auth: {tokens: [{name: writer, sha256: SHA, models: [churn], actions: [write, read]}]}\nmodels:\n",
    1,
)


def _columnar_traffic(rng, start: int) -> tuple[dict, bytes, dict]:
    n = 40
    cols = {
        "model": "churn",
        "version": "v1",
        "ids": [f"c{start + i}" for i in range(n)],
        "predictions": ["churn" if i % 3 else "stay" for i in range(n)],
        "score": rng.uniform(size=n).round(3).tolist(),
        "features": {"tenure": rng.normal(10, 3, size=n).round(2).tolist(), "plan": ["a", "b", None, "c"] * 10},
    }
    stream, _ = arrow_of({**cols, "ids": [f"a{start + i}" for i in range(n)]})
    labels = {"model": "churn", "ids": [f"c{start + i}" for i in range(0, n, 2)], "labels": ["churn"] * (n // 2)}
    return cols, stream, labels


def test_columnar_bodies_are_journalled_replayed_and_applied_once(tmp_path):
    import hashlib

    from exporter.config import parse_config
    from exporter.serve.app import create_app

    sha = hashlib.sha256(b"w-secret").hexdigest()
    text = DURABLE.replace("DATA", str(tmp_path / "data")).replace("SHA", sha)
    clock = Clock(T0)
    app = create_app(parse_config(text), clock=clock)
    client = app.test_client()
    auth = {"Authorization": "Bearer w-secret"}
    rng = np.random.default_rng(3)
    for k in range(3):
        cols, stream, labels = _columnar_traffic(rng, 100 * k)
        key = {"Idempotency-Key": f"k{k}"}
        r = client.post("/api/v1/predictions", data=orjson.dumps(cols), content_type=COLUMNS, headers=auth | key)
        assert r.status_code == 202 and "Idempotent-Replayed" not in r.headers
        again = client.post("/api/v1/predictions", data=orjson.dumps(cols), content_type=COLUMNS, headers=auth | key)
        assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
        assert again.get_json() == r.get_json()
        assert client.post("/api/v1/predictions", data=stream, content_type=ARROW, headers=auth).status_code == 202
        assert (
            client.post("/api/v1/labels", data=orjson.dumps(labels), content_type=COLUMNS, headers=auth).status_code
            == 202
        )
        clock.advance(30)
    # Another body under a used key is refused, and a model the token may not write is forbidden.
    cols, stream, _ = _columnar_traffic(rng, 900)
    r = client.post(
        "/api/v1/predictions", data=orjson.dumps(cols), content_type=COLUMNS, headers=auth | {"Idempotency-Key": "k0"}
    )
    assert r.status_code == 422
    other = orjson.dumps({"model": "price", "predictions": [1.5, 2.5]})
    assert client.post("/api/v1/predictions", data=other, content_type=COLUMNS, headers=auth).status_code == 403
    assert client.post("/api/v1/predictions", data=other, content_type=COLUMNS).status_code == 401
    before = state(app)
    assert before[("mlmon_predictions_total", (("model", "churn"), ("version", "v1")))] == 240
    # A restart (without a checkpoint: everything comes back from the journal, in order) sees the same.
    restarted = create_app(parse_config(text), clock=clock)
    assert (
        restarted.extensions["mlmon"].restored["replayed"] == 9
        and restarted.extensions["mlmon"].restored["skipped"] == 0
    )
    assert state(restarted) == before


def test_a_journal_of_arrow_batches_is_not_replayed_without_pyarrow(tmp_path, monkeypatch):
    """Arrow batches in the journal need pyarrow to replay: without it the exporter refuses to start (the data
    directory's error, naming the extra) instead of skipping acknowledged predictions; with it, they are back."""
    import hashlib
    import sys

    from exporter.config import parse_config
    from exporter.engine.storage import StorageError
    from exporter.serve.app import create_app

    text = DURABLE.replace("DATA", str(tmp_path / "data")).replace("SHA", hashlib.sha256(b"w-secret").hexdigest())
    clock = Clock(T0)
    app = create_app(parse_config(text), clock=clock)
    _, stream, _ = _columnar_traffic(np.random.default_rng(5), 0)
    auth = {"Authorization": "Bearer w-secret"}
    r = app.test_client().post("/api/v1/predictions", data=stream, content_type=ARROW, headers=auth)
    assert r.status_code == 202
    before = state(app)
    with monkeypatch.context() as hidden:
        hidden.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` fails, as where the extra is not installed
        with pytest.raises(StorageError, match=r"Arrow batches \(record 1 .*mlmon\[arrow\]"):
            create_app(parse_config(text), clock=clock)
    assert state(create_app(parse_config(text), clock=clock)) == before


def state(app) -> dict:
    """The windows and counters (what a restart restores), without the process's own request bookkeeping."""
    own = ("mlmon_storage_", "mlmon_idempotent", "mlmon_ingest_errors", "mlmon_auth_failures")
    return {k: v for k, v in series(app).items() if not k[0].startswith(own)}
