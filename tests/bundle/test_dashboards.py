"""The generated Grafana dashboards: fresh, and clean by the rules of grafana/dashboard-linter and mixtool
(CONVENTIONS.md §6.3), reproduced here, plus the links the alert rules and provisioning depend on.
tests/e2e/test_dashboards_live.py runs every query against a real Prometheus."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "grafana" / "dashboards"
BUILD = ROOT / "grafana" / "build.py"
EXPECTED = {
    "mlmon-fleet": "mlmon / Fleet",
    "mlmon-model": "mlmon / Model",
    "mlmon-drift": "mlmon / Drift and data quality",
    "mlmon-operations": "mlmon / Operations",
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
MODERN_PANELS = {"timeseries", "stat", "gauge", "table", "heatmap", "bargauge", "text"}
# Grafana unit ids the dashboards may use (a valid unit: panel-units-rule).
UNITS = {"short", "none", "percentunit", "s", "ms", "reqps", "ops", "bytes", "decbytes"}
RANGE_FUNCTIONS = ("rate", "irate", "increase")
COUNTER = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*(?:_total|_bucket|_count|_sum))\b")
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")

# The .lint exclusions (dashboard-linter's format, with a reason for each), as (rule, dashboard uid, panel
# title or "*", target index or None).
EXCLUSIONS = {
    ("target-job-rule", "mlmon-fleet", "Firing alerts", 0): "ALERTS is Prometheus's own series: the meta alerts "
    "about Prometheus and Alertmanager carry their jobs, not the exporter's, and must be counted too.",
    ("target-instance-rule", "mlmon-fleet", "Firing alerts", 0): "As for target-job-rule: ALERTS of every target.",
}


def load() -> dict[str, dict]:
    out = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        d = json.loads(path.read_text())
        out[d["uid"]] = d
    return out


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict]:
    return load()


def panels(d: dict) -> list[dict]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows
    return [p for p in out if p["type"] != "row"]


def targets(d: dict):
    """(panel, index, target) of every query of a dashboard."""
    for p in panels(d):
        for i, t in enumerate(p.get("targets", [])):
            yield p, i, t


def excluded(rule: str, uid: str, panel: str, idx: int | None) -> bool:
    return any(
        r == rule and u == uid and pt in ("*", panel) and (ti is None or ti == idx) for (r, u, pt, ti) in EXCLUSIONS
    )


def strip_calls(expr: str, names: tuple[str, ...]) -> str:
    """The expression without the calls to `names` (and their arguments)."""
    out, i = [], 0
    pattern = re.compile(r"\b(" + "|".join(names) + r")\s*\(")
    while True:
        m = pattern.search(expr, i)
        if not m:
            out.append(expr[i:])
            return "".join(out)
        out.append(expr[i : m.start()])
        depth, j = 1, m.end()
        while depth and j < len(expr):
            depth += {"(": 1, ")": -1}.get(expr[j], 0)
            j += 1
        i = j


def variables(d: dict) -> dict[str, dict]:
    return {v["name"]: v for v in d["templating"]["list"]}


# Freshness and shape.


def test_committed_dashboards_are_what_build_py_generates(tmp_path):
    pytest.importorskip("grafana_foundation_sdk", reason="the generator needs Python >= 3.11")
    run = subprocess.run([sys.executable, str(BUILD), "--out", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    generated = {p.name: p.read_text() for p in tmp_path.glob("*.json")}
    committed = {p.name: p.read_text() for p in DASHBOARDS.glob("*.json")}
    stale = sorted(n for n in generated.keys() | committed.keys() if generated.get(n) != committed.get(n))
    assert not stale, f"grafana/dashboards/ is stale ({', '.join(stale)}): run `python grafana/build.py`"


def test_the_four_dashboards_with_their_uids_and_titles(dashboards):
    assert {uid: d["title"] for uid, d in dashboards.items()} == EXPECTED
    for uid in dashboards:
        assert len(uid) <= 40


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_dashboard_settings(dashboards, uid):
    d = dashboards[uid]
    assert d["tags"] == ["mlmon"]
    assert d["editable"] is False  # uneditable-dashboard
    assert d["graphTooltip"] == 1
    assert d["timezone"] == "utc"
    assert d["refresh"] == "30s"
    assert 39 <= d["schemaVersion"] <= 42
    assert "__inputs" not in d
    assert "DS_PROMETHEUS" not in json.dumps(d)


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_dashboard_links_by_tag_keep_variables_and_time(dashboards, uid):
    links = dashboards[uid]["links"]
    assert any(
        link["type"] == "dashboards" and link["tags"] == ["mlmon"] and link["includeVars"] and link["keepTime"]
        for link in links
    )


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_annotations_show_versions_first_served_and_firing_alerts(dashboards, uid):
    annotations = dashboards[uid]["annotations"]["list"]
    exprs = [a.get("expr", "") for a in annotations]
    # One marker per version at its first prediction: the series' value (ms) is the marker's time.
    (served,) = [a for a in annotations if "mlmon_model_version_first_seen_timestamp_seconds" in a.get("expr", "")]
    assert served["useValueForTime"] is True and served["expr"].endswith(" * 1000")
    assert served["titleFormat"] == "{{model}} {{version}} first served"
    names = variables(dashboards[uid])
    for name in ("job", "instance", "model", "version"):
        assert (f'{name}=~"${name}"' in served["expr"]) == (name in names), (uid, name)
    assert any('ALERTS{alertstate="firing"' in e for e in exprs)
    for a in dashboards[uid]["annotations"]["list"]:
        if "expr" in a:
            assert a["datasource"] == DATASOURCE


def test_fleet_drills_down_into_the_model_dashboard(dashboards):
    urls = re.findall(r'"url": "([^"]+)"', json.dumps(dashboards["mlmon-fleet"]))
    drill = [u for u in urls if u.startswith("/d/mlmon-model/")]
    assert drill and all("${__url_time_range}" in u for u in drill)
    assert any("var-model=${__field.labels.model}" in u for u in drill)
    assert any("var-model=${__data.fields.model}" in u for u in drill)  # the table's rows


# Variables: template-datasource-rule, template-job-rule, template-instance-rule,
# template-on-time-change-reload-rule, template-label-promql-rule.


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_one_datasource_variable(dashboards, uid):
    ds = [v for v in dashboards[uid]["templating"]["list"] if v["type"] == "datasource"]
    assert len(ds) == 1 and ds[0]["name"] == "datasource" and ds[0]["query"] == "prometheus"
    assert ds[0]["label"] == "Data source"


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_job_and_instance_variables(dashboards, uid):
    vs = variables(dashboards[uid])
    for name in ("job", "instance"):
        v = vs[name]
        assert v["type"] == "query" and v["multi"] and v["includeAll"] and v["allValue"] == ".+", name
    assert "$job" in vs["instance"]["query"]


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_query_variables_use_the_datasource_and_reload_on_time_change(dashboards, uid):
    order = [v["name"] for v in dashboards[uid]["templating"]["list"]]
    for v in dashboards[uid]["templating"]["list"]:
        if v["type"] != "query":
            continue
        assert v["datasource"] == DATASOURCE, v["name"]
        assert v["refresh"] == 2, v["name"]
        m = re.fullmatch(r"label_values\((\w+)(\{[^}]*\})?, *(\w+)\)", v["query"])
        assert m and m.group(3) == v["name"], v["query"]
        # Cascading: a variable only refers to variables defined before it.
        for ref in re.findall(r"\$(\w+)", v["query"]):
            assert ref in order[: order.index(v["name"])], (v["name"], ref)
        if v["multi"]:
            assert v["includeAll"] and v["allValue"] == ".+", v["name"]


def test_model_version_window_cascade(dashboards):
    for uid in ("mlmon-model", "mlmon-drift"):
        vs = variables(dashboards[uid])
        assert 'model=~"$model"' in vs["version"]["query"]
        assert 'version=~"$version"' in vs["window"]["query"]
        assert vs["model"]["query"] == 'label_values(mlmon_model_info{job=~"$job",instance=~"$instance"}, model)'


# Panels: panel-datasource-rule, panel-title-description-rule, panel-units-rule, panel-no-targets-rule.


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_panel_ids_are_unique(dashboards, uid):
    ids = [p["id"] for p in dashboards[uid]["panels"]]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_panels_do_not_overlap(dashboards, uid):
    cells: dict[tuple[int, int], str] = {}
    for p in dashboards[uid]["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_every_panel_is_described_and_typed(dashboards, uid):
    for p in panels(dashboards[uid]):
        assert p["type"] in MODERN_PANELS, p["title"]
        assert p.get("title"), p
        assert p.get("description"), p["title"]
        defaults = p["fieldConfig"]["defaults"]
        assert defaults.get("unit") in UNITS, p["title"]
        if defaults["unit"] == "percentunit" and p["type"] != "heatmap":
            assert defaults.get("min") == 0, p["title"]
            if "CPU" not in p["title"]:  # cores: one per core, can exceed 1
                assert defaults.get("max") == 1, p["title"]
        assert defaults.get("thresholds", {}).get("steps"), p["title"]
        assert p.get("targets"), p["title"]  # panel-no-targets-rule


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_panels_and_targets_use_the_datasource_variable(dashboards, uid):
    for p, i, t in targets(dashboards[uid]):
        assert p["datasource"] == DATASOURCE, p["title"]
        assert t["datasource"] == DATASOURCE, (p["title"], i)


# Targets: target-rate-interval-rule, target-job-rule, target-instance-rule, target-counter-agg-rule,
# histogram_quantile over sum by (le). target-promql-rule (it parses) is in test_dashboards_live.py.


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_ranges_use_rate_interval(dashboards, uid):
    for p, i, t in targets(dashboards[uid]):
        for rng in re.findall(r"\[([^\]]*)\]", t["expr"]):
            if not excluded("target-rate-interval-rule", uid, p["title"], i):
                assert rng == "$__rate_interval", (p["title"], t["expr"])


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_counters_only_inside_rate_or_increase(dashboards, uid):
    for p, i, t in targets(dashboards[uid]):
        rest = strip_calls(t["expr"], RANGE_FUNCTIONS)
        if not excluded("target-counter-agg-rule", uid, p["title"], i):
            assert not COUNTER.findall(rest), (p["title"], t["expr"])


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_every_selector_carries_job_and_instance(dashboards, uid):
    for p, i, t in targets(dashboards[uid]):
        expr = t["expr"]
        for name in re.findall(r"\b((?:mlmon|process|scrape|python)_\w+)\b(?!\{)", expr):
            pytest.fail(f"{p['title']}: {name} without matchers in {expr}")
        for _metric, matchers in SELECTOR.findall(expr):
            for rule, matcher in (
                ("target-job-rule", 'job=~"$job"'),
                ("target-instance-rule", 'instance=~"$instance"'),
            ):
                if not excluded(rule, uid, p["title"], i):
                    assert matcher in matchers, (rule, p["title"], expr)


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_percentiles_sum_buckets_by_le(dashboards, uid):
    for p, _, t in targets(dashboards[uid]):
        if "histogram_quantile" in t["expr"]:
            assert re.search(
                r"histogram_quantile\([\d.]+, sum by \(([\w, ]*\b)?le\) \(rate\(\w+_bucket\{", t["expr"]
            ), (
                p["title"],
                t["expr"],
            )
        assert 'le="' not in t["expr"] and "le=~" not in t["expr"], p["title"]


def test_every_exclusion_names_a_real_target_and_gives_a_reason(dashboards):
    for (rule, uid, title, idx), reason in EXCLUSIONS.items():
        assert reason.strip(), rule
        found = [(p, i) for p, i, _ in targets(dashboards[uid]) if title in ("*", p["title"]) and idx in (None, i)]
        assert found, (rule, uid, title, idx)


# Links that other files depend on.


def rule_dashboard_urls() -> list[str]:
    urls = []
    for path in sorted((ROOT / "prometheus" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    urls.append(rule["annotations"]["dashboard_url"])
    return urls


def test_alert_dashboard_urls_open_these_dashboards_with_their_variables(dashboards):
    urls = rule_dashboard_urls()
    assert urls
    for url in urls:
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == "http://localhost:3000", url
        m = re.fullmatch(r"/d/([^/]+)(/[^/]*)?", parts.path)
        assert m and m.group(1) in dashboards, url
        names = variables(dashboards[m.group(1)])
        for param in parse_qs(parts.query):
            assert param.startswith("var-") and param[4:] in names, (url, param)


def test_provisioning_matches_the_dashboards():
    ds = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert [d["uid"] for d in ds if d["type"] == "prometheus"] == ["mlmon-prometheus"]
    providers = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/mlmon.yml").read_text())["providers"]
    assert [(p["folder"], p["options"]["path"]) for p in providers] == [("mlmon", "/var/lib/grafana/dashboards/mlmon")]
    assert all(p["allowUiUpdates"] is False for p in providers)
    # Dashboards live outside the provisioning folder.
    assert not list((ROOT / "grafana/provisioning").rglob("*.json"))
