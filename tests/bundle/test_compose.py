"""The container bundle, checked without a Docker engine: docker-compose.yml, its scale-out override
(deploy/compose/scale-out.yml), Dockerfile, .dockerignore and the Grafana provisioning files agree with each
other and with the files the other tests exercise."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from exporter.config import load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCALE_OUT_FILE = ROOT / "deploy" / "compose" / "scale-out.yml"
SERVICES = {
    "exporter",
    "model-server",
    "traffic",
    "prometheus",
    "alertmanager",
    "retrain-hook",
    "report",
    "grafana",
    "node-exporter",
}
# The scale-out example: a second exporter replica, a load balancer in front of both, Redis for the joins.
REPLICAS = ("exporter", "exporter-2")
SCALE_OUT_SERVICES = SERVICES | {"exporter-2", "exporter-lb", "redis"}
# The versions the tests run (Debian bookworm's packages, CONVENTIONS.md §0).
TESTED_IMAGES = {"prometheus": "prom/prometheus:v2.42.0", "alertmanager": "prom/alertmanager:v0.25.0"}
# Where each image listens inside its container (the report service listens nowhere).
LISTEN_PORTS = {
    "exporter": 8490,
    "exporter-2": 8490,
    "exporter-lb": 8490,
    "redis": 6379,
    "model-server": 5000,
    "prometheus": 9090,
    "alertmanager": 9093,
    "retrain-hook": 8491,
    "grafana": 3000,
    "node-exporter": 9100,
}
# The only host paths outside the repo a service may mount, read-only: node-exporter's view of the host.
HOST_MOUNTS = {"node-exporter": {"/proc", "/sys", "/"}}
EXACT_TAG = re.compile(r"^v?\d+\.\d+\.\d+(-[A-Za-z0-9.]+)?$")
LOOPBACK = {"127.0.0.1", "localhost"}
# Where the exporter keeps its state in the image and in compose (MLMON_STORAGE_PATH).
DATA_DIR = "/var/lib/mlmon"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def merge_service(base: dict, override: dict) -> dict:
    """Docker Compose's merge of one service from an override file (the parts these files use): mappings key
    by key, `volumes` and `secrets` by mount target, `ports` added, other sequences and scalars replaced."""
    out = dict(base)
    for key, value in override.items():
        if key in ("volumes", "secrets") and key in out:

            def target(entry):
                return entry.split(":")[1] if isinstance(entry, str) else entry["target"]

            kept = [e for e in out[key] if target(e) not in {target(v) for v in value}]
            out[key] = kept + list(value)
        elif key == "ports" and key in out:
            out[key] = list(out[key]) + [p for p in value if p not in out[key]]
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_service(out[key], value)
        else:
            out[key] = value
    return out


def merge_compose(base: dict, override: dict) -> dict:
    out = {k: v for k, v in base.items()}
    for key, value in override.items():
        if key == "services":
            services = dict(base.get("services") or {})
            for name, service in value.items():
                services[name] = merge_service(services.get(name, {}), service)
            out["services"] = services
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = {**base[key], **value}
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def scale_out(compose) -> dict:
    """The stack `docker compose -f docker-compose.yml -f deploy/compose/scale-out.yml` runs."""
    return merge_compose(compose, yaml.safe_load(SCALE_OUT_FILE.read_text()))


@pytest.fixture(scope="module", params=["base", "scale-out"])
def stack(request, compose) -> dict:
    """Each stack a user can bring up: the checks that hold for every compose file run on both."""
    return compose if request.param == "base" else request.getfixturevalue("scale_out")


def bind_mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(host source, container target, read-only) of a service's bind mounts, short or long syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *rest = volume.split(":")
            if not source.startswith((".", "/")):
                continue  # a named volume
            mounts.append((source, target, "ro" in (rest[0].split(",") if rest else [])))
        elif volume.get("type") == "bind":
            mounts.append((volume["source"], volume["target"], bool(volume.get("read_only"))))
    return mounts


def repo_path(source: str) -> Path:
    return (ROOT / source).resolve()


def mount_of(service: dict, source: str) -> tuple[str, str, bool]:
    found = [m for m in bind_mounts(service) if repo_path(m[0]) == repo_path(source)]
    assert len(found) == 1, f"expected one mount of {source}, found {found}"
    return found[0]


def netns(services: dict, name: str) -> str:
    """The service whose network namespace `name` lives in."""
    mode = services[name].get("network_mode", "")
    return mode.removeprefix("service:") if mode.startswith("service:") else name


def image_tag(image: str) -> str:
    name = image.split("@")[0]
    return name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""


def load_yaml(path: Path):
    if not path.exists():
        pytest.skip(f"{path.relative_to(ROOT)} does not exist yet")
    return yaml.safe_load(path.read_text())


# --- the compose file --------------------------------------------------------------------------------------


def test_compose_file_defines_the_stack(compose):
    assert set(compose["services"]) == SERVICES


def test_every_image_is_pinned_to_an_exact_version(stack):
    services = stack["services"]
    built = {s["image"] for s in services.values() if "build" in s}
    for name, service in services.items():
        image = service["image"]
        if image in built:
            assert "build" in service or service.get("pull_policy") == "never", f"{name} would try to pull {image}"
            continue
        tag = image_tag(image)
        assert tag != "latest" and EXACT_TAG.match(tag), f"{name}: {image} is not pinned to an exact version"


def test_prometheus_and_alertmanager_are_the_tested_versions(services):
    for name, image in TESTED_IMAGES.items():
        assert services[name]["image"] == image


def test_grafana_reads_the_dashboard_schema_the_generator_writes(services):
    # schemaVersion 42 (grafana-foundation-sdk 0.0.21, CONVENTIONS.md §6.5) is read from Grafana 12.2 on.
    major, minor, _ = (int(x) for x in image_tag(services["grafana"]["image"]).split("."))
    assert (major, minor) >= (12, 2)
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        schema = yaml.safe_load(path.read_text())["schemaVersion"]
        assert 39 <= schema <= 42, f"{path.name}: schemaVersion {schema}"


def test_every_service_has_a_healthcheck(stack):
    services = stack["services"]
    for name, service in services.items():
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
    probes = {
        "exporter": "/readyz",
        "model-server": "/healthz",
        "prometheus": "/-/ready",
        "alertmanager": "/-/ready",
        "retrain-hook": "/healthz",
        "grafana": "/api/health",
        "exporter-2": "/readyz",
        "exporter-lb": "/readyz",
        "redis": "ping",
    }
    for name, path in probes.items():
        if name not in services:
            continue
        assert any(path in part for part in services[name]["healthcheck"]["test"]), f"{name} does not probe {path}"


def test_published_ports_bind_loopback_only(stack):
    services = stack["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond 127.0.0.1"


def test_bind_mounted_host_paths_exist(stack):
    services = stack["services"]
    for name, service in services.items():
        for source, _, read_only in bind_mounts(service):
            if source.startswith("/"):
                assert source in HOST_MOUNTS.get(name, set()), f"{name} mounts host path {source}"
                assert read_only, f"{name} mounts {source} writable"
            else:
                assert repo_path(source).exists(), f"{name} mounts {source}, which is not in the repo"


def test_mounts_inside_read_only_mounts_have_their_mount_point(stack):
    services = stack["services"]
    # Docker cannot create a mount point inside a read-only bind mount: it must exist in the repo already.
    for name, service in services.items():
        mounts = bind_mounts(service)
        targets = [t for _, t, _ in mounts] + [s["target"] for s in service.get("secrets", [])]
        for outer_source, outer_target, outer_ro in mounts:
            if not outer_ro or not repo_path(outer_source).is_dir():
                continue
            for target in targets:
                if target.startswith(outer_target.rstrip("/") + "/"):
                    inside = repo_path(outer_source) / target[len(outer_target) :].lstrip("/")
                    assert inside.exists(), f"{name}: {target} needs {inside.relative_to(ROOT)} in the repo"


def test_named_volumes_are_declared(stack):
    services = stack["services"]
    declared = set(stack.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} uses undeclared volume {source}"


# Secrets with a committed placeholder (*.example), and the generated ones (scrape, API token), made by make-secrets.sh.
EXAMPLE_SECRETS = {"slack_webhook_url", "pagerduty_routing_key", "grafana_admin_password"}
SCRAPE_SECRETS = {"mlmon_web_config", "mlmon_tls_cert", "mlmon_tls_key", "mlmon_ca", "mlmon_api_token"}
SCRAPE_SCRIPT = ROOT / "deploy" / "compose" / "make-secrets.sh"


def test_secrets_come_from_git_ignored_files_with_committed_examples(compose):
    secrets = compose["secrets"]
    assert set(secrets) == EXAMPLE_SECRETS | SCRAPE_SECRETS
    folder = ROOT / "deploy" / "compose" / "secrets"
    for name, secret in secrets.items():
        path = repo_path(secret["file"])
        assert folder in path.parents, f"{name}: {secret['file']}"
        if name in EXAMPLE_SECRETS:
            assert path.parent == folder and path.with_name(path.name + ".example").is_file(), f"{name}: no example"
        else:
            assert path.name in SCRAPE_SCRIPT.read_text(), f"{name}: make-secrets.sh does not make {path.name}"
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("no git checkout")
    for name, secret in secrets.items():
        path = repo_path(secret["file"])
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT).returncode
        assert ignored == 0, f"{name}: {secret['file']} must be git-ignored"
        if name in EXAMPLE_SECRETS:
            example = subprocess.run(["git", "check-ignore", "-q", str(path) + ".example"], cwd=ROOT).returncode
            assert example == 1, f"{name}: its example must be committed"
    # The mount points and the folder Prometheus's secrets come from exist in a fresh checkout.
    for keep in (folder / "prometheus" / ".gitignore", ROOT / "prometheus" / "secrets" / ".gitignore"):
        assert subprocess.run(["git", "check-ignore", "-q", str(keep)], cwd=ROOT).returncode == 1, keep


def test_the_exporters_serve_tls_and_basic_auth_and_prometheus_has_the_keys(stack):
    """The protected scrape (docs/security.md): every exporter reads the web config, whose relative cert and key
    files are secrets beside it; Prometheus reads the committed mlmon job's ca_file and password_file from the
    mounted folder; whoever sends to an exporter directly trusts the CA."""
    services = stack["services"]
    for name in [n for n in services if n in REPLICAS]:
        exporter = services[name]
        web = exporter["environment"]["MLMON_WEB_CONFIG_FILE"]
        targets = {s["target"]: s["source"] for s in exporter["secrets"]}
        assert targets[web] == "mlmon_web_config", name
        template = yaml.safe_load((ROOT / "deploy" / "compose" / "web-config.yml").read_text())
        tls = template["tls_server_config"]
        for key, secret in (("cert_file", "mlmon_tls_cert"), ("key_file", "mlmon_tls_key")):
            assert targets[str(Path(web).parent / tls[key])] == secret, f"{name}: {key}"
        assert set(template["basic_auth_users"]) == {"prometheus"}
        check = " ".join(exporter["healthcheck"]["test"])
        assert "https://127.0.0.1:8490/readyz" in check, f"{name}: the healthcheck must speak TLS"
    config = load_yaml(ROOT / "prometheus" / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "mlmon"]
    assert job["scheme"] == "https" and job["basic_auth"]["username"] == "prometheus"
    prometheus = services["prometheus"]
    source, target, read_only = mount_of(prometheus, "./deploy/compose/secrets/prometheus")
    assert target == "/etc/prometheus/secrets" and read_only
    for path in (job["tls_config"]["ca_file"], job["basic_auth"]["password_file"]):
        assert ("/etc/prometheus/" + path).startswith(target + "/"), f"prometheus.yml reads {path}, not mounted"
        assert Path(path).name in SCRAPE_SCRIPT.read_text(), f"make-secrets.sh does not make {path}"
    model_server = services["model-server"]
    url = model_server["environment"]["MLMON_URL"]
    if url.startswith("https://"):
        ca = model_server["environment"]["REQUESTS_CA_BUNDLE"]
        assert {s["target"]: s["source"] for s in model_server["secrets"]}[ca] == "mlmon_ca"
    if "exporter-lb" in services:
        assert "ssl verify required ca-file /run/secrets/mlmon_ca.crt" in haproxy_config()
        assert {s["target"]: s["source"] for s in services["exporter-lb"]["secrets"]} == {
            "/run/secrets/mlmon_ca.crt": "mlmon_ca"
        }


COMPOSE_CONFIG = "./deploy/compose/mlmon.yml"
API_TOKEN_SECRET = "/run/secrets/mlmon_api_token"


def load_with_token(path: Path, tmp_path: Path):
    """Validate a compose mlmon config, its token file (a compose secret) standing in as a temp file."""
    token = tmp_path / "mlmon_api_token"
    token.write_text("x" * 64)
    text = path.read_text().replace(API_TOKEN_SECRET, str(token))
    return parse_config(text, str(path), str(path.parent))


def test_the_exporter_serves_the_demo_config_with_authentication(services, tmp_path):
    exporter = services["exporter"]
    source, target, read_only = mount_of(exporter, COMPOSE_CONFIG)
    assert (target, read_only) == ("/etc/mlmon/mlmon.yml", True)
    assert "127.0.0.1:8490:8490" in exporter["ports"]
    config = load_with_token(repo_path(source), tmp_path)  # raises ConfigError if invalid
    # The demo's config plus auth: the same models, windows and thresholds the rules and dashboards expect.
    demo = yaml.safe_load((ROOT / "examples/demo/mlmon.yml").read_text())
    assert {k: v for k, v in yaml.safe_load(repo_path(source).read_text()).items() if k != "auth"} == demo
    # Authentication is on, with the token from a compose secret that the model server sends too.
    assert config.auth.enabled and [t.name for t in config.auth.tokens] == ["model-server"]
    for name in ("exporter", "model-server"):
        targets = {x["target"]: x["source"] for x in services[name]["secrets"]}
        assert targets[API_TOKEN_SECRET] == "mlmon_api_token", name
    assert services["model-server"]["environment"]["MLMON_TOKEN_FILE"] == API_TOKEN_SECRET


def test_the_exporter_has_every_window_the_rules_read(services):
    # Compose runs the committed rules unchanged (only `mlmon demo` rewrites them), so the exporter it runs
    # must publish each window they select, or those alerts can never fire.
    expressions = [
        rule["expr"]
        for path in sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", [])
        for rule in group.get("rules", [])
    ]
    if not expressions:
        pytest.skip("prometheus/rules/ has no rules yet")
    read = {w for expr in expressions for w in re.findall(r'\bwindow\s*=\s*"([^"]+)"', str(expr))}
    windows = set(load_config(str(ROOT / "examples/demo/mlmon.yml")).windows)
    assert read <= windows, f"the rules read windows {sorted(read - windows)} that examples/demo/mlmon.yml lacks"


def test_the_exporter_keeps_its_state_in_a_named_volume(compose, services):
    exporter = services["exporter"]
    assert exporter["environment"]["MLMON_STORAGE_PATH"] == DATA_DIR == dockerfile_env()["MLMON_STORAGE_PATH"]
    (volume,) = [v for v in exporter["volumes"] if isinstance(v, str) and v.split(":")[1] == DATA_DIR]
    source = volume.split(":")[0]
    # A named volume, not a bind mount: Docker gives a new one the owner of the image's directory (uid 10001).
    assert not source.startswith((".", "/")) and source in compose["volumes"], volume
    assert not volume.endswith(":ro"), "the data directory must be writable"
    # Time for the last checkpoint on SIGTERM, which the exporter allows 30 s.
    assert seconds(exporter["stop_grace_period"]) >= 30


def seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", duration))


def test_the_example_services_run_the_examples_with_their_own_flags(services):
    for name, script in (("model-server", "examples/model_server.py"), ("traffic", "examples/traffic.py")):
        service = services[name]
        assert service["entrypoint"] == ["python"] and service["command"][0] == script
        assert (ROOT / script).is_file(), f"{script} is missing"
        helptext = subprocess.run(
            [sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
        ).stdout
        for flag in (a for a in service["command"][1:] if a.startswith("--")):
            assert flag in helptext, f"{script} has no {flag}"
    model_server = services["model-server"]["command"]
    assert model_server[model_server.index("--mlmon-url") + 1] == "https://exporter:8490"
    assert services["model-server"]["environment"]["MLMON_URL"] == "https://exporter:8490"
    port = model_server[model_server.index("--port") + 1]
    traffic = services["traffic"]["command"]
    assert traffic[traffic.index("--model-server") + 1] == f"http://model-server:{port}"
    assert services["model-server"]["depends_on"]["exporter"]["condition"] == "service_healthy"
    assert services["traffic"]["depends_on"]["model-server"]["condition"] == "service_healthy"


# --- Prometheus and Alertmanager: the tested files, and the compose overrides ---------------------------------


def test_prometheus_reads_the_tested_configuration(services):
    prometheus = services["prometheus"]
    assert mount_of(prometheus, "./prometheus")[1:] == ("/etc/prometheus", True)
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert "--storage.tsdb.path=/prometheus" in prometheus["command"]
    assert "prometheus-data:/prometheus" in prometheus["volumes"]
    # The one override: the exporter's address (docs/deploy.md#what-the-stack-overrides).
    assert mount_of(prometheus, "./deploy/compose/targets")[1:] == ("/etc/prometheus/targets", True)


@pytest.mark.parametrize("folder", ["deploy/compose/targets", "deploy/compose/scale-out/targets"])
def test_compose_targets_mirror_the_committed_targets(folder):
    committed = {p.name: yaml.safe_load(p.read_text()) for p in (ROOT / "prometheus" / "targets").glob("*.yml")}
    compose = {p.name: yaml.safe_load(p.read_text()) for p in (ROOT / folder).glob("*.yml")}
    if not committed:
        pytest.skip("prometheus/targets/ has no target files yet")
    assert set(compose) == set(committed), f"{folder}/ must have one file per prometheus/targets/ file"
    for name, groups in committed.items():
        assert [dict(g, targets=None) for g in compose[name]] == [dict(g, targets=None) for g in groups], name
        for group in compose[name]:
            for target in group["targets"]:
                host, port = target.rsplit(":", 1)
                assert LISTEN_PORTS.get(host) == int(port), f"{name}: {target} is no compose service"


def test_prometheus_reaches_every_static_address_it_names(stack):
    services = stack["services"]
    config = load_yaml(ROOT / "prometheus" / "prometheus.yml")
    # On 127.0.0.1 Prometheus finds itself and whatever shares its network namespace.
    loopback = {LISTEN_PORTS[n] for n in services if netns(services, n) == "prometheus" and n in LISTEN_PORTS}
    static = [c for job in config.get("scrape_configs", []) for c in job.get("static_configs", [])]
    for alertmanagers in config.get("alerting", {}).get("alertmanagers", []):
        static += alertmanagers.get("static_configs", [])
    for group in static:
        for target in group["targets"]:
            host, port = target.rsplit(":", 1)
            if host in LOOPBACK:
                assert int(port) in loopback, f"prometheus.yml names {target}: nothing listens there in compose"
            else:
                assert LISTEN_PORTS.get(host) == int(port), f"prometheus.yml names {target}: no such service"


def test_alertmanager_reads_the_tested_configuration_and_gets_its_secrets(services):
    alertmanager = services["alertmanager"]
    assert mount_of(alertmanager, "./alertmanager/alertmanager.yml")[1:] == ("/etc/alertmanager/alertmanager.yml", True)
    assert mount_of(alertmanager, "./alertmanager/templates")[1:] == ("/etc/alertmanager/templates", True)
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in alertmanager["command"]
    assert "--cluster.listen-address=" in alertmanager["command"], "HA gossip must be off"
    targets = {s["target"] for s in alertmanager["secrets"]}
    assert targets == {"/etc/alertmanager/secrets/slack_webhook_url", "/etc/alertmanager/secrets/pagerduty_routing_key"}

    config = load_yaml(ROOT / "alertmanager" / "alertmanager.yml")
    for pattern in config.get("templates", []):
        assert pattern.startswith(("templates/", "/etc/alertmanager/templates/")), f"template {pattern} is not mounted"

    def files(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key.endswith("_file") and isinstance(value, str):
                    yield value
                else:
                    yield from files(value)
        elif isinstance(node, list):
            for item in node:
                yield from files(item)

    for path in files(config):
        assert path in targets, f"alertmanager.yml reads {path}, which compose does not provide"


def test_alertmanager_reaches_every_webhook_it_names(services):
    """alertmanager.yml's webhooks (the retraining hook) name loopback addresses: in compose, something in
    Alertmanager's network namespace must listen there."""
    config = load_yaml(ROOT / "alertmanager" / "alertmanager.yml")
    here = netns(services, "alertmanager")
    listening = {LISTEN_PORTS[name] for name in services if netns(services, name) == here and name in LISTEN_PORTS}
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            url = urlsplit(webhook["url"])
            assert url.hostname in LOOPBACK, f"{receiver['name']}: {webhook['url']} is not on this machine"
            assert url.port in listening, f"{receiver['name']}: nothing listens on {url.port} in compose"


