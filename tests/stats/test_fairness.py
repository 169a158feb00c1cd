"""Every fairness gauge equals fairlearn's on the same window's rows.

Predictions and labels go through the HTTP API (labels with the prediction, before it and after it); the scrape
is compared with fairlearn's MetricFrame per group and its disparity functions (``method="between_groups"`` is
``disparity: spread``; ``disparity: reference`` is computed with numpy from MetricFrame's ``by_group``). Both
sides are ratios of exact counts: they agree to 1e-12 (float rounding only). The estimated group rates (before
the labels) are compared with the same rates computed by numpy from scikit-learn's isotonic calibration of the
reference's scores, on the window's raw scores.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    demographic_parity_ratio,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.datasets import load_breast_cancer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from exporter.config import ConfigError, parse_config
from exporter.stats import fairness
from tests.conftest import make_app, scrape

EXACT = 1e-12

LOAN = """
windows: ["5m", "1h"]
models:
  - name: loan
    task: binary
    classes: [deny, grant]
    positive_class: grant
    features:
      - {{name: income, type: numeric}}
      - {{name: sex, type: categorical}}
      - {{name: age_band, type: categorical}}
    fairness:
      features: [sex, age_band]
{extra}
"""

RATES = {
    "selection_rate": selection_rate,
    "true_positive_rate": true_positive_rate,
    "false_positive_rate": false_positive_rate,
    "accuracy": accuracy_score,
}


def _send(client, model: str, rows: list[dict], y_pred, y_true, seed: int = 0, attributes=()) -> None:
    """Predictions with their features; 10% labelled inline, 20% labels first, the rest labels after. The
    ``attributes`` named go in the prediction's attributes instead of its features."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, size=len(rows), p=[0.1, 0.2, 0.7])
    early = [{"model": model, "id": f"p{i}", "label": y_true[i]} for i in range(len(rows)) if kind[i] == 1]
    if early:
        assert client.post("/api/v1/labels", json={"labels": early}).status_code == 202
    items = []
    for i, features in enumerate(rows):
        item = {"model": model, "id": f"p{i}", "prediction": y_pred[i], "features": features}
        if attributes:
            item["features"] = {k: v for k, v in features.items() if k not in attributes}
            item["attributes"] = {k: v for k, v in features.items() if k in attributes}
        if kind[i] == 0:
            item["label"] = y_true[i]
        items.append(item)
    for start in range(0, len(items), 500):
        r = client.post("/api/v1/predictions", json={"predictions": items[start : start + 500]})
        assert r.status_code == 202, r.get_json()
    late = [{"model": model, "id": f"p{i}", "label": y_true[i]} for i in range(len(rows)) if kind[i] == 2]
    assert client.post("/api/v1/labels", json={"labels": late}).status_code == 202


def _loan_data(n: int, seed: int = 7):
    """Three age bands and two sexes with different selection rates and true positive rates."""
    rng = np.random.default_rng(seed)
    sex = rng.choice(["male", "female"], size=n, p=[0.55, 0.45])
    age = rng.choice(["18-30", "31-50", "51+"], size=n, p=[0.3, 0.45, 0.25])
    base = {"18-30": 0.3, "31-50": 0.5, "51+": 0.4}
    qualified = rng.random(n) < np.array([base[a] for a in age])
    # The model grants qualified men more often than qualified women, and some unqualified people.
    tpr = np.where(sex == "male", 0.85, 0.6) - np.where(age == "51+", 0.1, 0.0)
    fpr = np.where(sex == "male", 0.15, 0.08)
    granted = np.where(qualified, rng.random(n) < tpr, rng.random(n) < fpr)
    y_true = np.where(qualified, "grant", "deny")
    y_pred = np.where(granted, "grant", "deny")
    rows = [{"income": float(x), "sex": s, "age_band": a} for x, s, a in zip(rng.normal(size=n), sex, age)]
    return rows, y_pred, y_true, {"sex": sex, "age_band": age}


