"""C-STORE SCU: send report instances to the destination PACS, telling transient from permanent.

Permanent (not worth retrying, an operator must act): the association is rejected permanently
(A-ASSOCIATE-RJ result 1, e.g. our calling AE title is unknown there), the destination accepts none
of our presentation contexts, or a C-STORE answers a failure status (0xA7xx, 0xA9xx, 0xCxxx and
other non-warning failures). Transient: no connection, a transient rejection, an abort, no answer.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

REJECTED_PERMANENT = 0x01
WARNING_STATUSES = (0x0001, 0xB000, 0xB006, 0xB007)


class SendError(Exception):
    permanent = False


class PermanentSendError(SendError):
    permanent = True


class TransientSendError(SendError):
    pass


def send_instances(instances: Sequence[Dataset], *, calling_ae_title: str,
                   destination: tuple[str, str, int], timeout_s: float) -> None:
    """C-STORE every instance in one association; raises a `SendError` on the first problem."""
    called, host, port = destination
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop_class in sorted({str(instance.SOPClassUID) for instance in instances}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(host, port, ae_title=called)
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        detail = f"{primitive.result_str}, {primitive.reason_str}" if primitive else "rejected"
        error = (PermanentSendError if primitive and primitive.result == REJECTED_PERMANENT
                 else TransientSendError)
        raise error(f"association rejected by {called}@{host}:{port}: {detail}")
    if not assoc.is_established:
        if assoc.is_aborted and not assoc.accepted_contexts and assoc.rejected_contexts:
            raise PermanentSendError(f"{called} accepts none of our SOP classes")
        raise TransientSendError(f"no association with {called}@{host}:{port}")
    try:
        for instance in instances:
            _store(assoc, instance, called)
    finally:
        if assoc.is_established:
            assoc.release()


def _store(assoc, instance: Dataset, called: str) -> None:
    try:
        status = assoc.send_c_store(instance)
    except ValueError as exc:  # no accepted presentation context for this SOP class
        raise PermanentSendError(f"{called} cannot store {instance.SOPClassUID}: {exc}") from exc
    except RuntimeError as exc:  # association lost underneath us
        raise TransientSendError(f"association with {called} lost: {exc}") from exc
    code = int(status.Status) if "Status" in status else None
    if code is None:
        raise TransientSendError(f"no C-STORE answer from {called} (timeout or abort)")
    if code != 0x0000 and code not in WARNING_STATUSES:
        raise PermanentSendError(f"{called} refused {instance.SOPInstanceUID}: "
                                 f"C-STORE status 0x{code:04X}")
