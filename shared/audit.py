"""Audit trail: one JSON line per upload (HTTP or DICOM), per result or heatmap read and per reader
verdict (feedback)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from shared.errors import CXRError

AUDIT_LOGGER = "cxr.audit"
audit_log = logging.getLogger(AUDIT_LOGGER)


def configure_audit_file(path: str | None) -> None:
    """Also append audit lines to `path` (CXR_AUDIT_LOG), replacing a file set up before."""
    audit_log.setLevel(logging.INFO)
    for handler in [h for h in audit_log.handlers if getattr(h, "cxr_audit_file", False)]:
        audit_log.removeHandler(handler)
        handler.close()
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.cxr_audit_file = True  # type: ignore[attr-defined]
    audit_log.addHandler(handler)


@dataclass
class AuditEntry:
    client: str
    action: str
    job_id: str | None = None
    status: int = 200
    extra: dict[str, object] = field(default_factory=dict)

    def emit(self) -> None:
        line = {"time": datetime.now(UTC).isoformat(), "client": self.client,
                "action": self.action, "job_id": self.job_id, "status": self.status, **self.extra}
        audit_log.info(json.dumps(line, sort_keys=True))


@contextmanager
def audited(client: str, action: str, job_id: str | None = None) -> Iterator[AuditEntry]:
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
