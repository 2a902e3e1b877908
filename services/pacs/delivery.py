"""Send one job's report to the PACS and record the state in `extra.pacs_report`.

States: `pending` (with the last transient error while retries go on), `sent` (with the SR and
Secondary Capture SOP Instance UIDs; for a refused film, the SR notice's only), `failed` (with a
`reason`: permanent rejection, retries used up, or a report that cannot be built from the job),
`skipped` (no destination configured), and `not_sent` (with `reason` `sender_not_allowed`: a
STOW-RS job of an API client not in `CXR_PACS_STOW_REPORT_CLIENTS`). Final states are also
counted in Redis (`shared.report_delivery`) for metrics and alerts, and each is one audit line
(action `pacs_delivery`: the job, the state, the destination, whether it was re-identified).

The objects carry the original patient and study identifiers when the job's re-identification key
is readable at send time (`shared.reidentification`); without one (keys not configured, or the key
expired or purged) they go out with the stored copy's, and the state, log and audit line say so
(`reidentified: false`), naming no identifier.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from services.pacs.report import build_refusal_notice, build_report
from services.pacs.sender import send_instances
from services.pacs.settings import PacsSettings
from shared.audit import AuditEntry, ensure_audit
from shared.contract import NOT_A_CHEST_RADIOGRAPH_CODE
from shared.dicom_intake.receive import STOW_RS, intake_route
from shared.heatmap import heatmap_png
from shared.imaging import DecodeLimits
from shared.jobs.queue import REPORT_STATE_KEY as STATE_KEY
from shared.jobs.records import JobRecord, JobStatus
from shared.jobs.store import JobStore
from shared.redis_clients import redis_client
from shared.reidentification import ReidentificationKeys
from shared.report_delivery import FINAL_STATES, note_final, note_pending
from shared.schemas import utc_now
from shared.storage import Storage, get_storage

log = logging.getLogger("cxr.pacs")
SENDER_NOT_ALLOWED = "sender_not_allowed"
DELIVERY_ACTION = "pacs_delivery"  # the audit line of each delivery's final state
# The status of that line, as for the other audit lines: what an HTTP answer would say.
DELIVERY_STATUS = {"sent": 200, "skipped": 204, "not_sent": 403, "failed": 502}


@dataclass
class ReportDeps:
    settings: PacsSettings
    storage: Storage
    jobs: JobStore
    redis: redis.Redis
    # The original identifiers of each job, where re-identification keys are configured.
    reid: ReidentificationKeys | None = None

    @classmethod
    def from_settings(cls, settings: PacsSettings) -> ReportDeps:
        storage = get_storage(settings)
        client = redis_client(settings.redis_url)  # survives a Redis restart
        return cls(settings, storage, JobStore(client, storage), client,
                   ReidentificationKeys.from_settings(settings))

    def identifiers(self, job_id: str) -> dict[str, str] | None:
        """The job's original identifiers; None without keys, or when its key expired."""
        return self.reid.lookup(job_id) if self.reid is not None else None


def record_state(deps: ReportDeps, job_id: str, state: str, attempts: int, **details) -> None:
    deps.jobs.set_extra(job_id, STATE_KEY, {"state": state, "attempts": attempts,
                                            "updated_at": utc_now().isoformat(), **details})
    if state in FINAL_STATES:
        note_final(deps.redis, job_id, state)
        audit_delivery(deps, job_id, state, details)
    else:
        note_pending(deps.redis, job_id)


def audit_delivery(deps: ReportDeps, job_id: str, state: str, details: dict) -> None:
    """One audit line for a delivery's final state (client: our own AE title, the sender)."""
    ensure_audit(deps.settings.audit_log)
    extra: dict[str, object] = {"state": state,
                                "destination": deps.settings.pacs_destination or None}
    for key in ("reidentified", "reason", "permanent", "notice"):
        if key in details:
            extra[key] = details[key]
    AuditEntry(deps.settings.pacs_ae_title, DELIVERY_ACTION, job_id,
               status=DELIVERY_STATUS.get(state, 200), extra=extra).emit()


def _log_sent(what: str, job_id: str, destination: str, reidentified: bool) -> None:
    if reidentified:
        log.info("%s for job %s sent to %s with the original identifiers", what, job_id,
                 destination)
    else:
        log.warning("%s for job %s sent to %s without the original patient identifiers: no "
                    "re-identification key (not configured, expired or purged)", what, job_id,
                    destination)


