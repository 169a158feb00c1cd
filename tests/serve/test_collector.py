"""The series the collector keeps from one scrape to the next (collector._StaticSeries: thresholds, drift
decisions, the reference's own figures, written once per config and reference) against an exporter that
never kept any."""

from __future__ import annotations

import numpy as np

from tests.conftest import Clock, Metrics, make_app, scrape

CONFIG = """
windows: ["5m", "1h"]
storage: {backend: memory}
limits: {max_versions_per_model: 2}
thresholds: {accuracy_min: 0.8, evidence_confidence: 0.95}
models:
  - name: loan
    task: binary
    classes: [deny, grant]
    positive_class: grant
    features: [{name: x, type: numeric}, {name: y, type: numeric}, {name: c, type: categorical}]
    attributes: [age]
    fairness: {features: [age], reference_group: {age: young}}
    drift: {min_samples: 20, bins: true}
    attributions: true
    thresholds: {accuracy_min: 0.9}
  - name: price
    task: regression
    features: [{name: size, type: numeric}, {name: zone, type: categorical}]
    drift: {min_samples: 20, method: ks, bins: true}
"""

# The families of those series; each must be in the scrapes below, so that each is checked.
STATIC = {
    "mlmon_alert_threshold",
    "mlmon_calibration_info",
    "mlmon_drift_threshold",
    "mlmon_drift_decision",
    "mlmon_reference_rows",
    "mlmon_reference_bin_ratio",
    "mlmon_multivariate_drift_threshold",
    "mlmon_reference_attribution_mean_abs",
    "mlmon_reference_attribution_rank",
    "mlmon_fairness_reference_group",
}
# The exporter's own operation, which differs between two exporters with different pasts.
OPERATIONS = ("mlmon_http_", "mlmon_collect_duration", "mlmon_storage_", "mlmon_ingest_throttled", "mlmon_idempotent")


def loan_reference(seed: int, rows: int, categories: list[str], shift: float) -> str:
    rng = np.random.default_rng(seed)
    x, y = rng.normal(shift, 1, rows), rng.normal(0, 1, rows)
    c = rng.choice(categories, rows)
    score = 1 / (1 + np.exp(-2 * x))
    label = np.where(rng.random(rows) < score, "grant", "deny")
    lines = ["x,y,c,score,label,attributions.x,attributions.y,attributions.c"]
    lines += [
        f"{a:.4f},{b:.4f},{k},{s:.4f},{t},{a * shift:.4f},{b * 0.1:.4f},0.01"
        for a, b, k, s, t in zip(x, y, c, score, label)
    ]
    return "\n".join(lines)


def price_reference(seed: int, rows: int, zones: list[str]) -> str:
    rng = np.random.default_rng(seed)
    return "size,zone\n" + "\n".join(f"{a:.3f},{z}" for a, z in zip(rng.normal(size=rows), rng.choice(zones, rows)))


def use(client, loan: str, price: str) -> None:
    for model, csv in (("loan", loan), ("price", price)):
        r = client.put(f"/api/v1/models/{model}/reference", data=csv, content_type="text/csv")
        assert r.status_code == 200, r.get_json()


def send(client, version: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(120):
        x = float(rng.normal())
        items.append(
            {
                "model": "loan",
                "version": version,
                "id": f"l-{version}-{i}",
                "prediction": "grant" if x > 0 else "deny",
                "score": float(1 / (1 + np.exp(-2 * x))),
                "features": {"x": x, "y": float(rng.normal()), "c": str(rng.choice(["u", "v", "w"]))},
                "attributes": {"age": str(rng.choice(["young", "old"]))},
                "attributions": {"x": x / 2, "y": 0.05, "c": 0.01},
            }
        )
        items.append(
            {
                "model": "price",
                "version": version,
                "id": f"p-{version}-{i}",
                "prediction": float(rng.normal(100, 10)),
                "features": {"size": float(rng.normal()), "zone": str(rng.choice(["n", "s"]))},
            }
        )
    assert client.post("/api/v1/predictions", json={"predictions": items}).status_code == 202
    labels = [
        {"model": "loan", "id": f"l-{version}-{i}", "label": str(rng.choice(["deny", "grant"]))} for i in range(60)
    ]
    labels += [{"model": "price", "id": f"p-{version}-{i}", "label": float(rng.normal(100, 10))} for i in range(60)]
    assert client.post("/api/v1/labels", json={"labels": labels}).status_code == 202


def series(m: Metrics, families=None) -> dict:
    """Every mlmon_ sample of the scrape (of ``families`` only, if given) by name and labels; the value as its
    repr (a NaN threshold equals itself)."""

    def family(name: str) -> str:
        for suffix in ("_total", "_bucket", "_count", "_sum"):
            if name.endswith(suffix) and name[: -len(suffix)] in families:
                return name[: -len(suffix)]
        return name

    return {
        (s.name, tuple(sorted(s.labels.items()))): repr(s.value)
        for s in m.samples
        if s.name.startswith("mlmon_")
        and not s.name.startswith(OPERATIONS)
        and (families is None or family(s.name) in families)
    }


def test_kept_series_are_those_of_a_fresh_exporter_after_a_new_reference_a_reset_and_retired_versions():
    old = (loan_reference(1, 800, ["u", "v", "gone"], 0.0), price_reference(2, 400, ["n", "s", "gone"]))
    new = (loan_reference(3, 600, ["u", "v", "w"], 0.7), price_reference(4, 300, ["n", "s"]))
    app, clock = make_app(CONFIG)
    client = app.test_client()
    use(client, *old)
    send(client, "v1", seed=10)
    before = scrape(client)
    assert series(scrape(client)) == series(before)  # the second scrape writes the kept series from their text
    assert 'bin="gone"' in before.text

    use(client, *new)
    after = scrape(client)
    fresh_app, fresh_clock = make_app(CONFIG)
    fresh = fresh_app.test_client()
    use(fresh, *new)
    expected = series(scrape(fresh), STATIC)
    assert {name for name, _ in expected} == STATIC  # every family of kept series is checked
    assert series(after, STATIC) == expected
    assert series(after, STATIC) != series(before, STATIC) and 'bin="gone"' not in after.text

    # A reset and new versions (v1 retired by v3: two versions at most) leave the kept series as they are;
    # the rest follows the same traffic as in the fresh exporter.
    for name in ("loan", "price"):
        assert client.post(f"/api/v1/models/{name}/reset").status_code == 200
    clock.now = fresh_clock.now = Clock().now + 3600
    for version, seed in (("v1", 20), ("v2", 21), ("v3", 22)):
        send(client, version, seed)
        send(fresh, version, seed)
        assert series(scrape(client)) == series(scrape(fresh))
    last = scrape(client)
    assert last.get("mlmon_retired_versions_total", model="loan") == 1 and 'version="v1"' not in last.text
