"""`python -m services.pacs`: run the DICOM C-STORE SCP until stopped (SIGTERM/SIGINT), with its
`/metrics` on `CXR_PACS_METRICS_ADDRESS:CXR_PACS_METRICS_PORT` when that port is set."""

from __future__ import annotations

import logging
import signal
import threading

from services.pacs.scp import start_scp
from services.pacs.settings import get_settings
from shared import pool_metrics
from shared.audit import configure_audit
from shared.dicom_intake.receive import DicomIntake
from shared.imaging import DecodeLimits
from shared.jobs.queue import JobQueue
from shared.jobs.store import JobStore
from shared.redis_clients import redis_client
from shared.reidentification import ReidentificationKeys
from shared.storage import get_storage


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_settings()
    configure_audit(settings.audit_log)
    storage = get_storage(settings)
    intake = DicomIntake(storage=storage,
                         jobs=JobStore(redis_client(settings.redis_url), storage),
                         queue=JobQueue(settings), limits=DecodeLimits.from_settings(settings),
                         keep_identifiers=settings.pacs_keep_identifiers,
                         site_of=settings.site_of_ae_title,
                         reid=ReidentificationKeys.from_settings(settings))
    server = start_scp(settings, intake)
    if settings.pacs_metrics_port is not None:
        pool_metrics.serve_metrics(settings.pacs_metrics_port, settings.pacs_metrics_address,
                                   pool=False)
        logging.getLogger("cxr.pacs").info("metrics on %s:%s", settings.pacs_metrics_address,
                                           settings.pacs_metrics_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.shutdown()


if __name__ == "__main__":
    main()
