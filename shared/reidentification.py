"""Re-identification keys, kept apart from the de-identified data.

For a DICOM job, the original identifiers a PACS files a result by (`FIELDS`: the Patient and
General Study attributes the SR and Secondary Capture carry, and the Study Instance UID),
encrypted with Fernet (AES-128-CBC + HMAC-SHA256, `cryptography`) under `CXR_REID_KEYS`, in their
own storage, never the job storage (`CXR_REID_STORAGE_BACKEND`: the folder `CXR_REID_STORAGE_ROOT`
or the bucket `CXR_REID_S3_BUCKET`, optionally with its own S3 user), one object per job. A key is
readable for `CXR_REID_RETENTION_DAYS` after it was written (the token's own timestamp); after that
`lookup` answers None and `purge_expired` deletes it. Several keys (comma-separated) allow
rotation: the first encrypts, all decrypt.

Every intake path records the key through `shared.jobs.intake.submit_job` (uploads, STOW-RS,
C-STORE), from the instance as received, once the job id is claimed; the report sender looks it up
when it builds the objects sent back to the PACS (`services.pacs.report`).
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass

import boto3
from botocore.config import Config
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydicom import dcmread
from pydicom.dataset import Dataset

from shared.errors import ObjectNotFoundError
from shared.settings import SharedSettings
from shared.storage import LocalStorage, S3Storage, Storage

PREFIX = "reidentification/"
# What a PACS files an object by and checks it against: the Patient module's name, ID, birth date
# and sex, and the General Study module's UID, ID, date, time, accession and referring physician
# (the type 2 attributes the reports carry). Nothing else of the instance is kept.
FIELDS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
          "StudyInstanceUID", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")


def original_identifiers(original: Dataset | bytes) -> dict[str, str]:
    """`FIELDS` of an instance (a dataset, or its Part 10 bytes), as text; absent ones empty."""
    if isinstance(original, bytes | bytearray):
        original = dcmread(io.BytesIO(original), stop_before_pixels=True, force=True,
                           specific_tags=list(FIELDS))
    return {field: str(original.get(field, "") or "") for field in FIELDS}


def reidentification_storage(settings: SharedSettings) -> Storage:
    """The key storage `CXR_REID_STORAGE_BACKEND` names, never the job storage.

    `s3`: the bucket `CXR_REID_S3_BUCKET` at the job storage's endpoint and region, signed with
    `CXR_REID_S3_ACCESS_KEY_ID` when set (a user that may use that bucket only), else with the
    default AWS credentials.
    """
    if settings.reid_storage_backend == "local":
        return LocalStorage(settings.reid_storage_root)
    access_key = settings.reid_s3_access_key_id.get_secret_value()
    client = None
    if access_key:
        client = boto3.client(
            "s3", endpoint_url=settings.s3_endpoint_url or None,
            region_name=settings.s3_region or None, aws_access_key_id=access_key,
            aws_secret_access_key=settings.reid_s3_secret_access_key.get_secret_value(),
            config=Config(retries={"mode": "standard", "max_attempts": 5},
                          connect_timeout=5, read_timeout=30))
    return S3Storage(settings.reid_s3_bucket, settings.reid_s3_prefix, settings.s3_endpoint_url,
                     settings.s3_region, client=client)


@dataclass(frozen=True)
class ReidentificationKeys:
    storage: Storage
    fernet: MultiFernet
    retention_s: int

    @classmethod
    def from_settings(cls, settings: SharedSettings) -> ReidentificationKeys | None:
        """None when no key is set (then no re-identification key is kept at all)."""
        keys = [key.strip() for key in settings.reid_keys.get_secret_value().split(",")
                if key.strip()]
        if not keys:
            return None
        return cls(reidentification_storage(settings),
                   MultiFernet([Fernet(key) for key in keys]),
                   settings.reid_retention_days * 86400)

    def record(self, job_id: str, original: Dataset | bytes) -> None:
        """Keep `original`'s identifiers (`FIELDS`) for `job_id`, encrypted."""
        values = original_identifiers(original)
        token = self.fernet.encrypt(json.dumps(values).encode())
        self.storage.put(self._key(job_id), token, content_type="application/octet-stream")

    def lookup(self, job_id: str) -> dict[str, str] | None:
        """The original identifiers of `job_id`; None when unknown, expired or not decryptable."""
        try:
            token = self.storage.get(self._key(job_id))
        except ObjectNotFoundError:
            return None
        try:
            plain = self.fernet.decrypt(token, ttl=self.retention_s)
        except InvalidToken:
            return None
        values: dict[str, str] = json.loads(plain)
        return {field: str(values.get(field, "") or "") for field in FIELDS}

    def forget(self, job_id: str) -> None:
        """Delete the key of `job_id` (the job itself is being deleted); none is no error."""
        self.storage.delete(self._key(job_id))

    def purge_expired(self, now: float | None = None) -> int:
        """Delete every key older than the retention limit (or unreadable); how many went."""
        now = time.time() if now is None else now
        removed = 0
        for key in self.storage.list(PREFIX):
            try:
                written = self.fernet.extract_timestamp(self.storage.get(key))
            except (InvalidToken, ObjectNotFoundError):
                written = None
            if written is None or now - written > self.retention_s:
                self.storage.delete(key)
                removed += 1
        return removed

    @staticmethod
    def _key(job_id: str) -> str:
        return f"{PREFIX}{job_id}"
