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

Every association request is one audit line (action `dicom_association`: the calling AE title,
the caller's address, accepted 200 or rejected: 403 for a calling AE title not allowed, 503 for
the association limit). Each association request, refused connection and C-STORE answer is
also counted in `services.pacs.metrics`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections import Counter
from typing import Any

import redis
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from services.pacs import metrics
from services.pacs.settings import PacsSettings
from shared.audit import AuditEntry, caller_address
from shared.dicom_intake.receive import C_STORE, DicomIntake, Disposition, read_instance
from shared.dicom_intake.screening import ACCEPTED_SOP_CLASSES
from shared.dicom_intake.status import (
    CANNOT_UNDERSTAND,
    DUPLICATE_SOP_INSTANCE,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    SUCCESS,
)
from shared.errors import CXRError, ImageError

log = logging.getLogger("cxr.pacs")

# After the ACSE timeout, how long pynetdicom gets to close a connection without an association
# itself before the socket is shut down under it.
ACSE_GRACE_S = 1.0


def build_ae(settings: PacsSettings) -> AE:
    ae = AE(ae_title=settings.pacs_ae_title)
    # An empty list means "accept any"; settings refuse that in production.
    ae.require_calling_aet = settings.allowed_calling_ae_titles
    ae.network_timeout = settings.pacs_network_timeout_s
    ae.acse_timeout = settings.pacs_scp_acse_timeout_s
    ae.dimse_timeout = settings.pacs_scp_dimse_timeout_s
    ae.maximum_associations = settings.pacs_scp_max_associations
    for sop_class in ACCEPTED_SOP_CLASSES:
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    return ae


ASSOCIATION_ACTION = "dicom_association"


def association_handler(settings: PacsSettings, accepted: bool):
    """The audit line of an association request, accepted or rejected."""
    allowed = settings.allowed_calling_ae_titles

    def handle(event: evt.Event) -> None:
        requestor = event.assoc.requestor
        calling = (requestor.ae_title or "").strip() or None
        extra: dict[str, object] = {"accepted": accepted}
        status = 200
        if not accepted:
            not_allowed = bool(allowed) and calling not in allowed
            extra["reason"] = ("calling_ae_title_not_allowed" if not_allowed
                               else "association_limit")
            status = 403 if not_allowed else 503
        metrics.count_association(accepted, str(extra.get("reason", "")))
        AuditEntry(calling, ASSOCIATION_ACTION, status=status, extra=extra,
                   address=requestor.address or None).emit()

    return handle


# The `status` label of each status code the store handler answers.
STATUS_NAMES = {SUCCESS: "success", DUPLICATE_SOP_INSTANCE: "duplicate_sop_instance",
                CANNOT_UNDERSTAND: "cannot_understand", OUT_OF_RESOURCES: "out_of_resources",
                PROCESSING_FAILURE: "processing_failure"}


def store_handler(intake: DicomIntake):
    def handle_store(event: evt.Event) -> int:
        status, reason, received_bytes = store_instance(event)
        metrics.count_c_store(STATUS_NAMES[status], reason, received_bytes)
        return status

    def store_instance(event: evt.Event) -> tuple[int, str, int]:
        """(status answered, reason for the metrics, bytes received) of one C-STORE request."""
        calling = event.assoc.requestor.ae_title
        caller_address.set(event.assoc.requestor.address or None)  # for the audit line
        received_bytes = 0
        try:
            # The bytes as sent, checked before pydicom parses them (never `event.dataset`).
            encoded = event.encoded_dataset(include_meta=True)
            received_bytes = len(encoded)
            dataset = read_instance(encoded, intake.limits)
            received = intake.receive(dataset, client=calling, route=C_STORE)
        except ImageError as exc:
            log.warning("C-STORE from %s refused: %s (%s)", calling, exc.code, exc.message)
            return CANNOT_UNDERSTAND, exc.code, received_bytes
        except CXRError as exc:
            log.error("C-STORE from %s not stored: %s (%s)", calling, exc.code, exc.message)
            return (OUT_OF_RESOURCES if exc.transient else CANNOT_UNDERSTAND), exc.code, \
                received_bytes
        except (redis.RedisError, OSError):
            log.exception("C-STORE from %s not stored: storage or Redis failed", calling)
            return OUT_OF_RESOURCES, "storage_unavailable", received_bytes
        except Exception:
            log.exception("C-STORE from %s failed", calling)
            return PROCESSING_FAILURE, "", received_bytes
        # The job id, not the SOP Instance UID: the audit line holds the UID, the log need not.
        log.info("C-STORE from %s: %s job %s", calling, received.disposition, received.job_id)
        if received.disposition == Disposition.CONFLICT:
            return DUPLICATE_SOP_INSTANCE, received.reason or "", received_bytes
        return SUCCESS, str(received.disposition), received_bytes

    return handle_store


