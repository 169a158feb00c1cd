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


class JoinStore:
    def __init__(self, ttl_seconds: float, cap: int):
        self.ttl = ttl_seconds
        self.cap = cap
        self._waiting: OrderedDict[str, Pending] = OrderedDict()
        self._early: OrderedDict[str, EarlyLabel] = OrderedDict()
        self._joined: OrderedDict[str, float] = OrderedDict()  # id -> time of the join
        self.dropped = dict.fromkeys(DROP_REASONS, 0)

    @property
    def waiting_predictions(self) -> int:
        return len(self._waiting)

    @property
    def waiting_labels(self) -> int:
        return len(self._early)

    def is_joined(self, pid: str) -> bool:
        return pid in self._joined

    def get_waiting(self, pid: str) -> Pending | None:
        return self._waiting.get(pid)

    def take_waiting(self, pid: str) -> Pending | None:
        return self._waiting.pop(pid, None)

    def take_early(self, pid: str) -> EarlyLabel | None:
        return self._early.pop(pid, None)

    def has_early(self, pid: str) -> bool:
        return pid in self._early

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
