"""The C-STORE SCP: accepts DX/CR storage and C-ECHO from allowed calling AE titles.

Status codes answered to the sender:
- 0x0000 Success: queued as a job, already received (same SOP Instance UID), or screened out
  (not a frontal chest image: the PACS delivered correctly, so it must not resend; the reason is
  logged and audited);
- 0xC000 "Cannot understand": the instance is not a usable image (the typed image error is logged);
- 0xA700 "Out of resources": storage or the queue is down for now; the sender may try again later.
"""

from __future__ import annotations

import logging

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from services.pacs.settings import PacsSettings
from shared.dicom_intake.receive import DicomIntake
from shared.dicom_intake.screening import ACCEPTED_SOP_CLASSES
from shared.errors import CXRError, ImageError

log = logging.getLogger("cxr.pacs")

SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000


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
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            received = intake.receive(dataset, client=calling, route="c-store")
        except ImageError as exc:
            log.warning("C-STORE from %s refused: %s (%s)", calling, exc.code, exc.message)
            return CANNOT_UNDERSTAND
        except CXRError as exc:
            log.error("C-STORE from %s not stored: %s (%s)", calling, exc.code, exc.message)
            return OUT_OF_RESOURCES if exc.transient else CANNOT_UNDERSTAND
        except Exception:
            log.exception("C-STORE from %s failed", calling)
            return OUT_OF_RESOURCES
        # The job id, not the SOP Instance UID: the audit line holds the UID, the log need not.
        log.info("C-STORE from %s: %s job %s", calling, received.disposition, received.job_id)
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
