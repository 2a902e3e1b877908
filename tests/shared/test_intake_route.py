"""A DICOM job says how its instance came (`extra.dicom.route`), which decides whether its results
may be written into the PACS (`services.pacs.delivery.sender_may_write`); a job recorded before
the route was kept is told by its id."""

from __future__ import annotations

import numpy as np
import redis

from services.pacs.delivery import sender_may_write
from services.pacs.settings import PacsSettings
from shared.dicom_intake.receive import DicomIntake, intake_route
from shared.imaging import DecodeLimits
from shared.jobs.store import JobStore
from shared.storage import LocalStorage
from tests.shared.test_job_sites import Queue
from tests.shared.xray_files import xray_dataset


def test_the_route_is_recorded_and_told_from_the_id_of_an_older_job(redis_url, tmp_path):
    storage = LocalStorage(tmp_path)
    jobs = JobStore(redis.Redis.from_url(redis_url), storage)
    intake = DicomIntake(storage=storage, jobs=jobs, queue=Queue(), limits=DecodeLimits())
    pixels = (np.arange(256 * 256).reshape(256, 256) % 4096).astype(np.uint16)
    settings = PacsSettings(pacs_stow_report_clients=" alice , ward-app ")
    for client, route, allowed in (("alice", "stow-rs", True), ("bob", "stow-rs", False),
                                   ("WARD_DX", "c-store", True)):
        record = jobs.get(intake.receive(xray_dataset(pixels), client=client,
                                         route=route).job_id)
        assert record.extra["dicom"]["route"] == route
        older = record.model_copy(update={"extra": {"dicom": {
            key: value for key, value in record.extra["dicom"].items() if key != "route"}}})
        assert intake_route(older) == route
        assert sender_may_write(record, settings) is allowed
        assert sender_may_write(older, settings) is allowed
        # An id that names neither route for this sender and UID: not told, so never sent.
        unknown = older.model_copy(update={"job_id": "dicom-" + "0" * 40})
        assert intake_route(unknown) is None
        assert sender_may_write(unknown, settings) is False
    api_job = record.model_copy(update={"source": "api"})
    assert intake_route(api_job) is None


def test_no_stow_client_writes_into_the_pacs_unless_listed():
    assert PacsSettings().stow_report_clients == frozenset()
    assert PacsSettings(pacs_stow_report_clients="a,,b").stow_report_clients == {"a", "b"}
