"""Rolling windows in constant memory: a ring of time buckets holding additive statistics.

A window of length W is K buckets of W/K seconds. Bucket number ``b = floor(t / (W/K))`` lives in slot
``b % K``; when time moves past it, the slot is cleared and reused. The window at time ``now`` is the sum
of the buckets ``b`` with ``now_bucket - K < b <= now_bucket``: the last W seconds at a resolution of W/K
(it spans between W - W/K and W seconds). Memory is K times one bucket, whatever the traffic.

The most recent k buckets of a ring form a shorter **span** of the same window, at no extra memory: the
alert rules test quality on each window and on its recent parts (:func:`spans`), so that a short span
decides when labels are many and a long one when they are few.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Schema = dict[str, tuple[tuple[int, ...], type]]


class Ring:
    """K time buckets, each holding one array per statistic named in ``schema`` (name -> (shape, dtype))."""

    def __init__(self, seconds: float, buckets: int, schema: Schema):
        self.seconds = float(seconds)
        self.k = int(buckets)
        self.width = self.seconds / self.k
        self.arrays = {name: np.zeros((self.k, *shape), dtype=dtype) for name, (shape, dtype) in schema.items()}
        self.bucket_of_slot = np.full(self.k, np.iinfo(np.int64).min, dtype=np.int64)

    def conform(self, schema: Schema) -> None:
        """Add the arrays of ``schema`` this ring lacks, empty (a ring restored from an older snapshot)."""
        for name, (shape, dtype) in schema.items():
            if name not in self.arrays:
                self.arrays[name] = np.zeros((self.k, *shape), dtype=dtype)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values()) + self.bucket_of_slot.nbytes

    def slots(self, times: np.ndarray, now: float) -> np.ndarray:
        """Prepare the slots for events at ``times``; return each event's slot, or -1 if outside the window.

        Events from before the window, or older than what their slot already holds, get -1. Events in the
        future are the caller's to clamp.
        """
        buckets = np.floor(np.asarray(times, dtype=np.float64) / self.width).astype(np.int64)
        oldest = int(np.floor(now / self.width)) - self.k + 1
        out = np.full(buckets.shape, -1, dtype=np.int64)
        first = buckets[0] if buckets.size else 0
        if buckets.size and (buckets == first).all():  # the common case: a batch within one bucket
            uniq = (first,)
        else:
            uniq = np.unique(buckets)
        for b in uniq:
            b = int(b)
            if b < oldest:
                continue
            slot = b % self.k
            held = self.bucket_of_slot[slot]
            if held < b:
                for a in self.arrays.values():
                    a[slot] = 0
                self.bucket_of_slot[slot] = b
            elif held > b:
                continue
            if len(uniq) == 1:
                out[:] = slot
            else:
                out[buckets == b] = slot
        return out

    def slot_now(self, now: float) -> int:
        """The slot of the bucket holding ``now``, prepared for writing (for events stamped on arrival)."""
        return int(self.slots(np.array([now]), now)[0])

    def totals(self, now: float) -> dict[str, np.ndarray]:
        """Sum of every statistic over the buckets inside the window at ``now`` (copies, safe to keep)."""
        return self.recent(now, self.k, self.arrays)

    def recent(self, now: float, k: int, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Sum of the statistics ``names`` over the newest ``k`` buckets at ``now`` (the one holding ``now``
        and the k - 1 before it): the window's most recent span of k/K of its length."""
        current = int(np.floor(now / self.width))
        live = (self.bucket_of_slot > current - k) & (self.bucket_of_slot <= current)
        return {name: self.arrays[name][live].sum(axis=0) for name in names}

    def recents(self, now: float, ks: Sequence[int], names: Sequence[str]) -> list[dict[str, np.ndarray]]:
        """:meth:`recent` for each k of ``ks`` at once: the live buckets ordered newest first and summed
        cumulatively, one pass over the ring whatever the number of spans."""
        age = int(np.floor(now / self.width)) - self.bucket_of_slot
        live = np.flatnonzero((age >= 0) & (age < self.k))
        live = live[np.argsort(age[live], kind="stable")]
        counts = np.searchsorted(age[live], ks)  # live buckets newer than k buckets: the span's
        out: list[dict[str, np.ndarray]] = [{} for _ in ks]
        for name in names:
            a = self.arrays[name]
            cumulative = np.concatenate([np.zeros((1, *a.shape[1:]), a.dtype), a[live].cumsum(axis=0)])
            for sums, n in zip(out, counts):
                sums[name] = cumulative[n]
        return out


@dataclass(frozen=True)
class Span:
    """The newest ``buckets`` buckets of window number ``window`` (in config order), named ``name``."""

    name: str
    window: int
    buckets: int
    seconds: float


# The shortest window is also tested on its recent parts, quarters and eighths.
SHORTEST_HALVINGS = 3


def spans(names: Sequence[str], seconds: Sequence[float], buckets: int) -> tuple[Span, ...]:
    """The spans the alert rules test, shortest first: every window and its recent parts down to the next
    shorter window's length (the shortest window down to an eighth of itself).

    The parts are halvings (1/2, 1/4...), except in the longest window, which steps by sqrt(2): it serves the
    lowest label rates, where a span only a little longer than the bad stretch still proves it (measured in
    bench/bench_alerts.py). Each span is a whole number of the window's buckets, so its length is rounded to a
    bucket (with the default 5m/1h/1d and 60 buckets: 18 spans, 40s to 1d). A span is named by its length; a
    whole window keeps the window's own name.
    """
    order = sorted(range(len(seconds)), key=lambda i: seconds[i])
    out: dict[float, Span] = {}
    previous = 0.0
    for rank, i in enumerate(order):
        width = seconds[i] / buckets
        step = math.sqrt(2) if rank == len(order) - 1 and rank > 0 else 2.0
        for j in range(128):
            k = max(1, round(buckets / step**j + 1e-9))
            if k * width <= previous or (rank == 0 and j > SHORTEST_HALVINGS):
                break
            length = k * width
            name = names[i] if k == buckets else format_duration(length)
            # Two windows can give the same length: keep the finer ring's (seen first).
            out.setdefault(length, Span(name, i, k, length))
            if k == 1:
                break
        previous = seconds[i]
    return tuple(sorted(out.values(), key=lambda s: s.seconds))


def format_duration(seconds: float) -> str:
    """A Prometheus-style duration: ``40s``, ``1m15s``, ``3h12m``, ``1d``; milliseconds where needed."""
    ms = round(seconds * 1000)
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        n, ms = divmod(ms, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts) or "0s"
