"""Multivariate drift (exporter/stats/multivariate.py) against scikit-learn's PCA, numpy and scipy's KS test:
the fit, the row errors, the reference's range, and what the exporter publishes; and that it sees what the
per-feature methods miss (a flipped correlation, small shifts of every feature at once).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from exporter.stats import multivariate


def correlated(rng, n: int, d: int = 10, flip: tuple[int, int] | None = None, shift: float = 0.0):
    """Rows of a fixed correlated normal; ``flip`` turns the sign of one pair's correlation (marginals kept)."""
    base = np.random.default_rng(0)
    a = base.normal(size=(d, d))
    cov = a @ a.T / d + np.eye(d) * 0.1
    sd = np.sqrt(np.diag(cov))
    corr = cov / np.outer(sd, sd)
    if flip is not None:
        i, j = flip
        corr[i, j] = corr[j, i] = -corr[i, j]
        # keep it a correlation matrix: nearest positive definite by clipping eigenvalues
        w, v = np.linalg.eigh(corr)
        corr = v @ np.diag(np.clip(w, 1e-3, None)) @ v.T
        dd = np.sqrt(np.diag(corr))
        corr = corr / np.outer(dd, dd)
    return rng.multivariate_normal(np.zeros(d) + shift, corr, size=n)


def test_row_errors_equal_scikit_learns_pca_reconstruction():
    rng = np.random.default_rng(1)
    ref = correlated(rng, 5000)
    rec = multivariate.fit([f"f{i}" for i in range(10)], ref)
    scaler = StandardScaler().fit(ref)
    pca = PCA(n_components=multivariate.DEFAULT_VARIANCE, svd_solver="full").fit(scaler.transform(ref))
    assert rec.components.shape == pca.components_.shape
    x = correlated(rng, 3000, flip=(0, 1))
    z = scaler.transform(x)
    expected = np.linalg.norm(z - pca.inverse_transform(pca.transform(z)), axis=1)
    assert np.allclose(rec.errors(x), expected, rtol=1e-9, atol=1e-9)


def test_a_flipped_correlation_raises_the_error_while_each_feature_stays_put():
    rng = np.random.default_rng(2)
    ref = correlated(rng, 20000)
    rec = multivariate.fit([f"f{i}" for i in range(10)], ref)
    same = rec.errors(correlated(rng, 2000)).mean()
    flipped_rows = correlated(rng, 2000, flip=(0, 1))
    flipped = rec.errors(flipped_rows).mean()
    assert (rec.lower or 0.0) <= same <= rec.upper
    assert flipped > rec.upper
    # Every feature's own distribution is the same: KS sees nothing.
    assert max(ks_2samp(ref[:, j], flipped_rows[:, j]).statistic for j in range(10)) < 0.05


@pytest.mark.parametrize("shift", [0.3])
def test_small_shifts_of_every_feature_raise_the_error(shift):
    rng = np.random.default_rng(3)
    ref = correlated(rng, 20000)
    rec = multivariate.fit([f"f{i}" for i in range(10)], ref)
    moved = rec.errors(correlated(rng, 2000, shift=shift)).mean()
    assert moved > rec.upper


def test_missing_values_are_imputed_with_the_reference_means():
    rng = np.random.default_rng(4)
    ref = correlated(rng, 2000)
    rec = multivariate.fit([f"f{i}" for i in range(10)], ref)
    x = correlated(rng, 10)
    holes = x.copy()
    holes[0, 3] = np.nan
    filled = x.copy()
    filled[0, 3] = ref[:, 3].mean()
    assert np.allclose(rec.errors(holes), rec.errors(filled))


def test_the_fit_survives_json():
    rng = np.random.default_rng(5)
    rec = multivariate.fit(["a", "b", "c"], correlated(rng, 1000, d=3))
    again = multivariate.Reconstruction.from_json(rec.as_json())
    x = correlated(rng, 50, d=3)
    assert np.array_equal(again.errors(x), rec.errors(x))
    assert (again.lower, again.upper) == (rec.lower, rec.upper)


