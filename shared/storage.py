"""Blob storage behind one small interface: a local folder or an S3 bucket (MinIO, AWS).

Keys are `/`-separated relative paths such as `uploads/{job_id}`; both backends refuse keys that
could escape their root, so the same key is valid (or invalid) everywhere.
"""

from __future__ import annotations

import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from shared.errors import InvalidStorageKeyError, ObjectNotFoundError, StorageError
from shared.settings import SharedSettings, get_settings

_TEMP_PREFIX = ".tmp-"
_UNSAFE_KEY = re.compile(r"[\\\x00-\x1f]")
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_THROTTLING_CODES = {"SlowDown", "RequestTimeout", "Throttling", "ThrottlingException"}


def validate_key(key: str) -> str:
    """Return `key` if it is a plain relative `/`-separated path; refuse anything else."""
    if not isinstance(key, str) or not key:
        raise InvalidStorageKeyError("A storage key must be a non-empty string.")
    if key.startswith("/") or _UNSAFE_KEY.search(key):
        raise InvalidStorageKeyError(f"The storage key {key!r} is absolute or holds a backslash.")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts) or parts[-1].startswith(_TEMP_PREFIX):
        raise InvalidStorageKeyError(f"The storage key {key!r} has an empty, '.' or '..' part.")
    return key


def _validate_prefix(prefix: str) -> str:
    """A list prefix is a key, optionally ending with `/`, or empty for everything."""
    if prefix:
        validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


class Storage(ABC):
    """put/get/exists/list/delete on `/`-separated keys; missing keys raise ObjectNotFoundError."""

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str | None = None) -> None: ...

    def put_unsynced(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """`put` for state that can be rebuilt: it lands whole, but a power cut may lose it.

        A backend whose every write is durable (S3) just puts; the local folder skips `fsync`.
        A crashed process never loses it: only the machine going down before the disk caught up.
        """
        self.put(key, data, content_type)

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Every key starting with `prefix`, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; deleting a key that does not exist is not an error."""


class LocalStorage(Storage):
    """A folder on disk; each write lands whole (temp file, fsync, then os.replace)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        path = (self.root / validate_key(key)).resolve()
        if not path.is_relative_to(self.root):  # a symlink inside the root pointing outside it
            raise InvalidStorageKeyError(f"The storage key {key!r} resolves outside the store.")
        return path

    def put(self, key: str, data: bytes, content_type: str | None = None) -> None:
        self._write(key, data, sync=True)

    def put_unsynced(self, key: str, data: bytes, content_type: str | None = None) -> None:
        self._write(key, data, sync=False)

    def _write(self, key: str, data: bytes, *, sync: bool) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    if sync:
                        handle.flush()
                        os.fsync(handle.fileno())
                os.replace(temp_name, path)
            except BaseException:
                Path(temp_name).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StorageError(f"Could not write {key!r} to local storage: {exc}") from exc

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFoundError(f"No object stored under {key!r}.") from exc
        except OSError as exc:
            raise StorageError(f"Could not read {key!r} from local storage: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        _validate_prefix(prefix)
        # Walk only the deepest folder the prefix names, not the whole store.
        folder = (self.root / prefix) if prefix.endswith("/") or not prefix else (
            self.root / prefix).parent
        if not folder.is_dir():
            return []
        keys: list[str] = []
        for path in folder.rglob("*"):
            if path.is_file() and not path.name.startswith(_TEMP_PREFIX):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"Could not delete {key!r} from local storage: {exc}") from exc


class S3Storage(Storage):
    """An S3 bucket (optionally under a prefix), with botocore's standard retry mode."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 region: str | None = None, client: Any | None = None,
                 max_attempts: int = 5, list_page_size: int = 1000) -> None:
        if not bucket:
            raise ValueError("S3Storage needs a bucket name (CXR_S3_BUCKET).")
        self.bucket = bucket
        self.list_page_size = list_page_size
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client or boto3.client(
            "s3", endpoint_url=endpoint_url or None, region_name=region or None,
            config=Config(retries={"mode": "standard", "max_attempts": max_attempts},
                          connect_timeout=5, read_timeout=30),
        )

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def _object_key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def put(self, key: str, data: bytes, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        with _s3_errors(key):
            self.client.put_object(
                Bucket=self.bucket, Key=self._object_key(key), Body=data, **extra
            )

    def get(self, key: str) -> bytes:
        with _s3_errors(key):
            response = self.client.get_object(Bucket=self.bucket, Key=self._object_key(key))
            return response["Body"].read()

    def exists(self, key: str) -> bool:
        try:
            with _s3_errors(key):
                self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ObjectNotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        _validate_prefix(prefix)
        keys: list[str] = []
        with _s3_errors(prefix):
            paginator = self.client.get_paginator("list_objects_v2")
            pages = paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix,
                                       PaginationConfig={"PageSize": self.list_page_size})
            for page in pages:
                keys.extend(item["Key"][len(self.prefix):] for item in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        with _s3_errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._object_key(key))


@contextmanager
def _s3_errors(key: str) -> Iterator[None]:
    """Translate botocore errors: missing -> ObjectNotFoundError, the rest -> StorageError."""
    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _NOT_FOUND_CODES:
            raise ObjectNotFoundError(f"No object stored under {key!r}.") from exc
        raise StorageError(
            f"S3 refused the request for {key!r}: {code or status}.",
            transient=status >= 500 or code in _THROTTLING_CODES,
        ) from exc
    except BotoCoreError as exc:
        raise StorageError(f"S3 is unreachable ({exc}).") from exc


def get_storage(settings: SharedSettings | None = None) -> Storage:
    """The backend the settings name (`CXR_STORAGE_BACKEND`)."""
    settings = settings or get_settings()
    if settings.storage_backend == "s3":
        return S3Storage(settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint_url,
                         settings.s3_region)
    return LocalStorage(settings.storage_root)


S3_SCHEME = "s3://"


def is_s3_uri(location: str) -> bool:
    """Whether `location` names S3 (`s3://bucket/prefix`) rather than a local folder."""
    return location.startswith(S3_SCHEME)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` as `("bucket", "some/prefix")`; ValueError without a bucket."""
    if not is_s3_uri(uri):
        raise ValueError(f"{uri!r} is not an {S3_SCHEME}bucket/prefix URI.")
    bucket, _, prefix = uri.removeprefix(S3_SCHEME).partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket ({S3_SCHEME}bucket/prefix).")
    return bucket, prefix


def storage_at(location: str, s3_endpoint_url: str | None = None,
               s3_region: str | None = None) -> Storage:
    """A `Storage` over `location`: `s3://bucket/prefix` or a local folder (the serving base)."""
    if is_s3_uri(location):
        bucket, prefix = split_s3_uri(location)
        return S3Storage(bucket, prefix, s3_endpoint_url, s3_region)
    return LocalStorage(location)
