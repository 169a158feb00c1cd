"""Rolling windows in constant memory: a ring of time buckets holding additive statistics.

A window of length W is K buckets of W/K seconds. Bucket number ``b = floor(t / (W/K))`` lives in slot
``b % K``; when time moves past it, the slot is cleared and reused. The window at time ``now`` is the sum
of the buckets ``b`` with ``now_bucket - K < b <= now_bucket``: the last W seconds at a resolution of W/K
(it spans between W - W/K and W seconds). Memory is K times one bucket, whatever the traffic.
"""

from __future__ import annotations

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
        current = int(np.floor(now / self.width))
        live = (self.bucket_of_slot > current - self.k) & (self.bucket_of_slot <= current)
        return {name: a[live].sum(axis=0) for name, a in self.arrays.items()}