CONFIG = """
windows: ["5m", "1h"]
storage: {{backend: memory}}
models:
  - name: m
    task: binary
    classes: [no, yes]
    features: [{features}]
"""


def test_the_exporter_publishes_the_windows_mean_error_and_the_reference_range():
    from tests.conftest import make_app, scrape

    names = [f"f{i}" for i in range(10)]
    app, _ = make_app(CONFIG.format(features=", ".join(f"{{name: {n}, type: numeric}}" for n in names)))
    client = app.test_client()
    rng = np.random.default_rng(6)
    ref = correlated(rng, 5000)
    csv = ",".join(names) + "\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in ref)
    assert client.put("/api/v1/models/m/reference", data=csv, content_type="text/csv").status_code == 200
    rows = correlated(rng, 1500, flip=(0, 1))
    items = [{"model": "m", "prediction": "no", "features": dict(zip(names, map(float, row)))} for row in rows]
    assert client.post("/api/v1/predictions", json={"predictions": items}).status_code == 202
    m = scrape(client)

    scaler = StandardScaler().fit(ref)
    pca = PCA(n_components=multivariate.DEFAULT_VARIANCE, svd_solver="full").fit(scaler.transform(ref))
    z = scaler.transform(rows)
    errors = np.linalg.norm(z - pca.inverse_transform(pca.transform(z)), axis=1)
    w = {"model": "m", "version": "default", "window": "5m"}
    assert m.get("mlmon_multivariate_drift", **w) == pytest.approx(errors.mean(), rel=1e-9)
    assert m.get("mlmon_multivariate_drift_samples", **w) == 1500
    upper = m.get("mlmon_multivariate_drift_threshold", model="m", bound="upper")
    assert (
        m.get("mlmon_multivariate_drift", **w)
        > upper
        > m.get("mlmon_multivariate_drift_threshold", model="m", bound="lower")
    )


def test_categorical_features_are_their_categories_shares_and_missing_ones_the_most_frequent():
    """As NannyML: a category becomes its share of the reference rows, a missing one the most frequent
    category (its share counting the missing rows), an unseen one 0; checked with Counter, StandardScaler
    and PCA on the raw rows."""
    from collections import Counter

    from tests.conftest import make_app, scrape

    rng = np.random.default_rng(7)

    def rows(n: int, tilt: float):
        x = correlated(rng, n, d=3)
        colour = np.where(x[:, 0] + tilt * rng.normal(size=n) > 0, "red", np.where(x[:, 1] > 0.5, "blue", "green"))
        size = rng.choice(["s", "m", "l"], size=n, p=[0.5, 0.3, 0.2]).astype(object)
        size[rng.random(n) < 0.05] = ""  # missing
        return x, colour.astype(object), size

    x_ref, c_ref, s_ref = rows(3000, 0.3)
    features = "{name: a, type: numeric}, {name: b, type: numeric}, {name: c, type: numeric}, "
    features += "{name: colour, type: categorical}, {name: size, type: categorical}"
    app, _ = make_app(CONFIG.format(features=features))
    client = app.test_client()
    lines = ["a,b,c,colour,size"] + [
        f"{r[0]!r},{r[1]!r},{r[2]!r},{c},{s}" for r, c, s in zip(x_ref.tolist(), c_ref, s_ref)
    ]
    assert client.put("/api/v1/models/m/reference", data="\n".join(lines), content_type="text/csv").status_code == 200
    x, c, s = rows(1000, 3.0)  # colour no longer follows a the way it did
    c[:10] = "purple"  # never in the reference
    items = [
        {
            "model": "m",
            "prediction": "no",
            "features": {"a": r[0], "b": r[1], "c": r[2], "colour": cc, "size": ss or None},
        }
        for r, cc, ss in zip(x.tolist(), c, s)
    ]
    assert client.post("/api/v1/predictions", json={"predictions": items}).status_code == 202

    def shares(column):
        counts = Counter(v for v in column if v != "")
        mode = sorted(counts, key=lambda k: (-counts[k], k))[0]
        counts[mode] += sum(v == "" for v in column)
        return {k: n / len(column) for k, n in counts.items()}, mode

    enc = [shares(c_ref), shares(s_ref)]

    def matrix(x, cols):
        out = [x]
        for (share, mode), col in zip(enc, cols):
            out.append(np.array([[share.get(mode if v == "" else v, 0.0)] for v in col]))
        return np.hstack(out)

    ref = matrix(x_ref, (c_ref, s_ref))
    scaler = StandardScaler().fit(ref)
    pca = PCA(n_components=multivariate.DEFAULT_VARIANCE, svd_solver="full").fit(scaler.transform(ref))
    z = scaler.transform(matrix(x, (c, s)))
    expected = np.linalg.norm(z - pca.inverse_transform(pca.transform(z)), axis=1).mean()
    got = scrape(client).get("mlmon_multivariate_drift", model="m", version="default", window="5m")
    assert got == pytest.approx(expected, rel=1e-9)


