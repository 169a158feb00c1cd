"""The retraining hook (exporter/retrain.py, docs/retraining.md): its decisions, config, payload checks, HTTP
answers, and the command and the POST it runs. The real process behind the real Alertmanager:
tests/e2e/test_retrain_hook.py."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from exporter import cli, retrain
from exporter.config import ConfigError
from exporter.retrain import HookConfig, Job, Outcome, PayloadError, RetrainHook, parse_hook_config, parse_payload
from tests.conftest import Clock


def alert(alertname="MlmonModelAccuracyLow", model="churn", version="v1", status="firing", **labels) -> dict:
    all_labels = {"alertname": alertname, "severity": "critical", "job": "mlmon", **labels}
    if model is not None:
        all_labels["model"] = model
    if version is not None:
        all_labels["version"] = version
    return {
        "status": status,
        "labels": all_labels,
        "annotations": {"summary": "Model accuracy is below its floor."},
        "startsAt": "2026-11-23T10:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": f"{alertname}-{model}-{version}",
    }


def notification(*alerts: dict) -> dict:
    return {
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "retrain",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


class Recorder:
    """Stands in for the command or the POST: records every job, answers with `outcome`."""

    def __init__(self, outcome: Outcome | None = None):
        self.jobs: list[Job] = []
        self.outcome = outcome or Outcome(True, exit_code=0)

    def __call__(self, config: HookConfig, job: Job) -> Outcome:
        self.jobs.append(job)
        return Outcome(self.outcome.ok, self.outcome.exit_code, self.outcome.http_status, self.outcome.error)


def audit_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def make_hook(tmp_path):
    hooks = []

    def make(runner=None, clock=None, **config) -> tuple[RetrainHook, Recorder, Clock, Path]:
        audit = tmp_path / "audit.log"
        runner = runner or Recorder()
        clock = clock or Clock()
        hook = RetrainHook(HookConfig(command=("true",), audit_log=str(audit), **config), runner=runner, clock=clock)
        hooks.append(hook)
        return hook, runner, clock, audit

    yield make
    for hook in hooks:
        hook.audit.close()


def actions(decisions: list[dict]) -> list[str]:
    return [d["action"] for d in decisions]


# --- decisions -------------------------------------------------------------------------------------------------


def test_a_firing_quality_alert_triggers_once_per_model_and_version(make_hook):
    hook, runner, clock, audit = make_hook(cooldown=3600)
    # Alertmanager groups: several alerts in one notification, each decided with its own labels.
    decided = hook.handle(
        notification(
            alert(),
            alert("MlmonModelFeatureDrift", feature="tenure"),  # same model and version: a duplicate
            alert(version="v2"),
            alert(model="fraud"),
        )
    )
    assert actions(decided) == ["queued", "skipped-duplicate", "queued", "queued"]
    hook.drain()
    assert [(j.model, j.version, j.alertname) for j in runner.jobs] == [
        ("churn", "v1", "MlmonModelAccuracyLow"),
        ("churn", "v2", "MlmonModelAccuracyLow"),
        ("fraud", "v1", "MlmonModelAccuracyLow"),
    ]
    # Alertmanager repeats itself (a new alert in the group, repeat_interval): still one request.
    clock.advance(3599)
    assert actions(hook.handle(notification(alert()))) == ["skipped-duplicate"]
    clock.advance(1)
    assert actions(hook.handle(notification(alert()))) == ["queued"]
    hook.drain()
    assert len(runner.jobs) == 4

    lines = audit_lines(audit)
    assert [line["action"] for line in lines] == [
        "skipped-duplicate",
        "triggered",
        "triggered",
        "triggered",
        "skipped-duplicate",
        "triggered",
    ]
    duplicate = lines[0]
    assert duplicate["event"] == "retrain" and duplicate["ts"].endswith("Z")
    assert (duplicate["alertname"], duplicate["model"], duplicate["version"]) == (
        "MlmonModelFeatureDrift",
        "churn",
        "v1",
    )
    assert "already triggered retraining" in duplicate["reason"]
    assert duplicate["last_request_id"] == runner.jobs[0].request_id
    triggered = lines[1]
    assert triggered["exit_code"] == 0 and triggered["mode"] == "command"
    assert triggered["request_id"] == runner.jobs[0].request_id
    assert triggered["request_id"].startswith("mlmon-churn-v1-")
    assert triggered["fingerprint"] == "MlmonModelAccuracyLow-churn-v1"


def test_the_rate_limit_holds_over_every_model(make_hook):
    hook, runner, clock, audit = make_hook(max_per_hour=2)
    decided = hook.handle(notification(alert(model="a"), alert(model="b"), alert(model="c")))
    assert actions(decided) == ["queued", "queued", "skipped-rate-limit"]
    hook.drain()
    line = audit_lines(audit)[0]
    assert line["action"] == "skipped-rate-limit" and line["model"] == "c"
    assert "max_per_hour 2" in line["reason"] and line["next_slot"].endswith("Z")
    clock.advance(1800)
    assert actions(hook.handle(notification(alert(model="c")))) == ["skipped-rate-limit"]
    clock.advance(1800)  # an hour after the first two
    assert actions(hook.handle(notification(alert(model="c"), alert(model="d")))) == ["queued", "queued"]
    assert actions(hook.handle(notification(alert(model="e")))) == ["skipped-rate-limit"]


def test_resolved_unknown_and_model_less_alerts_never_trigger(make_hook):
    hook, runner, _, audit = make_hook()
    decided = hook.handle(
        notification(
            alert(status="resolved"),
            alert("MlmonExporterDown", model=None, version=None, instance="a:8490"),
            alert("MlmonModelLatencyHigh"),
            alert(model=None),
        )
    )
    assert actions(decided) == ["ignored-resolved", "ignored-alert", "ignored-alert", "ignored-alert"]
    assert decided[3]["reason"] == "the alert has no model label"
    hook.drain()
    assert runner.jobs == []
    assert [line["action"] for line in audit_lines(audit)] == actions(decided)
    # A resolved alert does not use up the cooldown either.
    assert actions(hook.handle(notification(alert()))) == ["queued"]


def test_the_alerts_that_trigger_are_configurable(make_hook):
    hook, *_ = make_hook(alerts=("MlmonModelLatencyHigh",))
    assert actions(hook.handle(notification(alert(), alert("MlmonModelLatencyHigh")))) == ["ignored-alert", "queued"]


def test_a_failed_request_is_audited_and_frees_the_model_for_the_next_notification(make_hook):
    hook, runner, _, audit = make_hook(runner=Recorder(Outcome(False, exit_code=3, error="exit code 3")))
    assert actions(hook.handle(notification(alert()))) == ["queued"]
    hook.drain()
    (line,) = audit_lines(audit)
    assert (line["action"], line["exit_code"], line["error"]) == ("failed", 3, "exit code 3")
    runner.outcome = Outcome(True, exit_code=0)
    assert actions(hook.handle(notification(alert()))) == ["queued"]
    hook.drain()
    assert [line["action"] for line in audit_lines(audit)] == ["failed", "triggered"]
    assert actions(hook.handle(notification(alert()))) == ["skipped-duplicate"]


def test_a_runner_that_raises_does_not_stop_the_hook(make_hook):
    def broken(config, job):
        raise RuntimeError("boom")

    hook, _, _, audit = make_hook(runner=broken)
    hook.handle(notification(alert()))
    hook.drain()
    assert audit_lines(audit)[0]["action"] == "failed" and "boom" in audit_lines(audit)[0]["error"]


def test_a_full_queue_fails_the_request_and_gives_its_slot_back(tmp_path):
    audit = tmp_path / "audit.log"
    hook = RetrainHook(
        HookConfig(command=("true",), audit_log=str(audit), max_per_hour=5), runner=Recorder(), queue_size=1
    )
    assert actions(hook.handle(notification(alert(model="a"), alert(model="b")))) == ["queued", "failed"]
    assert hook.health()["triggers_last_hour"] == 1
    hook.drain()
    assert actions(hook.handle(notification(alert(model="b")))) == ["queued"]
    hook.audit.close()


def test_stopping_drops_what_is_still_queued(make_hook):
    hook, runner, _, audit = make_hook()
    hook.handle(notification(alert(model="a"), alert(model="b")))
    hook.close()
    assert runner.jobs == []
    lines = audit_lines(audit)
    assert [(line["action"], line["error"]) for line in lines] == [("failed", "the hook stopped before it ran")] * 2


def test_the_state_file_keeps_the_cooldown_and_the_rate_limit_across_restarts(tmp_path, make_hook):
    state = tmp_path / "state.json"
    hook, _, clock, _ = make_hook(state_file=str(state), max_per_hour=2)
    hook.handle(notification(alert(), alert(model="fraud")))
    hook.drain()
    assert json.loads(state.read_text())["recent"] == [clock.now, clock.now]

    again, *_ = make_hook(state_file=str(state), max_per_hour=2, clock=clock)
    assert actions(again.handle(notification(alert(), alert(model="iris")))) == [
        "skipped-duplicate",
        "skipped-rate-limit",
    ]
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read the state file"):
        make_hook(state_file=str(broken))


# --- the payload ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ([], "body"),
        ("alerts", "body"),
        ({"version": "3", "alerts": []}, "version"),
        ({"version": "4"}, "alerts"),
        ({"alerts": {"a": 1}}, "alerts"),
        ({"alerts": ["x"]}, "alerts[0]"),
        ({"alerts": [alert(), {**alert(), "status": "pending"}]}, "alerts[1].status"),
        ({"alerts": [{**alert(), "labels": None}]}, "alerts[0].labels"),
        ({"alerts": [{"status": "firing"}]}, "alerts[0].labels"),
        ({"alerts": [{**alert(), "labels": {"alertname": "A", "model": 7}}]}, "alerts[0].labels.model"),
        ({"alerts": [{**alert(), "annotations": ["summary"]}]}, "alerts[0].annotations"),
        ({"alerts": [{**alert(), "startsAt": 0}]}, "alerts[0].startsAt"),
    ],
)
def test_a_payload_of_the_wrong_shape_names_the_field(payload, field):
    with pytest.raises(PayloadError) as info:
        parse_payload(payload)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_a_bad_alert_anywhere_decides_nothing(make_hook):
    hook, runner, _, audit = make_hook()
    with pytest.raises(PayloadError):
        hook.handle(notification(alert(), {**alert(model="fraud"), "status": None}))
    hook.drain()
    assert runner.jobs == [] and audit_lines(audit) == []


# --- HTTP -------------------------------------------------------------------------------------------------------


@pytest.fixture
def client(make_hook):
    hook, runner, _, audit = make_hook()
    app = retrain.create_app(hook, token=None)
    return app.test_client(), hook, runner, audit


def test_post_alerts_answers_the_decisions(client):
    http, hook, runner, _ = client
    response = http.post("/alerts", json=notification(alert(), alert(status="resolved")))
    assert response.status_code == 200
    assert actions(response.get_json()["decisions"]) == ["queued", "ignored-resolved"]
    assert response.get_json()["decisions"][0]["model"] == "churn"
    health = http.get("/healthz").get_json()
    assert health["status"] == "ok" and health["queued"] == 1 and health["mode"] == "command"
    hook.drain()
    assert len(runner.jobs) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b"", "body"),
        (b'{"alerts": "none"}', "alerts"),
        (json.dumps({"alerts": [{"status": "firing", "labels": {"model": 1}}]}).encode(), "alerts[0].labels.model"),
    ],
)
def test_post_alerts_refuses_bad_json_and_wrong_shapes_with_400_naming_the_field(client, body, field):
    http, _, runner, audit = client
    response = http.post("/alerts", data=body, content_type="application/json")
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert (error["code"], error["name"], error["field"]) == (400, "Bad Request", field)
    assert error["message"].startswith(f"{field}: ")
    assert audit_lines(audit) == []


def test_other_paths_and_methods_answer_json(client):
    http, *_ = client
    wrong_method = http.get("/alerts")
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"].startswith(("POST", "OPTIONS"))
    assert "POST /alerts" in wrong_method.get_json()["error"]["message"]
    assert http.get("/nothing").get_json()["error"]["code"] == 404
    too_big = http.post("/alerts", data=b"x" * (retrain.MAX_BODY_BYTES + 1), content_type="application/json")
    assert too_big.status_code == 413 and too_big.get_json()["error"]["field"] == "body"


def test_a_token_is_required_when_configured(make_hook):
    hook, runner, _, audit = make_hook()
    http = retrain.create_app(hook, token="s3cret-token").test_client()
    assert http.post("/alerts", json=notification(alert())).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert http.post("/alerts", json=notification(alert()), headers=wrong).status_code == 401
    right = {"Authorization": "Bearer s3cret-token"}
    assert http.post("/alerts", json=notification(alert()), headers=right).status_code == 200
    assert http.get("/healthz").status_code == 200  # health needs no token


# --- the config -------------------------------------------------------------------------------------------------


def test_a_full_config(tmp_path):
    text = textwrap.dedent(
        """
        url: https://airflow.example.com/api/v1/dags/retrain_{model}/dagRuns
        basic_auth: {username: mlmon, password_file: secrets/airflow_password}
        headers: {X-Requested-By: mlmon}
        body:
          dag_run_id: "{request_id}"
          conf: {model: "{model}", version: "{version}", alert: "{alert}", literal: "{{x}}", n: 3}
        timeout: 30s
        cooldown: 6h
        max_per_hour: 4
        alerts: [MlmonModelAccuracyLow]
        audit_log: audit/retrain.log
        state_file: /var/lib/mlmon/retrain-state.json
        """
    )
    config = parse_hook_config(text, "retrain.yml", str(tmp_path))
    assert config.mode == "url" and config.timeout == 30 and config.cooldown == 6 * 3600 and config.max_per_hour == 4
    assert config.basic_auth == ("mlmon", str(tmp_path / "secrets" / "airflow_password"))
    assert config.audit_log == str(tmp_path / "audit" / "retrain.log")
    assert config.state_file == "/var/lib/mlmon/retrain-state.json"
    assert config.alerts == ("MlmonModelAccuracyLow",)
    with pytest.raises(ConfigError, match="airflow_password: no such file"):
        retrain.finish(config, "retrain.yml")


def test_config_problems_are_all_named_with_their_line():
    text = textwrap.dedent(
        """
        command: "retrain.sh --now"
        url: ftp://example.com
        cooldwn: 1h
        max_per_hour: 0
        timeout: soon
        headers: {Authorization: Bearer abc}
        body: {a: "{modle}", b: "{", c: 2026-01-01}
        """
    )
    with pytest.raises(ConfigError) as info:
        parse_hook_config(text, "retrain.yml")
    problems = "\n".join(info.value.problems)
    for expected in (
        "line 2: command: must be a non-empty list of strings",
        "line 3: url: must start with http:// or https://",
        "line 4: cooldwn: unknown key (did you mean 'cooldown'?",
        "line 5: max_per_hour: must be an integer from 1",
        "line 6: timeout: 'soon' is not a duration",
        "headers.Authorization: credentials belong in a file",
        "body.a: unknown placeholder {modle}",
        "body.b: a lone '{'",
        "body.c: must be JSON data",
    ):
        assert expected in problems, problems


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "nothing to do"),
        ("command: [a]\nurl: http://x/\n", "either command"),
        ("command: [a]\nbody: {a: 1}\nheaders: {X-A: b}\n", "body, headers: only with url"),
    ],
)
def test_one_action_exactly(text, message):
    with pytest.raises(ConfigError, match=message):
        retrain.finish(parse_hook_config(text), "retrain.yml")


def args_of(*argv: str):
    return cli.build_parser().parse_args(["retrain-hook", *argv])


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "retrain.yml"
    path.write_text("url: http://127.0.0.1:1/x\ncooldown: 1h\n")
    config = retrain.config_from_args(args_of("--config", str(path), "--max-per-hour", "2", "--cooldown", "2h"))
    assert (config.url, config.cooldown, config.max_per_hour) == ("http://127.0.0.1:1/x", 7200, 2)
    config = retrain.config_from_args(args_of("--config", str(path), "--", "retrain.sh", "--fast"))
    assert (config.command, config.url) == (("retrain.sh", "--fast"), None)
    config = retrain.config_from_args(args_of("--url", "http://h/{model}", "--alerts", "A, B"))
    assert config.alerts == ("A", "B") and config.mode == "url"
    with pytest.raises(ConfigError, match="--cooldown"):
        retrain.config_from_args(args_of("--cooldown", "a while", "--", "x"))
    with pytest.raises(ConfigError, match="exclude each other"):
        retrain.config_from_args(args_of("--url", "http://h/", "--", "x"))
    assert retrain._listen("127.0.0.1:8491") == ("127.0.0.1", 8491)
    assert retrain._listen(":8491") == ("0.0.0.0", 8491) and retrain._listen("[::1]:9") == ("::1", 9)
    with pytest.raises(ValueError, match="not HOST:PORT"):
        retrain._listen("8491")


def test_check_prints_the_config(capsys):
    assert cli.main(["retrain-hook", "--check", "--max-per-hour", "3", "--", "python", "-c", "pass"]) == 0
    out = capsys.readouterr().out
    assert "OK: python -c pass" in out and "at most 3 an hour" in out
    with pytest.raises(SystemExit) as info:
        cli.main(["retrain-hook", "--check"])
    assert info.value.code == 2


# --- the command and the POST, for real ---------------------------------------------------------------------------


def job(model="churn", version="v1") -> Job:
    return Job(alert(model=model, version=version), "MlmonModelAccuracyLow", model, version, "mlmon-req-1", 0.0)


def test_the_command_runs_without_a_shell_with_the_alert_in_its_environment(tmp_path):
    out = tmp_path / "env.json"
    script = (
        "import json, os, sys; "
        f"json.dump({{k: v for k, v in os.environ.items() if k.startswith('MLMON_')}} | {{'argv': sys.argv[1:]}}, "
        f"open({str(out)!r}, 'w')); print('started')"
    )
    config = HookConfig(command=(sys.executable, "-c", script, "$MLMON_MODEL", "; rm -rf /"))
    outcome = retrain.run_command(config, job(model="fraud detector", version="v 2"))
    assert outcome.ok and outcome.exit_code == 0 and outcome.output == "started"
    env = json.loads(out.read_text())
    assert env["argv"] == ["$MLMON_MODEL", "; rm -rf /"]  # no shell: taken as written
    assert (env["MLMON_MODEL"], env["MLMON_VERSION"]) == ("fraud detector", "v 2")
    assert env["MLMON_ALERTNAME"] == "MlmonModelAccuracyLow" and env["MLMON_SEVERITY"] == "critical"
    assert env["MLMON_REQUEST_ID"] == "mlmon-req-1"
    assert json.loads(env["MLMON_ALERT_JSON"])["labels"]["model"] == "fraud detector"


def test_a_command_that_fails_or_hangs_or_is_missing_fails(tmp_path):
    failing = HookConfig(command=(sys.executable, "-c", "import sys; print('no data'); sys.exit(4)"))
    outcome = retrain.run_command(failing, job())
    assert (outcome.ok, outcome.exit_code, outcome.error, outcome.output) == (False, 4, "exit code 4", "no data")
    hanging = HookConfig(command=(sys.executable, "-c", "import time; time.sleep(60)"), timeout=0.5)
    outcome = retrain.run_command(hanging, job())
    assert not outcome.ok and outcome.error == "timed out after 0.5s; killed" and outcome.exit_code < 0
    missing = HookConfig(command=(str(tmp_path / "no-such-program"),))
    outcome = retrain.run_command(missing, job())
    assert not outcome.ok and outcome.error.startswith("cannot run ")


class Endpoint:
    """A local HTTP endpoint (Airflow, Kubeflow): records each request, answers `status`."""

    def __init__(self, status: int = 200):
        self.requests: list[tuple[str, dict, dict]] = []
        self.status = status
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append((self.path, dict(self.headers), body))
                self.send_response(endpoint.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"detail": "as told"}')

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    e = Endpoint()
    yield e
    e.close()


def test_the_post_fills_the_body_template_and_reads_the_token_file(tmp_path, endpoint):
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    text = textwrap.dedent(
        f"""
        url: "{endpoint.url}/api/v1/dags/retrain/dagRuns?model={{model}}"
        bearer_token_file: token
        headers: {{X-Requested-By: mlmon}}
        body:
          dag_run_id: "{{request_id}}"
          conf: {{model: "{{model}}", version: "{{version}}", alert: "{{alert}}", note: "{{{{literal}}}}"}}
        """
    )
    config = retrain.finish(parse_hook_config(text, "retrain.yml", str(tmp_path)), "retrain.yml")
    outcome = retrain.post(config, job(model="a/b&c"))
    assert outcome.ok and outcome.http_status == 200
    ((path, headers, body),) = endpoint.requests
    assert path == "/api/v1/dags/retrain/dagRuns?model=a%2Fb%26c"
    assert headers["Authorization"] == "Bearer tok-123" and headers["X-Requested-By"] == "mlmon"
    assert body["dag_run_id"] == "mlmon-req-1"
    assert body["conf"]["model"] == "a/b&c" and body["conf"]["version"] == "v1" and body["conf"]["note"] == "{literal}"
    assert body["conf"]["alert"]["labels"]["alertname"] == "MlmonModelAccuracyLow"
    # A rotated token is read at the next request.
    token.write_text("tok-456")
    retrain.post(config, job())
    assert endpoint.requests[1][1]["Authorization"] == "Bearer tok-456"


def test_the_default_body_and_a_refusal(endpoint):
    endpoint.status = 409
    outcome = retrain.post(HookConfig(url=f"{endpoint.url}/runs"), job())
    assert not outcome.ok and outcome.http_status == 409 and outcome.error == 'HTTP 409: {"detail": "as told"}'
    body = endpoint.requests[0][2]
    assert {k: body[k] for k in ("model", "version", "alertname", "request_id")} == {
        "model": "churn",
        "version": "v1",
        "alertname": "MlmonModelAccuracyLow",
        "request_id": "mlmon-req-1",
    }
    assert body["alert"]["fingerprint"] == "MlmonModelAccuracyLow-churn-v1"
    unreachable = retrain.post(HookConfig(url="http://127.0.0.1:9/x", timeout=2), job())
    assert not unreachable.ok and unreachable.http_status is None and "ConnectionError" in unreachable.error
