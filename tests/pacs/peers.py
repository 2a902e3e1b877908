"""The DICOM peers of the tests: a storage SCP standing in for the hospital PACS, and the
sending modality (C-STORE / C-ECHO SCU), both pynetdicom in the test process."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    DigitalXRayImageStorageForPresentation,
    SecondaryCaptureImageStorage,
    Verification,
)

MODALITY_AE = "MODALITY"
PACS_AE = "HOSPITALPACS"


@dataclass
class ReceivingPacs:
    """A storage SCP collecting every instance it receives; can go down and come back."""

    port: int
    allowed_calling: list[str]
    received: list[Dataset] = field(default_factory=list)
    connections: int = 0
    store_status: int = 0x0000  # what every C-STORE is answered
    _server: object | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        ae = AE(ae_title=PACS_AE)
        ae.require_calling_aet = self.allowed_calling
        for sop_class in (Comprehensive3DSRStorage, SecondaryCaptureImageStorage):
            ae.add_supported_context(sop_class)
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store), (evt.EVT_CONN_OPEN, self._opened)])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _opened(self, event: evt.Event) -> None:
        with self._lock:
            self.connections += 1

    def _store(self, event: evt.Event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        with self._lock:
            self.received.append(dataset)
        return self.store_status

    def instances_for_study(self, study_uid: str) -> list[Dataset]:
        with self._lock:
            return [ds for ds in self.received if ds.StudyInstanceUID == study_uid]


def modality_ae(calling: str = MODALITY_AE) -> AE:
    ae = AE(ae_title=calling)
    ae.add_requested_context(DigitalXRayImageStorageForPresentation)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def c_store(port: int, dataset: Dataset, calling: str = MODALITY_AE) -> int:
    """Send one instance to the SCP under test; its C-STORE status (fails if no association)."""
    assoc = modality_ae(calling).associate("127.0.0.1", port, ae_title="CXR")
    assert assoc.is_established, "association with the SCP under test was not established"
    try:
        status = assoc.send_c_store(dataset)
        return int(status.Status)
    finally:
        assoc.release()