def test_the_retrain_hook_runs_its_config_beside_alertmanager(compose, services):
    from exporter import retrain

    hook = services["retrain-hook"]
    assert hook["image"] == "mlmon:local" and hook["pull_policy"] == "never"
    assert netns(services, "retrain-hook") == netns(services, "alertmanager")
    assert hook["depends_on"]["prometheus"].get("restart") is True, "restarted with the namespace it lives in"
    command = hook["command"]
    assert command[0] == "retrain-hook"
    source, target, read_only = mount_of(hook, "./deploy/compose/retrain.yml")
    assert (target, read_only) == (command[command.index("--config") + 1], True)
    # The hook listens where the committed webhook sends (its default address, unless the command says).
    listen = command[command.index("--listen") + 1] if "--listen" in command else retrain.DEFAULT_LISTEN
    assert int(listen.rsplit(":", 1)[1]) == LISTEN_PORTS["retrain-hook"]
    config = retrain.finish(retrain.load_hook_config(str(repo_path(source))), source)
    # The stand-in job is in the image (examples/ is copied to /app/examples).
    script = next(a for a in config.command if a.endswith(".py"))
    assert script.startswith("/app/") and (ROOT / script.removeprefix("/app/")).is_file(), script
    # Its audit log and state live in its own named volume.
    (volume,) = [v for v in hook["volumes"] if isinstance(v, str) and not v.startswith(".")]
    name, mounted = volume.split(":")
    assert name in compose["volumes"] and name != "mlmon-data"
    for path in (config.audit_log, config.state_file):
        assert path.startswith(mounted + "/"), f"{path} is not in the {name} volume"