def deliver_report(job_id: str, deps: ReportDeps, attempt: int) -> str:
    """Build and send the SR and Secondary Capture; raises `SendError` (state left to the caller).

    Returns the state reached without an error: `sent`, `skipped`, `not_sent`, or
    `not_applicable` for a job that is not a succeeded DICOM job (or was already sent).
    """
    record = deps.jobs.get(job_id)
    if record is not None and record.source == "dicom" and is_refused(record):
        return deliver_refusal_notice(record, deps, attempt)
    if record is None or record.source != "dicom" or record.status != JobStatus.SUCCEEDED:
        log.warning("no report for job %s: not a succeeded DICOM job", job_id)
        return "not_applicable"
    if record.extra.get(STATE_KEY, {}).get("state") == "sent":
        return "not_applicable"
    if not sender_may_write(record, deps.settings):
        return refuse_sender(record, deps, attempt)
    destination = deps.settings.destination
    if destination is None:
        record_state(deps, job_id, "skipped", attempt, reason="CXR_PACS_DESTINATION is not set")
        return "skipped"
    upload = deps.storage.get(record.upload_key)
    heatmap = heatmap_png(deps.storage, record, DecodeLimits.from_settings(deps.settings),
                          deps.settings.heatmap_max_side, upload=upload)
    identifiers = deps.identifiers(job_id)
    report = build_report(record, upload, heatmap, deps.settings.pacs_manufacturer, identifiers)
    send_instances([report.structured_report, report.secondary_capture],
                   calling_ae_title=deps.settings.pacs_ae_title, destination=destination,
                   timeout_s=deps.settings.pacs_network_timeout_s)
    record_state(deps, job_id, "sent", attempt,
                 destination=deps.settings.pacs_destination,
                 sr_sop_instance_uid=str(report.structured_report.SOPInstanceUID),
                 sc_sop_instance_uid=str(report.secondary_capture.SOPInstanceUID),
                 reidentified=identifiers is not None)
    _log_sent("report", job_id, deps.settings.pacs_destination, identifiers is not None)
    return "sent"


def sender_may_write(record: JobRecord, settings: PacsSettings) -> bool:
    """Whether the job's results may be written into the PACS.

    A C-STORE job came from the PACS or a modality the node accepts (its calling AE title is
    checked at the association); a STOW-RS job only from an API client listed in
    `CXR_PACS_STOW_REPORT_CLIENTS`. A DICOM job whose route cannot be told is not sent.
    """
    route = intake_route(record)
    if route == STOW_RS:
        return record.client_id in settings.stow_report_clients
    return route is not None


def refuse_sender(record: JobRecord, deps: ReportDeps, attempt: int) -> str:
    """End the delivery as `not_sent`: the job's sender may not write into the PACS."""
    route = intake_route(record) or "unknown"
    record_state(deps, record.job_id, "not_sent", attempt, reason=SENDER_NOT_ALLOWED,
                 route=route)
    log.warning("report for job %s not sent: its %s sender may not write into the PACS",
                record.job_id, route)
    return "not_sent"


def is_refused(record: JobRecord) -> bool:
    return (record.status == JobStatus.FAILED and record.failure is not None
            and record.failure.code == NOT_A_CHEST_RADIOGRAPH_CODE)


def deliver_refusal_notice(record: JobRecord, deps: ReportDeps, attempt: int) -> str:
    """Send the SR notice of a refused film (no Secondary Capture: there is no heatmap)."""
    if record.extra.get(STATE_KEY, {}).get("state") == "sent":
        return "not_applicable"
    if not sender_may_write(record, deps.settings):
        return refuse_sender(record, deps, attempt)
    destination = deps.settings.destination
    if destination is None:
        record_state(deps, record.job_id, "skipped", attempt,
                     reason="CXR_PACS_DESTINATION is not set")
        return "skipped"
    identifiers = deps.identifiers(record.job_id)
    notice = build_refusal_notice(record, deps.storage.get(record.upload_key),
                                  deps.settings.pacs_manufacturer, identifiers)
    send_instances([notice], calling_ae_title=deps.settings.pacs_ae_title,
                   destination=destination, timeout_s=deps.settings.pacs_network_timeout_s)
    record_state(deps, record.job_id, "sent", attempt, destination=deps.settings.pacs_destination,
                 sr_sop_instance_uid=str(notice.SOPInstanceUID), notice="not_analysed",
                 reidentified=identifiers is not None)
    _log_sent("refusal notice", record.job_id, deps.settings.pacs_destination,
              identifiers is not None)
    return "sent"
