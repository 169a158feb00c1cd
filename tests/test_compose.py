"""The container bundle, checked without a Docker engine: docker-compose.yml, Dockerfile, .dockerignore and
the Grafana provisioning files agree with each other and with the files the other tests exercise."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from exporter.config import load_config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
SERVICES = {"exporter", "model-server", "traffic", "prometheus", "alertmanager", "grafana", "node-exporter"}
# The versions the tests run (Debian bookworm's packages, CONVENTIONS.md §0).
TESTED_IMAGES = {"prometheus": "prom/prometheus:v2.42.0", "alertmanager": "prom/alertmanager:v0.25.0"}
# Where each image listens inside its container.
LISTEN_PORTS = {
    "exporter": 8490,
    "model-server": 5000,
    "prometheus": 9090,
    "alertmanager": 9093,
    "grafana": 3000,
    "node-exporter": 9100,
}
# The only host paths outside the repo a service may mount, read-only: node-exporter's view of the host.
HOST_MOUNTS = {"node-exporter": {"/proc", "/sys", "/"}}
EXACT_TAG = re.compile(r"^v?\d+\.\d+\.\d+(-[A-Za-z0-9.]+)?$")
LOOPBACK = {"127.0.0.1", "localhost"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


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


def test_every_image_is_pinned_to_an_exact_version(services):
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


def test_every_service_has_a_healthcheck(services):
    for name, service in services.items():
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
    probes = {
        "exporter": "/readyz",
        "model-server": "/healthz",
        "prometheus": "/-/ready",
        "alertmanager": "/-/ready",
        "grafana": "/api/health",
    }
    for name, path in probes.items():
        assert any(path in part for part in services[name]["healthcheck"]["test"]), f"{name} does not probe {path}"


def test_published_ports_bind_loopback_only(services):
    for name, service in services.items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond 127.0.0.1"


def test_bind_mounted_host_paths_exist(services):
    for name, service in services.items():
        for source, _, read_only in bind_mounts(service):
            if source.startswith("/"):
                assert source in HOST_MOUNTS.get(name, set()), f"{name} mounts host path {source}"
                assert read_only, f"{name} mounts {source} writable"
            else:
                assert repo_path(source).exists(), f"{name} mounts {source}, which is not in the repo"


def test_mounts_inside_read_only_mounts_have_their_mount_point(services):
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


def test_named_volumes_are_declared(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} uses undeclared volume {source}"


def test_secrets_come_from_git_ignored_files_with_committed_examples(compose):
    secrets = compose["secrets"]
    assert set(secrets) == {"slack_webhook_url", "pagerduty_routing_key", "grafana_admin_password"}
    for name, secret in secrets.items():
        path = repo_path(secret["file"])
        assert path.parent == ROOT / "deploy" / "compose" / "secrets", f"{name}: {secret['file']}"
        assert path.with_name(path.name + ".example").is_file(), f"{name}: no {path.name}.example"
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("no git checkout")
    for name, secret in secrets.items():
        path = repo_path(secret["file"])
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT).returncode
        example = subprocess.run(["git", "check-ignore", "-q", str(path) + ".example"], cwd=ROOT).returncode
        assert (ignored, example) == (0, 1), f"{name}: the secret must be ignored and its example committed"


def test_the_exporter_serves_the_demo_config(services):
    exporter = services["exporter"]
    source, target, read_only = mount_of(exporter, "./examples/demo/mlmon.yml")
    assert (target, read_only) == ("/etc/mlmon/mlmon.yml", True)
    assert "127.0.0.1:8490:8490" in exporter["ports"]
    load_config(str(repo_path(source)))  # raises ConfigError if the demo config is invalid


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
    windows = set(load_config(str(repo_path(mount_of(services["exporter"], "./examples/demo/mlmon.yml")[0]))).windows)
    assert read <= windows, f"the rules read windows {sorted(read - windows)} that examples/demo/mlmon.yml lacks"


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
    assert model_server[model_server.index("--mlmon-url") + 1] == "http://exporter:8490"
    assert services["model-server"]["environment"]["MLMON_URL"] == "http://exporter:8490"
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


def test_compose_targets_mirror_the_committed_targets():
    committed = {p.name: yaml.safe_load(p.read_text()) for p in (ROOT / "prometheus" / "targets").glob("*.yml")}
    compose = {p.name: yaml.safe_load(p.read_text()) for p in (ROOT / "deploy" / "compose" / "targets").glob("*.yml")}
    if not committed:
        pytest.skip("prometheus/targets/ has no target files yet")
    assert set(compose) == set(committed), "deploy/compose/targets/ must have one file per prometheus/targets/ file"
    for name, groups in committed.items():
        assert [dict(g, targets=None) for g in compose[name]] == [dict(g, targets=None) for g in groups], name
        for group in compose[name]:
            for target in group["targets"]:
                host, port = target.rsplit(":", 1)
                assert LISTEN_PORTS.get(host) == int(port), f"{name}: {target} is no compose service"


def test_prometheus_reaches_every_static_address_it_names(services):
    config = load_yaml(ROOT / "prometheus" / "prometheus.yml")
    # On 127.0.0.1 Prometheus finds itself and whatever shares its network namespace.
    loopback = {LISTEN_PORTS[name] for name in services if netns(services, name) == "prometheus"}
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


# --- the image ------------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = (line.strip() for line in text.splitlines())
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines if ln and not ln.startswith("#")]


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
    for path in ("pyproject.toml", "README.md", "exporter/cli.py", "examples/model_server.py", "examples/config.yml"):
        assert not dockerignored(path, patterns), f"{path} must reach the build"
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        "deploy/compose/secrets/grafana_admin_password",
        "exporter/__pycache__/cli.cpython-311.pyc",
        ".pytest_cache/v/cache/nodeids",
        "tests/test_api.py",
        "mlmon.egg-info/PKG-INFO",
    ):
        assert dockerignored(path, patterns), f"{path} must stay out of the build context"


# --- the real check, where Docker Compose exists ------------------------------------------------------------------


def test_docker_compose_config_accepts_the_file():
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the Docker Compose plugin is not installed")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "config", "-q"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
