"""The alerting bundle: promtool and amtool checks, and mixtool's lint rules re-implemented over the YAML.

promtool/amtool tests are skipped when the Debian packages are missing; the lint runs everywhere.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote_plus

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = ROOT / "prometheus" / "prometheus.yml"
RULE_FILES = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
TEST_FILES = sorted((ROOT / "prometheus" / "tests").glob("*_test.yml"))
ALERTMANAGER_CONFIG = ROOT / "alertmanager" / "alertmanager.yml"
TEMPLATES = ROOT / "alertmanager" / "templates"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
ALERTS_DOC = ROOT / "docs" / "alerts.md"

# The one pattern to change when the docs move (docs/alerts.md, "Links").
RUNBOOK_BASE = "https://github.com/mlmon/mlmon/blob/main/docs/runbooks.md"
GRAFANA_BASE = "http://localhost:3000"
DASHBOARD_UIDS = {"mlmon-fleet", "mlmon-model", "mlmon-drift", "mlmon-operations"}

SEVERITIES = {"critical", "warning", "info"}
# Exceptions to the lint, each with its reason (the `.lint` file of the mixins).
ALWAYS_FIRING = {"MlmonWatchdog": "the heartbeat: severity none, no for:, never silent"}
NO_PUBLISHED_THRESHOLD = {
    "MlmonModelTrafficCollapsed": "compares the model with its own history; the exporter publishes no threshold for it",
}

PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing (Debian package prometheus)")
needs_amtool = pytest.mark.skipif(AMTOOL is None, reason="amtool missing (Debian package prometheus-alertmanager)")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    parts = re.findall(r"(\d+)([smhdw])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(int(n) * units[u] for n, u in parts)


def groups() -> list[tuple[Path, dict]]:
    return [(path, group) for path in RULE_FILES for group in load(path)["groups"]]


def alert_rules() -> list[tuple[Path, dict]]:
    return [(path, rule) for path, group in groups() for rule in group["rules"] if "alert" in rule]


def recording_rules() -> list[tuple[Path, dict]]:
    return [(path, rule) for path, group in groups() for rule in group["rules"] if "record" in rule]


def alert_names() -> set[str]:
    return {rule["alert"] for _, rule in alert_rules()}


def unit_tests_of(rule_file: Path) -> Path:
    return ROOT / "prometheus" / "tests" / f"{rule_file.stem}_test.yml"


def alert_cases(rule_file: Path) -> list[dict]:
    return [case for test in load(unit_tests_of(rule_file))["tests"] for case in test.get("alert_rule_test", [])]


def expected_alerts() -> list[tuple[str, dict]]:
    """(alertname, exp_alert) of every firing case in every test file."""
    return [
        (case["alertname"], exp)
        for rule_file in RULE_FILES
        for case in alert_cases(rule_file)
        for exp in case.get("exp_alerts") or []
    ]


def expanded_expr(expr: str) -> str:
    """An expression with the recording rules it reads written out, recursively: what it depends on."""
    records = {rule["record"]: rule["expr"] for _, rule in recording_rules()}
    seen: set[str] = set()
    out = [expr]
    todo = [expr]
    while todo:
        for name in re.findall(r"\b\w+:mlmon_\w+:\w+\b", todo.pop()):
            if name in records and name not in seen:
                seen.add(name)
                out.append(records[name])
                todo.append(records[name])
    return "\n".join(out)


def github_anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def headings(path: Path, level: str) -> list[str]:
    return [line[len(level) + 1 :].strip() for line in path.read_text().splitlines() if line.startswith(level + " ")]


# promtool


@needs_promtool
def test_prometheus_config_rules_and_targets_are_valid():
    result = run(PROMTOOL, "check", "config", str(PROMETHEUS_CONFIG.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    # check config also parses every rule file it loads (and every file_sd file).
    for rule_file in RULE_FILES:
        assert f"rules/{rule_file.name}" in result.stdout


@needs_promtool
def test_rules_pass_promtool_lint():
    result = run(PROMTOOL, "check", "rules", "--lint=all", "--lint-fatal", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rule_unit_tests_pass():
    result = run(PROMTOOL, "test", "rules", *map(str, TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


# amtool


@needs_amtool
def test_alertmanager_config_is_valid_without_the_secret_files():
    # amtool checks that *_file fields are set but does not read them: the secrets need not exist here.
    result = run(AMTOOL, "check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 templates" in result.stdout


@needs_amtool
@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        (["alertname=MlmonModelAccuracyLow", "severity=critical", "model=churn"], "pagerduty,slack"),
        (["alertname=MlmonExporterDown", "severity=critical", "job=mlmon"], "pagerduty,slack"),
        (["alertname=MlmonModelAccuracyDrop", "severity=warning", "model=churn"], "slack"),
        (["alertname=MlmonModelFairnessDisparity", "severity=warning", "model=loan", "feature=sex"], "slack"),
        (["alertname=MlmonWatchdog", "severity=none"], "heartbeat"),
        (["alertname=SomethingInformative", "severity=info"], "null"),
        (["alertname=SomethingWithoutSeverity"], "slack"),
    ],
)
def test_routes(labels, receivers):
    result = run(
        AMTOOL,
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG}",
        f"--verify.receivers={receivers}",
        *labels,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receivers


RUN_URL = "http://mlflow.example:5000/#/experiments/1/runs/ab12"
TEMPLATE_DATA = {
    "receiver": "slack",
    "status": "firing",
    "alerts": [
        {
            "status": "firing",
            "labels": {
                "alertname": "MlmonModelAccuracyLow",
                "severity": "critical",
                "job": "mlmon",
                "instance": "exp:8490",
                "model": "churn",
                "version": "v7",
                "window": "1h",
            },
            "annotations": {
                "summary": "Model accuracy is below its floor.",
                "description": "Accuracy of model churn version v7 over the 1h window is 52%, below the floor of 70% "
                "(threshold accuracy_min).",
                "runbook_url": f"{RUNBOOK_BASE}#mlmonmodelaccuracylow",
                "dashboard_url": f"{GRAFANA_BASE}/d/mlmon-model?var-model=churn&var-version=v7",
                "run_url": RUN_URL,
            },
            "startsAt": "2026-11-23T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph",
            "fingerprint": "0123456789abcdef",
        }
    ],
    "groupLabels": {"alertname": "MlmonModelAccuracyLow", "model": "churn"},
    "commonLabels": {
        "alertname": "MlmonModelAccuracyLow",
        "severity": "critical",
        "job": "mlmon",
        "instance": "exp:8490",
        "model": "churn",
        "version": "v7",
        "window": "1h",
    },
    "commonAnnotations": {"summary": "Model accuracy is below its floor."},
    "externalURL": "http://alertmanager:9093",
}


def render(tmp_path: Path, template: str, data_json: dict | None = None) -> str:
    data = tmp_path / "data.json"
    data.write_text(json.dumps(data_json or TEMPLATE_DATA))
    result = run(
        AMTOOL,
        "template",
        "render",
        f"--template.glob={TEMPLATES}/*.tmpl",
        f"--template.data={data}",
        f'--template.text={{{{ template "{template}" . }}}}',
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@needs_amtool
def test_slack_template_renders_model_value_threshold_and_links(tmp_path):
    assert render(tmp_path, "mlmon.slack.title").strip() == "[FIRING:1] MlmonModelAccuracyLow churn"
    text = render(tmp_path, "mlmon.slack.text")
    assert "*Model accuracy is below its floor.*" in text
    assert "*churn v7* (critical, firing)" in text
    assert "is 52%, below the floor of 70%" in text
    assert f"<{RUNBOOK_BASE}#mlmonmodelaccuracylow|Runbook>" in text
    assert f"<{GRAFANA_BASE}/d/mlmon-model?var-model=churn&var-version=v7|Dashboard> | <{RUN_URL}|Run>" in text


@needs_amtool
def test_templates_leave_the_run_link_out_when_the_alert_has_none(tmp_path):
    data = json.loads(json.dumps(TEMPLATE_DATA))
    data["alerts"][0]["annotations"]["run_url"] = ""  # the rules' annotation when the exporter knows no run
    assert "|Run>" not in render(tmp_path, "mlmon.slack.text", data)
    assert "Run:" not in render(tmp_path, "mlmon.pagerduty.details", data)


@needs_amtool
def test_pagerduty_template_renders(tmp_path):
    assert render(tmp_path, "mlmon.pagerduty.description").strip() == (
        "[FIRING:1] MlmonModelAccuracyLow churn: Model accuracy is below its floor."
    )
    assert render(tmp_path, "mlmon.pagerduty.severity").strip() == "critical"
    assert f"Run: {RUN_URL}" in render(tmp_path, "mlmon.pagerduty.details")


def test_alertmanager_secrets_come_from_files_only():
    config = load(ALERTMANAGER_CONFIG)
    for receiver in config["receivers"]:
        for slack in receiver.get("slack_configs", []):
            assert "api_url" not in slack and slack["api_url_file"].startswith("/etc/alertmanager/secrets/")
            assert slack["send_resolved"] is True
        for pagerduty in receiver.get("pagerduty_configs", []):
            assert not {"routing_key", "service_key"} & set(pagerduty)
            assert pagerduty["routing_key_file"].startswith("/etc/alertmanager/secrets/")
    assert not {"slack_api_url", "pagerduty_url"} & set(config.get("global") or {})
    text = "".join(p.read_text() for p in [ALERTMANAGER_CONFIG, *TEMPLATES.glob("*")])
    assert "hooks.slack.com" not in text and "pagerduty.com" not in text


def test_alertmanager_groups_by_alert_and_model_with_explicit_timings():
    route = load(ALERTMANAGER_CONFIG)["route"]
    assert "matchers" not in route and route["receiver"]
    assert {"alertname", "model"} <= set(route["group_by"])
    assert {"group_wait", "group_interval", "repeat_interval"} <= set(route)


def test_inhibition_equal_labels_are_on_every_source_and_target_alert():
    """An `equal` label missing on both sides matches anything, so each must be on the alerts concerned.

    Model alerts are pooled over the replicas of a job and carry no `instance`: between two of them an
    `instance` absent on both sides is fine (job, model and version still scope the pair). An exporter's
    own alert has `instance` and a model alert has none, so MlmonExporterDown never mutes a model alert:
    one replica down does not invalidate the figures the others still pool (docs/alerts.md, Inhibition).
    """
    tested = [{**exp["exp_labels"], "alertname": name} for name, exp in expected_alerts()]

    def matching(matcher: str) -> list[dict]:
        key, op, value = re.fullmatch(r'(\w+)(=~|=)"([^"]*)"', matcher).groups()
        pattern = value if op == "=~" else re.escape(value)
        return [labels for labels in tested if re.fullmatch(pattern, labels.get(key, ""))]

    def pooled(labels: dict) -> bool:
        return labels["alertname"].startswith("MlmonModel")

    for rule in load(ALERTMANAGER_CONFIG)["inhibit_rules"]:
        (source,), (target,) = rule["source_matchers"], rule["target_matchers"]
        pairs = [
            (s, t)
            for s in matching(source)
            for t in matching(target)
            if "alertname" not in rule["equal"] or s["alertname"] == t["alertname"]
        ]
        assert pairs, f"{rule} mutes no alert of the tests"
        # Pairs that can match: every `equal` label on both sides, except model (absent on both for the
        # exporter's own alerts) and instance (absent on both for pooled model alerts).
        live = [(s, t) for s, t in pairs if pooled(s) == pooled(t)]
        assert live, f"{rule} can mute no alert of the tests"
        for s, t in live:
            needed = set(rule["equal"]) - {"alertname", "model"} - ({"instance"} if pooled(s) else set())
            assert needed <= set(s) and needed <= set(t), f"{rule}: {s} / {t} lack some of {needed}"
            assert "job" in rule["equal"] or rule["equal"] == ["job"], rule
        # ...and a pooled model alert never has an instance, so a per-instance source cannot mute it wrongly.
        for s, t in pairs:
            for labels in (s, t):
                assert not (pooled(labels) and "instance" in labels), labels


# Prometheus config


def test_prometheus_scrapes_mlmon_through_file_sd_and_sends_to_alertmanager():
    config = load(PROMETHEUS_CONFIG)
    assert config["global"]["scrape_interval"] == config["global"]["evaluation_interval"] == "15s"
    assert config["rule_files"] == ["rules/*.yml"]
    (mlmon,) = [job for job in config["scrape_configs"] if job["job_name"] == "mlmon"]
    assert mlmon["file_sd_configs"] == [{"files": ["targets/*.yml"]}] and "static_configs" not in mlmon
    assert config["alerting"]["alertmanagers"][0]["static_configs"] == [{"targets": ["127.0.0.1:9093"]}]
    assert load(ROOT / "prometheus" / "targets" / "mlmon.yml") == [{"targets": ["127.0.0.1:8490"]}]
    text = PROMETHEUS_CONFIG.read_text()
    assert "# basic_auth:" in text and "# tls_config:" in text


# mixtool's lint, and the project's own rules


def test_groups_are_small_and_well_named():
    names = [group["name"] for _, group in groups()]
    assert len(names) == len(set(names))
    for path, group in groups():
        assert len(group["name"]) <= 40 and group["name"].startswith("mlmon-"), group["name"]
        assert len(group["rules"]) <= 20, f"{path.name}: {group['name']} has {len(group['rules'])} rules"


def test_alert_names_are_camel_case_with_one_prefix():
    for name in alert_names():
        assert re.fullmatch(r"Mlmon(?:[A-Z][a-z0-9]+)+", name), name
        assert len(name) <= 40, name


def test_alerts_have_severity_and_a_for_sized_to_the_signal():
    for _, rule in alert_rules():
        name, severity = rule["alert"], rule["labels"]["severity"]
        if name in ALWAYS_FIRING:
            assert severity == "none" and "for" not in rule
            continue
        assert severity in SEVERITIES, name
        # Nothing pages or warns on a blip: at least 5 minutes.
        assert seconds(rule["for"]) >= 300, name
        if "keep_firing_for" in rule:
            assert seconds(rule["keep_firing_for"]) <= 3600, name


def test_summaries_are_static_sentences():
    for _, rule in alert_rules():
        summary = rule["annotations"]["summary"]
        assert "{{" not in summary and summary[0].isupper() and summary.endswith("."), rule["alert"]


def test_descriptions_template_the_specifics():
    for _, rule in alert_rules():
        description = rule["annotations"]["description"]
        assert "$value" in description, rule["alert"]
        if rule["alert"].startswith("MlmonModel"):
            assert "$labels.model" in description, rule["alert"]
            if rule["alert"] not in NO_PUBLISHED_THRESHOLD:
                threshold = r"mlmon_(alert|drift|multivariate_drift)_threshold"
                assert re.search(threshold + r"\{", description), rule["alert"]
                assert re.search(threshold, expanded_expr(rule["expr"])), rule["alert"]


def test_firing_tests_show_model_version_and_dashboard_variables():
    for name, exp in expected_alerts():
        labels, annotations = exp["exp_labels"], exp["exp_annotations"]
        if name.startswith("MlmonModel"):
            # Model alerts are pooled over the replicas of a job: one alert per job and model (and version),
            # with no instance; Alertmanager's inhibition needs job and model on every one.
            assert {"job", "model"} <= set(labels) and "instance" not in labels, (name, labels)
            assert re.search(rf"(?i:model) {re.escape(labels['model'])}\b", annotations["description"]), name
            assert f"var-model={quote_plus(labels['model'])}" in annotations["dashboard_url"], name
        if "version" in labels:
            assert f"version {labels['version']}" in annotations["description"], name
            assert f"var-version={quote_plus(labels['version'])}" in annotations["dashboard_url"], name


def test_runbook_urls_follow_the_pattern_and_their_anchors_exist():
    anchors = {github_anchor(h) for h in headings(RUNBOOKS, "##")}
    for _, rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        assert url == f"{RUNBOOK_BASE}#{rule['alert'].lower()}", rule["alert"]
        assert url.split("#")[1] in anchors, f"docs/runbooks.md has no section ## {rule['alert']}"
    # ...and the runbooks have no section for an alert that does not exist.
    assert {h for h in headings(RUNBOOKS, "##") if h.startswith("Mlmon")} == alert_names()


def test_every_alert_is_documented():
    assert {h for h in headings(ALERTS_DOC, "###") if h.startswith("Mlmon")} == alert_names()


def test_dashboard_urls_point_at_known_dashboards():
    for _, rule in alert_rules():
        match = re.fullmatch(rf"{re.escape(GRAFANA_BASE)}/d/([a-z-]+)(\?.*)?", rule["annotations"]["dashboard_url"])
        assert match and match.group(1) in DASHBOARD_UIDS, rule["alert"]


def test_one_test_file_per_rule_file():
    assert [unit_tests_of(r) for r in RULE_FILES] == TEST_FILES
    for rule_file in RULE_FILES:
        tests = load(unit_tests_of(rule_file))
        # Alerts on pooled figures need the recording rules that pool them, evaluated first.
        assert tests["rule_files"] in (
            [f"../rules/{rule_file.name}"],
            ["../rules/recording.yml", f"../rules/{rule_file.name}"],
        )
        if len(tests["rule_files"]) > 1 or len(load(rule_file)["groups"]) > 1:
            own = [
                g["name"] for path in tests["rule_files"] for g in load(rule_file.parent / Path(path).name)["groups"]
            ]
            assert sorted(tests["group_eval_order"]) == sorted(own), rule_file.name


def test_every_alert_has_firing_and_silent_cases():
    for rule_file in RULE_FILES:
        cases = alert_cases(rule_file)
        for name in {rule["alert"] for path, rule in alert_rules() if path == rule_file}:
            firing = [exp for c in cases if c["alertname"] == name for exp in c.get("exp_alerts") or []]
            silent = [c for c in cases if c["alertname"] == name and not c.get("exp_alerts")]
            assert firing, f"{name} never fires in {unit_tests_of(rule_file).name}"
            assert silent or name in ALWAYS_FIRING, f"{name} is never tested silent"
            # An alert with several severities fires at each of them somewhere.
            severities = {rule["labels"]["severity"] for _, rule in alert_rules() if rule["alert"] == name}
            assert severities <= {exp["exp_labels"]["severity"] for exp in firing}, name


def test_every_recording_rule_has_an_expression_test():
    for rule_file, rule in recording_rules():
        exprs = [
            t["expr"] for test in load(unit_tests_of(rule_file))["tests"] for t in test.get("promql_expr_test", [])
        ]
        assert any(re.search(rf"(?<![\w:]){re.escape(rule['record'])}(?![\w:])", e) for e in exprs), rule["record"]


def test_recording_rules_are_named_and_aggregated_the_prometheus_way():
    for _, rule in recording_rules():
        level, metric, operations = rule["record"].split(":")
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", level) and re.fullmatch(r"[a-z0-9_]+", operations), rule["record"]
        assert metric.startswith("mlmon_") and not metric.endswith("_total"), rule["record"]
        # Aggregations keep job: `without (instance...)`, or `by` lists that name job.
        for by in re.findall(r"\bby\s*\(([^)]*)\)", rule["expr"]):
            assert "job" in by, rule["record"]


def test_joins_keep_the_target_labels():
    """Joins on model alone break as soon as two jobs carry the same model (many-to-many). A join without
    instance is only for series pooled over the replicas (`without (instance)` or a recorded `:` series)."""
    for _, rule in [*alert_rules(), *recording_rules()]:
        name = rule.get("alert") or rule.get("record")
        for on in re.findall(r"\bon\s*\(([^)]*)\)", rule["expr"]):
            labels = {label.strip() for label in on.split(",")}
            assert "job" in labels, name
            if "instance" not in labels:
                assert re.search(r"without \(instance|\w+:mlmon_\w+:\w+", rule["expr"]), name


def test_model_alerts_fire_once_per_model_on_pooled_figures():
    """Model alerts aggregate instance away (issue 7): no selector of a window gauge or threshold is read
    per instance, so N replicas of a model raise one alert, not N."""
    per_instance = re.compile(
        r"(?<![\w:])mlmon_(accuracy|mae|feature_drift|prediction_drift|feature_missing_ratio|"
        r"window_samples|alert_threshold|drift_threshold|drift_decision)\b(?!\s*\))"
    )
    for _, rule in alert_rules():
        if rule["alert"].startswith("MlmonModel"):
            assert not per_instance.search(rule["expr"]), rule["alert"]
            assert "instance" not in re.sub(
                r"without \((instance|instance, [\w, ]+)\)|on \(job, instance\)", "", rule["expr"]
            ), rule["alert"]


def test_rules_name_no_window_so_any_set_of_windows_works():
    """The alerts decide on whichever of the exporter's windows (or spans) holds the evidence, so a config
    with other windows than 5m/1h/1d needs no change to the rules."""
    for _, rule in [*alert_rules(), *recording_rules()]:
        assert not re.search(r'\b(window|span)\s*!?=~?\s*"', rule["expr"]), rule.get("alert") or rule.get("record")
