"""API keys: parsed once into sha256 digests, checked in constant time, one client name per key."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from pathlib import Path

from services.gateway.errors import UnauthorizedError

log = logging.getLogger("cxr.gateway")
CLIENT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DEMO_CLIENT = "demo"


class ApiKeyConfigError(ValueError):
    """CXR_API_KEYS is malformed."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeyRing:
    """Which client a bearer key belongs to; plain keys are never stored."""

    def __init__(self, digests: dict[str, bytes]) -> None:
        self._digests = digests  # client -> sha256(key)

    @classmethod
    def parse(cls, spec: str) -> ApiKeyRing:
        """Parse "client:key,client2:key2"; refuse duplicates and blank parts."""
        digests: dict[str, bytes] = {}
        for entry in filter(None, (part.strip() for part in spec.split(","))):
            client, sep, key = entry.partition(":")
            client, key = client.strip(), key.strip()
            if not sep or not key or not CLIENT_NAME.match(client):
                raise ApiKeyConfigError(
                    "CXR_API_KEYS entries must look like 'client:key' (client: letters, digits, "
                    "'_', '.', '-'), separated by commas."
                )
            if client in digests:
                raise ApiKeyConfigError(f"CXR_API_KEYS names client {client!r} twice.")
            digests[client] = _digest(key)
        if len(set(digests.values())) != len(digests):
            raise ApiKeyConfigError("CXR_API_KEYS gives two clients the same key.")
        return cls(digests)

    def __len__(self) -> int:
        return len(self._digests)

    @property
    def clients(self) -> list[str]:
        return sorted(self._digests)

    def authenticate(self, authorization: str | None) -> str:
        """The client named by an `Authorization: Bearer <key>` header, else UnauthorizedError."""
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise UnauthorizedError()
        presented = _digest(key)
        match = None
        for client, digest in self._digests.items():  # no early exit: timing says nothing
            if hmac.compare_digest(presented, digest):
                match = client
        if match is None:
            raise UnauthorizedError("The API key is not valid.")
        return match


def load_or_create_demo_key(path: Path) -> str:
    """A development key kept in `path` (created 0600 on first use) so `make up` can show it."""
    if path.exists():
        existing = path.read_text(encoding="utf-8").strip()
        if existing:
            return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    log.warning("no CXR_API_KEYS set: generated a development key for client %r in %s",
                DEMO_CLIENT, path)
    return key
