"""Re-identification keys: encrypted at rest, readable back for the job, gone after retention."""

from __future__ import annotations

import time

import pytest
import redis
from cryptography.fernet import Fernet

from shared.config import SharedSettings
from shared.jobs import JobStore
from shared.reidentification import PREFIX, ReidentificationKeys
from shared.retention import erase_job
from shared.schemas import JobRecord, JobStatus
from shared.storage import LocalStorage
from tests.shared.identified_dicom import identified_chest_dx


def keys_in(folder, *keys: str, days: int = 30) -> ReidentificationKeys:
    settings = SharedSettings(reid_keys=",".join(keys), reid_storage_root=str(folder),
                              reid_retention_days=days)
    made = ReidentificationKeys.from_settings(settings)
    assert made is not None
    return made


def test_identifiers_are_stored_encrypted_and_read_back_for_the_job(tmp_path):
    instance = identified_chest_dx()
    store = keys_in(tmp_path, Fernet.generate_key().decode())

    store.record("dicom-abc", instance.dataset)

    stored = (tmp_path / PREFIX / "dicom-abc").read_bytes()
    assert instance.found_in(stored) == []  # nothing readable at rest
    original = instance.dataset
    assert store.lookup("dicom-abc") == {
        "PatientID": original.PatientID, "PatientName": str(original.PatientName),
        "PatientBirthDate": original.PatientBirthDate, "PatientSex": original.PatientSex,
        "AccessionNumber": original.AccessionNumber,
        "StudyInstanceUID": original.StudyInstanceUID, "StudyID": original.StudyID,
        "StudyDate": original.StudyDate, "StudyTime": original.StudyTime,
        "ReferringPhysicianName": str(original.ReferringPhysicianName)}
    assert store.lookup("dicom-unknown") is None


def test_another_key_cannot_read_it_and_rotation_keeps_old_keys_readable(tmp_path):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    keys_in(tmp_path, old).record("job", identified_chest_dx().dataset)
    assert keys_in(tmp_path, new).lookup("job") is None
    assert keys_in(tmp_path, new, old).lookup("job") is not None


def test_keys_expire_after_the_retention_limit_and_are_purged(tmp_path):
    store = keys_in(tmp_path, Fernet.generate_key().decode(), days=1)
    store.record("job-old", identified_chest_dx().dataset)
    store.record("job-new", identified_chest_dx().dataset)
    now = time.time()
    assert store.purge_expired(now=now) == 0
    assert store.purge_expired(now=now + 2 * 86400) == 2
    assert store.lookup("job-old") is None
    assert not list((tmp_path / PREFIX).iterdir())


def test_no_key_no_store_and_a_bad_key_is_refused(tmp_path):
    assert ReidentificationKeys.from_settings(SharedSettings(reid_keys="")) is None
    with pytest.raises(ValueError):
        keys_in(tmp_path, "not-a-fernet-key")


def test_erasing_a_job_also_erases_its_reidentification_key(tmp_path, redis_url):
    keys = keys_in(tmp_path / "reid", Fernet.generate_key().decode())
    storage = LocalStorage(tmp_path / "jobs")
    jobs = JobStore(redis.Redis.from_url(redis_url), storage)
    storage.put("uploads/dicom-1", b"de-identified")
    jobs.create(JobRecord(job_id="dicom-1", client_id="CT1", upload_key="uploads/dicom-1",
                          status=JobStatus.FAILED))
    keys.record("dicom-1", identified_chest_dx().dataset)
    keys.record("dicom-2", identified_chest_dx().dataset)

    erase_job(storage, jobs, "dicom-1", reid=keys)
    assert keys.lookup("dicom-1") is None and keys.lookup("dicom-2") is not None
    assert storage.list() == []


def test_the_scheduled_purge_deletes_expired_keys_of_jobs_still_kept(tmp_path, redis_url):
    from services.worker.retention import run_purge
    from services.worker.settings import WorkerSettings

    key = Fernet.generate_key().decode()
    settings = WorkerSettings(reid_keys=key, reid_storage_root=str(tmp_path / "reid"),
                              retention_days=0, audit_log=str(tmp_path / "audit.log"))
    keys = keys_in(tmp_path / "reid", key)
    keys.record("dicom-new", identified_chest_dx().dataset)
    old = Fernet(key.encode()).encrypt_at_time(b"{}", int(time.time()) - 31 * 86400)
    (tmp_path / "reid" / PREFIX / "dicom-old").write_bytes(old)
    storage = LocalStorage(tmp_path / "jobs")

    run_purge(settings, storage, JobStore(redis.Redis.from_url(redis_url), storage))

    assert sorted(path.name for path in (tmp_path / "reid" / PREFIX).iterdir()) == ["dicom-new"]
