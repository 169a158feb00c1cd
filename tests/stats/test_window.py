"""The ring of time buckets: events enter the right bucket and leave as time passes; memory is fixed."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.stats.window import Ring

T = 1_800_000_000.0  # a multiple of 60, so bucket edges fall on whole minutes


def ring() -> Ring:
    return Ring(300, 5, {"n": ((), np.int64), "v": ((2,), np.float64)})  # 5m in 1m buckets


def add(r: Ring, times, now):
    slots = r.slots(np.asarray(times, dtype=float), now)
    ok = slots >= 0
    r.arrays["n"] += np.bincount(slots[ok], minlength=r.k)
    return slots


def test_events_leave_the_window_as_time_passes():
    r = ring()
    add(r, [T, T + 1, T + 61], now=T + 61)
    assert r.totals(T + 61)["n"] == 3
    assert r.totals(T + 299)["n"] == 3  # bucket [T, T+60) is the oldest of five at T+299
    assert r.totals(T + 300)["n"] == 1  # ... and gone once the sixth minute starts
    assert r.totals(T + 360)["n"] == 0


def test_events_older_than_the_window_are_not_counted():
    r = ring()
    slots = add(r, [T - 300, T - 240, T], now=T)
    assert list(slots[:1]) == [-1]
    assert r.totals(T)["n"] == 2


def test_a_reused_slot_starts_from_zero():
    r = ring()
    add(r, [T] * 10, now=T)
    add(r, [T + 300], now=T + 300)  # same slot, five buckets later
    assert r.totals(T + 300)["n"] == 1


def test_a_late_event_does_not_clobber_a_newer_bucket_in_its_slot():
    r = ring()
    add(r, [T + 300], now=T + 300)
    slots = add(r, [T], now=T + 300)  # out of the window and its slot holds a newer bucket
    assert slots[0] == -1
    assert r.totals(T + 300)["n"] == 1


def test_batches_spanning_buckets_are_split():
    r = ring()
    times = T + np.array([0, 10, 70, 130, 130, 250])
    add(r, times, now=T + 250)
    assert r.totals(T + 250)["n"] == 6
    assert r.totals(T + 300)["n"] == 4  # minute 0 (two events) has left
    assert r.totals(T + 420)["n"] == 1  # only the event at minute 4 is left


def test_memory_does_not_depend_on_traffic():
    r = ring()
    before = r.nbytes()
    for minute in range(100):
        add(r, T + minute * 60 + np.arange(1000) * 0.05, now=T + minute * 60 + 59)
    assert r.nbytes() == before
    assert r.totals(T + 99 * 60 + 59)["n"] == 5000


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.lists(st.tuples(st.floats(0, 900), st.floats(-5, 5)), max_size=60),
    st.floats(0, 1200),
    st.lists(st.integers(1, 5), min_size=1, max_size=6),
)
def test_recents_at_once_equal_recent_one_by_one(events, now_offset, ks):
    """The one-pass sums of the spans (used by every scrape) agree with the plain masked sum of each span."""
    r = ring()
    for offset, value in sorted(events):
        slots = r.slots(np.array([T + offset]), T + offset)
        if slots[0] >= 0:
            r.arrays["n"][slots[0]] += 1
            r.arrays["v"][slots[0]] += (value, value * value)
    now = T + now_offset
    for k, got in zip(ks, r.recents(now, ks, ["n", "v"])):
        want = r.recent(now, k, ["n", "v"])
        assert got["n"] == want["n"] and got["n"].dtype == want["n"].dtype
        np.testing.assert_allclose(got["v"], want["v"], rtol=1e-12, atol=1e-12)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    shape=st.sampled_from([(), (3,), (2, 4), (5, 3)]),
    dtype=st.sampled_from([np.int64, np.int32, np.float64]),
    events=st.integers(1, 40),
    share=st.integers(0, 3),
    weighted=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_scatter_into_one_slot_equals_the_general_path(shape, dtype, events, share, weighted, seed):
    """A batch whose events share one bucket takes a shorter way into the ring (its bincount added to the slot:
    ``add_to_slot``); it must add what the general way adds, for every array shape a ring holds (one number a
    slot included) and any subset of events, repeated flat indices and weights."""
    from exporter.stats.binning import add_to_slot, scatter

    rng = np.random.default_rng(seed)
    k, size = 6, int(np.prod(shape, dtype=np.int64))
    slot = int(rng.integers(0, k))
    slots = np.full(events, slot, dtype=np.int64)
    ev = np.sort(rng.choice(events, size=max(1, events - share), replace=False)) if share else np.arange(events)
    ev = np.repeat(ev, rng.integers(1, 3, ev.size))  # an event may add at several indices
    idx = rng.integers(0, size, ev.size)
    weights = (rng.random(ev.size) * 3).round(3) if weighted and dtype is np.float64 else None
    start = (rng.random((k, *shape)) * 10).astype(dtype)
    general, fast = start.copy(), start.copy()
    scatter(general, slots, ev, idx, weights)
    add_to_slot(fast, slot, np.bincount(idx, weights=weights))
    np.testing.assert_array_equal(fast, general)
    expected = start.copy().reshape(k, -1)
    np.add.at(expected[slot], idx, 1 if weights is None else weights)
    np.testing.assert_allclose(fast.reshape(k, -1), expected, rtol=1e-12)
