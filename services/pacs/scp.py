"""The C-STORE SCP: accepts DX/CR storage and C-ECHO from allowed calling AE titles.

The received bytes are checked against the DICOM limits (nesting, element count and size,
decoding memory: `shared.imaging.dicom_scan`) before pydicom parses them.

Status codes answered to the sender:
- 0x0000 Success: queued as a job, already received from this sender (same SOP Instance UID and
  same image), or screened out (not a frontal chest image: the PACS delivered correctly, so it
  must not resend; the reason is logged and audited);
- 0x0111 "Duplicate SOP Instance": this sender stored a different image under this SOP Instance
  UID before; refused, the earlier image keeps the job;
- 0xC000 "Cannot understand": the instance is malformed or not a usable image (the typed image
  error is logged); resending the same bytes cannot succeed;
- 0xA700 "Out of resources": storage or the queue is down for now; the sender may try again later;
- 0x0110 "Processing failure": an unexpected error (logged with its traceback).
"""

from __future__ import annotations

import logging

import redis
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from services.pacs.settings import PacsSettings
from shared.audit import caller_address
from shared.dicom_intake.receive import DicomIntake, Disposition, read_instance
from shared.dicom_intake.screening import ACCEPTED_SOP_CLASSES
from shared.errors import CXRError, ImageError

log = logging.getLogger("cxr.pacs")

SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000
PROCESSING_FAILURE, DUPLICATE_SOP_INSTANCE = 0x0110, 0x0111


def build_ae(settings: PacsSettings) -> AE:
    ae = AE(ae_title=settings.pacs_ae_title)
    # An empty list means "accept any"; settings refuse that in production.
    ae.require_calling_aet = settings.allowed_calling_ae_titles
    ae.network_timeout = settings.pacs_network_timeout_s
    for sop_class in ACCEPTED_SOP_CLASSES:
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    return ae


def store_handler(intake: DicomIntake):
    def handle_store(event: evt.Event) -> int:
        calling = event.assoc.requestor.ae_title
        caller_address.set(event.assoc.requestor.address or None)  # for the audit line
        try:
            # The bytes as sent, checked before pydicom parses them (never `event.dataset`).
            dataset = read_instance(event.encoded_dataset(include_meta=True), intake.limits)
            received = intake.receive(dataset, client=calling, route="c-store")
        except ImageError as exc:
            log.warning("C-STORE from %s refused: %s (%s)", calling, exc.code, exc.message)
            return CANNOT_UNDERSTAND
        except CXRError as exc:
            log.error("C-STORE from %s not stored: %s (%s)", calling, exc.code, exc.message)
            return OUT_OF_RESOURCES if exc.transient else CANNOT_UNDERSTAND
        except (redis.RedisError, OSError):
            log.exception("C-STORE from %s not stored: storage or Redis failed", calling)
            return OUT_OF_RESOURCES
        except Exception:
            log.exception("C-STORE from %s failed", calling)
            return PROCESSING_FAILURE
        # The job id, not the SOP Instance UID: the audit line holds the UID, the log need not.
        log.info("C-STORE from %s: %s job %s", calling, received.disposition, received.job_id)
        if received.disposition == Disposition.CONFLICT:
            return DUPLICATE_SOP_INSTANCE
        return SUCCESS

    return handle_store


def start_scp(settings: PacsSettings, intake: DicomIntake, *,
              block: bool = False) -> ThreadedAssociationServer | None:
    """Listen on CXR_PACS_HOST:CXR_PACS_PORT; with block=True, serve until interrupted."""
    ae = build_ae(settings)
    handlers = [(evt.EVT_C_STORE, store_handler(intake)),
                (evt.EVT_C_ECHO, lambda event: SUCCESS)]
    log.info("DICOM SCP %s listening on %s:%s", settings.pacs_ae_title, settings.pacs_host,
             settings.pacs_port)
    return ae.start_server((settings.pacs_host, settings.pacs_port), block=block,
                           evt_handlers=handlers)