def test_the_weekly_report_reads_prometheus_and_writes_to_its_volume(compose, services):
    from urllib.parse import urlsplit

    from exporter import report
    from exporter.cli import build_parser

    service = services["report"]
    assert service["image"] == "mlmon:local" and service["pull_policy"] == "never"
    assert netns(services, "report") == "prometheus"
    assert service["depends_on"]["prometheus"].get("restart") is True, "restarted with the namespace it lives in"
    # The command is one mlmon's own parser takes, with flags its checks accept.
    args = build_parser().parse_args(service["command"])
    assert args.command == "report"
    opts = report.options(args)
    assert opts["every"] == opts["period"] == 7 * 86400
    url = urlsplit(args.url)
    assert url.hostname in LOOPBACK and url.port == LISTEN_PORTS["prometheus"]
    # The reports land in the service's own named volume, which the image's user owns.
    (volume,) = [v for v in service["volumes"] if isinstance(v, str)]
    name, mounted = volume.split(":")
    assert name in compose["volumes"] and name != "mlmon-data" and mounted == DATA_DIR
    assert args.output_dir == mounted and args.keep > 0
    assert any(f"{mounted}/latest.html" in part for part in service["healthcheck"]["test"])


# --- Grafana ----------------------------------------------------------------------------------------------------


