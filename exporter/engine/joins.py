"""Where a prediction waits for its label, and a label that came first waits for its prediction.

One store per model, keyed by prediction id, each part bounded by a TTL and a cap on entries; expiries
and evictions are counted. It keeps only what the quality windows need of a prediction (version,
predicted class or value, scores, time), never the features. Joined ids are remembered (id and time
only, under the same TTL and cap) so that a late duplicate of a prediction or its label is recognised.

Not thread-safe: the owning model state holds its lock around every call.
"""

from __future__ import annotations

import functools
from collections import OrderedDict, deque
from dataclasses import dataclass
from itertools import repeat
from typing import Any, NamedTuple

import numpy as np

# (kind, reason) pairs of dropped entries, published as mlmon_pending_dropped_total.
DROP_REASONS = (
    ("prediction", "expired"),
    ("prediction", "evicted"),
    ("prediction", "version_retired"),
    ("label", "expired"),
    ("label", "evicted"),
)


class JoinStoreUnavailable(Exception):
    """A shared join store cannot be reached; the request is answered 503 with Retry-After, nothing kept."""


class Pending(NamedTuple):
    """What a prediction leaves behind until its label arrives.

    The store keeps it as a plain tuple of these fields (made in C for a columnar batch; a plain tuple of
    numbers and strings is left out of the garbage collector's walks, a tuple subclass is not) and hands
    out a Pending when a label joins it."""

    arrival: float
    version: str
    timestamp: float
    prediction: Any
    scores: tuple[float, ...] | None
    segments: tuple[str, ...] | None = None  # the prediction's segment per segment feature


class EarlyLabel(NamedTuple):
    arrival: float
    label: Any


# A Pending (an EarlyLabel) from the plain tuple of its fields the store keeps, without a Python call.
pending_of = functools.partial(tuple.__new__, Pending)
_early_of = functools.partial(tuple.__new__, EarlyLabel)


@dataclass(slots=True)
class _PendingV1:
    """A waiting prediction as a snapshot of release 0.1.0 pickled it (an object per entry, by class path);
    exporter/engine/storage.py reads that class path as this one, and JoinStore.__setstate__ converts."""

    arrival: float
    version: str
    timestamp: float
    prediction: Any
    scores: tuple[float, ...] | None
    segments: tuple[str, ...] | None = None


@dataclass(slots=True)
class _EarlyLabelV1:
    arrival: float
    label: Any


# What a join store decided for one item (the first element of each result tuple).
DUP = "dup"  # the id was seen already: nothing to count
DUP_JOIN = "dup_join"  # a repeated prediction carried the label its waiting first copy lacked: (DUP_JOIN, first)
INLINE = "inline"  # a new prediction with its label: (INLINE, whether an early label was dropped as duplicate)
EARLY = "early"  # a new prediction met the label that came first: (EARLY, EarlyLabel)
WAITING = "waiting"  # a new prediction now waits for its label; or a label now waits for its prediction
JOINED = "joined"  # a label met its waiting prediction: (JOINED, Pending)


# A waiting prediction of a columnar batch is kept as a code instead of a tuple: its block's number times
# 2**ROW_BITS plus its row in the block.
ROW_BITS = 32
_ROW_MASK = (1 << ROW_BITS) - 1
_WAITING = (WAITING, None)
_DUP = (DUP, None)


