"""Re-identification keys: encrypted at rest, readable back for the job, gone after retention."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import redis
from cryptography.fernet import Fernet
from pydantic import ValidationError

from shared.jobs.records import JobRecord, JobStatus
from shared.jobs.store import JobStore
from shared.reidentification import PREFIX, ReidentificationKeys, reidentification_storage
from shared.retention import erase_job
from shared.settings import SharedSettings
from shared.storage import LocalStorage, S3Storage
from tests.shared.identified_dicom import identified_chest_dx
from tests.support.s3 import S3_TEST_ENV


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


# --- The `s3` key storage: one bucket of its own, shared by every container and pod. ---

def s3_settings(s3_server, reid_bucket: str, **extra) -> SharedSettings:
    return SharedSettings(
        reid_keys=extra.pop("reid_keys", Fernet.generate_key().decode()),
        reid_storage_backend="s3", reid_s3_bucket=reid_bucket, reid_s3_prefix="keys",
        storage_backend="s3", s3_bucket=extra.pop("s3_bucket", "cxr-jobs-test"),
        s3_endpoint_url=s3_server.endpoint_url, s3_region="us-east-1",
        reid_storage_root="never-used", **extra)


def bucket_keys(s3_server, bucket: str) -> list[str]:
    listed = s3_server.client().list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in listed.get("Contents", [])]


def test_on_s3_every_service_shares_the_keys_in_their_own_bucket(s3_server, tmp_path):
    jobs_bucket = s3_server.make_bucket(f"jobs-{uuid.uuid4().hex[:12]}")
    reid_bucket = s3_server.make_bucket(f"reid-{uuid.uuid4().hex[:12]}")
    settings = s3_settings(s3_server, reid_bucket, s3_bucket=jobs_bucket)
    intake, sender = ReidentificationKeys.from_settings(settings), \
        ReidentificationKeys.from_settings(settings)  # two processes, as two pods would be
    assert intake is not None and sender is not None
    instance = identified_chest_dx()

    intake.record("dicom-s3", instance.dataset)

    assert bucket_keys(s3_server, reid_bucket) == [f"keys/{PREFIX}dicom-s3"]
    assert bucket_keys(s3_server, jobs_bucket) == []
    assert not (tmp_path / "never-used").exists() and not Path("never-used").exists()
    stored = s3_server.client().get_object(Bucket=reid_bucket,
                                           Key=f"keys/{PREFIX}dicom-s3")["Body"].read()
    assert instance.found_in(stored) == []  # nothing readable at rest
    found = sender.lookup("dicom-s3")
    assert found is not None
    assert found["PatientID"] == instance.dataset.PatientID
    assert found["StudyInstanceUID"] == instance.dataset.StudyInstanceUID
    assert sender.lookup("dicom-other") is None


def test_on_s3_keys_expire_are_purged_and_go_with_their_job(s3_server):
    reid_bucket = s3_server.make_bucket(f"reid-{uuid.uuid4().hex[:12]}")
    keys = ReidentificationKeys.from_settings(
        s3_settings(s3_server, reid_bucket, reid_retention_days=1))
    assert keys is not None
    for job in ("job-a", "job-b", "job-c"):
        keys.record(job, identified_chest_dx().dataset)

    keys.forget("job-a")
    assert keys.lookup("job-a") is None and keys.lookup("job-b") is not None
    now = time.time()
    assert keys.purge_expired(now=now) == 0
    assert keys.purge_expired(now=now + 2 * 86400) == 2
    assert keys.lookup("job-b") is None
    assert bucket_keys(s3_server, reid_bucket) == []


def test_on_s3_a_key_past_retention_decrypts_to_nothing(s3_server):
    reid_bucket = s3_server.make_bucket(f"reid-{uuid.uuid4().hex[:12]}")
    key = Fernet.generate_key().decode()
    keys = ReidentificationKeys.from_settings(s3_settings(s3_server, reid_bucket, reid_keys=key))
    assert keys is not None
    old = Fernet(key.encode()).encrypt_at_time(b'{"PatientID": "P1"}',
                                               int(time.time()) - 31 * 86400)
    s3_server.client().put_object(Bucket=reid_bucket, Key=f"keys/{PREFIX}dicom-old", Body=old)
    assert keys.lookup("dicom-old") is None
    assert keys.purge_expired() == 1
    assert bucket_keys(s3_server, reid_bucket) == []


def test_the_scheduled_purge_deletes_expired_keys_in_the_s3_bucket(s3_server, tmp_path,
                                                                   redis_url):
    from services.worker.retention import run_purge
    from services.worker.settings import WorkerSettings

    reid_bucket = s3_server.make_bucket(f"reid-{uuid.uuid4().hex[:12]}")
    key = Fernet.generate_key().decode()
    settings = WorkerSettings(
        reid_keys=key, reid_storage_backend="s3", reid_s3_bucket=reid_bucket,
        reid_s3_prefix="keys", s3_endpoint_url=s3_server.endpoint_url, s3_region="us-east-1",
        retention_days=0, audit_log=str(tmp_path / "audit.log"))
    keys = ReidentificationKeys.from_settings(settings)
    assert keys is not None
    keys.record("dicom-new", identified_chest_dx().dataset)
    old = Fernet(key.encode()).encrypt_at_time(b"{}", int(time.time()) - 31 * 86400)
    s3_server.client().put_object(Bucket=reid_bucket, Key=f"keys/{PREFIX}dicom-old", Body=old)
    storage = LocalStorage(tmp_path / "jobs")

    run_purge(settings, storage, JobStore(redis.Redis.from_url(redis_url), storage))

    assert bucket_keys(s3_server, reid_bucket) == [f"keys/{PREFIX}dicom-new"]


def test_the_key_bucket_is_signed_with_its_own_user_when_one_is_set(s3_server):
    reid_bucket = s3_server.make_bucket(f"reid-{uuid.uuid4().hex[:12]}")
    settings = s3_settings(s3_server, reid_bucket, reid_s3_access_key_id="reid-user",
                           reid_s3_secret_access_key="reid-secret")
    keys = ReidentificationKeys.from_settings(settings)
    assert keys is not None and isinstance(keys.storage, S3Storage)
    assert keys.storage.bucket == reid_bucket
    signed_by = signers(keys.storage)

    keys.record("dicom-user", identified_chest_dx().dataset)
    assert keys.lookup("dicom-user") is not None
    assert signed_by and set(signed_by) == {"reid-user"}

    # without one, the default credentials (here the fake ones of the test server)
    default = reidentification_storage(s3_settings(s3_server, reid_bucket))
    assert isinstance(default, S3Storage)
    signed_by = signers(default)
    assert default.exists(f"{PREFIX}dicom-user")
    assert set(signed_by) == {S3_TEST_ENV["AWS_ACCESS_KEY_ID"]}


def signers(storage: S3Storage) -> list[str]:
    """The access key of every request `storage` sends from now on (its SigV4 header)."""
    seen: list[str] = []

    def record(request, **_) -> None:
        authorization = request.headers.get("Authorization", b"")
        text = authorization.decode() if isinstance(authorization, bytes) else authorization
        seen.append(text.split("Credential=", 1)[1].split("/", 1)[0])

    storage.client.meta.events.register("before-send.s3", record)
    return seen


@pytest.mark.parametrize(("overrides", "message"), [
    ({"reid_storage_backend": "s3"}, "needs CXR_REID_S3_BUCKET"),
    ({"reid_storage_backend": "s3", "reid_s3_bucket": "cxr-jobs", "s3_bucket": "cxr-jobs"},
     "bucket of its own"),
    ({"reid_s3_access_key_id": "only-the-id"}, "or neither"),
])
def test_a_key_storage_that_is_not_apart_or_incomplete_is_refused(overrides, message):
    with pytest.raises(ValidationError, match=message):
        SharedSettings(reid_keys=Fernet.generate_key().decode(), **overrides)
