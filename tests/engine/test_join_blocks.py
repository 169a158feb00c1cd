"""The join store keeps the rows of a columnar batch as a block of columns (``wait_columns``) instead of a tuple
per row. Generated sequences of batches, rows, labels, expiries, evictions and snapshots must give the same
decisions, counts, drops and entries as the same sequence through the per-row path, which is the reference."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest

from exporter.engine.joins import DUP, DUP_JOIN, EARLY, INLINE, JOINED, ROW_BITS, WAITING, JoinStore


class Ops:
    """Random calls, each as (kind, arguments); ids from a small pool so that repeats, joins and early labels
    are frequent; a few features of scores and segments, or none."""

    def __init__(self, seed: int, ids: int):
        self.rng = random.Random(seed)
        self.pool = [f"id{i}" for i in range(ids)]
        self.now = 1_800_000_000.0
        self.fresh = 0

    def ids(self, n: int) -> list[str]:
        if self.rng.random() < 0.6:  # new ids (the block's common case): never seen before
            self.fresh += n
            fresh = [f"new{self.fresh - i}" for i in range(n)]
            if n > 1 and self.rng.random() < 0.1:  # ... but one of them twice in the batch
                fresh[self.rng.randrange(1, n)] = fresh[0]
            return fresh
        return [self.rng.choice(self.pool) for _ in range(n)]

    def next(self) -> tuple:
        rng = self.rng
        self.now += rng.choice((0.0, 0.0, 0.5, 1.0, 3.0))
        r = rng.random()
        if r < 0.06:
            return ("expire", self.now)
        if r < 0.12:
            return ("snapshot", rng.random() < 0.3)
        if r < 0.5:
            n = rng.choice((1, 2, 5, 9, 14))
            classes = rng.random() < 0.6
            width = rng.choice((0, 1, 3))
            data = np.random.default_rng(rng.randrange(2**32))
            predictions = data.integers(0, 3, n) if classes else data.normal(size=n)
            scores = data.uniform(size=(n, width)) if width else None
            segments = [(rng.choice("ab"), "x") for _ in range(n)] if rng.random() < 0.3 else None
            timestamps = self.now - data.uniform(0, 10, n)
            return (
                "columns",
                self.ids(n),
                self.now,
                rng.choice(("v1", "v2")),
                timestamps,
                predictions,
                scores,
                segments,
            )
        if r < 0.7:
            items = []
            for pid in self.ids(rng.randint(1, 4)):
                pending = (self.now, "v1", self.now - 1.0, rng.randrange(3), (rng.random(),), None)
                items.append((pid, pending, rng.randrange(3) if rng.random() < 0.3 else None))
            return ("rows", items, self.now)
        if rng.random() < 0.4:  # labels of recent predictions only, each once (the labels' common batch)
            recent = range(min(self.fresh, 12))
            pids = (
                [f"new{self.fresh - k}" for k in rng.sample(recent, rng.randint(1, min(len(recent), 4)))]
                if recent
                else []
            )
            return ("labels", [(pid, rng.randrange(3)) for pid in pids], self.now)
        pids = [rng.choice(self.pool) for _ in range(rng.randint(1, 6))]
        pids += [f"new{self.fresh - rng.randrange(min(max(self.fresh, 1), 40))}" for _ in range(rng.randint(0, 8))]
        rng.shuffle(pids)
        return ("labels", [(pid, rng.randrange(3)) for pid in pids], self.now)


def as_rows(op: tuple) -> list[tuple]:
    """A columnar batch's rows as the per-row path takes them: the plain tuples ``decide_columns`` makes."""
    _, ids, now, version, timestamps, predictions, scores, segments = op
    rows = zip(
        timestamps.tolist(),
        predictions.tolist(),
        map(tuple, scores.tolist()) if scores is not None else [None] * len(ids),
        segments or [None] * len(ids),
    )
    return [(pid, (now, version, t, p, s, g), None) for pid, (t, p, s, g) in zip(ids, rows)]


def apply(store: JoinStore, op: tuple, blocks: bool) -> tuple[list | None, bool]:
    """The decisions, and whether the batch's rows went in as a block."""
    kind = op[0]
    if kind == "expire":
        store.expire(op[1])
        return None, False
    if kind == "rows":
        return store.join_predictions(op[1], op[2]), False
    if kind == "labels":
        return store.join_labels(op[1], op[2]), False
    if kind == "columns":
        if blocks:
            decided = store.wait_columns(*op[1:])
            if decided is not None:
                return decided, True
        return store.join_predictions(as_rows(op), op[2]), False
    raise AssertionError(kind)


def entries(store: JoinStore) -> dict:
    """Every entry, a block's rows as the tuples they stand for, in the store's order."""
    state = store._parts(portable=True)
    return {part: state[part] for part in ("waiting", "early", "joined")}


def check_order(store: JoinStore) -> None:
    """A snapshot lists each part in its OrderedDict's underlying dict order (faster; the waiting predictions'
    only while there is no block, whose mark may move): it must be the order."""
    for part in (store._early, store._joined) if store._blocks else (store._waiting, store._early, store._joined):
        assert list(dict.items(part)) == list(part.items())


