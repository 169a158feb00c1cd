"""Attribution monitoring (exporter/stats/attribution.py) with the real shap package: TreeExplainer's values of a
scikit-learn forest on the breast cancer data, sent with the predictions through the HTTP API and in the
reference; every published figure checked against numpy (and scipy's Spearman) on the raw SHAP values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier

from exporter.client import shap_attributions
from exporter.stats import attribution
from tests.conftest import make_app, scrape

shap = pytest.importorskip("shap")

TOL = 1e-9


@pytest.fixture(scope="module")
def world():
    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data.target))
    train, ref = order[:300], order[300:]
    model = RandomForestClassifier(n_estimators=25, max_depth=5, random_state=0).fit(
        data.data[train], data.target[train]
    )
    explainer = shap.TreeExplainer(model)

    def explain(x):
        explanation = explainer(x)
        explanation.feature_names = names  # fitted on an array: the explanation has no names of its own
        return explanation

    x_ref = data.data[ref]
    # Production: the first three features two standard deviations higher (the demo's covariate drift).
    x_now = data.data[rng.integers(0, len(data.target), 400)].copy()
    x_now[:, :3] += 2 * data.data[:, :3].std(axis=0)
    return {
        "names": names,
        "model": model,
        "x_ref": x_ref,
        "ref": explain(x_ref),
        "x_now": x_now,
        "now": explain(x_now),
    }


def config(names, extra: str = "    attributions: true\n") -> str:
    features = ", ".join(f"{{name: {n}, type: numeric}}" for n in names)
    return (
        'windows: ["5m", "1h"]\nstorage: {backend: memory}\nmodels:\n  - name: m\n    task: binary\n'
        f"    classes: [malignant, benign]\n    features: [{features}]\n    drift: {{min_samples: 50}}\n" + extra
    )


def reference_csv(world) -> str:
    names, x, sv = world["names"], world["x_ref"], world["ref"].values[:, :, 1]
    header = names + [f"attributions.{n}" for n in names]
    lines = [",".join(header)] + [",".join(repr(float(v)) for v in [*x[i], *sv[i]]) for i in range(len(x))]
    return "\n".join(lines)


def post(client, world, rows: range, with_attributions: bool = True):
    names = world["names"]
    items = []
    for i in rows:
        item = {"model": "m", "prediction": "benign", "features": dict(zip(names, map(float, world["x_now"][i])))}
        if with_attributions:
            # The positive class's SHAP values, as the client helper takes them from an explanation row.
            item["attributions"] = shap_attributions(world["now"][i], output=1)
        items.append(item)
    return client.post("/api/v1/predictions", json={"predictions": items})


def test_the_window_and_the_reference_profiles_equal_numpy_on_the_shap_values(world):
    names = world["names"]
    app, _ = make_app(config(names, "    attributions: {top: 5}\n"))
    client = app.test_client()
    assert (
        client.put("/api/v1/models/m/reference", data=reference_csv(world), content_type="text/csv").status_code == 200
    )
    assert post(client, world, range(400)).status_code == 202
    m = scrape(client)
    w = {"model": "m", "version": "default", "window": "5m"}

    now = np.abs(world["now"].values[:, :, 1]).mean(axis=0)
    ref = np.abs(world["ref"].values[:, :, 1]).mean(axis=0)
    assert m.get("mlmon_attribution_samples", **w) == 400
    # The top 5 of the window and of the reference, each with its value and rank.
    rank_now = {names[j]: r + 1 for r, j in enumerate(np.argsort(-now, kind="stable"))}
    rank_ref = {names[j]: r + 1 for r, j in enumerate(np.argsort(-ref, kind="stable"))}
    shown = {n for n in names if rank_now[n] <= 5 or rank_ref[n] <= 5}
    published = {s.labels["feature"] for s in m.all("mlmon_attribution_mean_abs")}
    assert published == shown
    for j, n in enumerate(names):
        if n in shown:
            assert m.get("mlmon_attribution_mean_abs", feature=n, **w) == pytest.approx(now[j], rel=TOL)
            assert m.get("mlmon_attribution_rank", feature=n, **w) == rank_now[n]
        if rank_ref[n] <= 5:
            assert m.get("mlmon_reference_attribution_mean_abs", model="m", feature=n) == pytest.approx(ref[j], rel=TOL)
            assert m.get("mlmon_reference_attribution_rank", model="m", feature=n) == rank_ref[n]
    tvd = 0.5 * np.abs(now / now.sum() - ref / ref.sum()).sum()
    assert m.get("mlmon_attribution_drift", **w) == pytest.approx(tvd, rel=TOL)
    rho = spearmanr(now, ref).statistic
    assert m.get("mlmon_attribution_rank_correlation", **w) == pytest.approx(rho, rel=TOL)


def test_partial_attributions_average_over_the_predictions_that_carry_each_feature(world):
    names = world["names"]
    app, _ = make_app(config(names, "    attributions: {top: 30}\n"))
    client = app.test_client()
    sv = world["now"].values[:200, :, 1].copy()
    rng = np.random.default_rng(1)
    holes = rng.random(sv.shape) < 0.3
    items = []
    for i in range(200):
        given = {n: (None if holes[i, j] and j % 2 else float(sv[i, j])) for j, n in enumerate(names)}
        # Left out (every third feature) or null (odd features): both mean "no attribution".
        given = {n: v for j, (n, v) in enumerate(given.items()) if not (holes[i, j] and j % 3 == 0)}
        items.append({"model": "m", "prediction": "benign", "attributions": given})
    items += [{"model": "m", "prediction": "malignant"} for _ in range(50)]  # none: they cost nothing
    assert client.post("/api/v1/predictions", json={"predictions": items}).status_code == 202
    m = scrape(client)
    w = {"model": "m", "version": "default", "window": "5m"}
    masked = np.where(holes & ((np.arange(30) % 2 == 1) | (np.arange(30) % 3 == 0)), np.nan, sv)
    expected = np.nanmean(np.abs(masked), axis=0)
    assert m.get("mlmon_attribution_samples", **w) == 200
    for j, n in enumerate(names):
        assert m.get("mlmon_attribution_mean_abs", feature=n, **w) == pytest.approx(expected[j], rel=TOL)
    assert m.get("mlmon_attribution_drift", **w) is None  # no reference attributions


def test_bad_attributions_are_refused_naming_the_field_and_counted(world):
    names = world["names"]
    app, _ = make_app(config(names) + "  - {name: plain, task: regression, features: [{name: a, type: numeric}]}\n")
    client = app.test_client()
    assert post(client, world, range(10)).status_code == 202
    cases = [
        ({"model": "m", "prediction": "benign", "attributions": {"nope": 1.0}}, "attributions.nope", "unknown_feature"),
        (
            {"model": "m", "prediction": "benign", "attributions": {names[0]: "big"}},
            f"attributions.{names[0]}",
            "invalid_value",
        ),
        ({"model": "m", "prediction": "benign", "attributions": [1, 2]}, "attributions", "invalid_value"),
        ({"model": "plain", "prediction": 1.0, "attributions": {"a": 0.1}}, "attributions", "invalid_value"),
    ]
    for item, field, reason in cases:
        r = client.post("/api/v1/predictions", json={"predictions": [item]})
        assert r.status_code == 400, item
        problem = r.get_json()["error"]["details"][0]
        assert problem["field"] == field and problem["reason"] == reason, problem
    assert (
        "does not monitor attributions"
        in client.post("/api/v1/predictions", json=cases[3][0]).get_json()["error"]["details"][0]["message"]
    )
    m = scrape(client)
    assert m.get("mlmon_attribution_samples", model="m", version="default", window="5m") == 10  # unchanged
    assert m.get("mlmon_ingest_errors_total", model="m", reason="unknown_feature") == 1
    assert m.get("mlmon_ingest_errors_total", model="m", reason="invalid_value") == 2


def test_a_reference_with_attribution_columns_needs_them_configured(world):
    app, _ = make_app(config(world["names"], ""))
    r = app.test_client().put("/api/v1/models/m/reference", data=reference_csv(world), content_type="text/csv")
    assert r.status_code == 400 and "attributions: true" in r.get_data(as_text=True)


def test_the_reference_profile_survives_json(world):
    from exporter.config import parse_config
    from exporter.stats import reference

    model = parse_config(config(world["names"])).models[0]
    names = world["names"]
    columns = {n: world["x_ref"][:, j].tolist() for j, n in enumerate(names)}
    columns.update({f"attributions.{n}": world["ref"].values[:, j, 1].tolist() for j, n in enumerate(names[:10])})
    profile = reference.build_profile(columns, model)
    again = reference.from_json(profile.as_json(), model)
    assert np.array_equal(np.isnan(again.attributions), np.isnan(profile.attributions))
    assert np.allclose(again.attributions[:10], np.abs(world["ref"].values[:, :10, 1]).mean(axis=0), rtol=TOL)
    assert np.isnan(again.attributions[10:]).all()


def test_shap_attributions_takes_an_explanation_row(world):
    row = world["now"][0]
    got = shap_attributions(row, output=1)
    assert list(got) == world["names"]
    assert np.allclose(list(got.values()), row.values[:, 1])
    with pytest.raises(ValueError, match="outputs"):
        shap_attributions(row)
    one = shap.Explanation(values=row.values[:, 1], feature_names=world["names"])
    assert shap_attributions(one) == dict(zip(world["names"], map(float, row.values[:, 1])))


def test_helpers_against_numpy_and_scipy():
    rng = np.random.default_rng(3)
    for _ in range(200):
        a, b = rng.gamma(1.0, size=8), rng.gamma(1.0, size=8)
        a[rng.random(8) < 0.2] = np.nan
        both = ~np.isnan(a)
        if both.sum() >= 3:
            expected = spearmanr(a[both], b[both]).statistic
            assert attribution.rank_correlation(a, b) == pytest.approx(expected, abs=1e-12)
            p, q = a[both] / a[both].sum(), b[both] / b[both].sum()
            assert attribution.drift(a, b) == pytest.approx(0.5 * np.abs(p - q).sum(), abs=1e-12)


def test_attributions_survive_a_restart_and_turning_them_on_keeps_the_windows(world, tmp_path):
    names = world["names"]
    plain = config(names, "").replace("storage: {backend: memory}", f'storage: {{path: "{tmp_path}"}}')
    app, clock = make_app(plain)
    client = app.test_client()
    assert post(client, world, range(100), with_attributions=False).status_code == 202
    app.extensions["mlmon"].checkpoint()  # a snapshot written without attribution arrays
    on = plain + "    attributions: true\n"
    app, _ = make_app(on, clock)
    client = app.test_client()
    w = {"model": "m", "version": "default", "window": "5m"}
    assert scrape(client).get("mlmon_window_samples", kind="predictions", **w) == 100  # windows kept
    assert (
        client.put("/api/v1/models/m/reference", data=reference_csv(world), content_type="text/csv").status_code == 200
    )
    assert post(client, world, range(100, 300)).status_code == 202
    before = scrape(client).series("mlmon_attribution")
    assert before[("mlmon_attribution_samples", tuple(sorted(w.items())))] == 200
    for checkpoint in (False, True):  # replayed from the journal, then restored from a snapshot
        if checkpoint:
            app.extensions["mlmon"].checkpoint()
        again, _ = make_app(on, clock)
        assert scrape(again.test_client()).series("mlmon_attribution") == before


@pytest.mark.parametrize("bad", ["inf", "big"])
def test_a_reference_attribution_that_is_not_a_finite_number_is_refused(world, bad):
    names = world["names"]
    app, _ = make_app(config(names))
    csv = (
        ",".join([*names, f"attributions.{names[0]}"])
        + "\n"
        + "\n".join(
            ",".join([*(repr(float(v)) for v in row), bad if i == 3 else "0.1"]) for i, row in enumerate(world["x_ref"])
        )
    )
    r = app.test_client().put("/api/v1/models/m/reference", data=csv, content_type="text/csv")
    assert r.status_code == 400 and "attributions" in r.get_data(as_text=True)
    assert scrape(app.test_client()).get("mlmon_reference_attribution_mean_abs", model="m", feature=names[0]) is None
