"""A version's windows computed together (binning.windows_drift) against each window alone and against the
one-feature computations, on generated windows: empty windows, features with no values or too few, empty
bins (in the middle and at both ends), a constant numeric feature (a single inside bin), categorical
features with one category, with more than the tracked ones, and windows whose empty bins differ.

Each window's figures must be the bits it gets alone: /metrics publishes them, and a scrape must not change
with the way its windows are grouped.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from exporter.config import parse_config
from exporter.stats import drift
from exporter.stats.binning import (
    _categorical,
    _numeric,
    decision_method,
    distribution,
    drift_schema,
    window_drift,
    windows_drift,
)
from exporter.stats.reference import Profile, categorical_profile, numeric_profile

NUMERIC = ["normal", "lognormal", "poisson", "constant", "wide"]
CATEGORICAL = ["single", "few", "many"]


def model(method: str = "ks", bins: bool = True):
    features = "\n".join(
        [f"      - {{name: {name}, type: numeric}}" for name in NUMERIC]
        + [f"      - {{name: {name}, type: categorical}}" for name in CATEGORICAL]
    )
    text = f"""
windows: ["5m", "1h", "1d"]
models:
  - name: m
    task: binary
    classes: ["no", "yes"]
    invalid_features: count
    drift: {{method: {method}, min_samples: 50, bins: {str(bins).lower()}}}
    features:
{features}
"""
    return parse_config(text).models[0]


def profile() -> Profile:
    rng = np.random.default_rng(5)
    n = 3000
    features = {
        "normal": numeric_profile(rng.normal(size=n)),
        "lognormal": numeric_profile(rng.lognormal(size=n)),
        "poisson": numeric_profile(rng.poisson(1.5, size=n).astype(float)),  # a few bins only
        "constant": numeric_profile(np.full(n, 2.5)),  # one inside bin of zero width
        "wide": numeric_profile(rng.uniform(-100, 100, size=n).round(1)),
        "single": categorical_profile(["a"] * n),  # one category, nothing else: "other" empty
        "few": categorical_profile(list(rng.choice(["x", "y", "z"], size=n, p=[0.6, 0.3, 0.1]))),
        "many": categorical_profile([f"k{int(v)}" for v in rng.zipf(1.6, size=n) % 40]),  # "other" not empty
    }
    assert len(features["constant"].counts) == 3 and len(features["poisson"].counts) < 12
    assert len(features["single"].counts) == 2 and features["many"].counts[-1] > 0
    return Profile("m", n, features)


def windows(rng, cfg, prof: Profile, count: int, shared_empty: bool) -> list[dict]:
    """``count`` windows' totals as a ring sums them. ``shared_empty``: the categorical features leave the
    same bins empty in every window (their figures are then computed together), else at random."""
    schema = drift_schema(cfg)
    cat_zero = {name: rng.uniform(size=len(prof.features[name].counts)) < 0.3 for name in CATEGORICAL}
    out = []
    for w in range(count):
        t = {name: np.zeros(shape, dtype) for name, (shape, dtype) in schema.items()}
        kind = rng.integers(6) if w else 5  # the first window always full
        if kind == 0:  # an empty window
            t["predictions"] = 0.0
            out.append(t)
            continue
        size = {1: 30, 2: 60}.get(int(kind), 2000)  # below min_samples, just over it, or plenty
        t["predictions"] = float(size + rng.integers(0, 50))
        t["missing"][:] = rng.integers(0, 20, size=len(cfg.features))
        t["type_errors"][:] = rng.integers(0, 3, size=len(cfg.features))
        for j, name in enumerate(NUMERIC):
            ref = prof.features[name]
            bins = len(ref.counts)
            if rng.uniform() < 0.15:
                continue  # no value of this feature in the window
            p = rng.dirichlet(np.ones(bins))
            p[rng.uniform(size=bins) < 0.25] = 0.0  # empty bins, the outer two included
            if p.sum() == 0:
                p[bins // 2] = 1.0
            row = rng.multinomial(size, p / p.sum())
            t["num_counts"][j, :bins] = row
            t["num_out"][j] = (
                row[0] * (ref.edges[0] - rng.uniform(0, 3)),
                row[-1] * (ref.edges[-1] + rng.uniform(0, 3)),
            )
        for j, name in enumerate(CATEGORICAL):
            k = len(prof.features[name].counts)
            if rng.uniform() < 0.1:
                continue
            zero = cat_zero[name] if shared_empty else rng.uniform(size=k) < 0.3
            p = np.where(zero, 0.0, rng.dirichlet(np.ones(k)) + 1e-3)
            if p.sum() == 0:
                continue
            counts = rng.multinomial(size, p / p.sum())
            counts[zero] = 0
            t["cat_counts"][j, :k] = counts
            t["cat_unseen"][j] = rng.integers(0, counts[-1] + 1)
        out.append(t)
    return out


def text(result) -> list:
    """A WindowDrift as text, every number by its repr (NaN equal to NaN, 0.0 apart from -0.0)."""

    def flat(value, path=()):
        if isinstance(value, dict):
            return [item for key, v in value.items() for item in flat(v, (*path, key))]
        return [(path, None if value is None else repr(float(value)))]

    return flat(
        {
            "features": result.features,
            "quality": result.quality,
            "prediction": result.prediction,
            "label": result.label,
            "drifted": result.drifted,
            "distribution": result.distribution,
        }
    )


@pytest.mark.parametrize("shared_empty", [True, False])
@pytest.mark.parametrize("method,bins", [("ks", True), ("psi", False), ("js", True), ("wasserstein", False)])
def test_windows_together_equal_each_window_alone_and_feature_by_feature(method, bins, shared_empty):
    cfg, prof = model(method, bins), profile()
    numeric_names = [f.name for f in cfg.features if f.type == "numeric"]
    categorical_names = [f.name for f in cfg.features if f.type == "categorical"]
    for seed in range(12):
        rng = np.random.default_rng(seed)
        ws = windows(rng, cfg, prof, int(rng.integers(1, 6)), shared_empty)
        for exclude in ((), ("few",)):
            together = windows_drift(cfg, prof, ws, exclude)
            assert len(together) == len(ws)
            for t, got in zip(ws, together):
                # Bit for bit what the window gets alone, in the same order.
                assert text(got) == text(window_drift(cfg, prof, t, exclude))

                events = float(t["predictions"])
                if events > 0:
                    assert got.quality["missing"] == {
                        f.name: float(t["missing"][i]) / events for i, f in enumerate(cfg.features)
                    }
                    assert got.quality["type_error"] == {
                        f.name: float(t["type_errors"][i]) / events for i, f in enumerate(cfg.features)
                    }
                else:
                    assert got.quality["missing"] == {} and got.quality["type_error"] == {}

                # Numeric features: the one-feature computation, up to rounding (the rows are padded).
                for j, name in enumerate(numeric_names):
                    ref = prof.features[name]
                    cur = t["num_counts"][j, : len(ref.counts)].astype(np.float64)
                    n = cur.sum()
                    if n == 0:
                        assert name not in got.quality["out_of_range"] and name not in got.features
                        continue
                    assert got.quality["out_of_range"][name] == (cur[0] + cur[-1]) / n
                    if n < cfg.drift_min_samples:
                        assert name not in got.features
                        continue
                    expected = _numeric(ref, cur, t["num_out"][j])
                    assert list(got.features[name]) == list(drift.NUMERIC_METHODS)
                    assert got.features[name] == pytest.approx(expected, rel=1e-12, abs=1e-15)
                    if bins:
                        assert got.distribution[name] == pytest.approx(distribution(ref, cur), rel=1e-12)

                # Categorical features: exactly the one-feature computation.
                for j, name in enumerate(categorical_names):
                    ref = prof.features[name]
                    cur = t["cat_counts"][j, : len(ref.counts)].astype(np.float64)
                    n = cur.sum()
                    if n == 0:
                        assert name not in got.quality["unseen"] and name not in got.features
                        continue
                    unseen = float(t["cat_unseen"][j]) / n
                    assert repr(got.quality["unseen"][name]) == repr(float(unseen))
                    if n < cfg.drift_min_samples or name in exclude:
                        assert name not in got.features
                        continue
                    expected = {**_categorical(ref, cur), "unseen": unseen}
                    assert list(got.features[name]) == list(expected)
                    assert [repr(float(v)) for v in got.features[name].values()] == [
                        repr(float(v)) for v in expected.values()
                    ]
                    if bins:
                        assert got.distribution[name] == distribution(ref, cur)

                # Drifted features, decided as feature by feature.
                if got.features:
                    assert got.drifted == sum(
                        drift.over_threshold(m, values[m], cfg.drift_threshold(name, m))
                        for name, values in got.features.items()
                        for m in (decision_method(cfg, name),)
                    )
                else:
                    assert got.drifted is None


def test_categorical_rows_equal_the_one_row_functions_bit_for_bit():
    """drift.categorical_rows on rows with the same empty bins, at lengths where numpy sums pairwise (8 terms
    and more) and where it does not."""
    rng = np.random.default_rng(2)
    for k in (2, 3, 7, 8, 9, 16, 21):
        for _ in range(30):
            ref = rng.integers(0, 500, size=k).astype(np.int64)
            ref[rng.integers(k)] += 1  # never all zero
            zero = rng.uniform(size=k) < 0.3
            cur = rng.integers(1, 300, size=(int(rng.integers(2, 6)), k)).astype(np.float64)
            cur[:, zero] = 0
            if not cur.any():
                continue
            psi, js, stat, p = drift.categorical_rows(ref, cur)
            for i, row in enumerate(cur):
                s, pv = drift.chi2(ref, row)
                assert repr(psi[i]) == repr(drift.psi(ref, row))
                assert repr(js[i]) == repr(drift.js_distance(ref, row))
                assert (repr(float(stat[i])), repr(float(p[i]))) == (repr(s), repr(pv))
                assert not math.isnan(psi[i])