def _expected(y_true, y_pred, groups, positive: str, reference: str | None):
    """fairlearn's figures per group, and the disparities (spread by fairlearn; reference mode with numpy)."""
    yt, yp = (np.asarray(y_true) == positive).astype(int), (np.asarray(y_pred) == positive).astype(int)
    frame = MetricFrame(metrics=RATES, y_true=yt, y_pred=yp, sensitive_features=groups)
    by_group = frame.by_group
    if reference is None:
        disparity = {
            "demographic_parity_difference": demographic_parity_difference(yt, yp, sensitive_features=groups),
            "demographic_parity_ratio": demographic_parity_ratio(yt, yp, sensitive_features=groups),
            "equal_opportunity_difference": frame.difference(method="between_groups")["true_positive_rate"],
            "equalized_odds_difference": equalized_odds_difference(yt, yp, sensitive_features=groups),
            "accuracy_difference": frame.difference(method="between_groups")["accuracy"],
        }
    else:
        ref, others = by_group.loc[reference], by_group.drop(index=reference)
        gap = (others - ref).abs().max()
        disparity = {
            "demographic_parity_difference": gap["selection_rate"],
            "demographic_parity_ratio": (others["selection_rate"] / ref["selection_rate"]).min(),
            "equal_opportunity_difference": gap["true_positive_rate"],
            "equalized_odds_difference": max(gap["true_positive_rate"], gap["false_positive_rate"]),
            "accuracy_difference": gap["accuracy"],
        }
    return by_group, disparity


def _check(m, model: str, feature: str, y_true, y_pred, groups, positive: str, reference: str | None = None):
    by_group, disparity = _expected(y_true, y_pred, groups, positive, reference)
    w = {"model": model, "version": "default", "window": "5m", "feature": feature}
    published = {s.labels["group"] for s in m.all("mlmon_fairness_selection_rate", **w)}
    assert published == {str(g) for g in by_group.index}
    for group, expected in by_group.iterrows():
        inside = np.asarray(groups) == group
        g = {**w, "group": str(group)}
        assert m.get("mlmon_fairness_group_samples", kind="predictions", **g) == inside.sum()
        assert m.get("mlmon_fairness_group_samples", kind="labeled", **g) == inside.sum()
        positives = (np.asarray(y_pred)[inside] == positive).sum()
        assert m.get("mlmon_fairness_group_predicted_positive", **g) == positives
        outcomes = {o: m.get("mlmon_fairness_group_outcomes", outcome=o, **g) for o in fairness.OUTCOMES}
        assert sum(outcomes.values()) == inside.sum()
        assert outcomes["tp"] + outcomes["fp"] == positives
        for name in RATES:
            got = m.get(f"mlmon_fairness_{name}", **g)
            assert got == pytest.approx(expected[name], abs=EXACT), (feature, group, name)
    for name, expected in disparity.items():
        got = m.get(f"mlmon_fairness_{name}", **w)
        assert got == pytest.approx(expected, abs=EXACT), (feature, name)
    return disparity


def test_spread_disparities_equal_fairlearns_between_groups():
    app, _ = make_app(LOAN.format(extra=""))
    client = app.test_client()
    rows, y_pred, y_true, groups = _loan_data(3000)
    _send(client, "loan", rows, y_pred.tolist(), y_true.tolist())
    m = scrape(client)
    for feature in ("sex", "age_band"):
        disparity = _check(m, "loan", feature, y_true, y_pred, groups[feature], "grant")
        assert disparity["equal_opportunity_difference"] > 0.1  # the data has a disparity to find
    # A fairness feature not listed under segments publishes no segment families (its groups keep counts only).
    assert m.all("mlmon_segment_window_samples") == []
    # Spread mode: no reference group for the rules to join.
    assert m.all("mlmon_fairness_reference_group") == []