def test_grafana_mounts_the_provisioning_and_the_dashboards(services):
    grafana = services["grafana"]
    assert mount_of(grafana, "./grafana/provisioning")[1:] == ("/etc/grafana/provisioning", True)
    assert mount_of(grafana, "./grafana/dashboards")[2], "dashboards must be mounted read-only"
    environment = grafana["environment"]
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in environment
    secret_targets = {s["target"] for s in grafana["secrets"]}
    assert environment["GF_SECURITY_ADMIN_PASSWORD__FILE"] in secret_targets


def test_grafana_datasource_is_the_compose_prometheus():
    datasources = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (datasource,) = datasources["datasources"]
    assert datasource["uid"] == "mlmon-prometheus"
    assert datasource["type"] == "prometheus" and datasource["access"] == "proxy"
    assert datasource["url"] == f"http://prometheus:{LISTEN_PORTS['prometheus']}"
    assert datasource["isDefault"] is True and datasource["editable"] is False
    assert datasource["jsonData"]["httpMethod"] == "POST"
    config = load_yaml(ROOT / "prometheus" / "prometheus.yml")
    # $__rate_interval is right only if timeInterval is the scrape interval.
    mlmon_job = next(j for j in config["scrape_configs"] if j["job_name"] == "mlmon")
    interval = mlmon_job.get("scrape_interval", config.get("global", {}).get("scrape_interval", "1m"))
    assert datasource["jsonData"]["timeInterval"] == interval


