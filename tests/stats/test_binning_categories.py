"""A batch's categorical values binned against the reference (exporter/stats/binning.py ``Binner.bin``) as a plain
per-value rule says: a value's slot is its category's own among the reference's top categories, else the
"other" slot; it is *unseen* when the reference never had it; None and "" are missing; numbers and booleans
count as their text. Generated columns mix top, rare, unknown and missing values of every JSON type. The same
look-up gives multivariate drift its encoding: the errors must be those of ``Reconstruction.matrix``, which
encodes value by value (tests/stats/test_multivariate.py holds it to the plain rule)."""

from __future__ import annotations

import textwrap
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config import parse_config
from exporter.ingest.columnar import _arrow_values
from exporter.stats import reference
from exporter.stats.binning import CAT_SLOTS, Binner
from exporter.stats.coded import Coded
from exporter.stats.reference import category

CONFIG = """
storage: {backend: memory}
models:
  - name: m
    task: binary
    classes: ["no", "yes"]
    features:
      - {name: x, type: numeric}
      - {name: plan, type: categorical}
      - {name: city, type: categorical}
"""


def expected(binner: Binner, categorical: list[list]) -> tuple[Counter, Counter]:
    counts, unseen = Counter(), Counter()
    for j, (name, column) in enumerate(zip(binner.categorical, categorical)):
        ref = binner.refs[name]
        slots = {c: i for i, c in enumerate(ref.categories)}
        for event, value in enumerate(column):
            if value is None or value == "":
                continue
            key = category(value)
            counts[event, j * CAT_SLOTS + slots.get(key, len(ref.categories))] += 1
            if key not in ref.known:
                unseen[event, j] += 1
    return counts, unseen


def pairs(entry) -> Counter:
    if entry is None:
        return Counter()
    events, idx, _ = entry
    return Counter(zip(events.tolist(), idx.tolist()))


def missing(binner: Binner, categorical: list[list]) -> Counter:
    return Counter(
        (event, binner.names.index(name))
        for name, column in zip(binner.categorical, categorical)
        for event, value in enumerate(column)
        if value is None or value == ""
    )


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("multivariate", [True, False])
def test_categorical_values_get_the_slot_and_unseen_flag_of_the_plain_rule(seed, multivariate):
    rng = np.random.default_rng(seed)
    off = "task: binary\n    drift: {multivariate: false}"
    config = CONFIG if multivariate else CONFIG.replace("task: binary", off)
    model = parse_config(textwrap.dedent(config)).models[0]
    # plan: a few categories, numbers among them; city: more than the top ones tracked (rare ones share "other")
    plan = [str(v) for v in rng.choice(["basic", "pro", "1", "true", "2"], size=3000)]
    city = [f"c{int(v)}" for v in rng.zipf(1.3, size=3000) % 400]
    profile = reference.build_profile({"x": rng.normal(size=3000).tolist(), "plan": plan, "city": city}, model)
    binner = Binner(model, profile)
    pool = {
        "plan": ["basic", "pro", "1", 1, 1.0, True, "true", "2", 2.0, "enterprise", 7, False, None, ""],
        "city": [*sorted(set(city))[:60], "nowhere", "c999", None, "", 3, 3.5],
    }
    for _ in range(30):
        n = int(rng.integers(1, 300))
        all_strings = rng.uniform() < 0.5  # the common case: every value a string, none missing
        columns = []
        for name in binner.categorical:
            choices = [v for v in pool[name] if isinstance(v, str) and v] if all_strings else pool[name]
            columns.append([choices[i] for i in rng.integers(0, len(choices), size=n)])
        numeric = rng.normal(size=(n, 1))
        out = binner.bin(numeric, columns, rng.integers(0, 2, size=n))
        counts, unseen = expected(binner, columns)
        assert pairs(out.scatter.get("cat_counts")) == counts
        assert pairs(out.scatter.get("cat_unseen")) == unseen
        assert pairs(out.scatter.get("missing")) == missing(binner, columns)
        rec = profile.reconstruction
        assert (rec is not None) == multivariate and ("mv_sum" in out.scatter) == multivariate
        if multivariate:  # the same floats: the same shares, in the same columns
            assert np.array_equal(out.scatter["mv_sum"][2], rec.errors(rec.matrix(numeric, columns)))


