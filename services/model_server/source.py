"""Where a model's versions live: a local folder or `s3://bucket/prefix`, both in TF Serving's
layout (`<base_path>/<version>/saved_model.pb`, version = a folder named by a positive integer).

`scan()` lists the versions with a fingerprint of their files, so a version folder that changes
(a half-copied folder completed, a broken one replaced) is tried again; `fetch()` gives a local
folder to load from (S3 versions are downloaded into a cache folder first).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from abc import ABC, abstractmethod
from pathlib import Path

from shared.settings import get_settings
from shared.storage import S3Storage, is_s3_uri, split_s3_uri

log = logging.getLogger(__name__)


def _version_number(name: str) -> int | None:
    return int(name) if name.isdigit() and int(name) > 0 else None


def _fingerprint(entries: list) -> str:
    digest = hashlib.sha256()
    for entry in sorted(entries):
        digest.update(repr(entry).encode())
    return digest.hexdigest()


class VersionSource(ABC):
    """The versions under one model's base path."""

    def __init__(self, base_path: str) -> None:
        self.base_path = base_path

    @abstractmethod
    def scan(self) -> dict[int, str]:
        """Version number -> fingerprint of the version folder's files."""

    @abstractmethod
    def fetch(self, version: int) -> Path:
        """A local folder holding the version's SavedModel."""

    def release(self, version: int) -> None:  # noqa: B027 - only cached sources have work here
        """Forget a version that was unloaded (drops its cached copy, if any)."""


class LocalSource(VersionSource):
    def __init__(self, base_path: str) -> None:
        super().__init__(base_path)
        self.root = Path(base_path)
        self._warned_missing = False

    def scan(self) -> dict[int, str]:
        if not self.root.is_dir():
            if not self._warned_missing:
                log.warning("model base path %s does not exist (yet)", self.root)
                self._warned_missing = True
            return {}
        self._warned_missing = False
        versions = {}
        for child in self.root.iterdir():
            number = _version_number(child.name)
            if number is not None and child.is_dir():
                versions[number] = _fingerprint(
                    [
                        (str(f.relative_to(child)), f.stat().st_size, f.stat().st_mtime_ns)
                        for f in child.rglob("*")
                        if f.is_file()
                    ]
                )
        return versions

    def fetch(self, version: int) -> Path:
        return self.root / str(version)


class S3Source(VersionSource):
    """Versions under `s3://bucket/prefix/`, read through `shared.storage.S3Storage` into a cache.

    S3 lists no modification times, so a version's fingerprint is its list of keys: a version still
    being uploaded is retried as keys appear.
    """

    def __init__(self, base_path: str, cache_dir: Path) -> None:
        super().__init__(base_path)
        bucket, prefix = split_s3_uri(base_path)
        settings = get_settings()
        # endpoint None lets boto3 read AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL itself.
        self.storage = S3Storage(
            bucket, prefix, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region
        )
        self.cache_dir = Path(cache_dir) / hashlib.sha256(base_path.encode()).hexdigest()[:16]

    def _keys_by_version(self) -> dict[int, list[str]]:
        by_version: dict[int, list[str]] = {}
        for key in self.storage.list():
            head, _, rest = key.partition("/")
            number = _version_number(head)
            if number is not None and rest:
                by_version.setdefault(number, []).append(key)
        return by_version

    def scan(self) -> dict[int, str]:
        return {version: _fingerprint(keys) for version, keys in self._keys_by_version().items()}

    def fetch(self, version: int) -> Path:
        keys = self._keys_by_version().get(version)
        if not keys:
            raise FileNotFoundError(f"{self.base_path}/{version} holds no files")
        target = self.cache_dir / str(version)
        staging = self.cache_dir / f".download-{version}"
        shutil.rmtree(staging, ignore_errors=True)
        for key in keys:
            local = staging / key.partition("/")[2]
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(self.storage.get(key))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return target

    def release(self, version: int) -> None:
        shutil.rmtree(self.cache_dir / str(version), ignore_errors=True)


def open_source(base_path: str, cache_dir: Path) -> VersionSource:
    if is_s3_uri(base_path):
        return S3Source(base_path, cache_dir)
    return LocalSource(base_path)
