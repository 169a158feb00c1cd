"""Every query of every dashboard, run against a real Prometheus scraping the demo (exporter, example model
server, traffic with drift, late labels and a v2 deployment): each parses and returns data.

Grafana's variables are replaced by values present in the data (multi-value variables by a regex alternation
of every value, as Grafana's "All" would match) and its macros by durations."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import requests

from tests.e2e.demo_run import prom_query

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "grafana" / "dashboards"
# The demo scrapes every 2 s; Grafana's $__rate_interval is at least 4 scrape intervals.
MACROS = {"$__rate_interval": "20s", "$__interval": "2s", "$__range": "5m"}

# Targets allowed to return nothing, as (dashboard uid, panel title): reason.
MAY_BE_EMPTY = {
    ("mlmon-drift", "Unseen categories"): "the demo's models have numeric features only",
    ("mlmon-drift", "Segments: drifting features"): "examples/demo/mlmon.yml lists no `segments:` (its "
    "age_group is a fairness attribute only)",
    ("mlmon-drift", "Segments: labelled samples and accuracy"): "examples/demo/mlmon.yml lists no `segments:`",
}
# Variables that may have no value, with the same reason.
VARIABLES_MAY_BE_EMPTY = {"segment": "examples/demo/mlmon.yml lists no `segments:`"}


@pytest.fixture(scope="module")
def prometheus(demo) -> str:
    """The demo's Prometheus (tests/e2e/conftest.py: one demo run shared with the report's live tests)."""
    return demo.prometheus


def dashboards() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))]


def label_values(prom: str, query: str) -> list[str]:
    """Grafana's label_values(metric{...}, label), through /api/v1/series."""
    m = re.fullmatch(r"label_values\((\w+)(\{[^}]*\})?, *(\w+)\)", query)
    assert m, query
    selector = m.group(1) + (m.group(2) or "")
    r = requests.get(f"{prom}/api/v1/series", params={"match[]": selector}, timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "success", (query, r.text)
    return sorted({s[m.group(3)] for s in r.json()["data"] if m.group(3) in s})


def substitute(text: str, values: dict[str, str]) -> str:
    for macro, duration in MACROS.items():
        text = text.replace(macro, duration)
    # Longest names first, so that $version is not read as $v + "ersion".
    for name in sorted(values, key=len, reverse=True):
        text = text.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return text


def resolve_variables(prom: str, d: dict) -> dict[str, str]:
    """Each query variable's value, in dashboard order so that the cascade applies: a single-value variable
    takes its first value (preferring "5m" for window), a multi-value one an alternation of all values."""
    values: dict[str, str] = {}
    for v in d["templating"]["list"]:
        if v["type"] != "query":
            continue
        found = label_values(prom, substitute(v["query"], values))
        if not found:
            assert v["name"] in VARIABLES_MAY_BE_EMPTY, f"{d['uid']}: variable {v['name']} has no values"
            values[v["name"]] = v.get("allValue") or ".+"
            continue
        if v["multi"]:
            # Grafana escapes regex metacharacters, and the backslash again inside the PromQL string.
            values[v["name"]] = "|".join(re.escape(x).replace("\\", "\\\\") for x in found)
        else:
            values[v["name"]] = "5m" if "5m" in found else found[0]
    return values


def cases():
    for d in dashboards():
        for p in d["panels"]:
            for i, t in enumerate(p.get("targets", [])):
                yield pytest.param(d["uid"], p["title"], i, id=f"{d['uid']}/{p['title']}/{t['refId']}")


@pytest.fixture(scope="module")
def values(prometheus) -> dict[str, dict[str, str]]:
    return {d["uid"]: resolve_variables(prometheus, d) for d in dashboards()}


def test_every_variable_has_values(values):
    for uid, vs in values.items():
        assert vs.get("job") == "mlmon", uid
        assert vs.get("instance"), uid


@pytest.mark.parametrize(("uid", "title", "index"), list(cases()))
def test_panel_query_parses_and_returns_data(prometheus, values, uid, title, index):
    d = next(d for d in dashboards() if d["uid"] == uid)
    target = next(p for p in d["panels"] if p["title"] == title)["targets"][index]
    expr = substitute(target["expr"], values[uid])
    # Every variable and macro is replaced; "$1" is label_replace's group reference (Grafana leaves it as it is:
    # there is no variable named 1).
    assert not re.search(r"\$(?!\d)", expr), expr
    data = prom_query(prometheus, expr)
    if (uid, title) in MAY_BE_EMPTY:
        return
    assert data["result"], f"{uid} / {title}: no data for {expr}"


def test_annotation_queries_parse(prometheus, values):
    # Version changes and firing alerts are events: they may be absent at this instant, but must parse.
    for d in dashboards():
        for a in d["annotations"]["list"]:
            if "expr" in a:
                prom_query(prometheus, substitute(a["expr"], values[d["uid"]]))


def test_versions_first_served_mark_the_demo_v2_once_within_the_run(prometheus, values):
    # The deploy annotation's series hold each version's first-served time in ms, which Grafana takes as the
    # marker's time ("useValueForTime"): the demo's v2 must be there, between the start of the demo's exporter
    # and now, later than v1, and constant over the run (so Grafana draws one marker per version, not one per
    # step).
    (exporter,) = prom_query(prometheus, 'min(process_start_time_seconds{job="mlmon"})')["result"]
    started = float(exporter["value"][1])
    for d in dashboards():
        (annotation,) = [a for a in d["annotations"]["list"] if a.get("useValueForTime")]
        expr = substitute(annotation["expr"], values[d["uid"]])
        now = time.time()
        served = {
            (r["metric"]["model"], r["metric"]["version"]): float(r["value"][1])
            for r in prom_query(prometheus, expr)["result"]
        }
        v2 = {model: ms for (model, version), ms in served.items() if version == "v2"}
        assert v2, (d["uid"], served)
        for model, ms in v2.items():
            assert started * 1000 <= ms <= now * 1000, (d["uid"], model, ms, started)
            assert served[model, "v1"] < ms, (d["uid"], model)
        r = requests.get(
            f"{prometheus}/api/v1/query_range",
            params={"query": expr, "start": started, "end": now, "step": 2},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        for series in r.json()["data"]["result"]:
            assert len({value for _, value in series["values"]}) == 1, (d["uid"], series["metric"])
