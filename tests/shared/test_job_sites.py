"""Jobs carry their sender's site: API clients by `CXR_SITE_CLIENTS`, DICOM senders by their
calling AE title (`CXR_SITE_AE_TITLES`); anyone unlisted is `default`."""

from __future__ import annotations

import numpy as np
import redis

from shared.dicom_intake.receive import DicomIntake
from shared.imaging import DecodeLimits
from shared.jobs.store import JobStore
from shared.settings import SharedSettings
from shared.storage import LocalStorage
from tests.shared.xray_files import xray_dataset


class Queue:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def enqueue(self, job_id: str) -> None:
        self.sent.append(job_id)


def test_a_dicom_job_records_the_site_of_its_calling_ae_title(redis_url, tmp_path):
    settings = SharedSettings(site_ae_titles="WARD_DX:north")
    storage = LocalStorage(tmp_path)
    jobs = JobStore(redis.Redis.from_url(redis_url), storage)
    intake = DicomIntake(storage=storage, jobs=jobs, queue=Queue(), limits=DecodeLimits(),
                         site_of=settings.site_of_ae_title)
    pixels = (np.arange(256 * 256).reshape(256, 256) % 4096).astype(np.uint16)
    known = intake.receive(xray_dataset(pixels), client="WARD_DX", route="c-store")
    other = intake.receive(xray_dataset(pixels), client="ER_CR", route="c-store")
    assert jobs.get(known.job_id).site == "north"
    assert jobs.get(other.job_id).site == "default"
