"""The protected scrape: exporter-toolkit web config, basic auth on /metrics, TLS in front of waitress, and the
real Prometheus scraping a TLS + basic-auth exporter with the bundle's prometheus.yml."""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from exporter.security import webconfig
from exporter.security.webconfig import Guard, Holder, Peers, WebConfigError

bcrypt = pytest.importorskip("bcrypt")
trustme = pytest.importorskip("trustme")

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
PASSWORD = "s3cret-pässword"  # non-ASCII on purpose: RFC 7617 credentials are UTF-8
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()  # cost 4: fast tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def certs(tmp_path, ca):
    """Server certificate for 127.0.0.1/localhost and the CA, as files beside the web config."""
    server = ca.issue_cert("127.0.0.1", "localhost", "exporter")
    server.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "server.crt"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    return tmp_path


def write(tmp_path: Path, text: str, name: str = "web.yml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- parsing and validation --------------------------------------------------------------------------------

TLS = "tls_server_config: {cert_file: server.crt, key_file: server.key"

INVALID = [
    ("bogus: 1", "unknown key 'bogus'"),
    ("tls_server_config: {cert_file: a, key_file: b, foo: 1}", "unknown key 'tls_server_config.foo'"),
    ("http_server_config: {foo: 1}", "unknown key 'http_server_config.foo'"),
    ("rate_limit: {interval: 1s}", "rate_limit: not supported"),
    (TLS + ", curve_preferences: [X25519]}", "curve_preferences: not supported"),
    ("tls_server_config: {cert_file: server.crt}", "missing key_file"),
    ("tls_server_config: {key_file: server.key}", "missing cert_file"),
    (TLS + ", client_auth_type: Foo}", "client_auth_type: invalid value 'Foo'"),
    (TLS + ", client_auth_type: RequestClientCert, client_ca_file: ca.crt}", "RequestClientCert is not supported"),
    (TLS + ", client_ca_file: ca.crt}", "without a Client Auth Policy"),
    (TLS + ", client_auth_type: RequireAndVerifyClientCert}", "needs client_ca_file"),
    (TLS + ", min_version: TLS14}", "unknown TLS version 'TLS14'"),
    (TLS + ", min_version: TLS13, max_version: TLS12}", "max_version is below min_version"),
    (TLS + ", cipher_suites: [TLS_NOPE]}", "unknown or unsupported cipher suite 'TLS_NOPE'"),
    (TLS + ", prefer_server_cipher_suites: maybe}", "prefer_server_cipher_suites: must be true or false"),
    (TLS + ", client_allowed_sans: [a]}", "client_allowed_sans needs"),
    ("tls_server_config: {cert_file: nope.crt, key_file: server.key}", "cannot load cert_file"),
    ("tls_server_config: {cert_file: ca.crt, key_file: server.key}", "cannot load cert_file"),  # wrong key
    ("http_server_config: {headers: {X-Foo: bar}}", "HTTP header 'X-Foo' can not be configured"),
    ("http_server_config: {headers: {x-frame-options: deny}}", "HTTP header 'x-frame-options' can not be"),
    ("http_server_config: {headers: {X-Frame-Options: bar}}", "invalid value for X-Frame-Options"),
    ("basic_auth_users: {prometheus: notahash}", "basic_auth_users.prometheus: not a bcrypt hash"),
    (f"basic_auth_users: {{'a:b': '{HASH}'}}", "invalid user name 'a:b'"),
    ("basic_auth_users: [a, b]", "basic_auth_users: must be a mapping"),
    ("- a list", "the file: must be a mapping"),
    ("tls_server_config: {cert_file: [", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "message"), INVALID, ids=[m for _, m in INVALID])
def test_invalid_web_configs_are_refused_naming_the_key(certs, text, message):
    path = write(certs, text)
    with pytest.raises(WebConfigError) as err:
        webconfig.load(path)
    assert message in str(err.value)
    assert str(err.value).startswith(path), "the message names the file"


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(WebConfigError, match="cannot read"):
        webconfig.load(str(tmp_path / "nope.yml"))


def test_a_full_web_config_loads_with_paths_relative_to_the_file(certs, tmp_path):
    sub = tmp_path / "conf"
    sub.mkdir()
    text = f"""
tls_server_config:
  cert_file: ../server.crt
  key_file: ../server.key
  client_auth_type: VerifyClientCertIfGiven
  client_ca_file: ../ca.crt
  min_version: TLS12
  max_version: TLS13
  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]
  prefer_server_cipher_suites: false
http_server_config:
  http2: false
  headers:
    X-Frame-Options: deny
    Strict-Transport-Security: max-age=31536000
basic_auth_users:
  prometheus: {HASH}
"""
    config = webconfig.load(write(sub, text))
    assert config.tls.cert_file == str(tmp_path / "server.crt")
    assert config.tls.client_ca_file == str(tmp_path / "ca.crt")
    assert config.ssl_context.verify_mode == ssl.CERT_OPTIONAL
    assert config.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert config.headers == {"X-Frame-Options": "deny", "Strict-Transport-Security": "max-age=31536000"}
    assert set(config.users) == {"prometheus"}


def test_an_empty_file_means_no_tls_and_no_auth(tmp_path):
    config = webconfig.load(write(tmp_path, ""))
    assert config.tls is None and config.users == {} and config.headers == {}


# Refused by mlmon, accepted by promtool 2.42: features Python's ssl lacks, a key of newer toolkits, and a
# max_version below min_version (Go fails every handshake instead), a user name that Basic auth cannot carry.
MLMON_STRICTER = ("curve_preferences", "RequestClientCert", "client_allowed_sans", "max_version: TLS12", "'a:b'")


@pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian package prometheus)")
@pytest.mark.parametrize(
    "text",
    [t for t, _ in INVALID if not any(x in t for x in MLMON_STRICTER)]
    + [f"basic_auth_users: {{prometheus: '{HASH}'}}", TLS + ", min_version: TLS13}"],
)
def test_mlmon_and_promtool_agree(certs, text):
    """What promtool (exporter-toolkit) accepts mlmon accepts, and what it refuses mlmon refuses. (The few
    deviations are in the docstring of exporter/security/webconfig.py and excluded here.)"""
    path = write(certs, text)
    promtool = subprocess.run([PROMTOOL, "check", "web-config", path], capture_output=True, text=True)
    try:
        webconfig.load(path)
        ours = 0
    except WebConfigError:
        ours = 1
    if "auth_type: RequireAndVerifyClientCert}" in text:
        pytest.skip("promtool 2.42 falls back to the system CAs; mlmon asks for client_ca_file")
    assert ours == promtool.returncode, promtool.stdout + promtool.stderr