def coded(column: list) -> Coded:
    """A text column as the Arrow decoder reads it (exporter/ingest/columnar.py ``_arrow_values``)."""
    import pyarrow as pa

    out = _arrow_values("features.c", pa.array(column, type=pa.string()), frozenset())
    assert type(out) is Coded
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("with_reference", [True, False])
def test_a_coded_column_is_binned_as_the_list_of_its_values(seed, with_reference):
    """The Arrow decoder's Coded text columns (each distinct value looked up once) against the same values as
    lists, bit for bit: slots, unseen flags, missing values, multivariate errors; without a reference, the
    missing values only; and the rows a segment takes (Batch.take)."""
    pytest.importorskip("pyarrow")
    from exporter.ingest.columns import Batch

    rng = np.random.default_rng(100 + seed)
    model = parse_config(textwrap.dedent(CONFIG)).models[0]
    plan = [str(v) for v in rng.choice(["basic", "pro", "1", "true"], size=2000)]
    city = [f"c{int(v)}" for v in rng.zipf(1.3, size=2000) % 300]
    profile = reference.build_profile({"x": rng.normal(size=2000).tolist(), "plan": plan, "city": city}, model)
    binner = Binner(model, profile if with_reference else None)
    pool = [*sorted(set(city))[:40], "basic", "pro", "1", "enterprise", "nowhere", None, ""]
    for _ in range(25):
        n = int(rng.integers(1, 400))
        width = int(rng.integers(1, len(pool) + 1))  # few or many distinct values
        rng.shuffle(pool)
        columns = [[pool[i] for i in rng.integers(0, width, size=n)] for _ in binner.categorical]
        forms = [coded(c) for c in columns]
        numeric = rng.normal(size=(n, 1))
        predictions = rng.integers(0, 2, size=n)
        a, b = binner.bin(numeric, columns, predictions), binner.bin(numeric, forms, predictions)
        assert a.scatter.keys() == b.scatter.keys()
        for key in a.scatter:
            for x, y in zip(a.scatter[key], b.scatter[key]):
                assert (x is None and y is None) or np.array_equal(x, y), key
        assert np.array_equal(a.missing, b.missing) if a.missing is not None else b.missing is None
        if with_reference:
            assert pairs(b.scatter.get("cat_counts")) == expected(binner, columns)[0]
        assert pairs(b.scatter.get("missing")) == missing(binner, columns)
        rows = np.flatnonzero(rng.uniform(size=n) < 0.3)
        one = Batch(n, np.zeros(n), predictions, rows[:0], np.empty((0, 0)), None, numeric, forms, None, None, None)
        sub = one.take(rows)
        assert [list(c) for c in sub.categorical] == [[c[i] for i in rows] for c in columns]
        for got, column in zip(sub.categorical, columns):
            kept = [column[i] for i in rows]
            for value in (None, "", "basic", "nowhere", "absent"):
                assert (value in got) == (value in kept), value


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", "", "é", "a b"]), st.text(max_size=4)), max_size=60))
def test_a_coded_column_reads_as_the_list_it_stands_for(values):
    pytest.importorskip("pyarrow")
    column = coded(values) if values else Coded([], np.empty(0, dtype=np.int32))
    assert len(column) == len(values) and list(column) == values and column == values
    assert len(set(column.words)) == len(column.words)  # each distinct value once
    for i in range(len(values)):
        assert column[i] == values[i]
    for value in {None, "", "a", "zz", *values[:5]}:
        assert (value in column) == (value in values)
    rows = np.arange(0, len(values), 3)
    assert list(column.take(rows)) == values[::3]
    for value in {None, "", "a", *values[:5]}:
        assert (value in column.take(rows)) == (value in values[::3])
