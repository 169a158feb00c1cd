"""A cumulative Prometheus-style histogram fed with arrays (latency, confidence, label delay)."""

from __future__ import annotations

import numpy as np


class Histogram:
    """A cumulative Prometheus-style histogram (counter semantics) fed with arrays."""

    def __init__(self, edges):
        self.edges = np.asarray(edges, dtype=np.float64)
        self.counts = np.zeros(len(self.edges) + 1, dtype=np.int64)  # last bucket is +Inf only
        self.sum = 0.0

    def observe(self, values: np.ndarray) -> None:
        if len(values):
            # side="left": a value equal to an edge belongs to that edge's bucket (le is inclusive).
            idx = np.searchsorted(self.edges, values, side="left")
            self.counts += np.bincount(idx, minlength=len(self.counts))
            self.sum += float(np.sum(values))

    def copy(self) -> Histogram:
        h = Histogram.__new__(Histogram)
        h.edges, h.counts, h.sum = self.edges, self.counts.copy(), self.sum
        return h

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative (le, count) pairs ending with +Inf, as HistogramMetricFamily wants them."""
        cum = np.cumsum(self.counts)
        out = [(_le(e), int(c)) for e, c in zip(self.edges, cum)]
        out.append(("+Inf", int(cum[-1])))
        return out


def _le(edge: float) -> str:
    return repr(float(edge))