class _Block:
    """The predictions of one columnar batch that wait for their labels, kept as columns: a row costs a few
    bytes of arrays and an int code in a plain dict instead of a tuple and the objects in it in the ordered
    store, and a snapshot pickles arrays. A row becomes the tuple the store hands out only when it leaves.
    ``first``: rows before it were evicted or expired; ``alive``: rows still waiting; ``mark``: the block's
    place among the waiting predictions (a key of the ordered store)."""

    __slots__ = (
        "arrival", "version", "timestamps", "predictions", "scores", "segments", "ids", "alive", "first", "mark",
        "lists",
    )  # fmt: skip

    def __init__(self, arrival, version, timestamps, predictions, scores, segments, ids, alive, mark):
        self.arrival, self.version, self.ids, self.alive, self.first = arrival, version, ids, alive, 0
        self.timestamps, self.predictions, self.scores, self.segments = timestamps, predictions, scores, segments
        self.mark = mark
        self.lists: tuple | None = None  # the columns as Python lists, made when a first label comes

    def state(self) -> tuple:
        """What a snapshot keeps of the block (no class of this module named; arrays pickle as numpy's); the ids
        of its waiting rows come back from the store's codes."""
        return (self.arrival, self.version, self.timestamps, self.predictions, self.scores, self.segments)

    def rows(self, rows: list[int]) -> list[tuple]:
        """The plain tuples of ``rows``, as ``decide_columns`` would have made them for the tuple store."""
        rows = np.asarray(rows, dtype=np.intp)
        scores = self.scores
        segments = self.segments
        return list(
            zip(
                repeat(self.arrival),
                repeat(self.version),
                self.timestamps[rows].tolist(),
                self.predictions[rows].tolist(),
                map(tuple, scores[rows].tolist()) if scores is not None else repeat(None),
                [segments[r] for r in rows.tolist()] if segments is not None else repeat(None),
            )
        )

    def listed(self) -> tuple:
        """The columns as Python lists (``lists``), made at the first call: the labels of a block's rows come
        one by one, and a list's item is far cheaper to read than an array's."""
        scores = None if self.scores is None else list(map(tuple, self.scores.tolist()))
        self.lists = (self.timestamps.tolist(), self.predictions.tolist(), scores)
        return self.lists

    def row(self, r: int) -> tuple:
        """Row ``r``'s plain tuple."""
        timestamps, predictions, scores = self.lists or self.listed()
        segments = self.segments
        return (
            self.arrival,
            self.version,
            timestamps[r],
            predictions[r],
            None if scores is None else scores[r],
            None if segments is None else segments[r],
        )

    def kept(self, rows: list[int]) -> None:
        """Keep only ``rows`` (renumbered from 0, in order)."""
        at = np.asarray(rows, dtype=np.intp)
        self.timestamps, self.predictions = self.timestamps[at], self.predictions[at]
        self.scores = None if self.scores is None else self.scores[at]
        self.segments = None if self.segments is None else [self.segments[r] for r in rows]
        self.ids = [self.ids[r] for r in rows]
        self.alive, self.first, self.lists = len(rows), 0, None


class _Mark:
    """A block's place in the ordered store of waiting predictions (never equal to an id)."""

    __slots__ = ("number",)

    def __init__(self, number: int):
        self.number = number