def test_reference_disparities_are_gaps_to_the_reference_group():
    extra = "      reference_group: {sex: male, age_band: 31-50}"
    app, _ = make_app(LOAN.format(extra=extra))
    client = app.test_client()
    rows, y_pred, y_true, groups = _loan_data(3000, seed=8)
    _send(client, "loan", rows, y_pred.tolist(), y_true.tolist(), seed=1)
    m = scrape(client)
    _check(m, "loan", "sex", y_true, y_pred, groups["sex"], "grant", reference="male")
    _check(m, "loan", "age_band", y_true, y_pred, groups["age_band"], "grant", reference="31-50")
    # The reference groups, per model and feature, for the bundled fairness rules.
    published = {(s.labels["feature"], s.labels["group"]): s.value for s in m.all("mlmon_fairness_reference_group")}
    assert published == {("sex", "male"): 1, ("age_band", "31-50"): 1}
    assert {s.labels["model"] for s in m.all("mlmon_fairness_reference_group")} == {"loan"}


def test_groups_from_attributes_the_model_does_not_use_equal_fairlearns():
    """Sensitive groups sent as attributes (not model inputs) give the same figures; they stay out of drift,
    and a reference (which knows only the features) leaves their groups as they were."""
    text = """
    windows: ["5m", "1h"]
    models:
      - name: loan
        task: binary
        classes: [deny, grant]
        positive_class: grant
        features: [{name: income, type: numeric}]
        attributes: [sex, age_band]
        fairness: {features: [sex, age_band], disparity: reference, reference_group: {sex: male, age_band: 31-50}}
    """
    app, _ = make_app(text)
    client = app.test_client()
    rows, y_pred, y_true, groups = _loan_data(3000, seed=11)
    reference = "income\n" + "\n".join(str(v) for v in np.random.default_rng(0).normal(size=500))
    assert client.put("/api/v1/models/loan/reference", data=reference, content_type="text/csv").status_code == 200
    _send(client, "loan", rows, y_pred.tolist(), y_true.tolist(), seed=4, attributes=("sex", "age_band"))
    m = scrape(client)
    _check(m, "loan", "sex", y_true, y_pred, groups["sex"], "grant", reference="male")
    _check(m, "loan", "age_band", y_true, y_pred, groups["age_band"], "grant", reference="31-50")
    drifting = {s.labels["feature"] for s in m.all("mlmon_feature_drift")}
    missing = {s.labels["feature"] for s in m.all("mlmon_feature_missing_ratio")}
    assert drifting == missing == {"income"}
    # A new reference keeps the groups the attributes have: a female is still a female, not "other".
    w = {"model": "loan", "version": "default", "window": "5m", "feature": "sex", "kind": "predictions"}
    females = m.get("mlmon_fairness_group_samples", group="female", **w)
    assert client.put("/api/v1/models/loan/reference", data=reference, content_type="text/csv").status_code == 200
    item = {"model": "loan", "prediction": "deny", "features": {"income": 1.0}, "attributes": {"sex": "female"}}
    assert client.post("/api/v1/predictions", json=item).status_code == 202
    assert scrape(client).get("mlmon_fairness_group_samples", group="female", **w) == females + 1
    # Sent as a feature, an attribute is refused with a hint.
    r = client.post("/api/v1/predictions", json={"model": "loan", "prediction": "deny", "features": {"sex": "male"}})
    assert r.status_code == 400
    (detail,) = r.get_json()["error"]["details"]
    assert detail["field"] == "features.sex" and "send it under 'attributes'" in detail["message"]