def check_blocks(store: JoinStore) -> None:
    """Each block is counted right, and holds more than a quarter of its rows (else it is compacted), but for
    the oldest, which eviction and the TTL take from the front."""
    codes = list(store._coded.values())
    alive = {}
    for code in codes:
        alive[code >> ROW_BITS] = alive.get(code >> ROW_BITS, 0) + 1
    assert alive == {number: block.alive for number, block in store._blocks.items()}
    marks = [key.number for key in store._waiting if type(key) is not str]
    assert sorted(marks) == sorted(store._blocks)  # one mark per block
    # (the oldest block may be partly evicted: its first rows go before any of another block)
    assert all(store._blocks[number].alive * 4 > len(store._blocks[number].ids) for number in marks[1:])


@pytest.mark.parametrize("seed", range(6))
def test_blocks_decide_and_keep_exactly_what_rows_do(seed, monkeypatch):
    ttl, cap = 6.0, 20
    rows, blocks = JoinStore(ttl, cap), JoinStore(ttl, cap)
    ops = Ops(seed, ids=30)
    seen, took = set(), 0
    gone = {"emptied": 0, "compacted": 0, "dropped": 0}
    release, drop_front = JoinStore._release, JoinStore._drop_front

    def counted(self, number, k):  # how blocks leave the store, or shrink
        block = self._blocks[number]
        rows = len(block.ids)
        release(self, number, k)
        if number not in self._blocks:
            gone["emptied"] += 1
        elif len(block.ids) < rows:
            gone["compacted"] += 1

    def dropped(self, block, k):
        taken = drop_front(self, block, k)
        gone["dropped"] += block.mark.number not in self._blocks
        return taken

    monkeypatch.setattr(JoinStore, "_drop_front", dropped)
    # Every label batch is tried as a whole first (the store does so from 64 labels on), so that generated batches
    # of a few labels exercise it; the count of those it took is checked below.
    monkeypatch.setattr(JoinStore, "at_once", 1)
    join_coded, at_once = JoinStore._join_coded, [0]

    def counted_labels(self, items, now):
        decided = join_coded(self, items, now)
        at_once[0] += decided is not None
        return decided

    monkeypatch.setattr(JoinStore, "_join_coded", counted_labels)
    monkeypatch.setattr(JoinStore, "_release", counted)
    repeats = 0
    for step in range(4000):
        op = ops.next()
        repeats += op[0] == "columns" and len(set(op[1])) < len(op[1]) and op[1][0].startswith("new")
        if op[0] == "snapshot":  # a checkpoint and a restart from it (the last one of a clean stop: portable)
            blocks = pickle.loads(pickle.dumps(blocks.copy(portable=op[1]), protocol=pickle.HIGHEST_PROTOCOL))
            continue
        expected, _ = apply(rows, op, blocks=False)
        got, block = apply(blocks, op, blocks=True)
        took += block
        assert got == expected, f"step {step}: {op}"
        assert blocks.counts() == rows.counts(), f"step {step}"
        assert blocks.take_dropped() == rows.take_dropped(), f"step {step}"
        assert entries(blocks) == entries(rows), f"step {step}"
        check_blocks(blocks)
        check_order(blocks)
        check_order(rows)
        for decision in got or ():
            seen.add(decision[0] if decision[0] != INLINE else decision)
    # What the sequences exercised: every decision, and blocks taken, compacted, emptied by joins, dropped.
    assert seen >= {DUP, DUP_JOIN, EARLY, WAITING, JOINED, (INLINE, False)}
    assert took > 300 and all(n > 20 for n in gone.values()) and at_once[0] > 100, (took, gone, at_once)
    assert repeats > 20, repeats  # batches of new ids but one repeated: declined whole, then decided row by row


def test_a_block_whose_rows_mostly_left_is_compacted_and_its_last_rows_still_join():
    store = JoinStore(3600, 1000)
    ids = [f"p{i}" for i in range(100)]
    scores = np.linspace(0, 1, 200).reshape(100, 2)
    store.wait_columns(ids, 10.0, "v1", np.arange(100.0), np.arange(100) % 2, scores, None)
    assert len(store._blocks) == 1
    store.join_labels([(pid, 1) for pid in ids[:75]], 11.0)
    assert store.counts() == (25, 0) and len(store._blocks[0].ids) == 25  # 25 of 100 left: only they are kept
    assert store._coded["p80"] == 5 and store._blocks[0].rows([5]) == [
        (10.0, "v1", 80.0, 0, tuple(scores[80].tolist()), None)
    ]
    decided = store.join_labels([("p99", 0)], 12.0)
    assert decided[0][0] == JOINED and decided[0][1].timestamp == 99.0 and decided[0][1].prediction == 1