class JoinStore:
    """The in-process join store (also what the SQLite store snapshots); see RedisJoinStore for the shared one.

    ``join_predictions`` and ``join_labels`` are the whole interface the model state uses: they take a batch
    and decide, item by item and in order, what each one joins. ``token`` names the request (the shared store
    uses it to answer a replayed request exactly as the first time); this store ignores it. ``wait_columns``
    is the columnar batch's shortcut for the common case (new ids, no labels).

    Waiting predictions are kept in arrival order (for eviction and the TTL): a prediction of a row batch as
    the plain tuple of its fields in an ordered dict, a columnar batch as one block whose mark sits in that
    ordered dict and whose rows' ids map to their codes in a plain dict (inserted and removed at about half
    the cost of an ordered dict's entries).
    """

    shared = False
    at_once = 64  # label batches of at least this many are tried as a whole first (the checks cost more below)

    def __init__(self, ttl_seconds: float, cap: int):
        self.ttl = ttl_seconds
        self.cap = cap
        # Entries as plain tuples: a Pending's fields (or None for a block's mark), an EarlyLabel's (arrival,
        # label).
        self._waiting: OrderedDict[str | _Mark, tuple | None] = _id_dict(kind=OrderedDict)
        self._coded: dict[str, int] = _id_dict()  # id -> code of a block's row
        self._early: OrderedDict[str, tuple] = _id_dict(kind=OrderedDict)
        self._joined: OrderedDict[str, float] = _id_dict(kind=OrderedDict)  # id -> time of the join
        self._blocks: dict[int, _Block] = {}
        self._next_block = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)

    def join_predictions(self, items: list[tuple[str, tuple, Any]], now: float, token: str = "") -> list[tuple]:
        """``items``: (id, what the prediction leaves behind: a Pending or the plain tuple of its fields, inline
        label or None) per prediction with an id."""
        if len(items) >= 64:  # (the checks cost more than the loop below for small batches)
            ids, pendings, labels = zip(*items)
            if labels.count(None) == len(labels):
                decided = self.wait_all(ids, pendings)
                if decided is not None:
                    return decided
        out: list[tuple] = []
        for pid, pending, label in items:
            if pid in self._joined:
                out.append(_DUP)
                continue
            first = self._coded.get(pid)
            if first is None:
                first = self._waiting.get(pid)
            if first is not None:
                if label is None:
                    out.append(_DUP)
                else:
                    if type(first) is int:
                        del self._coded[pid]
                        first = self._take(first)
                    else:
                        del self._waiting[pid]
                    self.mark_joined(pid, now)
                    out.append((DUP_JOIN, pending_of(first)))
                continue
            early = self._early.pop(pid, None)
            if label is not None:
                self.mark_joined(pid, now)
                out.append((INLINE, early is not None))
            elif early is not None:
                self.mark_joined(pid, now)
                out.append((EARLY, _early_of(early)))
            else:
                self.put_waiting(pid, pending)
                out.append(_WAITING)
        return out

    def _none_known(self, ids) -> bool:
        """Whether no id of ``ids`` is in the store; repeats within ``ids`` are for the caller to find (by the
        size its dict grows by). Each id is looked up once per non-empty part, in C; the ordered store is
        skipped while it holds blocks' marks only."""
        return (
            self._coded.keys().isdisjoint(ids)
            and (len(self._waiting) == len(self._blocks) or self._waiting.keys().isdisjoint(ids))
            and (not self._joined or self._joined.keys().isdisjoint(ids))
            and (not self._early or self._early.keys().isdisjoint(ids))
        )

    def wait_all(self, ids: tuple[str, ...], pendings: tuple[tuple, ...]) -> list[tuple] | None:
        """The common batch: predictions without labels whose ids are all new (in the store and in the batch),
        decided at once as ``join_predictions`` would decide each: every one waits, the oldest waiting ones
        evicted over the cap. None (and nothing done) when an id is not new. ``pendings``: Pendings or plain
        tuples of their fields."""
        if not self._none_known(ids):
            return None
        waiting, before = self._waiting, len(self._waiting)
        waiting.update(zip(ids, map(tuple, pendings)))  # a Pending as the plain tuple kept
        if len(waiting) != before + len(ids):  # an id repeated in the batch: taken back (each was new)
            deque(map(waiting.pop, ids, repeat(None)), maxlen=0)
            return None
        self._evict()
        return [_WAITING] * len(ids)

    def wait_columns(
        self,
        ids: list[str],
        arrival: float,
        version: str,
        timestamps: np.ndarray,
        predictions: np.ndarray,
        scores: np.ndarray | None,
        segments: list | None,
    ) -> list[tuple] | None:
        """``wait_all`` for the rows of a columnar batch, kept as one block of columns (copied: the batch's
        arrays may be views of its request body). ``segments``: per row its segments tuple, or None."""
        n = len(ids)
        if not n:  # (nothing to keep: no block, whose mark would stay until eviction or the TTL reached it)
            return []
        if not self._none_known(ids):
            return None
        number, coded = self._next_block, self._coded
        base, before = number << ROW_BITS, len(coded)
        coded.update(zip(ids, range(base, base + n)))
        if len(coded) != before + n:  # an id repeated in the batch: taken back (each was new)
            deque(map(coded.pop, ids, repeat(None)), maxlen=0)
            return None
        self._next_block += 1
        mark = _Mark(number)
        self._blocks[number] = _Block(
            arrival,
            version,
            np.array(timestamps, dtype=np.float64),
            np.array(predictions),
            None if scores is None else np.array(scores, dtype=np.float64),
            None if segments is None else list(segments),
            list(ids),
            n,
            mark,
        )
        self._waiting[mark] = None
        self._evict()
        return [_WAITING] * n

    def _waiting_count(self) -> int:
        return len(self._waiting) - len(self._blocks) + len(self._coded)

    def _evict(self) -> None:
        """Evict the oldest waiting predictions over the cap."""
        over = self._waiting_count() - self.cap
        if over <= 0:
            return
        self.dropped["prediction", "evicted"] += over
        waiting = self._waiting
        while over > 0:
            if not self._blocks:  # the oldest popped in a C loop
                deque(map(waiting.popitem, repeat(False, over)), maxlen=0)
                return
            key, _ = waiting.popitem(last=False)
            if type(key) is _Mark:
                over -= self._drop_front(self._blocks[key.number], over)
            else:
                over -= 1

    def _drop_front(self, block: _Block, k: int) -> int:
        """Drop up to ``k`` of the block's oldest waiting rows, its mark already taken out of the ordered store
        (put back in front if rows remain); return how many."""
        coded, ids = self._coded, block.ids
        take = min(k, block.alive)
        if block.alive == len(ids) - block.first:  # (no row joined since: its rows are those in a row)
            deque(map(coded.pop, ids[block.first : block.first + take]), maxlen=0)
            block.first += take
        else:
            base, left = block.mark.number << ROW_BITS, take
            for r in range(block.first, len(ids)):
                if not left:
                    break
                block.first = r + 1
                if coded.get(ids[r]) == base + r:
                    del coded[ids[r]]
                    left -= 1
        block.alive -= take
        if block.alive:
            self._waiting[block.mark] = None
            self._waiting.move_to_end(block.mark, last=False)
        else:
            del self._blocks[block.mark.number]
        return take

    def _take(self, code: int) -> tuple:
        """The tuple of a block's row just taken out of the store (joined)."""
        number = code >> ROW_BITS
        entry = self._blocks[number].row(code & _ROW_MASK)
        self._release(number, 1)
        return entry

    def _release(self, number: int, k: int) -> None:
        """``k`` rows of a block were taken out of the store (joined): the block goes with its last row, and
        keeps only its waiting rows when three quarters of it are gone, so that a few rows never joined cannot
        hold many blocks' arrays."""
        block = self._blocks[number]
        block.alive -= k
        if block.alive <= 0:
            del self._blocks[number]
            del self._waiting[block.mark]
        elif block.alive * 4 <= len(block.ids):
            coded, base = self._coded, number << ROW_BITS
            live = [r for r in range(block.first, len(block.ids)) if coded.get(block.ids[r]) == base + r]
            block.kept(live)
            coded.update(zip(block.ids, range(base, base + len(live))))  # (a plain dict keeps a key's place)

    def join_labels(self, items: list[tuple[str, Any]], now: float, token: str = "") -> list[tuple]:
        """``items``: (id, label) per label. The first label of an id stays; a correction does not replace it."""
        if len(items) >= self.at_once and self._coded:
            decided = self._join_coded(items, now)
            if decided is not None:
                return decided
        out: list[tuple] = []
        coded = self._coded
        for pid, label in items:
            if pid in self._joined or pid in self._early:
                out.append(_DUP)
                continue
            code = coded.pop(pid, None)
            if code is not None:  # a row of a block
                self.mark_joined(pid, now)
                out.append((JOINED, pending_of(self._take(code))))
                continue
            pending = self._waiting.pop(pid, None)
            if pending is None:
                self.put_early(pid, label, now)
                out.append(_WAITING)
            else:
                self.mark_joined(pid, now)
                out.append((JOINED, pending_of(pending)))
        return out

    def _join_coded(self, items: list[tuple[str, Any]], now: float) -> list[tuple] | None:
        """The labels' common batch: distinct ids, each a waiting row of a block (none joined or early before),
        decided at once as ``join_labels`` would decide each (joined to its prediction); each block's rows
        read at once. None (and nothing done) for any other batch."""
        ids = [pid for pid, _ in items]
        wanted = set(ids)
        coded = self._coded
        if not (
            len(wanted) == len(ids)
            and wanted <= coded.keys()
            and self._joined.keys().isdisjoint(wanted)
            and self._early.keys().isdisjoint(wanted)
        ):
            return None
        try:
            codes = np.fromiter(map(coded.__getitem__, ids), np.int64, len(ids))
        except OverflowError:  # (a block number past 2**31: row by row)
            return None
        numbers = codes >> ROW_BITS
        rows = codes & _ROW_MASK
        if numbers[0] == numbers[-1] and (numbers == numbers[0]).all():  # one block (labels in arrival order)
            groups = [(int(numbers[0]), None)]
        else:
            order = np.argsort(numbers, kind="stable")
            starts = np.flatnonzero(np.diff(numbers[order])) + 1
            groups = [(int(numbers[at[0]]), at) for at in np.split(order, starts)]
        entries: list = [None] * len(ids)
        for number, at in groups:
            block = self._blocks[number]
            if at is None:
                entries = block.rows(rows)
            else:
                for i, entry in zip(at.tolist(), block.rows(rows[at])):
                    entries[i] = entry
        deque(map(coded.pop, ids), maxlen=0)
        joined = self._joined
        joined.update(zip(ids, repeat(now)))  # as mark_joined each: the oldest joined ids forgotten over the cap
        over = len(joined) - self.cap
        if over > 0:
            deque(map(joined.popitem, repeat(False, over)), maxlen=0)
        for number, at in groups:
            self._release(number, len(ids) if at is None else len(at))
        return list(zip(repeat(JOINED), map(pending_of, entries)))

    def _parts(self, portable: bool) -> dict:
        """Each part's ids and entries as lists, listed in C: an OrderedDict's own dict keeps the same order
        (the store moves nothing but a block's mark: with blocks, the ordered store is read in its own order)
        and is read several times faster than its linked list. The entries and a block's arrays are shared,
        since they are never modified. ``portable``: form 2, what an earlier release reads (one list of
        waiting predictions in their order, a block's rows made tuples); else form 3."""
        waiting = self._waiting
        marks = []
        if not self._blocks:
            keys, values = list(dict.keys(waiting)), list(dict.values(waiting))
        else:  # the blocks' places among the rows' entries (a mark may have moved: read in order)
            keys, values = list(waiting), list(waiting.values())
            places = [i for i, key in enumerate(keys) if type(key) is _Mark]
            marks = [(i - n, keys[i].number) for n, i in enumerate(places)]
            for i in reversed(places):
                del keys[i], values[i]
        parts = {
            "form": 3,
            "ttl": self.ttl,
            "cap": self.cap,
            "waiting": (keys, values),
            "marks": marks,
            "coded": (list(dict.keys(self._coded)), list(dict.values(self._coded))),
            "blocks": {number: block.state() for number, block in self._blocks.items()},
            "early": (list(dict.keys(self._early)), list(dict.values(self._early))),
            "joined": (list(dict.keys(self._joined)), list(dict.values(self._joined))),
            "dropped": dict(self.dropped),
        }
        if portable:
            parts["waiting"] = self._in_order(keys, values, marks)
            del parts["blocks"], parts["marks"], parts["coded"]
            parts["form"] = 2
        return parts

    def _in_order(self, keys: list, values: list, marks: list) -> tuple[list, list]:
        """All waiting predictions in their order, a block's rows (in the order of its rows) as tuples."""
        rows_of: dict[int, tuple[list, list]] = {}  # block -> its waiting ids and codes, in row order
        for pid, code in sorted(self._coded.items(), key=lambda item: item[1]):
            ids, codes = rows_of.setdefault(code >> ROW_BITS, ([], []))
            ids.append(pid)
            codes.append(code & _ROW_MASK)
        out_ids, out_values, at = [], [], 0
        for place, number in [*marks, (len(keys), None)]:
            out_ids += keys[at:place]
            out_values += values[at:place]
            at = place
            if number is not None and number in rows_of:
                ids, rows = rows_of[number]
                out_ids += ids
                out_values += self._blocks[number].rows(rows)
        return out_ids, out_values

    @staticmethod
    def _snapshot(parts: dict) -> dict:
        """A snapshot's form, no class of this module named. Form 2: each part as its ids and a list of plain
        tuples. Form 3: each part's ids as one string and their lengths (a list of 100,000 strings took most
        of a checkpoint's pickling), the codes and the join times as arrays, a block as its arrays and the
        place of its mark among the rows' entries. Its parts have other names than form 2's, so that an earlier
        release, which reads any form as form 2, fails on it instead of misreading it."""
        if parts["form"] == 2:
            return parts
        ids, values = parts["waiting"]
        coded_ids, codes = parts["coded"]
        early_ids, early = parts["early"]
        joined_ids, times = parts["joined"]
        return {
            "form": 3,
            "ttl": parts["ttl"],
            "cap": parts["cap"],
            "pending": (_pack(ids), values),
            "marks": parts["marks"],
            "coded": (_pack(coded_ids), _array(codes, np.int64)),
            "blocks": parts["blocks"],
            "early_labels": (_pack(early_ids), early),
            "joined_ids": (_pack(joined_ids), _array(times, np.float64)),
            "dropped": parts["dropped"],
        }

    def __getstate__(self) -> dict:
        if "_frozen" in self.__dict__:  # a copy()
            return self._snapshot(self._frozen)
        return self._snapshot(self._parts(portable=False))

    def __setstate__(self, state: dict) -> None:
        self._blocks, self._next_block, self._coded = {}, 0, _id_dict()
        if "form" not in state:  # release 0.1.0: the attributes themselves, an object per entry
            self.__dict__.update(state)
            self._waiting = _id_dict(((k, _fields(v)) for k, v in self._waiting.items()), OrderedDict)
            self._early = _id_dict(((k, _fields(v)) for k, v in self._early.items()), OrderedDict)
            self._joined = _id_dict(self._joined.items(), OrderedDict)
            return
        self.ttl, self.cap, self.dropped = state["ttl"], state["cap"], state["dropped"]
        if state["form"] == 2:
            self._waiting = _id_dict(zip(*state["waiting"]), OrderedDict)
            self._early = _id_dict(zip(*state["early"]), OrderedDict)
            self._joined = _id_dict(zip(*state["joined"]), OrderedDict)
            return
        self._early = _id_dict(zip(_unpack(state["early_labels"][0]), state["early_labels"][1]), OrderedDict)
        self._joined = _id_dict(zip(_unpack(state["joined_ids"][0]), _list(state["joined_ids"][1])), OrderedDict)
        coded_ids, codes = _unpack(state["coded"][0]), _list(state["coded"][1])
        self._coded = _id_dict(zip(coded_ids, codes))
        blocks = self._blocks
        for number, fields in state["blocks"].items():
            blocks[number] = _Block(*fields, [None] * len(fields[2]), 0, _Mark(number))
        for pid, code in zip(coded_ids, codes):  # (a block's rows in order: the first one seen is its first)
            block = blocks[code >> ROW_BITS]
            if not block.alive:
                block.first = code & _ROW_MASK
            block.ids[code & _ROW_MASK] = pid
            block.alive += 1
        ids, values = _unpack(state["pending"][0]), state["pending"][1]
        waiting = self._waiting = _id_dict(kind=OrderedDict)
        at = 0
        for place, number in state["marks"]:
            waiting.update(zip(ids[at:place], values[at:place]))
            waiting[blocks[number].mark] = None
            at = place
        waiting.update(zip(ids[at:], values[at:]))
        self._next_block = max(blocks, default=-1) + 1

    def copy(self, portable: bool = False) -> JoinStore:
        """A store for a snapshot to pickle, taken now and good for nothing else: it holds only each part's
        ids and entries as lists (``_parts``), which costs ingest far less wait than copying the dicts would;
        the snapshot's form is made when it is pickled, outside the ingest lock. ``portable``: in the form an
        earlier release reads (a clean stop's last snapshot)."""
        frozen = JoinStore.__new__(JoinStore)
        frozen._frozen = self._parts(portable)
        return frozen

    def clear(self) -> None:
        """Forget every entry (a model reset); nothing is counted as dropped."""
        # (new dicts: clear() would make them keyed by text only again, see _id_dict)
        self._waiting, self._coded = _id_dict(kind=OrderedDict), _id_dict()
        self._early, self._joined = _id_dict(kind=OrderedDict), _id_dict(kind=OrderedDict)
        self._blocks.clear()

    def counts(self) -> tuple[int, int]:
        """(predictions waiting for their label, labels waiting for their prediction)."""
        return self._waiting_count(), len(self._early)

    def take_dropped(self) -> dict:
        """Drops counted since the last call (the model state adds them to its counters)."""
        dropped, self.dropped = self.dropped, dict.fromkeys(DROP_REASONS, 0)
        return dropped

    def put_waiting(self, pid: str, pending: tuple) -> None:
        self._waiting[pid] = tuple(pending)
        self._evict()

    def put_early(self, pid: str, label: Any, arrival: float) -> None:
        self._put(self._early, pid, (arrival, label), "label")

    def mark_joined(self, pid: str, now: float) -> None:
        self._put(self._joined, pid, now, None)

    def _put(self, store: OrderedDict, pid: str, entry: Any, kind: str | None) -> None:
        if len(store) >= self.cap:
            store.popitem(last=False)
            if kind is not None:  # forgetting an old joined id is not a loss of data
                self.dropped[kind, "evicted"] += 1
        store[pid] = entry

    def expire(self, now: float) -> None:
        """Drop entries older than the TTL; each part is in arrival order, so only its front is read."""
        cutoff = now - self.ttl
        waiting = self._waiting
        while waiting:
            key = next(iter(waiting))
            if type(key) is _Mark:
                block = self._blocks[key.number]
                if block.arrival >= cutoff:
                    break
                del waiting[key]
                self.dropped["prediction", "expired"] += block.alive
                self._drop_front(block, block.alive)
                continue
            if waiting[key][0] >= cutoff:  # the arrival
                break
            del waiting[key]
            self.dropped["prediction", "expired"] += 1
        for store, kind in ((self._early, "label"), (self._joined, None)):
            while store:
                pid = next(iter(store))
                entry = store[pid]
                if (entry if kind is None else entry[0]) >= cutoff:
                    break
                del store[pid]
                if kind is not None:
                    self.dropped[kind, "expired"] += 1