def test_estimated_group_rates_equal_numpy_on_the_calibrated_scores():
    """Before any label: each group's expected outcomes are the sums of its predictions' calibrated
    probabilities (isotonic, fitted by scikit-learn on the reference); rates and gaps follow from them."""
    rng = np.random.default_rng(5)

    def rows(n: int, older_shift: float):
        group = rng.choice(["young", "old"], size=n, p=[0.6, 0.4])
        x = rng.normal(np.where(group == "old", older_shift, 0.0), 1.0)
        truth = rng.random(n) < 1 / (1 + np.exp(-2 * x))
        return group, x, (1 / (1 + np.exp(-2 * x))) ** 2, truth  # the scores are over-confident on "deny"

    _, _, s_ref, y_ref = rows(4000, 0.0)
    text = """
    windows: ["5m", "1h"]
    models:
      - name: loan
        task: binary
        classes: [deny, grant]
        positive_class: grant
        features: [{name: x, type: numeric}]
        attributes: [age]
        fairness: {features: [age], reference_group: {age: young}}
    """
    app, clock = make_app(text)
    client = app.test_client()
    x_ref = rng.normal(size=len(s_ref))
    reference = "x,score,label\n" + "\n".join(
        f"{x},{s},{'grant' if y else 'deny'}" for x, s, y in zip(x_ref, s_ref, y_ref)
    )
    r = client.put("/api/v1/models/loan/reference", data=reference, content_type="text/csv")
    assert r.status_code == 200 and r.get_json()["calibration"]["method"] == "isotonic", r.get_json()

    group, x, score, _ = rows(3000, 0.8)
    predicted = score >= 0.3
    items = [
        {
            "model": "loan",
            "id": f"p{i}",
            "prediction": "grant" if predicted[i] else "deny",
            "score": float(score[i]),
            "features": {"x": float(x[i])},
            "attributes": {"age": str(group[i])},
        }
        for i in range(len(x))
    ]
    assert client.post("/api/v1/predictions", json={"predictions": items}).status_code == 202
    m = scrape(client)

    p = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(s_ref, y_ref).predict(score)
    w = {"model": "loan", "version": "default", "window": "5m", "feature": "age"}
    expected_rates = {}
    for g in ("young", "old"):
        inside = group == g
        pi, yes = p[inside], predicted[inside]
        outcomes = {
            "tp": pi[yes].sum(),
            "fp": (1 - pi[yes]).sum(),
            "tn": (1 - pi[~yes]).sum(),
            "fn": pi[~yes].sum(),
        }
        for outcome, value in outcomes.items():
            got = m.get("mlmon_fairness_group_estimated_outcomes", group=g, outcome=outcome, **w)
            assert got == pytest.approx(value, rel=1e-9, abs=1e-9), (g, outcome)
        rates = {
            "true_positive_rate": outcomes["tp"] / (outcomes["tp"] + outcomes["fn"]),
            "false_positive_rate": outcomes["fp"] / (outcomes["fp"] + outcomes["tn"]),
            "accuracy": (outcomes["tp"] + outcomes["tn"]) / inside.sum(),
        }
        for name, value in rates.items():
            assert m.get(f"mlmon_fairness_estimated_{name}", group=g, **w) == pytest.approx(value, rel=1e-9)
        expected_rates[g] = rates
        # No label yet: the realized rates are absent, the estimated ones speak.
        assert m.get("mlmon_fairness_true_positive_rate", group=g, **w) is None
    tpr_gap = abs(expected_rates["old"]["true_positive_rate"] - expected_rates["young"]["true_positive_rate"])
    fpr_gap = abs(expected_rates["old"]["false_positive_rate"] - expected_rates["young"]["false_positive_rate"])
    acc_gap = abs(expected_rates["old"]["accuracy"] - expected_rates["young"]["accuracy"])
    got = {name: m.get(f"mlmon_fairness_estimated_{name}", **w) for name in fairness.ESTIMATED_DISPARITIES}
    assert got == pytest.approx(
        {
            "equal_opportunity_difference": tpr_gap,
            "equalized_odds_difference": max(tpr_gap, fpr_gap),
            "accuracy_difference": acc_gap,
        },
        rel=1e-9,
    )
    assert tpr_gap > 0.05  # the shifted group gets another true positive rate: there is a gap to find

    # They survive a restart, replayed from the journal and restored from a snapshot; a snapshot whose groups
    # lack the estimate's arrays (written before groups kept them) restores with them empty.
    series = {k: v for k, v in m.series("mlmon_fairness_").items()}
    for checkpoint in (False, True):
        if checkpoint:
            app.extensions["mlmon"].checkpoint()
        again, _ = make_app(text, clock)
        assert scrape(again.test_client()).series("mlmon_fairness_") == series
    state = app.extensions["mlmon"].models["loan"]
    for rings in state.versions["default"].segments.values():
        for ring in rings:
            del ring.arrays["est_n"], ring.arrays["est_confusion"]
    app.extensions["mlmon"].checkpoint()
    old, _ = make_app(text, clock)
    restored = scrape(old.test_client())
    assert restored.get("mlmon_fairness_estimated_accuracy", group="old", **w) is None
    assert restored.get("mlmon_fairness_selection_rate", group="old", **w) == m.get(
        "mlmon_fairness_selection_rate", group="old", **w
    )