class _WholeAssociationHandler(RequestHandler):
    """pynetdicom's handler, returning only once the association it started has ended, so that
    its connection stays counted against its address for as long as it is open.

    pynetdicom reads a PDU with blocking `recv` calls on a socket without a timeout: a peer that
    sends the first bytes of a PDU and then nothing holds the connection (and its association
    slot) forever, its ACSE timeout notwithstanding. So each read gets the network timeout, and
    a connection with no association once the ACSE timeout has passed is shut down here, which
    ends a read still waiting on a trickling peer.
    """

    association: Association | None = None

    def _create_association(self) -> Association:
        self.association = super()._create_association()
        return self.association

    def handle(self) -> None:
        ae = self.server.ae
        self.request.settimeout(ae.network_timeout)
        super().handle()
        association = self.association
        if association is None:
            return
        association.join((ae.acse_timeout or 0) + ACSE_GRACE_S)
        if association.is_alive() and not association.is_established:
            with contextlib.suppress(OSError):
                self.request.shutdown(socket.SHUT_RDWR)
        association.join()


class BoundedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server with a limit on the connections one sender
    address holds open at once; a connection over it is closed before anything is read."""

    daemon_threads = True
    block_on_close = False  # stopping never waits for idle peers: their timeouts end them

    def __init__(self, *args: Any, max_per_address: int, **kwargs: Any) -> None:
        self.max_per_address = max_per_address
        self._open: Counter[str] = Counter()
        self._open_lock = threading.Lock()
        super().__init__(*args, request_handler=_WholeAssociationHandler, **kwargs)

    def open_connections(self, address: str) -> int:
        with self._open_lock:
            return self._open[address]

    def verify_request(self, request: Any, client_address: Any) -> bool:
        address = str(client_address[0])
        with self._open_lock:
            if self._open[address] >= self.max_per_address:
                refused = True
            else:
                self._open[address] += 1
                refused = False
        if refused:
            metrics.CONNECTIONS_CLOSED.inc()
            log.warning("DICOM connection from %s closed: it already holds %d open connections "
                        "(CXR_PACS_SCP_MAX_CONNECTIONS_PER_ADDRESS)", address, self.max_per_address)
        return not refused

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            address = str(client_address[0])
            with self._open_lock:
                self._open[address] -= 1
                if self._open[address] <= 0:
                    del self._open[address]


def start_scp(settings: PacsSettings, intake: DicomIntake) -> BoundedAssociationServer:
    """Listen on CXR_PACS_HOST:CXR_PACS_PORT in a thread; `shutdown()` the server to stop."""
    ae = build_ae(settings)
    handlers = [(evt.EVT_C_STORE, store_handler(intake)),
                (evt.EVT_C_ECHO, lambda event: SUCCESS),
                (evt.EVT_ACCEPTED, association_handler(settings, accepted=True)),
                (evt.EVT_REJECTED, association_handler(settings, accepted=False))]
    server = ae.make_server((settings.pacs_host, settings.pacs_port), evt_handlers=handlers,
                            server_class=BoundedAssociationServer,
                            max_per_address=settings.pacs_scp_max_connections_per_address)
    # As `AE.start_server` does: the AE knows its servers (`server.shutdown()` removes it).
    ae._servers.append(server)  # noqa: SLF001 - pynetdicom has no public way to add one
    metrics.watch_open_associations(lambda: len(server.active_associations))
    log.info("DICOM SCP %s listening on %s:%s", settings.pacs_ae_title, settings.pacs_host,
             settings.pacs_port)
    threading.Thread(target=server.serve_forever, name="dicom-scp", daemon=True).start()
    return server