def test_grafana_dashboard_provider_reads_the_mounted_dashboards(services):
    providers = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/mlmon.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["folder"] == "mlmon"
    assert provider["allowUiUpdates"] is False and provider["disableDeletion"] is True
    assert provider["options"]["path"] == mount_of(services["grafana"], "./grafana/dashboards")[1]


# --- the scale-out example ------------------------------------------------------------------------------------

SCALE_OUT_CONFIG = "./deploy/compose/scale-out/mlmon.yml"


def test_scale_out_adds_replicas_a_load_balancer_and_redis(scale_out, compose):
    assert set(scale_out["services"]) == SCALE_OUT_SERVICES

    # Nothing new is reachable from the host: Redis, the load balancer and replica 2 stay on the compose network.
    def published(stack):
        return {(name, str(p)) for name, s in stack["services"].items() for p in s.get("ports", [])}

    assert published(scale_out) == published(compose)
    assert not scale_out["services"]["redis"].get("ports") and not scale_out["services"]["redis"].get("network_mode")


def test_scale_out_replicas_run_one_config_with_redis_joins_and_their_own_data(scale_out, tmp_path):
    services = scale_out["services"]
    demo = yaml.safe_load((ROOT / "examples/demo/mlmon.yml").read_text())
    shared = yaml.safe_load(repo_path(SCALE_OUT_CONFIG).read_text())
    # The demo config plus joins: same models, windows and thresholds, so the rules see what they see in the
    # base stack, and every replica publishes the same thresholds (the rules keep one copy per job).
    assert {k: v for k, v in shared.items() if k not in ("joins", "auth")} == demo
    assert shared["auth"] == yaml.safe_load(repo_path(COMPOSE_CONFIG).read_text())["auth"]
    config = load_with_token(repo_path(SCALE_OUT_CONFIG), tmp_path)
    assert config.joins.backend == "redis"
    url = urlsplit(config.joins.redis_url)
    assert (url.scheme, url.hostname, url.port) == ("redis", "redis", LISTEN_PORTS["redis"])

    data_volumes = []
    for name in REPLICAS:
        replica = services[name]
        assert replica["image"] == services["exporter"]["image"] == "mlmon:local"
        assert mount_of(replica, SCALE_OUT_CONFIG)[1:] == ("/etc/mlmon/mlmon.yml", True)
        # The override's config mount replaced the demo config's: one file at the target.
        assert [t for _, t, _ in bind_mounts(replica)].count("/etc/mlmon/mlmon.yml") == 1
        assert replica["environment"]["MLMON_STORAGE_PATH"] == DATA_DIR
        (volume,) = [v for v in replica["volumes"] if isinstance(v, str) and v.split(":")[1] == DATA_DIR]
        data_volumes.append(volume.split(":")[0])
        assert replica["depends_on"]["redis"]["condition"] == "service_healthy"
        for key in ("healthcheck", "security_opt", "cap_drop", "restart", "stop_grace_period"):
            assert replica[key] == services["exporter"][key], f"{name}: {key} differs from exporter's"
    # A data directory belongs to one process (docs/durability.md).
    assert len(set(data_volumes)) == len(REPLICAS), data_volumes
    assert services["exporter-2"]["pull_policy"] == "never"


