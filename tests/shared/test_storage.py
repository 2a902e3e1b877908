"""One storage contract, run against LocalStorage and against S3Storage on a real moto server."""

import os
import uuid

import pytest

from shared.errors import InvalidStorageKeyError, ObjectNotFoundError, StorageError
from shared.settings import SharedSettings
from shared.storage import LocalStorage, S3Storage, Storage, get_storage, split_s3_uri, storage_at
from tests.support.procs import free_port


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    s3_server = request.getfixturevalue("s3_server")
    bucket = s3_server.make_bucket(f"contract-{uuid.uuid4().hex[:12]}")
    return S3Storage(bucket, prefix="svc", endpoint_url=s3_server.endpoint_url, region="us-east-1")


def test_put_then_get_returns_the_same_bytes(storage):
    payload = bytes(range(256)) * 40
    storage.put("uploads/job-1", payload, content_type="application/octet-stream")
    assert storage.get("uploads/job-1") == payload


def test_put_overwrites(storage):
    storage.put("jobs/a.json", b"first")
    storage.put("jobs/a.json", b"second")
    assert storage.get("jobs/a.json") == b"second"


def test_missing_key_raises_not_found(storage):
    with pytest.raises(ObjectNotFoundError) as caught:
        storage.get("results/nothing.json")
    assert caught.value.http_status == 404


def test_exists(storage):
    assert not storage.exists("heatmaps/x.png")
    storage.put("heatmaps/x.png", b"png")
    assert storage.exists("heatmaps/x.png")
    assert not storage.exists("heatmaps")  # a folder is not an object


def test_list_by_prefix_is_sorted_and_exact(storage):
    for key in ("jobs/b.json", "jobs/a.json", "jobs/sub/c.json", "jobsx/d.json", "uploads/a"):
        storage.put(key, b"{}")
    assert storage.list("jobs/") == ["jobs/a.json", "jobs/b.json", "jobs/sub/c.json"]
    assert storage.list("jobs/a") == ["jobs/a.json"]
    assert storage.list("jobs") == ["jobs/a.json", "jobs/b.json", "jobs/sub/c.json", "jobsx/d.json"]
    assert storage.list("nothing/") == []
    assert len(storage.list()) == 5


def test_listing_everything_stays_inside_the_store(tmp_path):
    (tmp_path / "beside.txt").write_text("not in the store")  # a file next to the store's folder
    storage = LocalStorage(tmp_path / "store")
    storage.put("uploads/a", b"x")
    assert storage.list() == storage.list("") == ["uploads/a"]


def test_delete_removes_and_tolerates_missing(storage):
    storage.put("uploads/gone", b"x")
    storage.delete("uploads/gone")
    assert not storage.exists("uploads/gone")
    assert storage.list("uploads/") == []
    storage.delete("uploads/gone")  # deleting twice is not an error


def test_empty_object(storage):
    storage.put("uploads/empty", b"")
    assert storage.get("uploads/empty") == b""


@pytest.mark.parametrize(
    "key",
    ["", "/etc/passwd", "../outside", "uploads/../../outside", "a//b", "./a", "a/.", "a\\..\\b",
     "uploads/\x00x", "uploads/"],
)
def test_keys_that_could_escape_are_refused(storage, key):
    for call in (lambda: storage.put(key, b"x"), lambda: storage.get(key),
                 lambda: storage.exists(key), lambda: storage.delete(key)):
        with pytest.raises(InvalidStorageKeyError):
            call()


def test_list_refuses_an_escaping_prefix(storage):
    with pytest.raises(InvalidStorageKeyError):
        storage.list("../")


# --- LocalStorage only -----------------------------------------------------------------------


def test_local_writes_stay_inside_the_root(tmp_path):
    root = tmp_path / "store"
    store = LocalStorage(root)
    with pytest.raises(InvalidStorageKeyError):
        store.put("../escaped", b"x")
    assert not (tmp_path / "escaped").exists()
    store.put("jobs/a.json", b"{}")
    assert (root / "jobs" / "a.json").read_bytes() == b"{}"


def test_local_refuses_a_symlink_pointing_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    store = LocalStorage(tmp_path / "store")
    os.symlink(outside, tmp_path / "store" / "link")
    with pytest.raises(InvalidStorageKeyError):
        store.get("link/secret")


def test_local_write_leaves_no_temporary_files(tmp_path):
    store = LocalStorage(tmp_path / "store")
    for index in range(5):
        store.put("jobs/a.json", str(index).encode())
    assert sorted(p.name for p in (tmp_path / "store" / "jobs").iterdir()) == ["a.json"]


