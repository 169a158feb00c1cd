"""`mlmon report`: one self-contained HTML file that tells how the models did over a period (docs/report.md).

It reads Prometheus's HTTP API (the series the exporter publishes and the ALERTS series of the bundled
rules), so it needs nothing from the exporter itself and works on any period Prometheus keeps."""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import time

from exporter import logs
from exporter.config import parse_duration
from exporter.report.prom import Connection, Prometheus, ReportError

log = logging.getLogger("mlmon.report")
DEFAULT_URL = "http://127.0.0.1:9090"


def _env(name: str, default=None):
    return os.environ.get(f"MLMON_{name}", default)


def add_parser(sub) -> None:
    rep = sub.add_parser(
        "report",
        help="write an HTML report of the models over a period, from Prometheus",
        description="Read Prometheus (the exporter's series and the bundled alerts) and write one self-contained "
        "HTML file: a summary, then per model its quality over time (realized and estimated), drift, data "
        "quality, traffic, latency, label delay and the alerts that fired (docs/report.md).",
    )
    rep.add_argument(
        "--prometheus.url",
        dest="url",
        default=_env("PROMETHEUS_URL", DEFAULT_URL),
        metavar="URL",
        help="Prometheus's address (env MLMON_PROMETHEUS_URL; default %(default)s)",
    )
    rep.add_argument("--prometheus.username", dest="username", metavar="USER", help="basic auth user")
    rep.add_argument("--prometheus.password-file", dest="password_file", metavar="FILE", help="basic auth password")
    rep.add_argument("--prometheus.bearer-token-file", dest="bearer_token_file", metavar="FILE")
    rep.add_argument("--prometheus.ca-file", dest="ca_file", metavar="FILE", help="CA of Prometheus's TLS certificate")
    rep.add_argument("--prometheus.insecure-skip-verify", dest="insecure", action="store_true")
    rep.add_argument(
        "--prometheus.timeout", dest="timeout", default="60s", metavar="DURATION", help="per query (default 60s)"
    )
    rep.add_argument("--period", default="7d", metavar="DURATION", help="how far back (default %(default)s)")
    rep.add_argument(
        "--end", metavar="TIME", help="end of the period: RFC 3339 (2026-12-01T00:00:00Z) or unix seconds; default now"
    )
    rep.add_argument(
        "--model", action="append", metavar="NAME", help="only this model (repeat for more); default every model"
    )
    rep.add_argument(
        "--match",
        default=_env("REPORT_MATCH", ""),
        metavar="MATCHERS",
        help='extra label matchers on the exporter\'s series, e.g. job="mlmon" when Prometheus scrapes several',
    )
    rep.add_argument("--step", metavar="DURATION", help="resolution of the charts (default: the period / 400)")
    rep.add_argument(
        "--scrape-interval",
        metavar="DURATION",
        help="the exporter's scrape interval (default: asked of Prometheus, else 15s)",
    )
    out = rep.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", metavar="FILE", help="the HTML file (default mlmon-report-TIME.html)")
    out.add_argument(
        "--output-dir",
        metavar="DIR",
        help="write mlmon-report-TIME.html here (TIME: the period's end, UTC), and latest.html beside it",
    )
    rep.add_argument(
        "--every",
        metavar="DURATION",
        help="keep running: a report now and then every DURATION (a scheduled weekly report: --every 7d)",
    )
    rep.add_argument("--count", type=int, metavar="N", help="with --every: stop after N reports")
    rep.add_argument("--keep", type=int, default=0, metavar="N", help="with --output-dir: keep the newest N reports")
    rep.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    rep.add_argument("--log.level", dest="log_level", choices=logs.LEVELS, default="info")
    rep.add_argument("--log.format", dest="log_format", choices=logs.FORMATS, default="logfmt")