def test_scale_out_prometheus_scrapes_both_replicas_with_the_same_rules(scale_out, services):
    prometheus = scale_out["services"]["prometheus"]
    assert mount_of(prometheus, "./prometheus")[1:] == ("/etc/prometheus", True)
    assert prometheus["command"] == services["prometheus"]["command"]
    targets = [(s, t) for s, t, _ in bind_mounts(prometheus) if t == "/etc/prometheus/targets"]
    assert [s for s, _ in targets] == ["./deploy/compose/scale-out/targets"], targets
    groups = yaml.safe_load((ROOT / "deploy/compose/scale-out/targets/mlmon.yml").read_text())
    assert sorted(t for g in groups for t in g["targets"]) == sorted(f"{r}:{LISTEN_PORTS[r]}" for r in REPLICAS)


def haproxy_config() -> str:
    lines = (ROOT / "deploy/compose/scale-out/haproxy.cfg").read_text().splitlines()
    return "\n".join(line.split("#")[0].rstrip() for line in lines)


def test_scale_out_load_balancer_spreads_ingest_over_the_scraped_replicas(scale_out, services):
    base_services = services
    services = scale_out["services"]
    balancer = services["exporter-lb"]
    assert mount_of(balancer, "./deploy/compose/scale-out/haproxy.cfg")[1:] == (
        "/usr/local/etc/haproxy/haproxy.cfg",
        True,
    )
    config = haproxy_config()
    assert re.search(rf"^\s*bind :{LISTEN_PORTS['exporter-lb']}$", config, re.M)
    assert re.search(r"^\s*balance roundrobin$", config, re.M)
    assert re.search(r"^\s*option httpchk GET /readyz$", config, re.M)
    servers = re.findall(r"^\s*server (\S+) (\S+)", config, re.M)
    assert sorted(address for _, address in servers) == sorted(f"{r}:{LISTEN_PORTS[r]}" for r in REPLICAS)
    for replica in REPLICAS:
        assert balancer["depends_on"][replica]["condition"] == "service_healthy"

    model_server = services["model-server"]
    command = model_server["command"]
    url = f"http://exporter-lb:{LISTEN_PORTS['exporter-lb']}"
    assert command[command.index("--mlmon-url") + 1] == url == model_server["environment"]["MLMON_URL"]
    assert model_server["depends_on"]["exporter-lb"]["condition"] == "service_healthy"
    # The rest of the model server's command is the base stack's.
    base = base_services["model-server"]["command"]
    i, j = command.index("--mlmon-url"), base.index("--mlmon-url")
    assert (command[:i], command[i + 2 :]) == (base[:j], base[j + 2 :])


