"""`mlmon demo`: the whole story on one machine, in a few minutes.

Starts the exporter (with the demo's config), the example model server (three scikit-learn models,
instrumented with the mlmon client), and, where installed, Prometheus and Alertmanager with the bundle's
own config files; then plays simulated users and late ground truth through four phases (healthy,
covariate drift, concept drift, recovery with a new version) and shows what mlmon sees, live. Ctrl-C or
the end of --duration stops everything it started.

It runs from a source checkout: the example model server and traffic live in examples/.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
DEMO_CONFIG = os.path.join(EXAMPLES, "demo", "mlmon.yml")

# The demo compresses time: its exporter keeps short windows (1m, 5m, 1h, 1d), which the bundled rules read
# as they are (they decide on whichever window or span holds the evidence), and in the demo's copy of the rules
# every `for:` shrinks to this many seconds, divided by --speed.
HOLD_SECONDS = 20.0
STORY = {
    "healthy": "healthy traffic: inputs and outcomes as in training",
    "covariate_drift": "covariate drift: three features of every model shift by two standard deviations",
    "concept_drift": "concept drift: the same inputs now have other outcomes; quality falls",
    "recovery": "recovery: version v2, retrained on recent data, is deployed",
}


def free_port(preferred: int = 0) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


def _die_with_parent() -> None:
    """Children get SIGTERM if the demo dies, even by SIGKILL, so nothing is left behind (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Stack:
    """The processes the demo starts; stops all of them, in reverse order, whatever happens."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], ready_url: str, env: dict | None = None, timeout: float = 60) -> None:
        logfile = open(os.path.join(self.workdir, f"{name}.log"), "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            cmd,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            preexec_fn=_die_with_parent,
        )
        self.procs.append((name, proc))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited at start; see {logfile.name}:\n{_tail(logfile.name)}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(ready_url, timeout=1).ok:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{name} was not ready within {timeout:.0f}s; see {logfile.name}")

    def stop(self) -> None:
        """Ask every process to stop, give them 10 seconds together (not each: Ctrl-C should not wait for
        the slowest one after another), then kill what is left."""
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for _, proc in reversed(self.procs):
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
        for _, proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self.procs.clear()


def _tail(path: str, lines: int = 15) -> str:
    with open(path, errors="replace") as fh:
        return "".join(fh.readlines()[-lines:])


class Receiver:
    """A local stand-in for Slack and PagerDuty: records what Alertmanager would have sent."""

    def __init__(self) -> None:
        self.notifications: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with contextlib.suppress(ValueError):
                    receiver.notifications.append({"path": self.path, "body": json.loads(body), "at": time.time()})
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_bundle(
    workdir: str, exporter: str, alertmanager: str, receiver: str, interval: str, hold: float = HOLD_SECONDS
) -> tuple[str, str]:
    """Copies of prometheus/ and alertmanager/ for the demo: loopback targets, short intervals, local receiver,
    and a plain-HTTP scrape of the demo's exporter."""
    prom_dir, am_dir = os.path.join(workdir, "prometheus"), os.path.join(workdir, "alertmanager")
    # Not secrets/: the demo's scrape needs none, and local secret files stay where they are.
    shutil.copytree(os.path.join(ROOT, "prometheus"), prom_dir, ignore=shutil.ignore_patterns("secrets"))
    shutil.copytree(os.path.join(ROOT, "alertmanager"), am_dir)

    prom_path = os.path.join(prom_dir, "prometheus.yml")
    with open(prom_path) as fh:
        prom = yaml.safe_load(fh)
    prom.setdefault("global", {}).update({"scrape_interval": interval, "evaluation_interval": interval})
    prom["scrape_configs"] = [sc for sc in prom.get("scrape_configs", []) if sc.get("job_name") == "mlmon"]
    for sc in prom["scrape_configs"]:
        sc["scrape_interval"] = interval
        # The demo's exporter serves plain HTTP on loopback, without a web config: scrape it so, and send
        # no password (the bundle's job expects TLS and basic auth, docs/security.md).
        sc["scheme"] = "http"
        sc.pop("tls_config", None)
        sc.pop("basic_auth", None)
        sc.pop("static_configs", None)
        sc["file_sd_configs"] = [{"files": ["targets/*.yml"]}]
    prom["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    with open(prom_path, "w") as fh:
        yaml.safe_dump(prom, fh, sort_keys=False)
    targets = os.path.join(prom_dir, "targets")
    shutil.rmtree(targets, ignore_errors=True)
    os.makedirs(targets)
    with open(os.path.join(targets, "mlmon.yml"), "w") as fh:
        yaml.safe_dump([{"targets": [exporter]}], fh)
    rules_dir = os.path.join(prom_dir, "rules")
    for name in os.listdir(rules_dir) if os.path.isdir(rules_dir) else []:
        path = os.path.join(rules_dir, name)
        with open(path) as fh:
            text = fh.read()
        text = re.sub(r"\b(for|keep_firing_for): *\d+[smhd]\b", lambda m: f"{m.group(1)}: {hold:.0f}s", text)
        with open(path, "w") as fh:
            fh.write(text)

    am_path = os.path.join(am_dir, "alertmanager.yml")
    with open(am_path) as fh:
        am = yaml.safe_load(fh)
    secrets = os.path.join(workdir, "secrets")
    os.makedirs(secrets)
    slack_url, pd_key = os.path.join(secrets, "slack_webhook_url"), os.path.join(secrets, "pagerduty_routing_key")
    with open(slack_url, "w") as fh:
        fh.write(f"{receiver}/slack")
    with open(pd_key, "w") as fh:
        fh.write("demo-routing-key")
    glob = am.setdefault("global", {})
    for key in ("slack_api_url", "slack_api_url_file"):
        glob.pop(key, None)
    glob["slack_api_url_file"] = slack_url
    glob["pagerduty_url"] = f"{receiver}/pagerduty"
    for r in am.get("receivers", []):
        for s in r.get("slack_configs", []):
            s.pop("api_url", None)
            s["api_url_file"] = slack_url
        for p in r.get("pagerduty_configs", []):
            p.pop("routing_key", None)
            p["routing_key_file"] = pd_key
            p["url"] = f"{receiver}/pagerduty"
    route = am.setdefault("route", {})
    route.update({"group_wait": "5s", "group_interval": "10s"})
    with open(am_path, "w") as fh:
        yaml.safe_dump(am, fh, sort_keys=False)
    return prom_path, am_path


class Status:
    """What mlmon sees, read from the exporter's /metrics and Prometheus' alerts, drawn every few seconds."""

    def __init__(self, exporter: str, prometheus: str | None, receiver: Receiver | None, tty: bool):
        self.exporter, self.prometheus, self.receiver, self.tty = exporter, prometheus, receiver, tty
        self.phase = "starting"
        self.phase_started = time.monotonic()
        self.started = time.monotonic()
        self._last_total: tuple[float, float] | None = None
        self._seen_notifications = 0
        self.links: list[str] = []
        self.events: collections.deque[str] = collections.deque(maxlen=6)

    def event(self, text: str) -> None:
        """Something that happened: printed at once when plain, listed under the table when redrawing."""
        self.events.append(f"{time.strftime('%H:%M:%S')} {text}")
        if not self.tty:
            print(f"[demo] {text}", flush=True)

    def lines(self) -> list[str]:
        text = requests.get(f"{self.exporter}/metrics", timeout=5).text
        samples = [s for f in text_string_to_metric_families(text) for s in f.samples if s.name.startswith("mlmon_")]
        now = time.monotonic()
        total = sum(s.value for s in samples if s.name == "mlmon_predictions_total")
        rate = 0.0
        if self._last_total:
            rate = (total - self._last_total[1]) / max(now - self._last_total[0], 1e-6)
        self._last_total = (now, total)
        elapsed = now - self.started
        out = [
            f"mlmon demo  {elapsed:5.0f}s  phase: {self.phase} ({now - self.phase_started:.0f}s)",
            f"  {STORY.get(self.phase, '')}",
            f"  throughput {rate:6.1f} predictions/s, {total:,.0f} in all",
            "",
            f"  {'model':<9} {'version':<8} {'quality':<10} {'1m':>7} {'5m':>7} {'1h':>7}  "
            f"{'est. 1m':>7}  {'pending':>7}  drifting",
        ]
        rows = []
        for model in sorted({s.labels["model"] for s in samples if s.name == "mlmon_model_info"}):
            task = next(
                s.labels["task"] for s in samples if s.name == "mlmon_model_info" and s.labels["model"] == model
            )
            # Every version with traffic in the last 5 minutes, side by side (old and new after a deploy).
            recent = sorted(
                s.labels["version"]
                for s in samples
                if s.name == "mlmon_window_samples"
                and s.labels["model"] == model
                and s.labels["window"] == "5m"
                and s.labels["kind"] == "predictions"
                and s.value > 0
            )
            rows += [(model, task, version) for version in recent]
        for model, task, version in rows:
            metric = "mlmon_mae" if task == "regression" else "mlmon_accuracy"
            cells = []
            for window in ("1m", "5m", "1h"):
                v = _get(samples, metric, model=model, version=version, window=window)
                cells.append("-" if v is None else (f"{v:.1f}" if task == "regression" else f"{v:.1%}"))
            # Estimated from the calibrated scores of every prediction, labelled or not: it moves before the labels.
            est = _get(samples, "mlmon_estimated_accuracy", model=model, version=version, window="1m")
            pending = _get(samples, "mlmon_pending_labels", model=model) or 0
            drifting = _get(samples, "mlmon_drifted_features", model=model, version=version, window="1m")
            out.append(
                f"  {model:<9} {version:<8} {metric[6:]:<10} {cells[0]:>7} {cells[1]:>7} {cells[2]:>7}  "
                f"{'-' if est is None else f'{est:.1%}':>7}  {pending:>7.0f}  "
                f"{'-' if drifting is None else int(drifting)}"
            )
        if self.prometheus:
            out += ["", "  alerts firing (Prometheus): " + (", ".join(self._alerts()) or "none")]
        if self.receiver:
            out.append(
                f"  notifications sent (to the local Slack/PagerDuty stand-in): {len(self.receiver.notifications)}"
            )
        return out

    def _alerts(self) -> list[str]:
        with contextlib.suppress(requests.RequestException, KeyError, ValueError):
            alerts = requests.get(f"{self.prometheus}/api/v1/alerts", timeout=2).json()["data"]["alerts"]
            return sorted(
                {
                    f"{a['labels']['alertname']}({a['labels'].get('model', '-')})"
                    for a in alerts
                    if a["state"] == "firing" and a["labels"].get("severity") != "none"
                }
            )
        return []

    def new_notifications(self) -> list[str]:
        if not self.receiver:
            return []
        fresh = self.receiver.notifications[self._seen_notifications :]
        self._seen_notifications += len(fresh)
        out = []
        for n in fresh:
            body = n["body"]
            if n["path"].startswith("/pagerduty"):
                out.append(f"PagerDuty {body.get('event_action')}: {body.get('payload', {}).get('summary', '')}")
            else:
                out.append(f"Slack: {(body.get('attachments') or [{}])[0].get('title') or body.get('text', '')}")
        return out

    def draw(self) -> None:
        try:
            lines = self.lines()
        except requests.RequestException as exc:
            lines = [f"mlmon demo: the exporter did not answer ({exc})"]
        for note in self.new_notifications():
            self.event(f"notification: {note}")
        if self.tty:
            lines += [
                "",
                "  recent events:",
                *(f"    {e}" for e in self.events),
                "",
                *self.links,
                "",
                "  Ctrl-C stops the demo.",
            ]
            sys.stdout.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
            sys.stdout.flush()
        else:
            print("\n".join(lines), flush=True)


def _get(samples, name: str, **labels) -> float | None:
    for s in samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def run(args) -> int:
    if not os.path.exists(os.path.join(EXAMPLES, "model_server.py")):
        print(
            "mlmon demo runs from a source checkout (it needs examples/); clone the repository and run `make demo`.",
            file=sys.stderr,
        )
        return 2
    sys.path.insert(0, EXAMPLES)
    from traffic import Traffic  # examples/traffic.py

    tty = sys.stdout.isatty() and not args.plain
    workdir = tempfile.mkdtemp(prefix="mlmon-demo-")
    stack = Stack(workdir)
    receiver: Receiver | None = None
    traffic: Traffic | None = None

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    # Ctrl-C stops the demo even when it was started with SIGINT ignored (a background job of a
    # non-interactive shell inherits that, and Python then leaves KeyboardInterrupt off).
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        port = args.port or free_port(8490)
        exporter = f"http://127.0.0.1:{port}"
        print(f"[demo] starting the exporter on {exporter} (config {os.path.relpath(DEMO_CONFIG, ROOT)})", flush=True)
        stack.start(
            "exporter",
            [
                sys.executable,
                "-m",
                "exporter",
                "serve",
                "--config",
                DEMO_CONFIG,
                "--port",
                str(port),
                f"--storage.path={workdir}/mlmon-data",
            ],
            f"{exporter}/readyz",
        )
        ms_port = free_port()
        model_server = f"http://127.0.0.1:{ms_port}"
        print(f"[demo] training three scikit-learn models and serving them on {model_server}", flush=True)
        stack.start(
            "model-server",
            [
                sys.executable,
                os.path.join(EXAMPLES, "model_server.py"),
                "--port",
                str(ms_port),
                "--mlmon-url",
                exporter,
            ],
            f"{model_server}/healthz",
        )
        prometheus = None
        have = shutil.which("prometheus") and shutil.which("prometheus-alertmanager")
        bundle = os.path.exists(os.path.join(ROOT, "prometheus", "prometheus.yml")) and os.path.exists(
            os.path.join(ROOT, "alertmanager", "alertmanager.yml")
        )
        if args.no_prometheus:
            print("[demo] Prometheus and Alertmanager: skipped (--no-prometheus)", flush=True)
        elif not have:
            print(
                "[demo] Prometheus and Alertmanager are not installed; to see alerts too, run "
                "`sudo apt-get install prometheus prometheus-alertmanager` (make demo does it when it can)",
                flush=True,
            )
        elif not bundle:
            print(
                "[demo] prometheus/prometheus.yml or alertmanager/alertmanager.yml is missing; skipping them",
                flush=True,
            )
        else:
            receiver = Receiver()
            prom_port, am_port = free_port(9090), free_port(9093)
            interval = "2s" if args.speed > 1 else "5s"
            prom_cfg, am_cfg = write_bundle(
                workdir,
                f"127.0.0.1:{port}",
                f"127.0.0.1:{am_port}",
                receiver.url,
                interval,
                hold=max(HOLD_SECONDS / args.speed, 4.0),
            )
            stack.start(
                "alertmanager",
                [
                    "prometheus-alertmanager",
                    f"--config.file={am_cfg}",
                    f"--storage.path={workdir}/am-data",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",
                ],
                f"http://127.0.0.1:{am_port}/-/ready",
            )
            stack.start(
                "prometheus",
                [
                    "prometheus",
                    f"--config.file={prom_cfg}",
                    f"--storage.tsdb.path={workdir}/prom-data",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                f"http://127.0.0.1:{prom_port}/-/ready",
            )
            prometheus = f"http://127.0.0.1:{prom_port}"
        links = [f"  exporter      {exporter}/metrics   {exporter}/api/v1/models"]
        if prometheus:
            links += [
                f"  Prometheus    {prometheus}/targets   {prometheus}/alerts",
                f"  Alertmanager  http://127.0.0.1:{am_port}",
            ]
        links.append(f"  logs          {workdir}")
        print("[demo] open:\n" + "\n".join(links), flush=True)

        status = Status(exporter, prometheus, receiver, tty)
        status.links = links

        def on_phase(phase: str, cycle: int) -> None:
            status.phase, status.phase_started = phase, time.monotonic()
            status.event(f"phase={phase} cycle={cycle}: {STORY[phase]}")

        traffic = Traffic(
            model_server,
            duration=args.duration,
            speed=args.speed,
            rate=args.rate,
            label_delay=args.label_delay,
            label_loss=args.label_loss,
            seed=args.seed,
            on_phase=on_phase,
            linger=args.linger,
        )
        runner = threading.Thread(target=traffic.run, name="traffic", daemon=True)
        runner.start()
        # Quiet: no status table, but notifications are shown within a second of their arrival.
        every = 1.0 if args.quiet else 2.0 if tty else args.status_every
        while runner.is_alive():
            runner.join(every)
            if not args.quiet:
                status.draw()
            else:  # pages are events too: shown even when the status table is not
                for note in status.new_notifications():
                    status.event(f"notification: {note}")
        print(f"[demo] done: {traffic.sent} predictions sent, {traffic.errors} errors", flush=True)
        return 0
    except KeyboardInterrupt:
        print("\n[demo] stopping", flush=True)
        return 130
    except RuntimeError as exc:
        print(f"[demo] {exc}", file=sys.stderr)
        return 1
    finally:
        if traffic is not None:
            traffic.stop()
        stack.stop()
        if receiver is not None:
            receiver.close()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        print("[demo] stopped everything it started", flush=True)


def add_parser(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the demo: models, traffic, drift, late labels (source checkout)",
        description=__doc__.split("\n\n")[1],
    )
    demo.add_argument("--duration", type=float, default=600, help="seconds for the four phases (default %(default)s)")
    demo.add_argument(
        "--linger",
        action="store_true",
        help="after the four phases, keep the last one's traffic going until Ctrl-C (time to look around)",
    )
    demo.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="time compression: traffic rate x speed, label delays / speed (default %(default)s)",
    )
    demo.add_argument(
        "--rate", type=float, default=5.0, help="predictions/s per model at speed 1 (default %(default)s)"
    )
    demo.add_argument("--label-delay", type=float, default=30.0, help="mean seconds until a label arrives")
    demo.add_argument("--label-loss", type=float, default=0.1, help="share of labels that never arrive")
    demo.add_argument("--port", type=int, default=0, help="exporter port (default 8490 if free)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus and Alertmanager")
    demo.add_argument("--plain", action="store_true", help="print status blocks instead of redrawing the screen")
    demo.add_argument("--status-every", type=float, default=10.0, help="seconds between status blocks when plain")
    demo.add_argument("--quiet", action="store_true", help="print phases and events only")
    demo.add_argument("--keep-logs", action="store_true", help="keep the processes' logs and data when done")