def repo_web_configs() -> list[Path]:
    skip = {".venv", ".git", "node_modules"}
    return sorted(
        p
        for p in ROOT.rglob("*.yml")
        if not skip & set(p.relative_to(ROOT).parts)
        and "tls_server_config" in p.read_text(errors="replace")
        and "scrape_configs" not in p.read_text(errors="replace")
    )


def test_the_repository_has_web_configs():
    assert ROOT / "deploy" / "compose" / "web-config.yml" in repo_web_configs()


@pytest.mark.parametrize("path", repo_web_configs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_web_config_in_the_repository_is_valid(path, tmp_path, ca):
    """promtool check web-config and mlmon's loader, with the certificate files it names made up (they are
    secrets, never committed)."""
    raw = yaml.safe_load(path.read_text())
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    tls = raw.get("tls_server_config") or {}
    server = ca.issue_cert("exporter")
    for key, pem in (("cert_file", server.cert_chain_pems[0]), ("key_file", server.private_key_pem)):
        target = Path(tls[key])
        assert not target.is_absolute(), f"{key}: relative paths keep the file usable outside the container"
        pem.write_to_path(str(tmp_path / target))
    if tls.get("client_ca_file"):
        ca.cert_pem.write_to_path(str(tmp_path / tls["client_ca_file"]))
    webconfig.load(str(copy))
    if PROMTOOL is not None:
        out = subprocess.run([PROMTOOL, "check", "web-config", str(copy)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


# --- basic auth (the WSGI middleware) -----------------------------------------------------------------------------


def inner_app(environ, start_response):
    body = json.dumps(
        {"path": environ["PATH_INFO"], "addr": environ.get("REMOTE_ADDR"), "scheme": environ["wsgi.url_scheme"]}
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def call(app, path: str, auth: str | None = None, remote_port: int = 40000):
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": str(remote_port),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
    }
    if auth is not None:
        environ["HTTP_AUTHORIZATION"] = auth
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = int(status.split()[0]), dict(headers)

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def guarded(tmp_path):
    from prometheus_client import CollectorRegistry

    text = f"""
http_server_config: {{headers: {{X-Content-Type-Options: nosniff}}}}
basic_auth_users:
  prometheus: {HASH}
  ünïcode: {HASH}
"""
    holder = Holder(write(tmp_path, text))
    registry = CollectorRegistry()
    return Guard(inner_app, holder, registry=registry), registry


def failures(registry, reason: str) -> float:
    return registry.get_sample_value("mlmon_scrape_auth_failures_total", {"reason": reason})


def test_metrics_needs_the_right_password(guarded):
    app, registry = guarded
    status, headers, body = call(app, "/metrics", basic("prometheus", PASSWORD))
    assert status == 200 and json.loads(body)["path"] == "/metrics"
    assert headers["X-Content-Type-Options"] == "nosniff"
    for auth, reason in (
        (None, "missing"),
        ("Bearer abc", "missing"),
        ("Basic !!!notbase64", "malformed"),
        ("Basic " + base64.b64encode(b"no-colon").decode(), "malformed"),
        ("Basic " + base64.b64encode(b"prometheus:\xff\xfe").decode(), "wrong"),  # not UTF-8: read as Latin-1
        (basic("prometheus", "wrong"), "wrong"),
        (basic("nobody", PASSWORD), "wrong"),
        (basic("prometheus", PASSWORD + " "), "wrong"),
        (basic("prometheus", "x" * 100), "wrong"),  # over bcrypt's 72 bytes
    ):
        before = failures(registry, reason)
        status, headers, body = call(app, "/metrics", auth)
        assert status == 401, auth
        assert headers["WWW-Authenticate"] == 'Basic realm="mlmon"'
        assert headers["X-Content-Type-Options"] == "nosniff"
        error = json.loads(body)["error"]
        assert (error["code"], error["name"]) == (401, "Unauthorized") and "basic auth" in error["message"]
        assert failures(registry, reason) == before + 1, auth


def test_non_ascii_user_and_password(guarded):
    app, _ = guarded
    assert call(app, "/metrics", basic("ünïcode", PASSWORD))[0] == 200
    assert call(app, "/metrics", basic("ünïcode", PASSWORD.replace("ä", "a")))[0] == 401


def test_only_metrics_is_protected(guarded):
    app, _ = guarded
    for path in ("/metrics", "/metrics/", "//metrics", "/metrics/x"):
        assert call(app, path)[0] == 401, path
    for path in ("/healthz", "/readyz", "/", "/metricsfoo", "/api/v1/models"):
        assert call(app, path)[0] == 200, path


def test_bcrypt_runs_once_per_password_and_for_every_wrong_guess(guarded, monkeypatch):
    app, _ = guarded
    calls = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda pw, h: calls.append(pw) or real(pw, h))
    for _ in range(5):
        assert call(app, "/metrics", basic("prometheus", PASSWORD))[0] == 200
    assert len(calls) == 1, "successful verifications are cached (a scrape every 15 s pays no bcrypt)"
    for _ in range(3):
        assert call(app, "/metrics", basic("prometheus", "guess"))[0] == 401
    assert len(calls) == 4, "wrong passwords are never cached"
    # An unknown user costs a bcrypt too (against a dummy hash), so timing does not reveal which users exist.
    assert call(app, "/metrics", basic("nobody", PASSWORD))[0] == 401
    assert len(calls) == 5


def test_the_cache_compares_in_constant_time(guarded, monkeypatch):
    app, _ = guarded
    compared = []
    real = webconfig.hmac.compare_digest
    monkeypatch.setattr(webconfig.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    call(app, "/metrics", basic("prometheus", PASSWORD))
    call(app, "/metrics", basic("prometheus", PASSWORD))
    assert compared, "a cached verification is checked with hmac.compare_digest"


def test_counter_is_on_the_apps_registry(tmp_path):
    from exporter.config import parse_config
    from exporter.serve.app import create_app
    from tests.conftest import BASIC_CONFIG

    app = create_app(parse_config(BASIC_CONFIG))
    holder = Holder(write(tmp_path, f"basic_auth_users: {{prometheus: '{HASH}'}}"))
    guard = Guard(app, holder, registry=app.extensions["mlmon"].registry)
    assert call(guard, "/metrics", basic("prometheus", "nope"))[0] == 401
    status, _, body = call(guard, "/metrics", basic("prometheus", PASSWORD))
    assert status == 200
    assert b'mlmon_scrape_auth_failures_total{reason="wrong"} 1.0' in body
    assert b"mlmon_web_config_last_reload_successful 1.0" in body
    assert call(guard, "/readyz")[0] == 200


# --- reload -------------------------------------------------------------------------------------------------------


def test_a_changed_file_is_reloaded_and_a_bad_one_is_not(tmp_path):
    other = bcrypt.hashpw(b"new", bcrypt.gensalt(4)).decode()
    path = write(tmp_path, f"basic_auth_users: {{prometheus: '{HASH}'}}")
    now = [0.0]
    holder = Holder(path, check_every=1.0, clock=lambda: now[0])
    assert holder.check("prometheus", PASSWORD)
    Path(path).write_text(f"basic_auth_users: {{prometheus: '{other}', second: '{other}'}}")
    assert set(holder.current().users) == {"prometheus"}, "checked at most every check_every seconds"
    now[0] = 1.5
    assert set(holder.current().users) == {"prometheus", "second"}
    assert holder.check("prometheus", "new") and not holder.check("prometheus", PASSWORD)
    Path(path).write_text("basic_auth_users: {prometheus: broken-hash-of-more-length}")
    now[0] = 3.0
    assert set(holder.current().users) == {"prometheus", "second"}, "the last good config stays"
    assert holder.last_reload_ok is False
    Path(path).write_text(f"basic_auth_users: {{prometheus: '{HASH}'}}")
    assert holder.reload("SIGHUP") and holder.last_reload_ok
    assert set(holder.current().users) == {"prometheus"}


def test_tls_cannot_be_turned_on_by_a_reload(certs):
    path = write(certs, f"basic_auth_users: {{prometheus: '{HASH}'}}")
    holder = Holder(path)
    Path(path).write_text(TLS + "}")
    assert holder.reload() is False and holder.config.tls is None


# --- TLS in front of waitress, in this process -------------------------------------------------------------------


class Served:
    """waitress on loopback behind exporter.security.tls.TLSListener, both in threads of this process."""

    def __init__(self, web_path: str, app=inner_app, **listener_args):
        import waitress

        from exporter.security import tls

        self.holder = Holder(web_path, check_every=0.1)
        self.peers = Peers()
        self.server = waitress.create_server(
            Guard(app, self.holder, peers=self.peers), host="127.0.0.1", port=0, threads=4
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.listener = tls.TLSListener(
            tls.bind("127.0.0.1", 0),
            self.server.effective_port,
            self.holder,
            self.peers,
            check_every=0.1,
            **listener_args,
        )
        self.listener.start()
        self.url = f"https://127.0.0.1:{self.listener.address[1]}"

    def close(self):
        self.listener.stop(grace=0.5)
        # Every socket of waitress (listener, open connections, its trigger) closed from its own loop thread,
        # between two selects: closed from here, they could go while the loop was selecting on them (EBADF,
        # a thread exception pytest warns about). With its map empty, the loop ends.
        from waitress import wasyncore

        self.server.trigger.pull_trigger(lambda: wasyncore.close_all(self.server._map))
        self.thread.join(5)
        self.server.task_dispatcher.shutdown()
        assert not self.thread.is_alive(), "waitress did not stop"


@pytest.fixture
def served(certs):
    running = []

    def start(text: str, **kw) -> Served:
        s = Served(write(certs, text), **kw)
        running.append(s)
        return s

    yield start
    for s in running:
        s.close()


def test_tls_serves_the_app_with_the_real_client_address(served, certs):
    s = served(TLS + "}\n" + f"basic_auth_users: {{prometheus: '{HASH}'}}")
    ca = str(certs / "ca.crt")
    answer = requests.get(f"{s.url}/healthz", verify=ca, timeout=5).json()
    assert answer["scheme"] == "https" and answer["addr"] == "127.0.0.1"
    assert requests.get(f"{s.url}/metrics", verify=ca, timeout=5).status_code == 401  # (no response kept open)
    with requests.Session() as session:  # keep-alive: several requests on one TLS connection
        for _ in range(3):
            assert session.get(f"{s.url}/metrics", verify=ca, auth=("prometheus", PASSWORD), timeout=5).ok
    # A POST body larger than a TLS record and the listener's chunk goes through whole.
    big = b"x" * (1024 * 1024 + 7)

    def echo_length(environ, start_response):
        n = len(environ["wsgi.input"].read())
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(n).encode()]

    s2 = served(TLS + "}", app=echo_length)
    assert requests.post(f"{s2.url}/x", data=big, verify=ca, timeout=10).text == str(len(big))
    assert wait_for("the peer map to empty", lambda: len(s.peers) == 0 and len(s2.peers) == 0, 5)


def test_the_real_client_port_is_the_one_waitress_sees(served, certs):
    s = served(TLS + "}")
    ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    with socket.create_connection(("127.0.0.1", s.listener.address[1])) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            conn.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            port = raw.getsockname()[1] if raw.fileno() != -1 else conn.getsockname()[1]
    assert b"200 OK" in data
    assert webconfig.client_address({"mlmon.client": {"address": "127.0.0.1", "port": port}}) == ("127.0.0.1", port)


def test_plain_http_to_the_tls_port_and_the_loopback_bypass_fail(served, certs):
    s = served(TLS + "}")
    with pytest.raises(requests.ConnectionError):
        requests.get(s.url.replace("https", "http") + "/healthz", timeout=5)
    # waitress's loopback port, reached without the listener: no TLS, so refused.
    direct = requests.get(f"http://127.0.0.1:{s.server.effective_port}/healthz", timeout=5)
    assert direct.status_code == 403 and "TLS listener" in direct.json()["error"]["message"]


def test_client_certificates_are_required_and_verified(served, certs, ca, tmp_path):
    s = served(TLS + ", client_auth_type: RequireAndVerifyClientCert, client_ca_file: ca.crt}")
    verify = str(certs / "ca.crt")
    client = ca.issue_cert("prometheus@example.org", "prometheus.internal")
    client.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "client.pem"))
    assert requests.get(f"{s.url}/healthz", verify=verify, cert=str(tmp_path / "client.pem"), timeout=5).ok
    with pytest.raises((requests.exceptions.SSLError, requests.ConnectionError)):
        requests.get(f"{s.url}/healthz", verify=verify, timeout=5)
    stranger = trustme.CA().issue_cert("prometheus.internal")
    stranger.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "stranger.pem"))
    with pytest.raises((requests.exceptions.SSLError, requests.ConnectionError)):
        requests.get(f"{s.url}/healthz", verify=verify, cert=str(tmp_path / "stranger.pem"), timeout=5)


