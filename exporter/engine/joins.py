"""Where a prediction waits for its label, and a label that came first waits for its prediction.

One store per model, keyed by prediction id, each part bounded by a TTL and a cap on entries; expiries
and evictions are counted. It keeps only what the quality windows need of a prediction (version,
predicted class or value, scores, time), never the features. Joined ids are remembered (id and time
only, under the same TTL and cap) so that a late duplicate of a prediction or its label is recognised.

Not thread-safe: the owning model state holds its lock around every call.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

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


@dataclass(slots=True)
class Pending:
    """What a prediction leaves behind until its label arrives."""

    arrival: float
    version: str
    timestamp: float
    prediction: Any
    scores: tuple[float, ...] | None
    segments: tuple[str, ...] | None = None  # the prediction's segment per segment feature


@dataclass(slots=True)
class EarlyLabel:
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
        self._waiting: OrderedDict[str, Pending] = OrderedDict()
        self._early: OrderedDict[str, EarlyLabel] = OrderedDict()
        self._joined: OrderedDict[str, float] = OrderedDict()  # id -> time of the join
        self.dropped = dict.fromkeys(DROP_REASONS, 0)

    def join_predictions(self, items: list[tuple[str, Pending, Any]], now: float, token: str = "") -> list[tuple]:
        """``items``: (id, what the prediction leaves behind, inline label or None) per prediction with an id."""
        if len(items) >= 64 and all(label is None for _, _, label in items):
            # (the checks cost more than the loop below for small batches)
            decided = self.wait_all([pid for pid, _, _ in items], [pending for _, pending, _ in items])
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
                    out.append((DUP_JOIN, first))
                continue
            early = self._early.pop(pid, None)
            if label is not None:
                self.mark_joined(pid, now)
                out.append((INLINE, early is not None))
            elif early is not None:
                self.mark_joined(pid, now)
                out.append((EARLY, early))
            else:
                self.put_waiting(pid, pending)
                out.append((WAITING, None))
        return out

    def wait_all(self, ids: list[str], pendings: list[Pending]) -> list[tuple] | None:
        """The common batch: predictions without labels whose ids are all new (in the store and in the batch),
        decided at once as ``join_predictions`` would decide each: every one waits, the oldest waiting ones
        evicted over the cap. None (and nothing done) when an id is not new."""
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
        waiting.update(zip(ids, pendings))
        over = len(waiting) - self.cap
        for _ in range(max(over, 0)):
            waiting.popitem(last=False)
        if over > 0:
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
                out.append((JOINED, pending))
        return out

    def copy(self) -> JoinStore:
        """A copy for a snapshot: new dicts, the same (never modified) entries."""
        other = JoinStore(self.ttl, self.cap)
        other._waiting = OrderedDict(self._waiting)
        other._early = OrderedDict(self._early)
        other._joined = OrderedDict(self._joined)
        other.dropped = dict(self.dropped)
        return other

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

    def put_waiting(self, pid: str, pending: Pending) -> None:
        self._put(self._waiting, pid, pending, "prediction")

    def put_early(self, pid: str, label: Any, arrival: float) -> None:
        self._put(self._early, pid, EarlyLabel(arrival, label), "label")

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
                if (entry if kind is None else entry.arrival) >= cutoff:
                    break
                del store[pid]
                if kind is not None:
                    self.dropped[kind, "expired"] += 1
