"""Where a prediction waits for its label, and a label that came first waits for its prediction.

One store per model, keyed by prediction id, bounded by a TTL and a cap on entries; expiries and
evictions are counted. It keeps only what the quality windows need of a prediction (version, predicted
class or value, scores, time), never the features. A joined id leaves a small tombstone behind so a
late duplicate of the prediction or its label is recognised and ignored.

Not thread-safe: the owning model state holds its lock around every call.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

JOINED = "joined"
DUPLICATE = "duplicate"
WAITING = "waiting"


@dataclass(slots=True)
class Pending:
    """What a prediction leaves behind until its label arrives."""

    arrival: float
    version: str
    timestamp: float
    prediction: Any
    scores: tuple[float, ...] | None


class _Tombstone:
    __slots__ = ("arrival",)

    def __init__(self, arrival: float):
        self.arrival = arrival


class JoinStore:
    def __init__(self, ttl_seconds: float, cap: int):
        self.ttl = ttl_seconds
        self.cap = cap
        self._predictions: OrderedDict[str, Pending | _Tombstone] = OrderedDict()
        self._labels: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self.waiting_predictions = 0  # entries of _predictions that are not tombstones
        # Cumulative counts, published as counters: (kind, reason) -> n
        self.dropped = {(k, r): 0 for k in ("prediction", "label") for r in ("expired", "evicted")}

    @property
    def waiting_labels(self) -> int:
        return len(self._labels)

    def add_prediction(self, pid: str, pending: Pending) -> tuple[str, Any]:
        """Store a prediction; if its label already waits, return ``(JOINED, label)``."""
        if pid in self._predictions:
            return DUPLICATE, None
        early = self._labels.pop(pid, None)
        if early is not None:
            self._put(pid, _Tombstone(pending.arrival))
            return JOINED, early[1]
        self._put(pid, pending)
        self.waiting_predictions += 1
        return WAITING, None

    def add_joined(self, pid: str, arrival: float) -> bool:
        """Record a prediction that came with its label; False if the id was seen already."""
        if pid in self._predictions:
            return False
        self._labels.pop(pid, None)  # the label sent with the prediction wins over one sent alone
        self._put(pid, _Tombstone(arrival))
        return True

    def add_label(self, pid: str, label: Any, arrival: float) -> tuple[str, Pending | None]:
        """Join a label to its waiting prediction, or keep it until the prediction comes."""
        entry = self._predictions.get(pid)
        if entry is not None:
            if isinstance(entry, _Tombstone):
                return DUPLICATE, None
            self._predictions[pid] = _Tombstone(entry.arrival)
            self.waiting_predictions -= 1
            return JOINED, entry
        if pid in self._labels:
            return DUPLICATE, None
        if len(self._labels) >= self.cap:
            self._labels.popitem(last=False)
            self.dropped["label", "evicted"] += 1
        self._labels[pid] = (arrival, label)
        return WAITING, None

    def _put(self, pid: str, entry: Pending | _Tombstone) -> None:
        if len(self._predictions) >= self.cap:
            _, old = self._predictions.popitem(last=False)
            if isinstance(old, Pending):
                self.waiting_predictions -= 1
                self.dropped["prediction", "evicted"] += 1
        self._predictions[pid] = entry

    def expire(self, now: float) -> None:
        """Drop entries older than the TTL; entries are kept in arrival order, so only the front is read."""
        cutoff = now - self.ttl
        preds = self._predictions
        while preds:
            pid = next(iter(preds))
            entry = preds[pid]
            if entry.arrival >= cutoff:
                break
            del preds[pid]
            if isinstance(entry, Pending):
                self.waiting_predictions -= 1
                self.dropped["prediction", "expired"] += 1
        labels = self._labels
        while labels:
            pid = next(iter(labels))
            if labels[pid][0] >= cutoff:
                break
            del labels[pid]
            self.dropped["label", "expired"] += 1