def test_client_allowed_sans(served, certs, ca, tmp_path):
    s = served(
        TLS + ", client_auth_type: RequireAndVerifyClientCert, client_ca_file: ca.crt,"
        " client_allowed_sans: [prometheus.internal]}"
    )
    verify = str(certs / "ca.crt")
    for name, ok in (("prometheus.internal", True), ("someone.else", False)):
        cert = ca.issue_cert(name)
        cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / f"{name}.pem"))
        try:
            answered = requests.get(f"{s.url}/healthz", verify=verify, cert=str(tmp_path / f"{name}.pem"), timeout=5).ok
        except requests.ConnectionError:
            answered = False
        assert answered is ok, name


def test_min_version_is_enforced(served, certs):
    s = served(TLS + ", min_version: TLS13}")
    ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with socket.create_connection(("127.0.0.1", s.listener.address[1]), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
                pass


def test_a_stalled_handshake_is_cut_off(served):
    s = served(TLS + "}", handshake_timeout=0.5)
    with socket.create_connection(("127.0.0.1", s.listener.address[1]), timeout=5) as raw:
        started = time.monotonic()
        assert raw.recv(1) == b""  # said nothing: closed after the handshake timeout
        assert time.monotonic() - started < 4


def test_an_idle_connection_is_closed(served, certs):
    s = served(TLS + "}", idle_timeout=0.5)
    ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    with socket.create_connection(("127.0.0.1", s.listener.address[1]), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            started = time.monotonic()
            assert conn.recv(1) == b""
            assert time.monotonic() - started < 4


def test_a_new_certificate_is_used_without_a_restart(served, certs):
    s = served(TLS + "}")
    new_ca = trustme.CA()
    fresh = new_ca.issue_cert("127.0.0.1")
    new_ca.cert_pem.write_to_path(str(certs / "new-ca.crt"))
    fresh.private_key_pem.write_to_path(str(certs / "server.key"))
    fresh.cert_chain_pems[0].write_to_path(str(certs / "server.crt"))

    def new_cert_served():
        try:
            return requests.get(f"{s.url}/healthz", verify=str(certs / "new-ca.crt"), timeout=2).ok
        except requests.ConnectionError:
            return False

    wait_for("the new certificate", new_cert_served, 10)


# --- mlmon serve ----------------------------------------------------------------------------------------------------


def serve(tmp_path: Path, web: str, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            "serve",
            "--config",
            "examples/config.yml",
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--web.config.file",
            web,
            "--storage.path",
            str(tmp_path / "data"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def test_serve_exits_2_on_a_bad_web_config(tmp_path):
    path = write(tmp_path, "tls_server_config: {cert_file: a.crt, key_file: a.key, bogus: 1}")
    proc = serve(tmp_path, path, free_port())
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "invalid web config" in err and "tls_server_config.bogus" in err


def test_check_web_config_command(certs):
    ok = subprocess.run(
        [sys.executable, "-m", "exporter", "check-web-config", write(certs, TLS + "}")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert ok.returncode == 0 and "OK: TLS" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "exporter", "check-web-config", write(certs, "bogus: 1", "bad.yml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode == 1 and "bogus" in bad.stderr


@pytest.mark.skipif(PROMETHEUS is None, reason="needs /usr/bin/prometheus (Debian package prometheus)")
def test_prometheus_scrapes_a_tls_and_basic_auth_exporter_with_the_bundle_settings(tmp_path, ca):
    """THE test: `mlmon serve` with TLS + basic auth, the real Prometheus with the bundle's `mlmon` job."""
    exporter_dir = tmp_path / "exporter"
    exporter_dir.mkdir()
    server = ca.issue_cert("127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(exporter_dir / "mlmon_tls.crt"))
    server.private_key_pem.write_to_path(str(exporter_dir / "mlmon_tls.key"))
    web = exporter_dir / "web.yml"
    web.write_text(
        f"tls_server_config: {{cert_file: mlmon_tls.crt, key_file: mlmon_tls.key}}\n"
        f"basic_auth_users: {{prometheus: '{HASH}'}}\n"
    )
    port = free_port()
    exporter = serve(exporter_dir, str(web), port)

    # The bundle's prometheus.yml: the mlmon job as committed, but for its targets and interval.
    bundle = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in bundle["scrape_configs"] if j["job_name"] == "mlmon"]
    assert job["scheme"] == "https"
    assert job["tls_config"]["ca_file"] == "secrets/mlmon_ca.crt"
    assert job["basic_auth"]["password_file"] == "secrets/mlmon_scrape_password"
    assert job["file_sd_configs"] == [{"files": ["targets/*.yml"]}]
    job["scrape_interval"] = "1s"
    prom_dir = tmp_path / "prometheus"
    (prom_dir / "targets").mkdir(parents=True)
    (prom_dir / "secrets").mkdir()
    ca_file = str(prom_dir / "secrets" / "mlmon_ca.crt")
    ca.cert_pem.write_to_path(ca_file)
    password_file = prom_dir / "secrets" / "mlmon_scrape_password"
    password_file.write_text(PASSWORD + "\n")  # a trailing newline, as `echo` writes it: Prometheus trims it
    targets = yaml.safe_load((ROOT / "prometheus" / "targets" / "mlmon.yml").read_text())
    assert "__scheme__" not in targets[0].get("labels", {}), "the committed target is scraped over TLS"
    targets[0]["targets"] = [f"127.0.0.1:{port}"]
    (prom_dir / "targets" / "mlmon.yml").write_text(yaml.safe_dump(targets))
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": [job]}
    (prom_dir / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom_port = free_port()
    log = open(tmp_path / "prometheus.log", "w")
    prometheus = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={prom_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{prom_port}/api/v1"

    def query(q: str) -> list:
        try:
            return requests.get(f"{api}/query", params={"query": q}, timeout=2).json()["data"]["result"]
        except (requests.RequestException, KeyError, ValueError):
            return []

    def target() -> dict | None:
        try:
            active = requests.get(f"{api}/targets", timeout=2).json()["data"]["activeTargets"]
        except (requests.RequestException, KeyError, ValueError):
            return None
        return next((t for t in active if t["labels"]["job"] == "mlmon"), None)

    try:

        def exporter_ready() -> bool:
            if exporter.poll() is not None:
                pytest.fail(f"mlmon serve exited: {exporter.stderr.read()}")
            try:
                return requests.get(f"https://127.0.0.1:{port}/readyz", verify=ca_file, timeout=1).ok
            except requests.ConnectionError:
                return False

        wait_for("the exporter to answer over TLS", exporter_ready, 20)
        up = wait_for('up{job="mlmon"} == 1', lambda: [r for r in query('up{job="mlmon"}') if r["value"][1] == "1"], 15)
        assert up[0]["metric"]["instance"] == f"127.0.0.1:{port}"
        assert target()["scrapeUrl"] == f"https://127.0.0.1:{port}/metrics"
        assert wait_for("mlmon_ series", lambda: query('count({__name__=~"mlmon_.+", job="mlmon"}) > 10'), 5)

        # A wrong password (password_file is read at every scrape): 401, so up == 0, and the target says why.
        password_file.write_text("wrong")

        def down():
            t = target()
            return t if t and t["health"] == "down" and "401" in t["lastError"] else None

        assert "401" in wait_for("the target to be down with a 401", down, 10)["lastError"]
        assert wait_for("up == 0", lambda: [r for r in query('up{job="mlmon"}') if r["value"][1] == "0"], 5)
    finally:
        prometheus.terminate()
        exporter.terminate()
        for proc in (prometheus, exporter):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
