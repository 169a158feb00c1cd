"""A small client of Prometheus's HTTP API (instant and range queries) whose failures are sentences a person can
act on: where Prometheus was looked for, what went wrong, and which flag changes it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import requests

from exporter.config import parse_duration


class ReportError(Exception):
    """A problem the report cannot get past; ``str()`` is the message shown to the user."""


@dataclass(frozen=True)
class Connection:
    url: str = "http://127.0.0.1:9090"
    username: str | None = None
    password_file: str | None = None
    bearer_token_file: str | None = None
    ca_file: str | None = None
    insecure_skip_verify: bool = False
    timeout: float = 60.0


@dataclass
class Series:
    """One series of a query's answer: its labels, and its points as two arrays (unix seconds, values)."""

    labels: dict[str, str]
    t: np.ndarray
    v: np.ndarray

    @property
    def last(self) -> float:
        return float(self.v[-1]) if len(self.v) else math.nan


@dataclass
class Prometheus:
    conn: Connection
    queries: int = 0
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.base = self.conn.url.rstrip("/")
        s = self.session
        if self.conn.username is not None:
            s.auth = (self.conn.username, _read_secret(self.conn.password_file, "--prometheus.password-file"))
        if self.conn.bearer_token_file:
            token = _read_secret(self.conn.bearer_token_file, "--prometheus.bearer-token-file")
            s.headers["Authorization"] = f"Bearer {token}"
        if self.conn.ca_file:
            s.verify = self.conn.ca_file
        elif self.conn.insecure_skip_verify:
            s.verify = False
        s.headers["User-Agent"] = "mlmon-report"

    # --- the API -------------------------------------------------------------------------------------------
    def instant(self, expr: str, at: float) -> list[Series]:
        data = self._get("/api/v1/query", {"query": expr, "time": f"{at:.3f}"}, expr)
        if data["resultType"] == "scalar":
            t, v = data["result"]
            return [Series({}, np.array([float(t)]), np.array([float(v)]))]
        return [
            Series(r["metric"], np.array([float(r["value"][0])]), np.array([float(r["value"][1])]))
            for r in data["result"]
        ]

    def range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        data = self._get(
            "/api/v1/query_range", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step}, expr
        )
        out = []
        for r in data["result"]:
            values = r["values"]
            out.append(
                Series(
                    r["metric"],
                    np.array([float(t) for t, _ in values]),
                    np.array([float(v) for _, v in values]),
                )
            )
        return out

    def scrape_interval(self, default: float) -> float:
        """The shortest scrape interval among the targets that serve mlmon series (the targets API), or
        ``default`` when Prometheus does not say."""
        try:
            body = self._get_json("/api/v1/targets", {"state": "active"}, "the targets list")
        except ReportError:
            return default
        intervals = []
        for t in body.get("data", {}).get("activeTargets", []):
            try:
                intervals.append(parse_duration(t.get("scrapeInterval", "")))
            except ValueError:
                continue
        return float(min(intervals)) if intervals else default

    # --- transport and its errors --------------------------------------------------------------------------
    def _get(self, path: str, params: dict, what: str) -> dict:
        body = self._get_json(path, params, what)
        if body.get("status") != "success":
            raise ReportError(f"Prometheus at {self.base} rejected the query {what!r}: {body.get('error', body)}")
        return body["data"]

    def _get_json(self, path: str, params: dict, what: str) -> dict:
        self.queries += 1
        hint = "start it, or point --prometheus.url (env MLMON_PROMETHEUS_URL) at it"
        try:
            r = self.session.get(self.base + path, params=params, timeout=self.conn.timeout)
        except requests.exceptions.SSLError as exc:
            raise ReportError(
                f"TLS with Prometheus at {self.base} failed ({_reason(exc)}); give its CA with --prometheus.ca-file"
            ) from None
        except requests.exceptions.ConnectionError as exc:
            raise ReportError(f"cannot reach Prometheus at {self.base} ({_reason(exc)}): {hint}") from None
        except requests.exceptions.Timeout:
            raise ReportError(
                f"Prometheus at {self.base} did not answer within {self.conn.timeout:g} s (query {what!r}); "
                "a shorter --period, a larger --step or a larger --prometheus.timeout helps"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise ReportError(f"cannot query Prometheus at {self.base}: {_reason(exc)}") from None
        if r.status_code in (401, 403):
            raise ReportError(
                f"Prometheus at {self.base} refused the request ({r.status_code} {r.reason}): give "
                "--prometheus.username with --prometheus.password-file, or --prometheus.bearer-token-file"
            )
        try:
            body = r.json()
        except ValueError:
            kind = r.headers.get("Content-Type", "no content type")
            raise ReportError(
                f"{self.base}{path} answered {r.status_code} with {kind}, not Prometheus's JSON API: "
                "is --prometheus.url the address of Prometheus (not Grafana or the exporter)?"
            ) from None
        if not isinstance(body, dict) or "status" not in body:
            raise ReportError(f"{self.base}{path} did not answer like Prometheus's HTTP API")
        if r.status_code >= 500 and body.get("status") != "success":
            raise ReportError(f"Prometheus at {self.base} failed on the query {what!r}: {body.get('error', '')}")
        return body


def _reason(exc: Exception) -> str:
    """The innermost reason of a requests error: "Connection refused" rather than three nested reprs."""
    text = str(exc)
    for marker in ("] ", "Errno"):
        if marker in text:
            tail = text.rsplit(marker, 1)[1]
            return tail.strip(" ')\"").split("'))")[0] or text
    return text


def _read_secret(path: str | None, flag: str) -> str:
    if not path:
        raise ReportError(f"{flag} is needed with the options given")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as exc:
        raise ReportError(f"{flag}: cannot read {path}: {exc.strerror}") from None
