"""The look-up that bins a batch's numeric features (exporter/stats/binning.py ``EdgeGrid``) gives exactly what
``np.searchsorted(edges, values, side="right")`` gives, feature by feature, on generated edges of every shape a
reference can have (quantiles of smooth, discrete, constant, heavy-tailed and extreme data, edges closer than a
cell, subnormal numbers) and values on, next to, between and far outside the edges."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.stats.binning import EdgeGrid


def edge_sets(rng: np.random.Generator, kind: int) -> np.ndarray:
    size = int(rng.integers(1, 42))
    q = np.linspace(0, 1, size)
    if kind == 0:  # quantiles of smooth data (the common reference)
        return np.quantile(rng.normal(size=5000), q)
    if kind == 1:  # discrete data: many edges tie
        return np.quantile(rng.integers(0, 5, size=5000).astype(float), q)
    if kind == 2:  # a constant feature: an empty range
        return np.full(size, float(rng.normal()))
    if kind == 3:  # heavy tail: most edges in a few cells near the bottom
        return np.quantile(rng.lognormal(0, 4, size=5000), q)
    if kind == 4:  # extremes at the largest magnitude a value can have
        return np.sort(np.concatenate([rng.normal(size=size), [1e100, -1e100]]))
    if kind == 5:  # a range narrower than a floating-point cell can resolve well
        return np.sort(1.0 + rng.integers(0, 50, size=size) * np.finfo(float).eps)
    if kind == 6:  # subnormal numbers
        return np.sort(rng.integers(-30, 30, size=size) * 5e-324)
    return np.sort(rng.uniform(-1e6, 1e6, size=size))


def values_near(rng: np.random.Generator, edges: np.ndarray, n: int) -> np.ndarray:
    picked = rng.choice(edges, size=n)
    spread = max(float(edges[-1] - edges[0]), 1e-300)
    pool = [
        picked,
        np.nextafter(picked, np.inf),
        np.nextafter(picked, -np.inf),
        edges[0] + rng.uniform(-0.2, 1.2, size=n) * spread,
        rng.normal(size=n) * rng.choice([1e-3, 1.0, 1e6]),
        rng.choice([1e100, -1e100, 0.0, -0.0, 5e-324], size=n),
    ]
    return np.concatenate(pool)[rng.permutation(6 * n)[:n]]


@pytest.mark.parametrize("seed", range(40))
def test_the_grid_bins_as_searchsorted_does(seed):
    rng = np.random.default_rng(seed)
    features = int(rng.integers(1, 30))
    edges = [edge_sets(rng, int(rng.integers(0, 8))) for _ in range(features)]
    grid = EdgeGrid(edges)
    for _ in range(5):
        n = int(rng.integers(1, 600))
        values = np.stack([values_near(rng, e, n) for e in edges])
        expected = np.stack([np.searchsorted(e, v, side="right") for e, v in zip(edges, values)])
        assert np.array_equal(grid.bins(values, edges), expected)


@pytest.mark.parametrize("draw", ["normal", "lognormal", "exponential", "uniform"])
def test_common_references_rarely_need_the_binary_search(draw):
    """For quantile edges of smooth data, skewed included, nearly every value is decided by the tables alone
    (the point of the grid); ties and edges closer than a cell are what the binary search is kept for."""
    rng = np.random.default_rng(0)
    sample = getattr(rng, draw)
    edges = [np.quantile(sample(size=10_000).round(4), np.linspace(0, 1, 41)) for _ in range(27)]
    grid = EdgeGrid(edges)
    values = np.stack([sample(size=1000) for _ in range(27)])
    index = grid._cells(values, grid.first, grid.scale) + grid.offsets
    assert grid.crowded.take(index).mean() < 0.01