def test_the_arrays_of_a_block_are_its_own():
    """A batch's arrays may be views of its request body: the block copies what it keeps."""
    timestamps, predictions, scores = np.arange(70.0), np.ones(70, dtype=np.int64), np.full((70, 1), 0.5)
    store = JoinStore(3600, 1000)
    store.wait_columns([f"p{i}" for i in range(70)], 1.0, "v1", timestamps, predictions, scores, None)
    timestamps[:], predictions[:], scores[:] = -1, -1, -1
    joined = store.join_labels([("p3", 1)], 2.0)[0][1]
    assert (joined.timestamp, joined.prediction, joined.scores) == (3.0, 1, (0.5,))


def test_a_snapshot_with_blocks_is_read_back_and_its_portable_form_is_the_earlier_one():
    store = JoinStore(3600, 1000)
    store.wait_columns([f"p{i}" for i in range(80)], 5.0, "v2", np.arange(80.0), np.arange(80.0), None, None)
    store.put_waiting("r", (6.0, "v1", 6.0, 1, None, None))
    state = store.copy().__getstate__()
    assert state["form"] == 3 and len(state["blocks"]) == 1
    portable = store.copy(portable=True).__getstate__()
    assert portable["form"] == 2 and "blocks" not in portable
    assert portable["waiting"][0] == [f"p{i}" for i in range(80)] + ["r"]
    assert portable["waiting"][1][7] == (5.0, "v2", 7.0, 7.0, None, None)
    for form in (store.copy(), store.copy(portable=True)):
        back = pickle.loads(pickle.dumps(form))
        assert back.counts() == (81, 0)
        assert back.join_labels([("p7", 1.5)], 9.0)[0][1] == (5.0, "v2", 7.0, 7.0, None, None)
        assert back.wait_columns(["q1"], 10.0, "v2", np.zeros(1), np.zeros(1), None, None)


def test_a_snapshot_packs_ids_and_numbers_so_that_they_come_back_as_they_were():
    from exporter.engine.joins import _array, _list, _pack, _unpack

    rng = random.Random(3)
    alphabet = ["a", "é", "\u4e2d", "\U0001f600", "\udc80", " ", "\x00", "\n"]
    for _ in range(200):
        ids = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))) for _ in range(rng.randint(0, 30))]
        back = pickle.loads(pickle.dumps(_pack(ids), protocol=pickle.HIGHEST_PROTOCOL))
        assert _unpack(back) == ids
    assert _unpack(_pack(["a", 1])) == ["a", 1]  # not all text: kept as the list
    for values in ([1.5, 2.0, 1e300], [3 << 40, 7], [1 << 70], [(1.0, "v1"), 4], [2**53 + 1, 1.0], []):
        assert _list(pickle.loads(pickle.dumps(_array(values, np.float64 if 1.5 in values else np.int64)))) == values
    assert _array([2**53 + 1, 1.0], np.float64) == [2**53 + 1, 1.0]  # inexact as floats: kept as the list


def test_an_empty_batch_leaves_nothing_behind():
    """Found by review: an empty batch made a block with no rows, whose mark stopped the TTL's walk."""
    empty = np.zeros(0)
    store = JoinStore(5.0, 10)
    assert store.wait_columns([], 100.0, "v1", empty, empty, None, None) == []
    assert not store._blocks and not store._waiting
    store.join_predictions([("r", (50.0, "v1", 50.0, 1, None, None), None)], 50.0)
    store.expire(102.0)  # (a clock that went back: r is older than the empty batch)
    assert store.counts() == (0, 0) and store.take_dropped()["prediction", "expired"] == 1


@pytest.mark.parametrize("form", ["rows", "columns"])
def test_a_batch_of_new_ids_but_one_repeated_is_decided_row_by_row(form):
    """A batch of new ids whose one id comes twice is no common batch: taken whole, it is found out by the
    size the store grew by and taken back, then decided row by row (the repeat is a duplicate). Rows of 64 and
    more are tried whole (``wait_all``), columns always (``wait_columns``)."""
    now = 100.0
    whole, single = JoinStore(60.0, 1000), JoinStore(60.0, 1000)
    earlier = [(f"old{i}", (now, "v1", now, i % 2, None, None), None) for i in range(10)]
    for store in (whole, single):
        store.join_predictions(earlier, now)
        store.wait_columns([f"blk{i}" for i in range(70)], now, "v1", np.zeros(70), np.zeros(70), None, None)
    ids = [f"n{i}" for i in range(80)]
    ids[50] = ids[3]
    op = ("columns", ids, now, "v1", np.full(80, now), np.arange(80) % 2, None, None)
    before = entries(whole)
    if form == "columns":
        assert whole.wait_columns(*op[1:]) is None
    else:
        assert whole.wait_all(tuple(ids), tuple(pending for _, pending, _ in as_rows(op))) is None
    assert entries(whole) == before and whole.counts() == single.counts()
    check_blocks(whole)
    got = whole.join_predictions(as_rows(op), now)  # (80 rows: tried whole first, then row by row)
    expected = [single.join_predictions([row], now)[0] for row in as_rows(op)]
    assert got == expected and got[50][0] == DUP and got.count(expected[0]) == 79
    assert entries(whole) == entries(single) and whole.counts() == single.counts()