@pytest.mark.parametrize(
    "attributes, field, reason",
    [
        ({"colour": "red"}, "attributes.colour", "unknown_attribute"),
        ({"income": 3}, "attributes.income", "unknown_attribute"),
        ({"sex": {"a": 1}}, "attributes.sex", "invalid_value"),
        ({"sex": [1]}, "attributes.sex", "invalid_value"),
        ({"sex": "x" * 1025}, "attributes.sex", "invalid_value"),
        (["sex"], "attributes", "invalid_value"),
    ],
)
def test_bad_attributes_are_refused_by_name_and_counted(attributes, field, reason):
    text = """
    models:
      - name: loan
        task: binary
        classes: [deny, grant]
        positive_class: grant
        features: [{name: income, type: numeric}]
        attributes: [sex]
        fairness: {features: [sex]}
    """
    app, _ = make_app(text)
    client = app.test_client()
    before = scrape(client).get("mlmon_ingest_errors_total", model="loan", reason=reason) or 0
    item = {"model": "loan", "prediction": "deny", "attributes": attributes}
    r = client.post("/api/v1/predictions", json=item)
    assert r.status_code == 400
    details = r.get_json()["error"]["details"]
    assert [(d["field"], d["reason"]) for d in details] == [(field, reason)]
    assert scrape(client).get("mlmon_ingest_errors_total", model="loan", reason=reason) == before + 1
    assert scrape(client).get("mlmon_predictions_total", model="loan", version="default") in (None, 0)


def test_breast_cancer_model_fairness_across_tumour_size_equals_fairlearns():
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    # A derived categorical attribute: is the mean radius above the median (the model still sees the radius)?
    size = np.where(x["mean radius"] > x["mean radius"].median(), "large", "small")
    x_train, x_test, y_train, y_test, _, size_test = train_test_split(x, y, size, test_size=0.5, random_state=0)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x_train, y_train)
    names = np.array(["malignant", "benign"])
    y_pred, y_true = names[model.predict(x_test)], names[np.asarray(y_test)]
    text = """
    models:
      - name: cancer
        task: binary
        classes: [malignant, benign]
        positive_class: malignant
        features: [{name: mean radius, type: numeric}, {name: size, type: categorical}]
        fairness: {features: [size], reference_group: {size: small}}
    """
    for reference in (None, "small"):  # disparity: spread, then reference
        config = text if reference else text.replace(", reference_group: {size: small}", "")
        app, _ = make_app(config)
        client = app.test_client()
        rows = [{"mean radius": float(r), "size": s} for r, s in zip(x_test["mean radius"], size_test)]
        _send(client, "cancer", rows, y_pred.tolist(), y_true.tolist(), seed=3)
        m = scrape(client)
        _check(m, "cancer", "size", y_true, y_pred, size_test, "malignant", reference=reference)