def _post_rows(client, names, rows, clock=None):
    items = [{"model": "m", "prediction": "no", "features": dict(zip(names, map(float, row)))} for row in rows]
    for i in range(0, len(items), 1000):
        assert client.post("/api/v1/predictions", json={"predictions": items[i : i + 1000]}).status_code == 202


def _reference_csv(names, rows) -> str:
    return ",".join(names) + "\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in rows)


def _features(names) -> str:
    return ", ".join(f"{{name: {n}, type: numeric}}" for n in names)


@pytest.mark.parametrize("change", ["flip", "shift"])
def test_the_exporter_sees_what_every_per_feature_method_misses(change):
    """A reference of 5,000 rows, a window of 2,000: the flipped correlation of two features (marginals kept),
    or a shift of 0.3 standard deviations of all 10 features at once. The window's mean error is over the
    reference's upper bound while no feature counts as drifted: the exporter's PSI (the deciding method) of
    every feature stays under its threshold, and for the flip its KS too (scipy's KS agrees). KS does see a
    shift of 0.3 sd of one feature at these sizes (0.12 to 0.16 against 0.1)."""
    from tests.conftest import make_app, scrape

    names = [f"f{i}" for i in range(10)]
    app, _ = make_app(CONFIG.format(features=_features(names)))
    client = app.test_client()
    rng = np.random.default_rng(11)
    ref = correlated(rng, 5000)
    assert (
        client.put("/api/v1/models/m/reference", data=_reference_csv(names, ref), content_type="text/csv").status_code
        == 200
    )
    rows = correlated(rng, 2000, flip=(0, 1)) if change == "flip" else correlated(rng, 2000, shift=0.3)
    _post_rows(client, names, rows)
    m = scrape(client)
    w = {"model": "m", "version": "default", "window": "5m"}
    assert m.get("mlmon_multivariate_drift", **w) > m.get(
        "mlmon_multivariate_drift_threshold", model="m", bound="upper"
    )
    for f in names:
        for method in ("psi", "ks") if change == "flip" else ("psi",):
            value = m.get("mlmon_feature_drift", feature=f, method=method, **w)
            assert value < m.get("mlmon_drift_threshold", model="m", feature=f, method=method), (f, method, value)
    if change == "flip":
        assert max(ks_2samp(ref[:, j], rows[:, j]).statistic for j in range(10)) < 0.1  # ks's threshold
    assert m.get("mlmon_drifted_features", **w) == 0


