"""Audit trail: one JSON line per event, always on, on its own stream (`CXR_AUDIT_LOG`).

Events: uploads (HTTP and DICOM), result, heatmap and film reads, reader verdicts (feedback), job
lists, deletes, retention purges, DICOM association requests (accepted or rejected), report
deliveries to the PACS, webhook delivery attempts (written by the worker), every request refused
for its key or its rate (401, 403, 429), and the model registry's decisions (approvals,
rejections, promotions, rollbacks). Each line holds the time (UTC, ISO 8601), the client (API
client, calling AE title, `retention` for the purge, the person who decided for the registry),
the action, the job id, the status answered and the caller's network address where
there is one. No line holds an API key or a patient identifier: clients are named, never their
keys, and DICOM lines carry only the job id and the instance's own UID.

The lines go to stdout or to a file, by setting, and never into the service's own log; logger
`cxr.audit` does not propagate. `export_lines` selects a period of a trail (the gateway's
`audit-export` command).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from shared.errors import CXRError

AUDIT_LOGGER = "cxr.audit"
AUDIT_STDOUT = "stdout"
audit_log = logging.getLogger(AUDIT_LOGGER)
# The network address of the caller being served (set per HTTP request or DICOM association);
# every entry made while serving it carries it.
caller_address: ContextVar[str | None] = ContextVar("cxr_audit_caller_address", default=None)
_destination: list[str] = []  # what `configure_audit` last set up


def configure_audit(destination: str = AUDIT_STDOUT) -> None:
    """Send the audit lines to `destination`: `stdout` or a file path (appended to)."""
    audit_log.setLevel(logging.INFO)
    audit_log.propagate = False  # its own stream, not the service log
    for old in [h for h in audit_log.handlers if getattr(h, "cxr_audit", False)]:
        audit_log.removeHandler(old)
        old.close()
    handler: logging.Handler
    if destination.strip().lower() == AUDIT_STDOUT:
        # The process's real stdout, also where Celery redirects `sys.stdout` into its log.
        handler = logging.StreamHandler(sys.__stdout__ or sys.stdout)
    else:
        Path(destination).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(destination, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    setattr(handler, "cxr_audit", True)  # noqa: B010 - marks the handlers this module owns
    audit_log.addHandler(handler)
    _destination[:] = [destination]


def ensure_audit(destination: str) -> None:
    """`configure_audit(destination)` unless that is already where the lines go."""
    if _destination != [destination]:
        configure_audit(destination)


@dataclass
class AuditEntry:
    client: str | None
    action: str
    job_id: str | None = None
    status: int = 200
    extra: dict[str, object] = field(default_factory=dict)
    address: str | None = field(default_factory=caller_address.get)

    def emit(self) -> None:
        if not _destination:  # always on: stdout unless a service chose otherwise
            configure_audit(AUDIT_STDOUT)
        line = {**self.extra, "time": datetime.now(UTC).isoformat(), "client": self.client,
                "action": self.action, "job_id": self.job_id, "status": self.status,
                "address": self.address}
        audit_log.info(json.dumps(line, sort_keys=True))


@contextmanager
def audited(client: str | None, action: str,
            job_id: str | None = None) -> Iterator[AuditEntry]:
    """Write the entry when the block ends, with the status of the error that ended it, if any."""
    entry = AuditEntry(client, action, job_id)
    try:
        yield entry
    except CXRError as exc:
        entry.status = exc.http_status
        entry.extra["code"] = exc.code
        raise
    except Exception:
        entry.status = 500
        raise
    finally:
        entry.emit()


def line_time(line: str) -> datetime | None:
    """The `time` of one audit line; None for a line that is not one."""
    try:
        entry = json.loads(line)
        moment = datetime.fromisoformat(entry["time"])
    except (ValueError, TypeError, KeyError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def export_lines(lines: Iterable[str], since: datetime | None = None,
                 until: datetime | None = None) -> Iterator[str]:
    """The audit lines written at or after `since` and before `until` (either open), as they are;
    lines that are not audit lines are left out."""
    for raw in lines:
        line = raw.rstrip("\n")
        moment = line_time(line)
        if moment is None:
            continue
        if (since is None or moment >= since) and (until is None or moment < until):
            yield line