def test_values_beyond_top_go_to_other_which_is_not_compared():
    extra = "    segments: {features: [age_band], top: 2}"
    app, _ = make_app(LOAN.format(extra=extra).replace("[sex, age_band]", "[age_band]"))
    client = app.test_client()
    rows, y_pred, y_true, groups = _loan_data(2000, seed=9)
    _send(client, "loan", rows, y_pred.tolist(), y_true.tolist(), seed=2)
    m = scrape(client)
    age = groups["age_band"]
    kept = [a for a in dict.fromkeys(age)][:2]  # without a reference: the first values seen
    w = {"model": "loan", "version": "default", "window": "5m", "feature": "age_band"}
    other = ~np.isin(age, kept)
    assert m.get("mlmon_fairness_group_samples", group="other", kind="predictions", **w) == other.sum()
    # Listed under segments too, the feature's segments are its groups, with the same counts.
    seg = {"model": "loan", "version": "default", "window": "5m", "segment_feature": "age_band"}
    for group in (*kept, "other"):
        samples = m.get("mlmon_fairness_group_samples", group=group, kind="predictions", **w)
        assert m.get("mlmon_segment_window_samples", segment=group, kind="predictions", **seg) == samples
    by_group, disparity = _expected(y_true[~other], y_pred[~other], age[~other], "grant", None)
    for name, expected in disparity.items():
        assert m.get(f"mlmon_fairness_{name}", **w) == pytest.approx(expected, abs=EXACT)


def test_the_reference_group_has_its_own_segment_even_when_seen_late():
    extra = "      reference_group: {sex: male}\n    segments: {features: [sex], top: 1}"
    app, _ = make_app(LOAN.format(extra=extra).replace("[sex, age_band]", "[sex]"))
    client = app.test_client()
    rows = [{"income": 0.0, "sex": s} for s in ["female", "x", "y", "male", "male"]]
    _send(client, "loan", rows, ["grant", "deny", "grant", "grant", "deny"], ["grant"] * 5)
    m = scrape(client)
    w = {"model": "loan", "version": "default", "window": "5m", "feature": "sex"}
    groups = {s.labels["group"]: s.value for s in m.all("mlmon_fairness_group_samples", kind="predictions", **w)}
    assert groups == {"female": 1, "other": 2, "male": 2}
    assert m.get("mlmon_fairness_demographic_parity_difference", **w) == pytest.approx(0.5)  # female 1, male 1/2


def test_undefined_rates_and_disparities_are_absent_never_nan():
    extra = "      reference_group: {sex: male}"
    app, clock = make_app(LOAN.format(extra=extra).replace("[sex, age_band]", "[sex]"))
    client = app.test_client()
    # Women: only negatives, labelled; men: predictions without labels.
    items = [
        {"model": "loan", "prediction": "deny", "label": "deny", "features": {"sex": "female"}},
        {"model": "loan", "prediction": "deny", "label": "deny", "features": {"sex": "female"}},
        {"model": "loan", "id": "m1", "prediction": "grant", "features": {"sex": "male"}},
    ]
    assert client.post("/api/v1/predictions", json={"predictions": items}).status_code == 202
    m = scrape(client)
    w = {"model": "loan", "version": "default", "window": "5m", "feature": "sex"}
    assert m.get("mlmon_fairness_selection_rate", group="female", **w) == 0
    assert m.get("mlmon_fairness_selection_rate", group="male", **w) == 1
    assert m.get("mlmon_fairness_false_positive_rate", group="female", **w) == 0
    assert m.get("mlmon_fairness_true_positive_rate", group="female", **w) is None  # no positives
    assert m.get("mlmon_fairness_accuracy", group="male", **w) is None  # no labels
    assert m.get("mlmon_fairness_group_samples", group="male", kind="labeled", **w) == 0
    assert m.get("mlmon_fairness_group_outcomes", group="male", outcome="tp", **w) == 0
    assert m.get("mlmon_fairness_demographic_parity_difference", **w) == 1
    assert m.get("mlmon_fairness_demographic_parity_ratio", **w) == 0
    for name in ("equal_opportunity_difference", "equalized_odds_difference", "accuracy_difference"):
        assert m.get(f"mlmon_fairness_{name}", **w) is None, name
    # The windows move on: the counts stay (0), every rate and disparity goes.
    clock.advance(400)
    m = scrape(client)
    assert m.get("mlmon_fairness_group_samples", group="male", kind="predictions", **w) == 0
    assert not m.all("mlmon_fairness_selection_rate", **w)
    assert not m.all("mlmon_fairness_demographic_parity_difference", **w)
    assert "NaN" not in m.text