class Progress:
    """One line per step on stderr; on a terminal, one line redrawn in place."""

    def __init__(self, quiet: bool, stream=None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self.width = 0

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        text = f"mlmon report: {message} ({time.monotonic() - self.started:.1f} s)"
        if self.tty:
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty and not self.quiet and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


def parse_time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither RFC 3339 (2026-12-01T00:00:00Z) nor unix seconds") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.timestamp()


def options(args) -> dict:
    """The flags checked and turned into values; raises ReportError naming the flag."""
    out = {}
    for flag, key in (("period", "period"), ("step", "step"), ("scrape_interval", "scrape"), ("every", "every")):
        value = getattr(args, flag)
        try:
            out[key] = float(parse_duration(value)) if value else None
        except ValueError as exc:
            raise ReportError(f"--{flag.replace('_', '-')}: {exc}") from None
    try:
        out["timeout"] = float(parse_duration(args.timeout))
    except ValueError as exc:
        raise ReportError(f"--prometheus.timeout: {exc}") from None
    if args.end:
        try:
            out["end"] = parse_time(args.end)
        except ValueError as exc:
            raise ReportError(f"--end: {exc}") from None
    if args.count is not None and not args.every:
        raise ReportError("--count needs --every")
    if args.keep and not args.output_dir:
        raise ReportError("--keep needs --output-dir")
    if args.password_file and not args.username:
        raise ReportError("--prometheus.password-file needs --prometheus.username")
    if not args.url.startswith(("http://", "https://")):
        raise ReportError(f"--prometheus.url: {args.url!r} must start with http:// or https://")
    return out


def make_report(args, opts: dict, progress: Progress) -> tuple[str, object]:
    """Gather and render one report; returns (html, report)."""
    from exporter.report.gather import Gatherer, Period
    from exporter.report.render import render

    conn = Connection(
        url=args.url,
        username=args.username,
        password_file=args.password_file,
        bearer_token_file=args.bearer_token_file,
        ca_file=args.ca_file,
        insecure_skip_verify=args.insecure,
        timeout=opts["timeout"],
    )
    prom = Prometheus(conn)
    end = opts.get("end") or time.time()
    progress(f"asking Prometheus at {prom.base}")
    scrape = opts["scrape"] or prom.scrape_interval(default=15.0)
    period = Period.plan(end, opts["period"], scrape, opts["step"])
    report = Gatherer(prom, period, args.match, progress).gather(args.model)
    report.generated = time.time()
    progress("drawing the charts")
    report.queries = prom.queries
    return render(report), report


def write(path: str, text: str) -> None:
    """Whole or not at all: a reader (a web server over the reports' directory) never sees half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def destination(args, end: float) -> str:
    at = dt.datetime.fromtimestamp(end, dt.timezone.utc)
    name = f"mlmon-report-{at:%Y-%m-%dT%H%M%SZ}.html"  # sorts by time, and never overwrites an earlier one
    if args.output_dir:
        return os.path.join(args.output_dir, name)
    return args.output or name


def prune(directory: str, keep: int) -> None:
    reports = sorted(f for f in os.listdir(directory) if f.startswith("mlmon-report-") and f.endswith(".html"))
    for old in reports[: max(len(reports) - keep, 0)]:
        os.remove(os.path.join(directory, old))


def once(args, opts: dict) -> int:
    progress = Progress(args.quiet)
    started = time.monotonic()
    try:
        text, report = make_report(args, opts, progress)
    finally:
        progress.done()
    path = destination(args, report.period.end)
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
    write(path, text)
    if args.output_dir:
        write(os.path.join(args.output_dir, "latest.html"), text)
        if args.keep:
            prune(args.output_dir, args.keep)
    log.info(
        "wrote %s (%d KiB, %d model(s), %d queries, %.1f s)",
        path,
        len(text.encode()) // 1024,
        len(report.models),
        report.queries,
        time.monotonic() - started,
    )
    return 0


def run(args) -> int:
    logs.setup(args.log_level, args.log_format)
    try:
        opts = options(args)
    except ReportError as exc:
        print(f"mlmon report: {exc}", file=sys.stderr)
        return 2
    if args.output_dir:
        try:
            os.makedirs(args.output_dir, exist_ok=True)
        except OSError as exc:
            print(f"mlmon report: --output-dir {args.output_dir}: {exc.strerror}", file=sys.stderr)
            return 2
    if not opts["every"]:
        return _once_or_error(args, opts)
    made = 0
    failures = 0
    while args.count is None or made < args.count:
        code = _once_or_error(args, opts)
        made += 1
        failures = failures + 1 if code else 0
        if args.count is not None and made >= args.count:
            break
        # A failed report is tried again sooner (Prometheus restarting), at most every 5 minutes.
        wait = opts["every"] if not code else min(opts["every"], 300.0 * failures)
        log.info("next report in %.0f s", wait)
        time.sleep(wait)
    return 0


def _once_or_error(args, opts: dict) -> int:
    from exporter.report.gather import NoData

    try:
        return once(args, opts)
    except NoData as exc:
        print(f"mlmon report: {exc}", file=sys.stderr)
        return 1
    except ReportError as exc:
        print(f"mlmon report: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(
            f"mlmon report: {exc.name or exc} is missing; install the report extra: pip install 'mlmon[report]'",
            file=sys.stderr,
        )
        return 2
    except OSError as exc:
        print(f"mlmon report: cannot write the report: {exc}", file=sys.stderr)
        return 2
