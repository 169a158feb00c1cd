"""The two ways a batch's numeric features are binned agree: feature by feature (any batch), and all features
at once (a batch without missing values, the common one: exporter/stats/binning.py ``Binner._bin_whole``).

Generated batches of random sizes put values inside, below and above each feature's reference range and exactly
on its edges and its maximum (which belongs to the last inside bin); both paths must give the same window
entries: every (event, flat index) with the same weights, whatever their order."""

from __future__ import annotations

import textwrap
from collections import defaultdict

import numpy as np

from exporter.config import parse_config
from exporter.stats import reference
from exporter.stats.binning import Binner

CONFIG = """
storage: {backend: memory}
models:
  - name: m
    task: binary
    classes: ["no", "yes"]
    features:
"""


def entries(binned) -> dict:
    out = {}
    for name, (events, idx, weights) in binned.scatter.items():
        cells: dict = defaultdict(list)
        w = np.ones(len(events)) if weights is None else weights
        for e, i, v in zip(events.tolist(), idx.tolist(), w.tolist()):
            cells[i].append((e, v))
        out[name] = {i: sorted(v) for i, v in cells.items()}
    return out


def test_whole_batch_binning_equals_feature_by_feature():
    rng = np.random.default_rng(2)
    k = 12
    features = "\n".join(f"      - {{name: f{j}, type: {'categorical' if j == 5 else 'numeric'}}}" for j in range(k))
    model = parse_config(textwrap.dedent(CONFIG) + features + "\n").models[0]
    columns = {f"f{j}": (rng.normal(size=2000) * (j + 1)).round(2).tolist() for j in range(k) if j != 5}
    columns["f5"] = [f"c{i % 7}" for i in range(2000)]
    profile = reference.build_profile(columns, model)
    whole, per_feature = Binner(model, profile), Binner(model, profile)
    per_feature._whole = None
    assert whole._whole is not None
    checked = 0
    for _ in range(300):
        n = int(rng.integers(1, 400))
        x = rng.normal(size=(n, len(whole.numeric))) * rng.choice([0.5, 3.0, 30.0])
        for j, name in enumerate(whole.numeric):
            edges = profile.features[name].edges
            on_edge = rng.uniform(size=n) < 0.15
            x[on_edge, j] = rng.choice(edges, size=int(on_edge.sum()))  # the minimum, quantiles and maximum
        categorical = [[f"c{int(v)}" for v in rng.integers(0, 9, size=n)]]
        predictions = rng.integers(0, 2, size=n)
        a = entries(whole.bin(x, categorical, predictions))
        b = entries(per_feature.bin(x, categorical, predictions))
        assert a == b
        checked += "num_out" in a
    assert checked > 150  # values out of range were among them
