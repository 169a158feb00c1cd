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


class JoinStore:
    """The in-process join store (also what the SQLite store snapshots); see RedisJoinStore for the shared one.

    ``join_predictions`` and ``join_labels`` are the whole interface the model state uses: they take a batch
    and decide, item by item and in order, what each one joins. ``token`` names the request (the shared store
    uses it to answer a replayed request exactly as the first time); this store ignores it.
    """

    shared = False

    def __init__(self, ttl_seconds: float, cap: int):
        self.ttl = ttl_seconds
        self.cap = cap
        # Entries as plain tuples: a Pending's fields, an EarlyLabel's (arrival, label).
        self._waiting: OrderedDict[str, tuple] = OrderedDict()
        self._early: OrderedDict[str, tuple] = OrderedDict()
        self._joined: OrderedDict[str, float] = OrderedDict()  # id -> time of the join
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
                out.append((DUP, None))
                continue
            first = self._waiting.get(pid)
            if first is not None:
                if label is None:
                    out.append((DUP, None))
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
                out.append((WAITING, None))
        return out

    def wait_all(self, ids: tuple[str, ...], pendings: tuple[tuple, ...]) -> list[tuple] | None:
        """The common batch: predictions without labels whose ids are all new (in the store and in the batch),
        decided at once as ``join_predictions`` would decide each: every one waits, the oldest waiting ones
        evicted over the cap. None (and nothing done) when an id is not new. ``pendings``: Pendings or plain
        tuples of their fields."""
        new = set(ids)
        # keys().isdisjoint(set) walks the (small) set and looks each id up in the store: set.isdisjoint(dict)
        # would walk the whole store.
        if not (
            len(new) == len(ids)
            and self._joined.keys().isdisjoint(new)
            and self._waiting.keys().isdisjoint(new)
            and self._early.keys().isdisjoint(new)
        ):
            return None
        waiting = self._waiting
        waiting.update(zip(ids, map(tuple, pendings)))  # a Pending as the plain tuple kept (a tuple as it is)
        over = len(waiting) - self.cap
        if over > 0:  # the oldest popped in a C loop
            deque(map(waiting.popitem, repeat(False, over)), maxlen=0)
            self.dropped["prediction", "evicted"] += over
        return [(WAITING, None)] * len(ids)

    def join_labels(self, items: list[tuple[str, Any]], now: float, token: str = "") -> list[tuple]:
        """``items``: (id, label) per label. The first label of an id stays; a correction does not replace it."""
        out: list[tuple] = []
        for pid, label in items:
            if pid in self._joined or pid in self._early:
                out.append((DUP, None))
                continue
            pending = self._waiting.pop(pid, None)
            if pending is None:
                self.put_early(pid, label, now)
                out.append((WAITING, None))
            else:
                self.mark_joined(pid, now)
                out.append((JOINED, pending_of(pending)))
        return out

    def __getstate__(self) -> dict:
        """A snapshot's form: each part as its ids and a list of plain tuples (pickled in C, about 10 times
        faster than an object per entry), no class of this module named."""
        if "_frozen" in self.__dict__:  # a copy()
            return self._frozen
        return {
            "form": 2,
            "ttl": self.ttl,
            "cap": self.cap,
            "waiting": (list(self._waiting), list(self._waiting.values())),
            "early": (list(self._early), list(self._early.values())),
            "joined": (list(self._joined), list(self._joined.values())),
            "dropped": self.dropped,
        }

    def __setstate__(self, state: dict) -> None:
        if "form" not in state:  # release 0.1.0: the attributes themselves, an object per entry
            self.__dict__.update(state)
            self._waiting = OrderedDict((k, _fields(v)) for k, v in self._waiting.items())
            self._early = OrderedDict((k, _fields(v)) for k, v in self._early.items())
            return
        self.ttl, self.cap, self.dropped = state["ttl"], state["cap"], state["dropped"]
        self._waiting = OrderedDict(zip(*state["waiting"]))
        self._early = OrderedDict(zip(*state["early"]))
        self._joined = OrderedDict(zip(*state["joined"]))

    def copy(self) -> JoinStore:
        """A store for a snapshot to pickle, taken now and good for nothing else: it holds only what
        ``__getstate__`` gives (each part's ids and entries as lists, built in C, the entries shared since
        they are never modified), which costs ingest far less wait than copying the dicts would."""
        frozen = JoinStore.__new__(JoinStore)
        frozen._frozen = {**self.__getstate__(), "dropped": dict(self.dropped)}
        return frozen

    def clear(self) -> None:
        """Forget every entry (a model reset); nothing is counted as dropped."""
        self._waiting.clear()
        self._early.clear()
        self._joined.clear()

    def counts(self) -> tuple[int, int]:
        """(predictions waiting for their label, labels waiting for their prediction)."""
        return len(self._waiting), len(self._early)

    def take_dropped(self) -> dict:
        """Drops counted since the last call (the model state adds them to its counters)."""
        dropped, self.dropped = self.dropped, dict.fromkeys(DROP_REASONS, 0)
        return dropped

    def put_waiting(self, pid: str, pending: tuple) -> None:
        self._put(self._waiting, pid, tuple(pending), "prediction")

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
        for store, kind in ((self._waiting, "prediction"), (self._early, "label"), (self._joined, None)):
            while store:
                pid = next(iter(store))
                entry = store[pid]
                if (entry if kind is None else entry[0]) >= cutoff:  # the arrival
                    break
                del store[pid]
                if kind is not None:
                    self.dropped[kind, "expired"] += 1


def _fields(entry) -> tuple:
    """The fields of an entry of an earlier snapshot, in order, as the plain tuple the store keeps."""
    return tuple(getattr(entry, name) for name in entry.__slots__)
