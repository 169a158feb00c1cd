"""The `mlmon` command: serve the exporter, check a config file, run the demo, the retraining hook or a report."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys

from exporter import __version__, logs
from exporter.config import ConfigError, load_config

DEFAULT_PORT = 8490
log = logging.getLogger("mlmon")


def _env(name: str, default=None):
    return os.environ.get(f"MLMON_{name}", default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlmon", description="Watch machine-learning models with Prometheus.")
    parser.add_argument("--version", action="version", version=f"mlmon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the exporter", description="Run the exporter (one process).")
    serve.add_argument(
        "--config",
        "--config.file",
        dest="config",
        default=_env("CONFIG"),
        metavar="FILE",
        help="YAML config file (env MLMON_CONFIG)",
    )
    serve.add_argument(
        "--host", default=_env("HOST", "127.0.0.1"), help="address to listen on (env MLMON_HOST; default %(default)s)"
    )
    serve.add_argument(
        "--port",
        type=int,
        default=_env("PORT", str(DEFAULT_PORT)),
        help="port to listen on (env MLMON_PORT; default %(default)s)",
    )
    serve.add_argument(
        "--web.listen-address",
        dest="listen",
        metavar="HOST:PORT",
        help="address and port in one, Prometheus style; overrides --host and --port",
    )
    serve.add_argument(
        "--web.config.file",
        dest="web_config",
        default=_env("WEB_CONFIG_FILE"),
        metavar="FILE",
        help="exporter-toolkit web config: TLS, basic auth on /metrics, response headers "
        "(env MLMON_WEB_CONFIG_FILE; docs/security.md)",
    )
    serve.add_argument(
        "--storage.path",
        dest="storage_path",
        default=_env("STORAGE_PATH"),
        metavar="DIR",
        help="data directory, overriding storage.path of the config (env MLMON_STORAGE_PATH)",
    )
    serve.add_argument(
        "--threads",
        type=int,
        default=_env("THREADS", "8"),
        help="request threads (env MLMON_THREADS; default %(default)s)",
    )
    serve.add_argument(
        "--log.level",
        dest="log_level",
        choices=logs.LEVELS,
        default=_env("LOG_LEVEL", "info"),
        help="env MLMON_LOG_LEVEL; default %(default)s",
    )
    serve.add_argument(
        "--log.format",
        dest="log_format",
        choices=logs.FORMATS,
        default=_env("LOG_FORMAT", "logfmt"),
        help="env MLMON_LOG_FORMAT; default %(default)s",
    )

    check = sub.add_parser(
        "check-config",
        help="validate a config file and exit",
        description="Validate a config file; exit 0 if it is valid, 1 if not.",
    )
    check.add_argument("file", metavar="FILE", nargs="?")
    check.add_argument(
        "--config", "--config.file", dest="config", metavar="FILE", help="the same, in the form `serve` takes"
    )

    check_web = sub.add_parser(
        "check-web-config",
        help="validate a web config file (--web.config.file) and exit",
        description="Validate a web config file as `mlmon serve` reads it (certificates included); exit 0 if it "
        "is valid, 1 if not.",
    )
    check_web.add_argument("file", metavar="FILE")

    ref = sub.add_parser("reference", help="build a reference profile", description="Reference profiles.")
    ref_sub = ref.add_subparsers(dest="reference_command", required=True, metavar="COMMAND")
    build = ref_sub.add_parser(
        "build",
        help="profile a CSV of reference rows",
        description="Bin a CSV of reference rows into a compact profile (bin edges, counts, categories) that the "
        "exporter loads with `reference: PROFILE.json`; raw rows are not kept.",
    )
    build.add_argument("data", metavar="DATA.csv")
    build.add_argument("--model", required=True, help="model name in the config")
    build.add_argument("--config", "--config.file", dest="config", required=True, metavar="FILE")
    build.add_argument("-o", "--output", required=True, metavar="PROFILE.json")

    from exporter import demo, report, retrain

    demo.add_parser(sub)
    retrain.add_parser(sub)
    report.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    single_threaded_blas()  # before the parser: the subcommands' modules import numpy
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "check-config":
        if (args.file is None) == (args.config is None):
            parser.error("check-config takes one config file: check-config FILE, or check-config --config FILE")
        return _check_config(args.file or args.config)
    if args.command == "check-web-config":
        return _check_web_config(args.file)
    if args.command == "reference":
        return _reference_build(args)
    if args.command == "demo":
        from exporter import demo

        return demo.run(args)
    if args.command == "retrain-hook":
        from exporter import retrain

        return retrain.run(args, parser)
    if args.command == "report":
        from exporter import report

        return report.run(args)
    return _serve(parser, args)


def _flat(fields: dict) -> dict:
    return {k: ",".join(v) if isinstance(v, list) else v for k, v in fields.items()}


def _reference_build(args) -> int:
    from exporter.stats import reference

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    model = config.model(args.model)
    if model is None:
        print(
            f"mlmon reference build: no model {args.model!r} in {args.config}; models: "
            f"{', '.join(m.name for m in config.models)}",
            file=sys.stderr,
        )
        return 1
    try:
        with open(args.data, encoding="utf-8") as fh:
            profile = reference.from_csv(fh.read(), model)
    except (OSError, reference.ReferenceError) as exc:
        print(f"mlmon reference build: {args.data}: {exc}", file=sys.stderr)
        return 1
    with open(args.output, "w", encoding="utf-8") as fh:
        fh.write(profile.dumps())
    print(
        f"{args.output}: profile of {profile.rows} rows, {len(profile.features)} features"
        + (", predictions" if profile.prediction else "")
        + (", labels" if profile.label else "")
        + _calibration_text(profile)
    )
    return 0


def _calibration_text(profile) -> str:
    """How the profile calibrates the estimated quality, or why it has none (a line's tail)."""
    c = profile.calibration
    if c is not None:
        return (
            f"; scores calibrated for the estimated quality: {c.method} "
            f"(ECE on {c.rows} reference rows {c.ece_raw:.4f} raw, {c.ece_calibrated:.4f} calibrated out of fold)"
        )
    return f"; {profile.calibration_note}" if profile.calibration_note else ""


def _check_config(path: str) -> int:
    try:
        config = load_config(path)
        from exporter.stats import reference

        profiles = reference.load_all(config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    models = ", ".join(f"{m.name} ({m.task})" for m in config.models)
    print(f"{path}: OK: {len(config.models)} model(s): {models}; windows {', '.join(config.windows)}")
    for name, profile in profiles.items():
        model = config.model(name)
        if model is not None and model.is_classification and profile.calibration is None:
            print(f"note: model {name!r}: {profile.calibration_note}", file=sys.stderr)
    return 0


def _check_web_config(path: str) -> int:
    from exporter.security import webconfig

    try:
        config = webconfig.load(path)
    except webconfig.WebConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    parts = [f"TLS ({config.tls.client_auth_type}, {config.tls.min_version}+)" if config.tls else "no TLS"]
    parts.append(f"{len(config.users)} basic auth user(s)" if config.users else "no basic auth")
    print(f"{path}: OK: {', '.join(parts)}")
    return 0


BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def single_threaded_blas() -> None:
    """One BLAS thread, unless the environment says otherwise; effective only before numpy is imported (so
    ``main`` calls it first, for every command: the others' products are small too).

    The exporter's matrix products are small (a batch's rows times a few principal components: tens of
    microseconds), and it serves from threads of its own. A BLAS thread pool saves nothing on them, and its
    threads spin while they wait for work: served, the pool's thread took as much CPU as all the serving threads
    together (docs/benchmarks.md#ingest-formats measures the exporter both ways)."""
    for name in BLAS_THREADS:
        os.environ.setdefault(name, "1")


def _serve(parser: argparse.ArgumentParser, args) -> int:
    if not args.config:
        parser.error("serve needs --config FILE (or MLMON_CONFIG)")
    # argparse checks choices on the command line only; values from the environment are checked here.
    if args.log_level not in logs.LEVELS:
        parser.error(f"MLMON_LOG_LEVEL={args.log_level!r}: choose from {', '.join(logs.LEVELS)}")
    if args.log_format not in logs.FORMATS:
        parser.error(f"MLMON_LOG_FORMAT={args.log_format!r}: choose from {', '.join(logs.FORMATS)}")
    host, port = args.host, args.port
    if args.listen:
        host, _, port_text = args.listen.rpartition(":")
        if not port_text.isdigit():
            parser.error(f"--web.listen-address {args.listen!r} is not HOST:PORT")
        host, port = host.strip("[]") or "0.0.0.0", int(port_text)

    from exporter.engine.joins import JoinStoreUnavailable
    from exporter.engine.storage import StorageError
    from exporter.security import webconfig
    from exporter.serve.app import create_app, tune_gc

    logs.setup(args.log_level, args.log_format)
    tune_gc()
    web: webconfig.Holder | None = None
    if args.web_config:
        try:
            web = webconfig.Holder(args.web_config)
        except webconfig.WebConfigError as exc:
            parser.exit(2, f"mlmon serve: invalid web config\n{exc}\n")
    public = None
    if web is not None and web.tls:
        from exporter.security import tls

        try:
            public = tls.bind(host, port)  # before the app opens its data directory: a busy port fails fast
        except OSError as exc:
            parser.exit(2, f"mlmon serve: cannot listen on {host}:{port}: {exc}\n")
    try:
        config = load_config(args.config)
        if args.storage_path:
            config = dataclasses.replace(config, storage=dataclasses.replace(config.storage, path=args.storage_path))
        app = create_app(config)  # loads the references: a bad one is a config error naming the model
    except ConfigError as exc:
        parser.exit(2, f"mlmon serve: invalid config\n{exc}\n")
    except StorageError as exc:
        parser.exit(2, f"mlmon serve: cannot open the data directory\n{exc}\n")
    except JoinStoreUnavailable as exc:
        parser.exit(2, f"mlmon serve: {exc}\n")
    mlmon = app.extensions["mlmon"]
    if mlmon.store.durable:
        log.info("state restored", extra={"fields": {"data": mlmon.store.file, **_flat(mlmon.restored)}})
    limit = config.limits.max_body_bytes
    wsgi = app
    peers = webconfig.Peers() if public is not None else None
    if web is not None:
        # Basic auth on /metrics, extra headers, the real client behind TLS (webconfig.Guard).
        wsgi = webconfig.Guard(app, web, peers=peers, registry=mlmon.registry)
    # Waitress's own body limit sits above the app's, so the app answers 413 in its JSON shape.
    # With TLS, waitress listens on a random loopback port behind the TLS listener (exporter/security/tls.py).
    try:
        server = _create_server(wsgi, host, port, public is not None, args.threads, limit)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        mlmon.close()
        parser.exit(1, f"mlmon serve: cannot listen on {host}:{port}: {exc.strerror or exc}\n")
    listener = None
    if public is not None:
        listener = tls.TLSListener(public, server.effective_port, web, peers)  # type: ignore[arg-type]
        listener.start()
    stop_maintenance = mlmon.start_maintenance()

    def _terminate(signum, _frame):
        mlmon.ready = False
        log.info("stopping", extra={"fields": {"signal": signal.Signals(signum).name}})
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    if web is not None:
        # Like Prometheus: SIGHUP re-reads the web config (certificates and users); so does a change of its files.
        signal.signal(signal.SIGHUP, lambda _signum, _frame: web.reload("SIGHUP"))
    address = f"http://{host}:{server.effective_port}"
    if listener is not None:
        address = f"https://{host}:{listener.address[1]}"
    log.info(
        "listening",
        extra={
            "fields": {
                "address": address,
                "models": len(config.models),
                "config": args.config,
                **({"web_config": args.web_config, "basic_auth": bool(web.config.users)} if web else {}),
                "version": __version__,
            }
        },
    )
    try:
        server.run()  # returns after SystemExit, once in-flight requests are done (waitress drains its queue)
    finally:
        if listener is not None:
            listener.stop()
        stop_maintenance.set()
        mlmon.checkpoint_due.set()  # wakes the maintenance thread, which sees the stop
        if mlmon.maintenance_thread is not None:
            mlmon.maintenance_thread.join(timeout=30)
        mlmon.close()  # a last checkpoint: the next start has no journal to replay
    log.info("stopped")
    return 0


def _create_server(wsgi, host: str, port: int, behind_tls: bool, threads: int, limit: int):
    """waitress's server, bound (an OSError when the address is taken)."""
    import waitress

    return waitress.create_server(
        wsgi,
        host="127.0.0.1" if behind_tls else host,
        port=0 if behind_tls else port,
        threads=threads,
        ident="mlmon",
        max_request_body_size=2 * limit + 65536,
        channel_timeout=60,
        # Slow clients cost a connection each, not a thread (waitress reads whole requests before a worker
        # sees them): allow many, so that a few hundred trickling connections do not lock others out.
        connection_limit=1000,
        # A batch body up to 1 MiB is buffered in memory (waitress's default spills bodies over 512 KiB to a
        # temporary file: a batch of 1000 predictions with 30 features is 545 KiB), read 256 KiB per recv
        # (default 8 KiB). Together they cut waitress's CPU per batch of 1000 from 1.3 to 0.35 ms
        # (docs/performance.md); the worst case, every allowed connection holding a 1 MiB body, is 1 GiB.
        inbuf_overflow=1 << 20,
        recv_bytes=256 * 1024,
        clear_untrusted_proxy_headers=True,
    )