def _id_dict(items=(), kind=dict):
    """A dict (or OrderedDict) for ids that keeps each key's hash in its entry. A dict whose keys are all str does
    not (CPython 3.11 and later): each probe of a look-up then reads the hash from the key's own string, one more
    cache miss per probe. The store's dicts hold up to ``limits.max_pending_per_model`` ids, far more than the
    cache holds, and a batch of 1000 new ids probes one for each, inserts them and evicts as many old ones. A key
    of another type, put in and taken out at once, makes a dict keep hashes for good (through its resizes too),
    at 8 more bytes per entry (docs/performance.md)."""
    made = kind()
    made[0] = None
    del made[0]
    made.update(items)
    return made


def _pack(ids: list) -> tuple[str, np.ndarray] | list:
    """Ids as one string and their lengths (a list as it is if an id is no string)."""
    try:
        return "".join(ids), np.fromiter(map(len, ids), np.int64, len(ids))
    except TypeError:
        return ids


def _unpack(packed: tuple[str, np.ndarray] | list) -> list:
    if isinstance(packed, list):
        return packed
    text, lengths = packed
    ends = np.cumsum(lengths).tolist()
    return list(map(text.__getitem__, map(slice, [0, *ends[:-1]], ends)))


def _array(values: list, dtype) -> np.ndarray | list:
    """Numbers as an array of ``dtype`` that gives them back as they were; else the list as it is."""
    try:
        out = np.fromiter(values, dtype, len(values))
    except (TypeError, ValueError, OverflowError):
        return values
    return out if dtype is np.int64 or out.tolist() == values else values  # (an int64 is exact, or raised)


def _list(values: np.ndarray | list) -> list:
    return values.tolist() if isinstance(values, np.ndarray) else values


def _fields(entry) -> tuple:
    """The fields of an entry of an earlier snapshot, in order, as the plain tuple the store keeps."""
    return tuple(getattr(entry, name) for name in entry.__slots__)