def test_without_data_for_the_reference_group_its_disparities_are_absent():
    app, _ = make_app(LOAN.format(extra="      reference_group: {sex: male}").replace("[sex, age_band]", "[sex]"))
    client = app.test_client()
    rows = [{"income": 0.0, "sex": s} for s in ["female", "female", "other-value"]]
    _send(client, "loan", rows, ["grant", "deny", "grant"], ["grant", "deny", "deny"])
    m = scrape(client)
    w = {"model": "loan", "version": "default", "window": "5m", "feature": "sex"}
    assert m.get("mlmon_fairness_selection_rate", group="female", **w) == 0.5
    for name in fairness.DISPARITIES:
        assert m.get(f"mlmon_fairness_{name}", **w) is None, name


def test_a_single_group_has_no_disparity():
    rates = {"a": fairness.group_rates(fairness.GroupCounts(10, 4, 3, 1, 5, 1))}
    assert all(v is None for v in fairness.disparities(rates).values())
    assert all(v is None for v in fairness.disparities(rates, reference="a").values())


def test_ratio_of_selection_rates_that_are_all_zero_is_absent():
    zero = fairness.group_rates(fairness.GroupCounts(10, 0, 0, 0, 10, 0))
    out = fairness.disparities({"a": zero, "b": zero})
    assert out["demographic_parity_difference"] == 0 and out["demographic_parity_ratio"] is None
    assert not any(isinstance(v, float) and math.isnan(v) for v in out.values())


# -- config -------------------------------------------------------------------------------------------------


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(textwrap.dedent(text), "c.yml")
    return exc.value.problems


MODEL = """
models:
  - name: m
    task: {task}
    {classes}
    features: [{{name: sex, type: categorical}}, {{name: age, type: numeric}}]
    fairness: {fairness}
"""


def _model(fairness_text: str, task: str = "binary"):
    classes = "" if task == "regression" else "classes: [a, b, c]" if task == "multiclass" else "classes: [no, yes]"
    return MODEL.format(task=task, classes=classes, fairness=fairness_text)


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            _model("{features: [sex]}", "multiclass"),
            "line 7: models[0].fairness: applies to binary models only: its rates need a positive class",
        ),
        (_model("{features: [sex]}", "regression"), "models[0].fairness: applies to binary models only"),
        (_model("{features: [colour]}"), "line 7: models[0].fairness.features: must list distinct categorical"),
        (_model("{features: [age]}"), "models[0].fairness.features: must list distinct categorical"),
        (_model("{features: [sex, sex]}"), "models[0].fairness.features: must list distinct categorical"),
        (_model("{features: []}"), "models[0].fairness.features: must list distinct categorical"),
        (_model("{reference_group: {sex: f}}"), "models[0].fairness.features: is required"),
        (_model("{features: [sex], disparity: max}"), "models[0].fairness.disparity: must be one of spread, reference"),
        (_model("{features: [sex], disparity: reference}"), "disparity: reference needs a group for ['sex']"),
        (
            _model("{features: [sex], disparity: spread, reference_group: {sex: f}}"),
            "models[0].fairness.reference_group: only applies to disparity: reference",
        ),
        (_model("{features: [sex], reference_group: {age: 3}}"), "reference_group.age: not a fairness feature"),
        (_model("{features: [sex], reference_group: {sex: [f]}}"), "reference_group.sex: must be a value"),
        (_model("{features: [sex], reference_group: {sex: other}}"), "'other' is the bucket of the values beyond"),
        (_model("{features: [sex], reference_group: [sex]}"), "must map each fairness feature to its reference group"),
        (_model("{features: [sex], colour: 1}"), "models[0].fairness.colour: unknown key"),
    ],
)
def test_fairness_config_errors_name_the_key_and_line(text, expected):
    found = "\n".join(problems(text))
    assert expected in found, found