def test_local_list_ignores_half_written_files(tmp_path):
    store = LocalStorage(tmp_path / "store")
    store.put("jobs/a.json", b"{}")
    (tmp_path / "store" / "jobs" / ".tmp-abc123").write_bytes(b"partial")
    assert store.list("jobs/") == ["jobs/a.json"]


# --- S3Storage only --------------------------------------------------------------------------


def test_s3_prefixes_keep_services_apart(s3_server):
    bucket = s3_server.make_bucket(f"prefixes-{uuid.uuid4().hex[:12]}")
    first = S3Storage(bucket, prefix="one/", endpoint_url=s3_server.endpoint_url)
    second = S3Storage(bucket, prefix="two", endpoint_url=s3_server.endpoint_url)
    first.put("jobs/a.json", b"1")
    assert second.list("jobs/") == []
    assert not second.exists("jobs/a.json")
    objects = s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert [item["Key"] for item in objects] == ["one/jobs/a.json"]


def test_s3_lists_past_one_page(s3_server):
    bucket = s3_server.make_bucket(f"pages-{uuid.uuid4().hex[:12]}")
    store = S3Storage(bucket, endpoint_url=s3_server.endpoint_url, list_page_size=3)
    keys = [f"jobs/{index:02d}.json" for index in range(10)]
    for key in keys:
        store.put(key, b"{}")
    assert store.list("jobs/") == keys


def test_s3_unreachable_endpoint_is_a_transient_storage_error(s3_server):
    closed = f"http://127.0.0.1:{free_port()}"
    store = S3Storage("anything", endpoint_url=closed, max_attempts=2)
    with pytest.raises(StorageError) as caught:
        store.get("jobs/a.json")
    assert caught.value.transient
    assert caught.value.http_status == 503


def test_s3_missing_bucket_is_a_permanent_storage_error(s3_server):
    store = S3Storage(f"missing-{uuid.uuid4().hex[:12]}", endpoint_url=s3_server.endpoint_url)
    with pytest.raises(StorageError) as caught:
        store.put("jobs/a.json", b"{}")
    assert not caught.value.transient
    assert "NoSuchBucket" in caught.value.message


def test_get_storage_follows_the_settings(tmp_path, s3_server):
    local = get_storage(SharedSettings(storage_backend="local", storage_root=str(tmp_path / "s")))
    assert isinstance(local, LocalStorage)
    bucket = s3_server.make_bucket(f"settings-{uuid.uuid4().hex[:12]}")
    remote = get_storage(SharedSettings(storage_backend="s3", s3_bucket=bucket, s3_prefix="p",
                                        s3_endpoint_url=s3_server.endpoint_url))
    assert isinstance(remote, S3Storage)
    remote.put("jobs/a.json", b"{}")
    assert s3_server.client().get_object(Bucket=bucket, Key="p/jobs/a.json")["Body"].read() == b"{}"


def test_s3_backend_without_a_bucket_is_refused():
    with pytest.raises(ValueError, match="CXR_S3_BUCKET"):
        get_storage(SharedSettings(storage_backend="s3", s3_bucket=""))


def test_put_unsynced_lands_whole_and_local_skips_only_the_fsync(storage, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    storage.put_unsynced("jobs/a.json", b'{"status": "running"}', content_type="application/json")
    assert storage.get("jobs/a.json") == b'{"status": "running"}'
    assert synced == []
    storage.put("jobs/b.json", b"{}")
    assert len(synced) == (1 if isinstance(storage, LocalStorage) else 0)


def test_storage_at_an_s3_uri_writes_under_its_bucket_and_prefix(s3_server, tmp_path):
    bucket = s3_server.make_bucket(f"uri-{uuid.uuid4().hex[:12]}")
    storage_at(f"s3://{bucket}/serving/base", s3_server.endpoint_url).put("1/model.txt", b"m")
    storage_at(f"s3://{bucket}", s3_server.endpoint_url).put("top.txt", b"t")
    keys = sorted(o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["serving/base/1/model.txt", "top.txt"]
    storage_at(str(tmp_path)).put("1/model.txt", b"m")
    assert (tmp_path / "1" / "model.txt").read_bytes() == b"m"


@pytest.mark.parametrize("uri", ["s3://", "s3:///prefix", "/var/serving"])
def test_an_s3_uri_without_a_bucket_is_refused(uri):
    with pytest.raises(ValueError, match="bucket"):
        split_s3_uri(uri)
