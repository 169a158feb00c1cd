"""Every query of every dashboard, run against a real Prometheus scraping the demo (exporter, example model
server, traffic with drift, late labels and a v2 deployment): each parses and returns data.

Grafana's variables are replaced by values present in the data (multi-value variables by a regex alternation
of every value, as Grafana's "All" would match) and its macros by durations."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.serve.test_server import free_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "grafana" / "dashboards"
# The demo scrapes every 2 s; Grafana's $__rate_interval is at least 4 scrape intervals.
MACROS = {"$__rate_interval": "20s", "$__interval": "2s", "$__range": "5m"}
DEADLINE = 75  # seconds for the demo to reach the state the dashboards need

# Targets allowed to return nothing, as (dashboard uid, panel title): reason.
MAY_BE_EMPTY = {
    ("mlmon-drift", "Unseen categories"): "the demo's models have numeric features only",
    ("mlmon-drift", "Segments: drifting features"): "examples/demo/mlmon.yml configures no `segments:`",
    ("mlmon-drift", "Segments: labelled samples and accuracy"): "examples/demo/mlmon.yml configures no `segments:`",
}
# Variables that may have no value, with the same reason.
VARIABLES_MAY_BE_EMPTY = {"segment": "examples/demo/mlmon.yml configures no `segments:`"}


def prom_query(prom: str, expr: str) -> dict:
    r = requests.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    assert r.status_code == 200, (expr, r.status_code, r.text)
    body = r.json()
    assert body["status"] == "success", (expr, body)
    return body["data"]


class Demo:
    """`mlmon demo` as a subprocess (it starts the exporter, the model server, traffic and Prometheus)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "exporter", "demo", "--port", str(self.port), "--plain", "--quiet",
                "--duration", "32", "--speed", "10", "--rate", "20", "--label-delay", "1", "--status-every", "60",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.prometheus: str | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            m = re.search(r"Prometheus +(http://127\.0\.0\.1:\d+)/targets", line)
            if m:
                self.prometheus = m.group(1)

    def stop(self) -> None:
        # The demo stops everything it started on SIGINT (Ctrl-C).
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def ready(prom: str) -> bool:
    """Labels joined, drift computed, v2 deployed and its traffic rated: what every panel needs."""
    checks = [
        'count by (version) (mlmon_model_info{job="mlmon",version="v2"})',
        'rate(mlmon_predictions_total{job="mlmon",version="v2"}[20s]) > 0',
        "mlmon_feature_drift",
        "mlmon_prediction_drift",
        "mlmon_label_drift",
        "mlmon_accuracy",
        "mlmon_mae",
        "rate(mlmon_label_delay_seconds_count[20s]) > 0",
        "mlmon_model_server_resident_memory_bytes",
    ]
    try:
        return all(prom_query(prom, q)["result"] for q in checks)
    except (requests.RequestException, AssertionError):
        return False


@pytest.fixture(scope="module")
def prometheus():
    if not Path("/usr/bin/prometheus").exists():
        pytest.skip("Prometheus is not installed (apt-get install prometheus)")
    demo = Demo()
    try:
        start = time.monotonic()
        while not (demo.prometheus and ready(demo.prometheus)):
            assert demo.proc.poll() is None, "the demo exited early:\n" + "\n".join(demo.lines)
            assert time.monotonic() - start < DEADLINE, "no data in time:\n" + "\n".join(demo.lines)
            time.sleep(1)
        yield demo.prometheus
    finally:
        demo.stop()


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