def test_fairness_config_is_read_into_the_model_and_its_segments():
    text = _model("{features: [sex], reference_group: {sex: female}}").replace(
        "    fairness:", "    segments: {features: [sex], top: 3}\n    fairness:"
    )
    model = parse_config(textwrap.dedent(text)).models[0]
    assert model.fairness_features == ("sex",)
    assert model.fairness_reference_group == {"sex": "female"}
    assert model.fairness_disparity == "reference"  # the default with a reference group
    assert model.segment_features == ("sex",) and model.segment_top == 3
    spread = parse_config(textwrap.dedent(_model("{features: [sex]}"))).models[0]
    assert spread.fairness_disparity == "spread" and spread.segment_features == ("sex",)


def test_a_new_reference_keeps_the_predicted_class_counts(tmp_path):
    """Predicted classes are not binned against the reference: a reference upload leaves the selection rates."""
    app, _ = make_app(LOAN.format(extra="").replace("[sex, age_band]", "[sex]"))
    client = app.test_client()
    rows, y_pred, y_true, groups = _loan_data(500, seed=11)
    _send(client, "loan", rows, y_pred.tolist(), y_true.tolist())
    before = scrape(client)
    rng = np.random.default_rng(12)
    lines = ["income,sex,age_band"] + [f"{rng.normal():.3f},{s},18-30" for s in rng.choice(["male", "female"], 50)]
    r = client.put("/api/v1/models/loan/reference", data="\n".join(lines) + "\n", content_type="text/csv")
    assert r.status_code == 200, r.get_json()
    after = scrape(client)
    for family in ("mlmon_fairness_selection_rate", "mlmon_fairness_demographic_parity_difference"):
        assert {s.labels["window"] + s.labels.get("group", ""): s.value for s in after.all(family)} == {
            s.labels["window"] + s.labels.get("group", ""): s.value for s in before.all(family)
        }
    _check(after, "loan", "sex", y_true, y_pred, groups["sex"], "grant")


ATTRIBUTES = """
models:
  - name: m
    task: binary
    classes: [no, yes]
    features: [{{name: sex, type: categorical}}, {{name: age, type: numeric}}]
    attributes: {attributes}
    segments: {{features: {segments}}}
"""


@pytest.mark.parametrize(
    "attributes, segments, expected",
    [
        ("[sex]", "[sex]", "models[0].attributes[0]: 'sex' is a feature of the model; an attribute is a value it"),
        ("[region, region]", "[sex]", "models[0].attributes[1]: duplicate attribute 'region'"),
        ("region", "[sex]", "models[0].attributes: must be a non-empty list of attribute names"),
        ("[]", "[sex]", "models[0].attributes: must be a non-empty list of attribute names"),
        ("[[a]]", "[sex]", "models[0].attributes[0]: must be a name of 1 to 128 printable characters"),
        (f"[{', '.join(f'a{i}' for i in range(33))}]", "[sex]", "models[0].attributes: at most 32 attributes"),
        ("[region]", "[colour]", "attributes: ['region']"),  # the message lists what segments may name
    ],
)
def test_attribute_config_errors_name_the_key(attributes, segments, expected):
    found = "\n".join(problems(ATTRIBUTES.format(attributes=attributes, segments=segments)))
    assert expected in found, found


def test_segments_and_fairness_may_name_attributes():
    text = (
        ATTRIBUTES.format(attributes="[region, band]", segments="[band, sex]") + "    fairness: {features: [region]}\n"
    )
    model = parse_config(textwrap.dedent(text)).models[0]
    assert model.attributes == ("region", "band")
    assert model.segment_features == ("band", "sex", "region")
    assert model.fairness_features == ("region",)
    assert [f.name for f in model.features] == ["sex", "age"]  # attributes are no features: no drift, no reference
