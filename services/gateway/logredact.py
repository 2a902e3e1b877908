"""Access-log lines without secrets: every query string value is redacted before it is logged.

Clients sometimes put an API key in the URL (`?api_key=...`); the gateway refuses it (keys go in
the Authorization header only), and this filter keeps it out of the log whatever the request.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

import uvicorn.config

REDACTED = "REDACTED"
_PLAIN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,31}")


def redact_query(path: str) -> str:
    """`/a?api_key=x&b=1` -> `/a?api_key=REDACTED&b=REDACTED`: every value hidden; a name kept
    only when it is short and plain (`name=value`), since a bare token may be a secret too."""
    base, question, query = path.partition("?")
    if not question:
        return path
    parts = []
    for pair in query.split("&"):
        name, equals, _value = pair.partition("=")
        plain = equals and _PLAIN_NAME.fullmatch(name)
        parts.append(f"{name}={REDACTED}" if plain else REDACTED)
    return f"{base}?{'&'.join(parts)}"


class RedactQueryFilter(logging.Filter):
    """For uvicorn's access logger: its record args are (client, method, path, version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's logging configuration with the filter on the access log's handler, which writes
    to stderr."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_query"] = {"()": RedactQueryFilter}
    config["handlers"]["access"]["filters"] = ["redact_query"]
    # stderr, like the service log: stdout is left to the audit trail (CXR_AUDIT_LOG=stdout).
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    return config
