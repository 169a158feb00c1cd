"""`mlmon retrain-hook`: an Alertmanager webhook receiver that turns firing quality and drift alerts into
retraining requests (docs/retraining.md).

Each alert of a notification (Alertmanager's webhook format, version 4) is decided on its own, in order:

    resolved                                    -> ignored-resolved
    alertname not configured, or no model label -> ignored-alert
    its (model, version) triggered within the cooldown -> skipped-duplicate
    max_per_hour triggers in the last hour      -> skipped-rate-limit
    otherwise                                   -> queued; a worker thread runs the command or POSTs to the URL,
                                                   then writes triggered (or failed)

Every decision is one JSON line in the audit log. The decision is taken while the request is answered; the
command or the POST runs later in one background thread, so Alertmanager gets its 200 at once. The last trigger
of each (model, version) and the triggers of the last hour live in memory, and in `state_file` when one is set.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import queue
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from exporter import logs
from exporter.config import Checker, ConfigError, Node, kind_name, parse_duration, read_config_file, to_nodes
from exporter.security.audit import AuditLog

log = logging.getLogger("mlmon.retrain")

# The model quality and drift alerts of prometheus/rules/ (docs/alerts.md): the ones retraining can fix.
DEFAULT_ALERTS = (
    "MlmonModelAccuracyLow",
    "MlmonModelAccuracyDrop",
    "MlmonModelErrorRise",
    "MlmonModelCalibrationGap",
    "MlmonModelFeatureDrift",
    "MlmonModelPredictionDrift",
)
DEFAULT_LISTEN = "127.0.0.1:8491"
DEFAULT_COOLDOWN = 24 * 3600
DEFAULT_MAX_PER_HOUR = 10
DEFAULT_TIMEOUT = 60
QUEUE_SIZE = 100
MAX_BODY_BYTES = 4 * 1024 * 1024
OUTPUT_TAIL = 1000  # characters of a command's output (or an error response) kept for the log and the audit

# Names a url or a body string may hold in braces: {model}, {version}... ({{ and }} are literal braces).
PLACEHOLDERS = ("model", "version", "alertname", "severity", "fingerprint", "starts_at", "request_id")
# A body string that is exactly "{alert}" becomes the whole alert object.
ALERT_PLACEHOLDER = "{alert}"
_TEMPLATE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_.~:+-]")

CONFIG_KEYS = {
    "command",
    "url",
    "body",
    "headers",
    "header_files",
    "bearer_token_file",
    "basic_auth",
    "ca_file",
    "timeout",
    "alerts",
    "cooldown",
    "max_per_hour",
    "audit_log",
    "state_file",
    "auth_token_file",
}


@dataclass(frozen=True)
class HookConfig:
    command: tuple[str, ...] = ()
    url: str | None = None
    # None: the default body (model, version, alertname, request_id and the alert); else a template.
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()
    header_files: tuple[tuple[str, str], ...] = ()  # (header, file holding its value)
    bearer_token_file: str | None = None
    basic_auth: tuple[str, str] | None = None  # (username, password file)
    ca_file: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    alerts: tuple[str, ...] = DEFAULT_ALERTS
    cooldown: float = DEFAULT_COOLDOWN
    max_per_hour: int = DEFAULT_MAX_PER_HOUR
    audit_log: str = "-"
    state_file: str | None = None
    auth_token_file: str | None = None  # POST /alerts then needs `Authorization: Bearer <its content>`

    @property
    def mode(self) -> str:
        return "command" if self.command else "url"


# --------------------------------------------------------------------------------------------------
# The config file


def _template_problem(text: str, *, whole_alert: bool) -> str | None:
    """Why a url or body string is not a valid template, or None."""
    if whole_alert and text == ALERT_PLACEHOLDER:
        return None
    for m in _TEMPLATE.finditer(text):
        if m.group(0) in ("{{", "}}"):
            continue
        name = m.group(1)
        if name is None:
            return f"a lone {m.group(0)!r} (write {m.group(0) * 2} for a literal brace)"
        if name not in PLACEHOLDERS:
            extra = ', or "{alert}" as a whole value' if whole_alert else ""
            return f"unknown placeholder {{{name}}} (known: {', '.join(PLACEHOLDERS)}{extra})"
    return None


def render(text: str, values: dict[str, str], quote: Callable[[str], str] | None = None) -> str:
    """Fill a checked template's placeholders; `quote` escapes each value (a URL's)."""

    def one(m: re.Match) -> str:
        if m.group(0) in ("{{", "}}"):
            return m.group(0)[0]
        value = values[m.group(1)]
        return quote(value) if quote else value

    return _TEMPLATE.sub(one, text)


def _check_body(ck: Checker, path: str, node: Node) -> Any:
    """The body template as plain data, every string checked."""
    v = node.value
    if isinstance(v, dict):
        return {k: _check_body(ck, f"{path}.{k}", sub) for k, sub in v.items()}
    if isinstance(v, list):
        return [_check_body(ck, f"{path}[{i}]", sub) for i, sub in enumerate(v)]
    if isinstance(v, str):
        problem = _template_problem(v, whole_alert=True)
        if problem:
            ck.fail(path, node, problem)
        return v
    if v is not None and not isinstance(v, (bool, int, float)):  # YAML dates, for one, are not JSON
        ck.fail(path, node, f"must be JSON data (a mapping, list, string, number, boolean or null), got {kind_name(v)}")
    return v


def _string(ck: Checker, path: str, node: Node) -> str | None:
    if not isinstance(node.value, str) or not node.value:
        ck.fail(path, node, f"must be a non-empty string, got {kind_name(node.value)}")
        return None
    return node.value


def _path(base_dir: str, value: str | None) -> str | None:
    if value is None or value == "-" or os.path.isabs(value):
        return value
    return os.path.join(base_dir, value)


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _headers(ck: Checker, path: str, node: Node) -> tuple[tuple[str, str], ...]:
    if not isinstance(node.value, dict):
        ck.fail(path, node, f"must be a mapping of header names to strings, got {kind_name(node.value)}")
        return ()
    out = []
    for name, sub in node.value.items():
        value = _string(ck, f"{path}.{name}", sub)
        if not _HEADER_NAME.match(name):
            ck.fail(f"{path}.{name}", sub, "is not a valid HTTP header name")
        elif value is not None:
            if "\n" in value or "\r" in value:
                ck.fail(f"{path}.{name}", sub, "must be one line")
            out.append((name, value))
    return tuple(out)


def parse_hook_config(text: str, source: str = "<config>", base_dir: str = "") -> HookConfig:
    """Validate the YAML text of a hook config; raise ConfigError listing every problem. Relative file paths
    are taken from `base_dir` (the config file's folder). Whether a command or a URL is set is checked by
    :func:`finish`, after the command-line flags are applied."""
    try:
        root = _compose(text, source)
        tree = to_nodes(root) if root is not None else Node({}, 1, 1)
    except ConfigError as exc:
        raise ConfigError(exc.problems, source) from None
    ck = Checker()
    top = ck.mapping("", tree, CONFIG_KEYS)
    values: dict[str, Any] = {}
    if "command" in top:
        node = top["command"]
        items = node.value if isinstance(node.value, list) else None
        if not items or any(not isinstance(n.value, str) or not n.value for n in items):
            ck.fail(
                "command",
                node,
                "must be a non-empty list of strings: the program and its arguments, run without a shell "
                '(e.g. ["/opt/ml/retrain.sh", "--queue", "batch"])',
            )
        else:
            values["command"] = tuple(n.value for n in items)
    if "url" in top:
        url = _string(ck, "url", top["url"])
        if url is not None:
            if not url.startswith(("http://", "https://")):
                ck.fail("url", top["url"], "must start with http:// or https://")
            elif problem := _template_problem(url, whole_alert=False):
                ck.fail("url", top["url"], problem)
            else:
                values["url"] = url
    if "body" in top:
        values["body"] = _check_body(ck, "body", top["body"])
    if "headers" in top:
        values["headers"] = _headers(ck, "headers", top["headers"])
        for name, _ in values["headers"]:
            if name.lower() == "authorization":
                ck.fail(
                    f"headers.{name}",
                    top["headers"],
                    "credentials belong in a file: bearer_token_file, basic_auth.password_file or header_files",
                )
    if "header_files" in top:
        pairs = _headers(ck, "header_files", top["header_files"])
        values["header_files"] = tuple((name, _path(base_dir, file)) for name, file in pairs)
    for key in ("bearer_token_file", "ca_file", "state_file", "auth_token_file", "audit_log"):
        if key in top:
            value = _string(ck, key, top[key])
            if value is not None:
                values[key] = _path(base_dir, value)
    if "basic_auth" in top:
        auth = ck.mapping("basic_auth", top["basic_auth"], {"username", "password_file"}, ("username", "password_file"))
        if "username" in auth and "password_file" in auth:
            user = _string(ck, "basic_auth.username", auth["username"])
            password = _string(ck, "basic_auth.password_file", auth["password_file"])
            if user is not None and password is not None:
                values["basic_auth"] = (user, _path(base_dir, password))
    if "timeout" in top:
        seconds = ck.duration("timeout", top["timeout"], 1, 24 * 3600)
        if seconds is not None:
            values["timeout"] = float(seconds)
    if "cooldown" in top:
        seconds = ck.duration("cooldown", top["cooldown"], 0, 366 * 86400)
        if seconds is not None:
            values["cooldown"] = float(seconds)
    if "max_per_hour" in top:
        n = ck.positive_int("max_per_hour", top["max_per_hour"], 1, 10_000)
        if n is not None:
            values["max_per_hour"] = n
    if "alerts" in top:
        node = top["alerts"]
        items = node.value if isinstance(node.value, list) else None
        if not items or any(not isinstance(n.value, str) or not n.value for n in items):
            ck.fail("alerts", node, "must be a non-empty list of alert names")
        else:
            values["alerts"] = tuple(n.value for n in items)
    if ck.problems:
        raise ConfigError(ck.problems, source)
    return HookConfig(**values)


def _compose(text: str, source: str):
    import io

    import yaml

    try:
        stream = io.StringIO(text)
        stream.name = source
        return yaml.compose(stream, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], source) from None


def load_hook_config(path: str) -> HookConfig:
    return parse_hook_config(read_config_file(path), path, os.path.dirname(os.path.abspath(path)))


def finish(config: HookConfig, source: str) -> HookConfig:
    """The checks that need the flags applied: one action, and the files it reads are there."""
    problems = []
    if bool(config.command) == bool(config.url):
        problems.append(
            "set either command (a program to run) or url (an endpoint to POST to), not both"
            if config.command
            else "nothing to do: set command (a program to run) or url (an endpoint to POST to)"
        )
    url_only = {
        "body": config.body is not None,
        "headers": config.headers,
        "header_files": config.header_files,
        "bearer_token_file": config.bearer_token_file,
        "basic_auth": config.basic_auth,
        "ca_file": config.ca_file,
    }
    if config.command and any(url_only.values()):
        problems.append(f"{', '.join(k for k, v in url_only.items() if v)}: only with url, not with command")
    if config.bearer_token_file and config.basic_auth:
        problems.append("bearer_token_file and basic_auth: choose one")
    files = [f for _, f in config.header_files] + [config.bearer_token_file, config.ca_file, config.auth_token_file]
    if config.basic_auth:
        files.append(config.basic_auth[1])
    for file in files:
        if file is not None and not os.path.isfile(file):
            problems.append(f"{file}: no such file")
    if problems:
        raise ConfigError(problems, source)
    return config


# --------------------------------------------------------------------------------------------------
# The webhook payload


class PayloadError(ValueError):
    """A notification that is not Alertmanager's webhook format; `field` names where."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def parse_payload(data: Any) -> list[dict]:
    """The alerts of a webhook notification (version 4), checked; raise PayloadError naming the field."""
    if not isinstance(data, dict):
        raise PayloadError("body", f"must be a JSON object (a webhook notification), got {_json_kind(data)}")
    if "version" in data and data["version"] != "4":
        raise PayloadError("version", f'must be "4" (Alertmanager\'s webhook format), got {data["version"]!r}')
    if "alerts" not in data:
        raise PayloadError("alerts", "is required: the list of alerts of the notification")
    alerts = data["alerts"]
    if not isinstance(alerts, list):
        raise PayloadError("alerts", f"must be a list of alerts, got {_json_kind(alerts)}")
    for i, alert in enumerate(alerts):
        where = f"alerts[{i}]"
        if not isinstance(alert, dict):
            raise PayloadError(where, f"must be an object, got {_json_kind(alert)}")
        if alert.get("status") not in ("firing", "resolved"):
            raise PayloadError(f"{where}.status", f'must be "firing" or "resolved", got {alert.get("status")!r}')
        for key, required in (("labels", True), ("annotations", False)):
            value = alert.get(key)
            if value is None and not required:
                continue
            if not isinstance(value, dict):
                raise PayloadError(f"{where}.{key}", f"must be an object of strings, got {_json_kind(value)}")
            for name, text in value.items():
                if not isinstance(text, str):
                    raise PayloadError(f"{where}.{key}.{name}", f"must be a string, got {_json_kind(text)}")
        for key in ("startsAt", "endsAt", "fingerprint", "generatorURL"):
            if key in alert and not isinstance(alert[key], str):
                raise PayloadError(f"{where}.{key}", f"must be a string, got {_json_kind(alert[key])}")
    return alerts


def _json_kind(v: Any) -> str:
    if v is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(type(v), "a number")


# --------------------------------------------------------------------------------------------------
# Decisions


@dataclass
class Job:
    """A retraining request waiting for the worker."""

    alert: dict
    alertname: str
    model: str
    version: str
    request_id: str
    at: float


@dataclass
class Outcome:
    ok: bool
    exit_code: int | None = None
    http_status: int | None = None
    error: str | None = None
    output: str = ""
    seconds: float = 0.0


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= OUTPUT_TAIL else "..." + text[-OUTPUT_TAIL:]


class RetrainHook:
    """The decisions, their state, the audit log and the worker that runs the retraining requests.

    `runner(config, job) -> Outcome` does the work (the command or the POST; replaced in tests); `clock` is
    wall-clock time (the state file keeps it across restarts)."""

    def __init__(
        self,
        config: HookConfig,
        *,
        audit: AuditLog | None = None,
        runner: Callable[[HookConfig, Job], Outcome] | None = None,
        clock: Callable[[], float] = time.time,
        queue_size: int = QUEUE_SIZE,
    ):
        self.config = config
        self.audit = audit if audit is not None else AuditLog(config.audit_log)
        self.runner = runner or run_job
        self.clock = clock
        self.lock = threading.Lock()
        self.last: dict[tuple[str, str], tuple[float, str]] = {}  # (model, version) -> (time, request id)
        self.recent: collections.deque[float] = collections.deque()  # trigger times within the last hour
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self.worker: threading.Thread | None = None
        self.stopping = threading.Event()
        self.busy = False
        if config.state_file:
            self._load_state()

    # -- state ----------------------------------------------------------------------------------------

    def _load_state(self) -> None:
        path = self.config.state_file
        try:
            with open(path, encoding="utf-8") as fh:
                state = json.load(fh)
            last = {(e["model"], e["version"]): (float(e["at"]), str(e["request_id"])) for e in state["last"]}
            recent = sorted(float(t) for t in state["recent"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError([f"cannot read the state file: {exc}; move it away to start afresh"], path) from None
        self.last, self.recent = last, collections.deque(recent)
        self._prune(self.clock())

    def _prune(self, now: float) -> None:
        while self.recent and self.recent[0] <= now - 3600:
            self.recent.popleft()
        for key in [k for k, (at, _) in self.last.items() if at <= now - self.config.cooldown]:
            del self.last[key]

    def _save_state(self) -> None:
        """Under the lock: the state file, replaced whole (never half written)."""
        path = self.config.state_file
        if not path:
            return
        state = {
            "last": [
                {"model": m, "version": v, "at": at, "request_id": rid} for (m, v), (at, rid) in self.last.items()
            ],
            "recent": list(self.recent),
        }
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(state, fh)
            os.replace(tmp, path)
        except OSError as exc:
            log.error("cannot write the state file", extra={"fields": {"path": path, "error": str(exc)}})

    # -- decisions ------------------------------------------------------------------------------------

    def handle(self, payload: Any) -> list[dict]:
        """Decide on every alert of a notification; raise PayloadError (before deciding anything) if it is not
        one. Returns one {alertname, model, version, action} per alert, "queued" for those sent to the worker."""
        alerts = parse_payload(payload)
        if isinstance(payload.get("truncatedAlerts"), int) and payload["truncatedAlerts"] > 0:
            log.warning("Alertmanager left alerts out", extra={"fields": {"truncated": payload["truncatedAlerts"]}})
        return [self.decide(alert) for alert in alerts]

    def decide(self, alert: dict) -> dict:
        labels = alert["labels"]
        alertname, model, version = labels.get("alertname", ""), labels.get("model", ""), labels.get("version", "")
        common = {"alertname": alertname, "model": model, "version": version}
        extra = {"fingerprint": alert.get("fingerprint"), "starts_at": alert.get("startsAt")}
        if alert["status"] == "resolved":
            return self._audit("ignored-resolved", common, extra, reason="resolved alerts never trigger")
        if alertname not in self.config.alerts:
            return self._audit("ignored-alert", common, extra, reason="not one of the alerts that trigger retraining")
        if not model:
            return self._audit("ignored-alert", common, extra, reason="the alert has no model label")
        with self.lock:
            now = self.clock()
            self._prune(now)
            key = (model, version)
            if key in self.last:
                at, rid = self.last[key]
                return self._audit(
                    "skipped-duplicate",
                    common,
                    extra,
                    reason=f"model {model} version {version or '(none)'} already triggered retraining at {_iso(at)}",
                    last_request_id=rid,
                    cooldown_until=_iso(at + self.config.cooldown),
                )
            if len(self.recent) >= self.config.max_per_hour:
                return self._audit(
                    "skipped-rate-limit",
                    common,
                    extra,
                    reason=f"the last hour holds {len(self.recent)} retraining requests already (max_per_hour "
                    f"{self.config.max_per_hour})",
                    next_slot=_iso(self.recent[0] + 3600),
                )
            request_id = _UNSAFE_ID.sub(
                "_",
                f"mlmon-{model}-{version or 'none'}-{datetime.fromtimestamp(now, timezone.utc):%Y%m%dT%H%M%SZ}-"
                f"{secrets.token_hex(3)}",
            )
            job = Job(alert, alertname, model, version, request_id, now)
            self.last[key] = (now, request_id)
            self.recent.append(now)
            try:
                self.jobs.put_nowait(job)
            except queue.Full:
                self._release(job, ran=False)
                return self._audit(
                    "failed", common, extra, request_id=request_id, error=f"{self.jobs.maxsize} requests waiting"
                )
            self._save_state()
        log.info("retraining queued", extra={"fields": {**common, "request_id": request_id}})
        return {**common, "action": "queued", "request_id": request_id}

    def _release(self, job: Job, *, ran: bool) -> None:
        """Under the lock: a request that failed frees its (model, version) for the next notification; one that
        never ran gives its rate-limit slot back too."""
        key = (job.model, job.version)
        if self.last.get(key) == (job.at, job.request_id):
            del self.last[key]
        if not ran:
            try:
                self.recent.remove(job.at)
            except ValueError:
                pass

    def _audit(self, action: str, common: dict, extra: dict, **fields) -> dict:
        self.audit.write("retrain", action=action, **common, **fields, **extra)
        level = logging.WARNING if action == "failed" else logging.INFO
        log.log(level, f"retraining {action}", extra={"fields": {**common, **fields}})
        return {**common, "action": action, **({"reason": fields["reason"]} if "reason" in fields else {})}

    # -- the worker -----------------------------------------------------------------------------------

    def start(self) -> None:
        self.worker = threading.Thread(target=self._work, name="mlmon-retrain", daemon=True)
        self.worker.start()

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            self.run(job)

    def run(self, job: Job) -> None:
        common = {"alertname": job.alertname, "model": job.model, "version": job.version}
        extra = {"fingerprint": job.alert.get("fingerprint"), "starts_at": job.alert.get("startsAt")}
        if self.stopping.is_set():
            with self.lock:
                self._release(job, ran=False)
                self._save_state()
            self._audit("failed", common, extra, request_id=job.request_id, error="the hook stopped before it ran")
            return
        self.busy = True
        started = time.monotonic()
        try:
            outcome = self.runner(self.config, job)
        except Exception as exc:  # a bug or an unexpected error must not kill the worker
            log.exception("retraining request raised")
            outcome = Outcome(False, error=f"{type(exc).__name__}: {exc}")
        finally:
            self.busy = False
        outcome.seconds = round(time.monotonic() - started, 3)
        fields: dict[str, Any] = {"request_id": job.request_id, "mode": self.config.mode}
        if self.config.command:
            fields["exit_code"] = outcome.exit_code
        else:
            fields["http_status"] = outcome.http_status
        fields["duration_seconds"] = outcome.seconds
        if outcome.output:
            log.info("retraining output", extra={"fields": {"request_id": job.request_id, "output": outcome.output}})
        if not outcome.ok:
            with self.lock:
                self._release(job, ran=True)
                self._save_state()
            self._audit("failed", common, extra, **fields, error=outcome.error or "failed")
        else:
            self._audit("triggered", common, extra, **fields)

    def drain(self) -> None:
        """Run every queued request in this thread (tests, without a worker)."""
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self.run(job)

    def close(self, timeout: float | None = None) -> None:
        """Stop: the request running finishes (within its timeout), those still queued are dropped as failed."""
        self.stopping.set()
        if self.worker is not None:
            while True:  # room for the stop mark even when the queue is full
                try:
                    self.jobs.put_nowait(None)
                    break
                except queue.Full:
                    self._drop_one()
            self.worker.join(timeout=self.config.timeout + 10 if timeout is None else timeout)
        self.drain()
        self.audit.close()

    def _drop_one(self) -> None:
        try:
            job = self.jobs.get_nowait()
        except queue.Empty:
            return
        if job is not None:
            self.run(job)  # stopping is set: dropped, with its audit line

    def health(self) -> dict:
        with self.lock:
            self._prune(self.clock())
            return {
                "status": "ok",
                "mode": self.config.mode,
                "queued": self.jobs.qsize(),
                "running": self.busy,
                "triggers_last_hour": len(self.recent),
                "max_per_hour": self.config.max_per_hour,
                "models_in_cooldown": len(self.last),
            }


# --------------------------------------------------------------------------------------------------
# Running a request: the command, or the POST


def job_values(job: Job) -> dict[str, str]:
    labels = job.alert["labels"]
    return {
        "model": job.model,
        "version": job.version,
        "alertname": job.alertname,
        "severity": labels.get("severity", ""),
        "fingerprint": job.alert.get("fingerprint", ""),
        "starts_at": job.alert.get("startsAt", ""),
        "request_id": job.request_id,
    }


def run_job(config: HookConfig, job: Job) -> Outcome:
    return run_command(config, job) if config.command else post(config, job)


def run_command(config: HookConfig, job: Job) -> Outcome:
    """Run the command without a shell, the alert in its environment; kill its process group on timeout."""
    env = dict(os.environ)
    env.update(
        MLMON_MODEL=job.model,
        MLMON_VERSION=job.version,
        MLMON_ALERTNAME=job.alertname,
        MLMON_SEVERITY=job.alert["labels"].get("severity", ""),
        MLMON_REQUEST_ID=job.request_id,
        MLMON_ALERT_JSON=json.dumps(job.alert, sort_keys=True),
    )
    try:
        proc = subprocess.Popen(
            list(config.command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: a timeout kills what it started too
        )
    except OSError as exc:
        return Outcome(False, error=f"cannot run {config.command[0]}: {exc.strerror or exc}")
    try:
        out, _ = proc.communicate(timeout=config.timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, _ = proc.communicate()
        return Outcome(
            False,
            exit_code=proc.returncode,
            error=f"timed out after {config.timeout:g}s; killed",
            output=_tail(out.decode("utf-8", "replace")),
        )
    text = _tail(out.decode("utf-8", "replace"))
    if proc.returncode != 0:
        return Outcome(False, exit_code=proc.returncode, error=f"exit code {proc.returncode}", output=text)
    return Outcome(True, exit_code=0, output=text)


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        if wait is not None:
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def _read_secret(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read().strip()


def build_body(template: Any, values: dict[str, str], alert: dict) -> Any:
    if isinstance(template, dict):
        return {k: build_body(v, values, alert) for k, v in template.items()}
    if isinstance(template, list):
        return [build_body(v, values, alert) for v in template]
    if isinstance(template, str):
        return alert if template == ALERT_PLACEHOLDER else render(template, values)
    return template


def request_of(config: HookConfig, job: Job) -> tuple[str, Any, dict[str, str], tuple[str, str] | None]:
    """The URL, JSON body, headers and basic-auth pair of a job; the secret files are read now (so a rotated
    token is picked up). An OSError names the file."""
    from urllib.parse import quote

    values = job_values(job)
    url = render(config.url or "", values, quote=lambda v: quote(v, safe=""))
    if config.body is None:
        body: Any = {
            "model": job.model,
            "version": job.version,
            "alertname": job.alertname,
            "request_id": job.request_id,
            "alert": job.alert,
        }
    else:
        body = build_body(config.body, values, job.alert)
    headers = dict(config.headers)
    for name, path in config.header_files:
        headers[name] = _read_secret(path)
    if config.bearer_token_file:
        headers["Authorization"] = f"Bearer {_read_secret(config.bearer_token_file)}"
    auth = (config.basic_auth[0], _read_secret(config.basic_auth[1])) if config.basic_auth else None
    return url, body, headers, auth


def post(config: HookConfig, job: Job) -> Outcome:
    import requests

    try:
        url, body, headers, auth = request_of(config, job)
    except OSError as exc:
        return Outcome(False, error=f"cannot read {exc.filename}: {exc.strerror}")
    try:
        response = requests.post(
            url,
            json=body,
            headers=headers,
            auth=auth,
            timeout=config.timeout,
            verify=config.ca_file or True,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        return Outcome(False, error=f"{type(exc).__name__}: {exc}")
    if 200 <= response.status_code < 300:
        return Outcome(True, http_status=response.status_code)
    return Outcome(
        False,
        http_status=response.status_code,
        error=f"HTTP {response.status_code}: {_tail(response.text)}",
    )


# --------------------------------------------------------------------------------------------------
# HTTP


def create_app(hook: RetrainHook, token: str | None = None):
    """POST /alerts (Alertmanager's webhook) and GET /healthz. Errors are JSON in the exporter's shape
    (docs/api.md): {"error": {"code", "name", "message", "field"}}, `field` naming where a payload is wrong."""
    import hmac

    import orjson
    from flask import Flask, jsonify, request
    from werkzeug.exceptions import HTTPException
    from werkzeug.http import HTTP_STATUS_CODES

    app = Flask("mlmon.retrain")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    def error(status: int, message: str, field_name: str | None = None):
        body = {"code": status, "name": HTTP_STATUS_CODES.get(status, "Error"), "message": message}
        if field_name is not None:
            body["field"] = field_name
        response = jsonify({"error": body})
        response.status_code = status
        return response

    @app.post("/alerts")
    def alerts():
        if token is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return error(401, "a bearer token is required (auth_token_file)")
        try:
            data = orjson.loads(request.get_data(cache=False))
        except orjson.JSONDecodeError as exc:
            return error(400, f"body: not valid JSON: {exc}", "body")
        try:
            decisions = hook.handle(data)
        except PayloadError as exc:
            return error(400, str(exc), exc.field)
        return jsonify({"decisions": decisions})

    @app.get("/healthz")
    def healthz():
        return jsonify(hook.health())

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        status = exc.code or 500
        if status == 413:
            return error(413, f"body: larger than {MAX_BODY_BYTES} bytes", "body")
        response = error(status, f"{exc.name}: the hook serves POST /alerts and GET /healthz")
        for key, value in exc.get_headers():  # keeps the Allow header of a 405
            if key.lower() != "content-type":
                response.headers[key] = value
        return response

    @app.errorhandler(Exception)
    def unexpected(_exc: Exception):
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return error(500, "an unexpected error occurred; see the hook's log")

    return app


# --------------------------------------------------------------------------------------------------
# The command


def add_parser(sub) -> None:
    hook = sub.add_parser(
        "retrain-hook",
        help="turn firing quality and drift alerts into retraining requests (Alertmanager webhook)",
        description="An Alertmanager webhook receiver (POST /alerts): a firing quality or drift alert runs a "
        "command or POSTs to a URL (an Airflow DAG run, a Kubeflow pipeline run), once per model and version "
        "within the cooldown and at most max_per_hour times an hour, with one audit line per decision. "
        "Put the command after `--`, or write a config file (docs/retraining.md).",
        usage="mlmon retrain-hook [--config FILE] [--listen HOST:PORT] [options] [-- COMMAND [ARG ...]]",
    )
    hook.add_argument("--config", "--config.file", dest="config", metavar="FILE", help="YAML config file")
    hook.add_argument(
        "--listen",
        "--web.listen-address",
        dest="listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help="address to listen on (default %(default)s)",
    )
    hook.add_argument("--url", help="POST a JSON body here instead of running a command (overrides url)")
    hook.add_argument("--alerts", metavar="NAME,NAME", help="the alertnames that trigger (overrides alerts)")
    hook.add_argument("--cooldown", metavar="DURATION", help="per model and version, e.g. 6h (overrides cooldown)")
    hook.add_argument("--max-per-hour", type=int, metavar="N", help="overrides max_per_hour")
    hook.add_argument("--timeout", metavar="DURATION", help="of the command or the POST (overrides timeout)")
    hook.add_argument("--audit-log", metavar="FILE", help="audit log, - for stderr (overrides audit_log)")
    hook.add_argument("--state-file", metavar="FILE", help="keep the state across restarts (overrides state_file)")
    hook.add_argument("--check", action="store_true", help="validate the config and flags, print them and exit")
    hook.add_argument("--log.level", dest="log_level", choices=logs.LEVELS, default="info")
    hook.add_argument("--log.format", dest="log_format", choices=logs.FORMATS, default="logfmt")
    hook.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the command to run")


def config_from_args(args) -> HookConfig:
    """The config file with the flags applied over it; raise ConfigError naming what is wrong."""
    source = args.config or "mlmon retrain-hook"
    config = load_hook_config(args.config) if args.config else HookConfig()
    argv = list(args.argv or [])
    if argv and argv[0] == "--":
        argv = argv[1:]
    changes: dict[str, Any] = {}
    problems = []
    if argv:
        changes.update(command=tuple(argv), url=None)
    if args.url:
        if argv:
            problems.append("--url and a command after -- exclude each other")
        elif problem := _template_problem(args.url, whole_alert=False):
            problems.append(f"--url: {problem}")
        elif not args.url.startswith(("http://", "https://")):
            problems.append("--url: must start with http:// or https://")
        changes.update(url=args.url, command=())
    if args.alerts:
        changes["alerts"] = tuple(a.strip() for a in args.alerts.split(",") if a.strip())
    for flag, key in (("cooldown", "cooldown"), ("timeout", "timeout")):
        value = getattr(args, flag)
        if value is not None:
            try:
                changes[key] = float(parse_duration(value))
            except ValueError as exc:
                problems.append(f"--{flag}: {exc}")
    if args.max_per_hour is not None:
        if not 1 <= args.max_per_hour <= 10_000:
            problems.append("--max-per-hour: must be from 1 to 10000")
        changes["max_per_hour"] = args.max_per_hour
    if args.audit_log:
        changes["audit_log"] = args.audit_log
    if args.state_file:
        changes["state_file"] = args.state_file
    if problems:
        raise ConfigError(problems, source)
    return finish(replace(config, **changes), source)


def _listen(text: str) -> tuple[str, int]:
    """HOST:PORT, as `mlmon serve --web.listen-address` takes it: an empty host (`:8491`) is every interface."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen {text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def run(args, parser: argparse.ArgumentParser) -> int:
    try:
        config = config_from_args(args)
        host, port = _listen(args.listen)
    except ConfigError as exc:
        parser.exit(2, f"mlmon retrain-hook: invalid config\n{exc}\n")
    except ValueError as exc:
        parser.exit(2, f"mlmon retrain-hook: {exc}\n")
    action = " ".join(config.command) if config.command else f"POST {config.url}"
    if args.check:
        print(
            f"{args.config or 'flags'}: OK: {action}; alerts {', '.join(config.alerts)}; cooldown "
            f"{config.cooldown:g}s per model and version; at most {config.max_per_hour} an hour; "
            f"audit log {config.audit_log}"
        )
        return 0
    logs.setup(args.log_level, args.log_format)
    token = None
    try:
        if config.auth_token_file:
            token = _read_secret(config.auth_token_file)
            if not token:
                raise ConfigError(["the file is empty"], config.auth_token_file)
        hook = RetrainHook(config)
    except ConfigError as exc:
        parser.exit(2, f"mlmon retrain-hook: {exc}\n")
    except OSError as exc:
        parser.exit(2, f"mlmon retrain-hook: {exc.filename}: {exc.strerror}\n")

    import waitress

    try:
        server = waitress.create_server(
            create_app(hook, token),
            host=host,
            port=port,
            threads=4,
            ident="mlmon-retrain-hook",
            max_request_body_size=MAX_BODY_BYTES + 65536,
            channel_timeout=60,
            clear_untrusted_proxy_headers=True,
        )
    except OSError as exc:
        hook.audit.close()
        parser.exit(1, f"mlmon retrain-hook: cannot listen on {host}:{port}: {exc.strerror or exc}\n")
    hook.start()

    def _terminate(signum, _frame):
        log.info("stopping", extra={"fields": {"signal": signal.Signals(signum).name}})
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    log.info(
        "listening",
        extra={
            "fields": {
                "address": f"http://{host}:{server.effective_port}",
                "action": config.mode,
                "alerts": ",".join(config.alerts),
                "cooldown_seconds": config.cooldown,
                "max_per_hour": config.max_per_hour,
                "audit_log": config.audit_log,
                "state_file": config.state_file or "",
            }
        },
    )
    try:
        server.run()
    finally:
        server.close()
        hook.close()
    log.info("stopped")
    return 0
