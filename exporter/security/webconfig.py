"""`mlmon serve --web.config.file`: TLS, basic auth and response headers, in exporter-toolkit's format.

The file is the one Prometheus's own exporters read (exporter-toolkit ``docs/web-configuration.md``), so ops
reuse their files and check them with ``promtool check web-config``::

    tls_server_config:
      cert_file: mlmon.crt            # relative paths are relative to this file
      key_file: mlmon.key
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: clients-ca.crt
      min_version: TLS12
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      prometheus: $2b$10$...          # bcrypt hash

What mlmon does with it:

- ``basic_auth_users`` protect ``/metrics`` (the scrape). The API has its own bearer tokens; ``/healthz`` and
  ``/readyz`` stay open for probes. :class:`Guard` is the WSGI middleware that checks them.
- ``tls_server_config`` turns the listening port into TLS. Waitress speaks no TLS, so :mod:`exporter.security.tls`
  terminates it in the same process and hands the plain bytes to waitress on a loopback port; the
  :class:`Peers` map lets :class:`Guard` give the app the real client address (``REMOTE_ADDR``) and
  ``wsgi.url_scheme`` ``https``, and refuse anything that reached the loopback port without the listener.
- ``http_server_config.headers`` are added to every response (the toolkit's allowed headers only).

Deviations from the toolkit, all refused with a message when loading rather than silently ignored:
``client_auth_type`` ``RequestClientCert`` and ``RequireAnyClientCert`` (Python's ``ssl`` cannot accept a client
certificate without verifying it), ``curve_preferences`` (Python 3.11 cannot set a preference list), inline
``cert``/``key``/``client_ca`` and ``rate_limit``. ``client_allowed_sans`` is accepted (newer toolkits have it;
promtool 2.42 does not know it).

:class:`Holder` re-reads the file, and the certificate, key and CA files it names, when any of them changes
(checked at most once a second) or on SIGHUP; a bad new file is logged and the last good one stays in force.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import yaml

log = logging.getLogger("mlmon.web")

TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
TLS_KEYS = (
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "cipher_suites",
    "curve_preferences",
    "min_version",
    "max_version",
    "prefer_server_cipher_suites",
    "client_allowed_sans",
)
HTTP_KEYS = ("headers", "http2")
# Keys of newer exporter-toolkits that mlmon knows but does not implement: refused with a reason.
UNSUPPORTED = {
    "rate_limit": "mlmon has no request rate limit in the web config",
    "tls_server_config.curve_preferences": "Python's ssl module cannot set a list of preferred curves",
    "tls_server_config.cert": "inline certificates are not supported; use cert_file",
    "tls_server_config.key": "inline keys are not supported; use key_file",
    "tls_server_config.client_ca": "an inline client CA is not supported; use client_ca_file",
}
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# client_auth_type -> ssl verify mode; None: a toolkit value Python's ssl module cannot honour.
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
    "RequestClientCert": None,
    "RequireAnyClientCert": None,
    "RequireClientCert": None,  # the toolkit's old spelling of RequireAnyClientCert
}
# Go's cipher suite names (crypto/tls) -> OpenSSL's. They apply to TLS 1.2 and older, as in Go.
CIPHERS = {
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": "ECDHE-RSA-DES-CBC3-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
# TLS 1.3 suites: Go accepts their names and ignores them (TLS 1.3 suites are not configurable); so does mlmon.
TLS13_CIPHERS = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
# exporter-toolkit's allowed response headers, and their allowed values (None: any value).
HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
BCRYPT_HASH = re.compile(rb"^\$2[abxy]?\$(\d\d)\$[./A-Za-z0-9]{53}$")
REALM = "mlmon"
PROTECTED = "/metrics"


class WebConfigError(Exception):
    """The web config file cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class TLSSettings:
    cert_file: str
    key_file: str
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    min_version: str = "TLS12"
    max_version: str | None = None
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True
    client_allowed_sans: tuple[str, ...] = ()

    def files(self) -> tuple[str, ...]:
        return tuple(f for f in (self.cert_file, self.key_file, self.client_ca_file) if f)

    def context(self) -> ssl.SSLContext:
        """A server SSLContext; raises WebConfigError when a file is missing or does not fit."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = TLS_VERSIONS[self.min_version]
        if self.max_version:
            ctx.maximum_version = TLS_VERSIONS[self.max_version]
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            # FileNotFoundError, or an SSLError: not PEM, or the key does not belong to the certificate.
            raise WebConfigError(
                f"tls_server_config: cannot load cert_file {self.cert_file} with key_file {self.key_file}: {exc}"
            ) from None
        if self.client_ca_file:
            try:
                ctx.load_verify_locations(cafile=self.client_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise WebConfigError(
                    f"tls_server_config.client_ca_file: cannot load {self.client_ca_file}: {exc}"
                ) from None
        ctx.verify_mode = CLIENT_AUTH[self.client_auth_type]  # type: ignore[assignment]
        if self.cipher_suites:
            names = [CIPHERS[c] for c in self.cipher_suites if c in CIPHERS]
            if names:
                try:
                    ctx.set_ciphers(":".join(names))
                except ssl.SSLError:
                    raise WebConfigError(
                        f"tls_server_config.cipher_suites: this OpenSSL offers none of {list(self.cipher_suites)}"
                    ) from None
        if self.prefer_server_cipher_suites:
            ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        else:
            ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    def allowed_peer(self, peercert: dict | None) -> bool:
        """client_allowed_sans: the verified client certificate must name one of them (DNS, IP, email, URI)."""
        if not self.client_allowed_sans:
            return True
        if not peercert:
            return self.client_auth_type != "RequireAndVerifyClientCert"
        sans = {value for _, value in peercert.get("subjectAltName", ())}
        return any(san in sans for san in self.client_allowed_sans)


@dataclass
class WebConfig:
    path: str
    tls: TLSSettings | None = None
    headers: dict[str, str] = field(default_factory=dict)
    users: dict[str, bytes] = field(default_factory=dict)
    ssl_context: ssl.SSLContext | None = None
    # Successful verifications: user -> HMAC of (hash, password) under a key of this process (see check()).
    _verified: dict[str, bytes] = field(default_factory=dict, repr=False)

    def files(self) -> tuple[str, ...]:
        return (self.path, *(self.tls.files() if self.tls else ()))


class Users:
    """bcrypt verification with a cache, so that a scrape every 15 s does not cost a bcrypt (tens of ms) each.

    A successful check remembers HMAC(process key, hash + password) per user; the next request with the same
    password matches that digest with a constant-time compare and skips bcrypt. Wrong passwords always pay
    bcrypt, one at a time (a lock: a flood of wrong guesses takes one core, not all of them), and an unknown
    user pays it too, against a dummy hash of the same cost, so timing does not tell which users exist.
    """

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._dummy: dict[bytes, bytes] = {}

    def _digest(self, hashed: bytes, password: bytes) -> bytes:
        return hmac.new(self._key, hashed + b"\0" + password, hashlib.sha256).digest()

    def check(self, table: dict[str, bytes], verified: dict[str, bytes], user: str, password: str) -> bool:
        import bcrypt

        secret = password.encode("utf-8")
        hashed = table.get(user)
        if hashed is not None:
            digest = self._digest(hashed, secret)
            cached = verified.get(user)
            if cached is not None and hmac.compare_digest(cached, digest):
                return True
        with self._lock:
            try:
                if hashed is None:
                    bcrypt.checkpw(secret, self._dummy_hash(next(iter(table.values()), None)))
                    return False
                ok = bcrypt.checkpw(secret, hashed)
            except ValueError:  # e.g. a password over 72 bytes (bcrypt >= 5 refuses it)
                return False
        if ok:
            verified[user] = digest
        return ok

    def _dummy_hash(self, like: bytes | None) -> bytes:
        import bcrypt

        match = BCRYPT_HASH.match(like or b"")
        cost = int(match.group(1)) if match else 10
        key = str(cost).encode()
        if key not in self._dummy:
            self._dummy[key] = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost))
        return self._dummy[key]


# --- loading -------------------------------------------------------------------------------------------------


def load(path: str) -> WebConfig:
    """Read and validate a web config file; build its SSLContext (so bad certificates fail here)."""
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except OSError as exc:
        raise WebConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise WebConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return _parse(raw, path)
    except WebConfigError as exc:
        raise WebConfigError(f"{path}: {exc}") from None


def _mapping(value: Any, key: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WebConfigError(f"{key}: must be a mapping, not {type(value).__name__}")
    for k in value:
        if not isinstance(k, str):
            raise WebConfigError(f"{key}: keys must be strings, not {k!r}")
    return value


def _known(section: dict, allowed: tuple[str, ...], prefix: str) -> None:
    for key in section:
        name = f"{prefix}{key}"
        if name in UNSUPPORTED:
            raise WebConfigError(f"{name}: not supported by mlmon: {UNSUPPORTED[name]}")
        if key not in allowed:
            raise WebConfigError(
                f"unknown key {name!r}; known keys{' of ' + prefix[:-1] if prefix else ''}: {', '.join(allowed)}"
            )


def _string(section: dict, key: str, prefix: str, default: str | None = None) -> str | None:
    value = section.get(key, default)
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise WebConfigError(f"{prefix}{key}: must be a string, not {type(value).__name__}")
    return value


def _string_list(section: dict, key: str, prefix: str) -> tuple[str, ...]:
    value = section.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise WebConfigError(f"{prefix}{key}: must be a list of strings")
    return tuple(value)


def _parse(raw: Any, path: str) -> WebConfig:
    top = _mapping(raw, "the file")
    _known(top, TOP_KEYS, "")
    base = os.path.dirname(os.path.abspath(path))

    def resolve(p: str) -> str:
        return os.path.normpath(os.path.join(base, os.path.expanduser(p)))

    config = WebConfig(path=os.path.abspath(path))

    tls = _mapping(top.get("tls_server_config"), "tls_server_config")
    _known(tls, TLS_KEYS, "tls_server_config.")
    if tls:
        p = "tls_server_config."
        cert, key = _string(tls, "cert_file", p), _string(tls, "key_file", p)
        auth = _string(tls, "client_auth_type", p, "NoClientCert")
        ca = _string(tls, "client_ca_file", p)
        if not cert:
            raise WebConfigError("tls_server_config: missing cert_file")
        if not key:
            raise WebConfigError("tls_server_config: missing key_file")
        if auth not in CLIENT_AUTH:
            raise WebConfigError(
                f"tls_server_config.client_auth_type: invalid value {auth!r}; one of {', '.join(CLIENT_AUTH)}"
            )
        if CLIENT_AUTH[auth] is None:
            raise WebConfigError(
                f"tls_server_config.client_auth_type: {auth} is not supported by mlmon (Python's ssl module "
                "verifies every client certificate it asks for); use VerifyClientCertIfGiven or "
                "RequireAndVerifyClientCert with client_ca_file"
            )
        if ca and auth == "NoClientCert":
            raise WebConfigError(
                "tls_server_config: client_ca_file is set but client_auth_type is NoClientCert (Client CA's have "
                "been configured without a Client Auth Policy)"
            )
        if auth != "NoClientCert" and not ca:
            raise WebConfigError(f"tls_server_config: client_auth_type {auth} needs client_ca_file")
        versions = {}
        for k, default in (("min_version", "TLS12"), ("max_version", None)):
            v = _string(tls, k, p, default)
            if v is not None and v not in TLS_VERSIONS:
                raise WebConfigError(
                    f"tls_server_config.{k}: unknown TLS version {v!r}; one of {', '.join(TLS_VERSIONS)}"
                )
            versions[k] = v
        if versions["max_version"] and TLS_VERSIONS[versions["max_version"]] < TLS_VERSIONS[versions["min_version"]]:
            raise WebConfigError("tls_server_config: max_version is below min_version")
        ciphers = _string_list(tls, "cipher_suites", p)
        for c in ciphers:
            if c not in CIPHERS and c not in TLS13_CIPHERS:
                raise WebConfigError(f"tls_server_config.cipher_suites: unknown or unsupported cipher suite {c!r}")
        prefer = tls.get("prefer_server_cipher_suites", True)
        if not isinstance(prefer, bool):
            raise WebConfigError("tls_server_config.prefer_server_cipher_suites: must be true or false")
        sans = _string_list(tls, "client_allowed_sans", p)
        if sans and auth == "NoClientCert":
            raise WebConfigError("tls_server_config: client_allowed_sans needs a client_auth_type that verifies")
        config.tls = TLSSettings(
            cert_file=resolve(cert),
            key_file=resolve(key),
            client_auth_type=auth,  # type: ignore[arg-type]
            client_ca_file=resolve(ca) if ca else None,
            min_version=versions["min_version"],  # type: ignore[arg-type]
            max_version=versions["max_version"],
            cipher_suites=ciphers,
            prefer_server_cipher_suites=prefer,
            client_allowed_sans=sans,
        )
        config.ssl_context = config.tls.context()

    http = _mapping(top.get("http_server_config"), "http_server_config")
    _known(http, HTTP_KEYS, "http_server_config.")
    if "http2" in http and not isinstance(http["http2"], bool):
        raise WebConfigError("http_server_config.http2: must be true or false")  # waitress speaks HTTP/1.1 only
    headers = _mapping(http.get("headers"), "http_server_config.headers")
    for name, value in headers.items():
        if name not in HEADERS:
            raise WebConfigError(
                f"http_server_config.headers: HTTP header {name!r} can not be configured; allowed: {', '.join(HEADERS)}"
            )
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            raise WebConfigError(f"http_server_config.headers.{name}: must be a one-line string")
        allowed = HEADERS[name]
        if allowed is not None and value not in allowed:
            raise WebConfigError(
                f"http_server_config.headers: invalid value for {name}; expected one of {list(allowed)}, got {value!r}"
            )
        config.headers[name] = value

    users = _mapping(top.get("basic_auth_users"), "basic_auth_users")
    for user, hashed in users.items():
        if ":" in user or not user:
            raise WebConfigError(f"basic_auth_users: invalid user name {user!r} (empty, or with a colon)")
        if not isinstance(hashed, str) or not BCRYPT_HASH.match(hashed.encode("ascii", "replace")):
            raise WebConfigError(
                f"basic_auth_users.{user}: not a bcrypt hash (expected $2y$10$ followed by 53 characters; "
                "make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')"
            )
        cost = int(hashed[4:6])
        if not 4 <= cost <= 31:
            raise WebConfigError(f"basic_auth_users.{user}: bcrypt cost {cost} is outside 4 to 31")
        config.users[user] = hashed.encode("ascii")
    return config


def _stamp(paths: tuple[str, ...]) -> tuple:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((p, st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((p, None))
    return tuple(out)


class Holder:
    """The web config in force, re-read when its files change (checked at most every `check_every` s) or on
    reload() (SIGHUP). A bad new version is logged and the last good one stays; TLS cannot be turned on or off
    without a restart (the listener's shape changes)."""

    def __init__(self, path: str, check_every: float = 1.0, clock=time.monotonic):
        self.path = path
        self.config = load(path)
        self.users = Users()
        self.check_every, self.clock = check_every, clock
        self._stamp = _stamp(self.config.files())
        self._next = clock() + check_every
        self._lock = threading.Lock()
        self.generation = 0
        self.last_reload_ok = True
        self.last_reload_time = time.time()

    @property
    def tls(self) -> bool:
        return self.config.tls is not None

    def current(self) -> WebConfig:
        now = self.clock()
        if now >= self._next:
            self._next = now + self.check_every
            if _stamp(self.config.files()) != self._stamp:
                self.reload("files changed")
        return self.config

    def reload(self, reason: str = "SIGHUP") -> bool:
        with self._lock:
            files = self.config.files()
            try:
                new = load(self.path)
                if (new.tls is None) != (self.config.tls is None):
                    raise WebConfigError(f"{self.path}: turning TLS on or off needs a restart of mlmon serve")
            except WebConfigError as exc:
                self._stamp = _stamp(files)  # retried when a file changes again, not every second
                self.last_reload_ok = False
                log.error(
                    "web config not reloaded; the previous one stays in force: %s",
                    exc,
                    extra={"fields": {"reason": reason}},
                )
                return False
            self.config = new
            self._stamp = _stamp(new.files())
            self.generation += 1
            self.last_reload_ok = True
            self.last_reload_time = time.time()
            log.info("web config reloaded", extra={"fields": {"reason": reason, "file": self.path}})
            return True

    def check(self, user: str, password: str) -> bool:
        config = self.config
        return self.users.check(config.users, config._verified, user, password)


# --- the real client behind the TLS listener ------------------------------------------------------------------


class Peers:
    """Internal loopback connection (its local port) -> the real client, kept by the TLS listener."""

    def __init__(self) -> None:
        self._map: dict[int, dict] = {}

    def add(self, port: int, info: dict) -> None:
        self._map[port] = info

    def remove(self, port: int) -> None:
        self._map.pop(port, None)

    def get(self, port: int) -> dict | None:
        return self._map.get(port)

    def __len__(self) -> int:
        return len(self._map)


def client_address(environ: dict) -> tuple[str, int | None]:
    """The real client of a request: (address, port), behind mlmon's TLS listener too.

    Guard already rewrites REMOTE_ADDR and REMOTE_PORT; this helper reads them (or the listener's record)."""
    peer = environ.get("mlmon.client")
    if peer is not None:
        return peer["address"], peer["port"]
    port = environ.get("REMOTE_PORT")
    return environ.get("REMOTE_ADDR", ""), int(port) if port and str(port).isdigit() else None


# --- the WSGI middleware ------------------------------------------------------------------------------------------


def _protected(path: str) -> bool:
    path = re.sub("/+", "/", path or "/")
    return path == PROTECTED or path.startswith(PROTECTED + "/")


def _credentials(header: str | None) -> tuple[str, str] | None | bool:
    """(user, password) from an Authorization header; None if absent or not Basic; False if malformed."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(value.strip().encode("ascii"), validate=True)
    except (binascii.Error, UnicodeError, ValueError):
        return False
    try:
        decoded = raw.decode("utf-8")  # RFC 7617; Go, curl and browsers send UTF-8
    except UnicodeDecodeError:
        decoded = raw.decode("latin-1")  # python-requests encodes credentials as Latin-1
    user, sep, password = decoded.partition(":")
    if not sep:
        return False
    return user, password


class Guard:
    """WSGI middleware around the whole app: basic auth on /metrics, extra headers, the client behind TLS."""

    def __init__(self, app, holder: Holder, peers: Peers | None = None, registry=None):
        self.app, self.holder, self.peers = app, holder, peers
        self.failures = None
        if registry is not None:
            from prometheus_client import Counter, Gauge

            self.failures = Counter(
                "mlmon_scrape_auth_failures",
                "Requests to /metrics refused for basic auth (web config), by reason: missing (no Basic "
                "credentials), malformed, wrong (unknown user or wrong password).",
                ["reason"],
                registry=registry,
            )
            for reason in ("missing", "malformed", "wrong"):
                self.failures.labels(reason)
            Gauge(
                "mlmon_web_config_last_reload_successful",
                "1 if the last (re)load of the web config (--web.config.file) succeeded.",
                registry=registry,
            ).set_function(lambda: 1.0 if holder.last_reload_ok else 0.0)

    def __call__(self, environ, start_response):
        config = self.holder.current()
        headers = list(config.headers.items())

        def respond(status, response_headers, exc_info=None):
            present = {k.lower() for k, _ in response_headers}
            extra = [(k, v) for k, v in headers if k.lower() not in present]
            return start_response(status, list(response_headers) + extra, exc_info)

        if self.peers is not None:
            peer = self.peers.get(int(environ.get("REMOTE_PORT") or 0))
            if peer is None:  # reached waitress's loopback port directly: TLS (and client certs) bypassed
                return _error(respond, 403, "Forbidden", "connect through mlmon's TLS listener")
            environ["mlmon.client"] = peer
            environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = peer["address"], str(peer["port"])
            environ["wsgi.url_scheme"] = "https"
            environ["HTTPS"] = "on"
        if config.users and _protected(environ.get("PATH_INFO", "")):
            creds = _credentials(environ.get("HTTP_AUTHORIZATION"))
            reason = "missing" if creds is None else "malformed" if creds is False else None
            if reason is None and not self.holder.users.check(config.users, config._verified, *creds):  # type: ignore[misc]
                reason = "wrong"
            if reason is not None:
                if self.failures is not None:
                    self.failures.labels(reason).inc()
                return _error(
                    respond,
                    401,
                    "Unauthorized",
                    "/metrics needs basic auth (the user and password of the web config's basic_auth_users)",
                    [("WWW-Authenticate", f'Basic realm="{REALM}"')],
                )
        return self.app(environ, respond)


def _error(start_response, status: int, name: str, message: str, extra: list | None = None):
    import json

    body = json.dumps({"error": {"code": status, "name": name, "message": message}}).encode()
    start_response(
        f"{status} {name}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *(extra or [])],
    )
    return [body]