def test_scale_out_redis_persists_every_write_and_never_evicts(scale_out):
    redis = scale_out["services"]["redis"]
    assert redis["image"].startswith("redis:") and EXACT_TAG.match(image_tag(redis["image"]))
    command = redis["command"]
    assert command[0] == "redis-server"
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--appendonly"] == "yes" and options["--appendfsync"] == "everysec"
    assert options["--maxmemory-policy"] == "noeviction"
    assert "--maxmemory" in options, "without a limit, noeviction never applies and the kernel kills Redis instead"
    # Non-root, so that its entrypoint needs none of the dropped capabilities.
    assert redis["user"].split(":")[0] not in {"root", "0"}
    assert redis["cap_drop"] == ["ALL"]
    assert "redis-data:/data" in redis["volumes"]


# --- the image ------------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = (line.strip() for line in text.splitlines())
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines if ln and not ln.startswith("#")]


def dockerfile_env() -> dict[str, str]:
    """The runtime stage's ENV, as KEY=VALUE pairs."""
    instructions = dockerfile_instructions()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    pairs = [p for op, args in instructions[last_from:] if op == "ENV" for p in shlex.split(args)]
    return dict(p.split("=", 1) for p in pairs)


def test_dockerfile_gives_the_data_directory_to_the_runtime_user():
    instructions = dockerfile_instructions()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    runtime = instructions[last_from:]
    assert dockerfile_env()["MLMON_STORAGE_PATH"] == DATA_DIR
    user = [args for op, args in runtime if op == "USER"][-1]
    made = [
        m.groups()
        for op, args in runtime
        if op == "RUN"
        for m in re.finditer(r"install -d -o (\S+) -g (\S+) -m (\S+) (\S+)", args)
    ]
    assert made, f"the runtime stage must create {DATA_DIR} for its user"
    owner, group, mode, path = made[0]
    assert path == DATA_DIR and f"{owner}:{group}" == user, (made, user)
    assert int(mode, 8) & 0o077 == 0, "the data directory is the exporter's alone"


