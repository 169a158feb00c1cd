"""Bearer tokens for the API: who may write which model's events, read its state, or administer it.

Tokens come from the config (``auth.tokens``), each from a file, an environment variable, or given as the
SHA-256 of the token (so that the config file itself holds no secret). Only the SHA-256 digest of a token
is kept in memory; a presented token is hashed and compared with every known digest in constant time
(``hmac.compare_digest``, no early exit), so neither the comparison nor the lookup leaks how close a guess
was. A token's value never reaches a log line: the audit log names the token (``name``), never its value.

Actions (docs/security.md):

- ``write``: POST /api/v1/predictions, /api/v1/labels, /api/v1/resources, for the token's models;
- ``read``: GET /api/v1/models and /api/v1/models/{name} (the list shows the token's models only);
- ``admin``: PUT /api/v1/models/{name}/reference and POST /api/v1/models/{name}/reset.

``/metrics`` is protected by the web config (basic auth and TLS, exporter/security/webconfig.py), the way Prometheus
scrapes; ``/``, ``/api/v1/openapi.json``, ``/healthz`` and ``/readyz`` are open.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

ACTIONS = ("write", "read", "admin")
ALL_MODELS = "*"


@dataclass(frozen=True)
class Token:
    name: str
    digest: bytes  # sha256 of the token's value
    models: frozenset[str]  # model names, or {"*"}
    actions: frozenset[str]

    def allows(self, action: str, model: str) -> bool:
        return action in self.actions and (ALL_MODELS in self.models or model in self.models)


def digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


class Authenticator:
    """The tokens of the config; ``enabled`` False means every request is allowed (local use)."""

    def __init__(self, tokens: tuple[Token, ...], enabled: bool):
        self.tokens = tokens
        self.enabled = enabled

    def identify(self, header: str | None) -> tuple[Token | None, str]:
        """The token of an ``Authorization: Bearer ...`` header, or (None, reason) for 401."""
        if not header:
            return None, "missing_token"
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            return None, "invalid_token"
        presented = digest(value)
        found = None
        for token in self.tokens:  # every digest is compared: the time does not depend on which matched
            if hmac.compare_digest(token.digest, presented):
                found = token
        return (found, "") if found is not None else (None, "invalid_token")