def test_the_range_is_drawn_from_the_reference_chunks_as_configured():
    """mean +- 3 sd (ddof 0) of the mean errors of consecutive chunks of ``chunk_size`` reference rows, the
    last one partial; and a window's figure only once it holds a chunk's rows. Checked against numpy over
    scikit-learn's PCA reconstruction."""
    from tests.conftest import make_app, scrape

    names = [f"f{i}" for i in range(6)]
    config = CONFIG.format(features=_features(names)) + "    drift: {multivariate: {chunk_size: 700, variance: 0.8}}\n"
    app, _ = make_app(config)
    client = app.test_client()
    rng = np.random.default_rng(12)
    ref = correlated(rng, 5000, d=6)
    assert (
        client.put("/api/v1/models/m/reference", data=_reference_csv(names, ref), content_type="text/csv").status_code
        == 200
    )
    scaler = StandardScaler().fit(ref)
    pca = PCA(n_components=0.8, svd_solver="full").fit(scaler.transform(ref))
    z = scaler.transform(ref)
    errors = np.linalg.norm(z - pca.inverse_transform(pca.transform(z)), axis=1)
    means = np.array([errors[i : i + 700].mean() for i in range(0, 5000, 700)])  # 7 full chunks and 100 rows
    assert len(means) == 8
    m = scrape(client)
    assert m.get("mlmon_multivariate_drift_threshold", model="m", bound="upper") == pytest.approx(
        means.mean() + 3 * means.std(), rel=1e-9
    )
    assert m.get("mlmon_multivariate_drift_threshold", model="m", bound="lower") == pytest.approx(
        means.mean() - 3 * means.std(), rel=1e-9
    )
    w = {"model": "m", "version": "default", "window": "5m"}
    _post_rows(client, names, correlated(rng, 699, d=6))
    m = scrape(client)
    assert m.get("mlmon_multivariate_drift_samples", **w) == 699
    assert m.get("mlmon_multivariate_drift", **w) is None  # fewer rows than a chunk: noisier than its range
    _post_rows(client, names, correlated(rng, 1, d=6))
    assert scrape(client).get("mlmon_multivariate_drift", **w) is not None


def test_off_or_with_one_feature_it_publishes_nothing():
    from tests.conftest import make_app

    rng = np.random.default_rng(13)
    for features, extra in ((["a", "b"], "    drift: {multivariate: false}\n"), (["a"], "")):
        app, _ = make_app(CONFIG.format(features=_features(features)) + extra)
        client = app.test_client()
        ref = correlated(rng, 1000, d=2)[:, : len(features)]
        assert (
            client.put(
                "/api/v1/models/m/reference", data=_reference_csv(features, ref), content_type="text/csv"
            ).status_code
            == 200
        )
        _post_rows(client, features, ref[:500])
        text = client.get("/metrics").get_data(as_text=True)
        assert "mlmon_multivariate_drift{" not in text and "mlmon_multivariate_drift_threshold{" not in text


def test_categorical_columns_encode_alike_whatever_their_values_types():
    """Text-only columns are looked up in C, mixed ones value by value (numbers and booleans matched as their
    text): both ways agree with a plain reading of the rule on generated columns."""
    from exporter.stats.reference import category

    rng = np.random.default_rng(9)
    pool = ["a", "b", "c", "3", "true", "", None, "zz"]
    ref = {"k": [str(rng.choice(pool[:5])) for _ in range(400)]}
    rec = multivariate.fit(["x"], rng.normal(size=(400, 1)), categorical=ref)
    shares, rare = rec.encodings[0], rec.rare[0]
    for _ in range(200):
        mixed = rng.random() < 0.5
        values = [*pool, 3, 3.0, True, 7] if mixed else pool
        column = [values[i] for i in rng.integers(0, len(values), 50)]
        got = rec.matrix(np.zeros((50, 1)), [column])[:, 1]
        expected = [np.nan if v is None or v == "" else shares.get(category(v), rare) for v in column]
        assert np.array_equal(got, np.array(expected), equal_nan=True), column