def test_the_image_installs_the_redis_extra():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r"^redis = \[", pyproject, re.M), "pyproject.toml has no redis extra"
    installs = [args for op, args in dockerfile_instructions() if op == "RUN" and "pip install" in args]
    extras = {e.strip() for args in installs for e in re.findall(r"'\.\[([^\]]*)\]'", args)[0].split(",")}
    assert {"demo", "redis"} <= extras, extras


def test_dockerfile_pins_one_base_image():
    bases = [args.split()[0] for op, args in dockerfile_instructions() if op == "FROM"]
    assert len(bases) >= 2, "multi-stage: a build stage and a runtime stage"
    assert len(set(bases)) == 1, f"the stages use different bases: {bases}"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", bases[0]), bases[0]


def test_dockerfile_runs_as_non_root_with_a_healthcheck():
    instructions = dockerfile_instructions()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    runtime = instructions[last_from:]
    users = [args for op, args in runtime if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the runtime stage must run as non-root"
    (healthcheck,) = [args for op, args in runtime if op == "HEALTHCHECK"]
    assert "/readyz" in healthcheck and "curl" not in healthcheck and "wget" not in healthcheck
    assert ("EXPOSE", "8490") in runtime
    assert ("ENTRYPOINT", '["mlmon"]') in runtime
    assert ("CMD", '["serve", "--config", "/etc/mlmon/mlmon.yml", "--host", "0.0.0.0"]') in runtime
    assert any(op == "COPY" and args.split()[0] == "examples" for op, args in runtime)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""

    def regex(pattern: str) -> re.Pattern:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            else:
                out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
                i += 1
        return re.compile(out)

    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = regex(raw.lstrip("!").strip("/"))
        if any(pattern.fullmatch(c) for c in candidates):
            ignored = not negated
    return ignored


def test_dockerignore_sends_only_what_the_image_needs():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    for path in (
        "pyproject.toml",
        "README.md",
        "exporter/cli.py",
        "clients/python/mlmon_client/__init__.py",  # the exporter's package ships the client too
        "examples/model_server.py",
        "examples/config.yml",
    ):
        assert not dockerignored(path, patterns), f"{path} must reach the build"
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        "deploy/compose/secrets/grafana_admin_password",
        "exporter/__pycache__/cli.cpython-311.pyc",
        ".pytest_cache/v/cache/nodeids",
        "tests/serve/test_api.py",
        "mlmon.egg-info/PKG-INFO",
        "clients/python/pyproject.toml",
    ):
        assert dockerignored(path, patterns), f"{path} must stay out of the build context"


# --- the real check, where Docker Compose exists ------------------------------------------------------------------


@pytest.mark.parametrize("files", [[COMPOSE_FILE], [COMPOSE_FILE, SCALE_OUT_FILE]], ids=["base", "scale-out"])
def test_docker_compose_config_accepts_the_file(files):
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the Docker Compose plugin is not installed")
    args = [a for f in files for a in ("-f", str(f))]
    result = subprocess.run([docker, "compose", *args, "config", "-q"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
