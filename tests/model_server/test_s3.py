"""An `s3://` model base path, read through boto3 from a real moto S3 server."""

from __future__ import annotations

from pathlib import Path

from tests.model_server.calls import predict
from tests.support.model_server import ModelServer
from tests.support.procs import wait_until
from tests.support.tiny_model import make_tiny_serving_model

BUCKET = "serving-models"
PREFIX = "published/cxr-pneumonia"


def _upload(s3_server, version_dir: Path, only=lambda relative: True) -> None:
    client = s3_server.client()
    for path in sorted(version_dir.rglob("*")):
        relative = path.relative_to(version_dir.parent).as_posix()
        if path.is_file() and only(relative):
            client.upload_file(str(path), BUCKET, f"{PREFIX}/{relative}")


def test_versions_are_loaded_from_s3_and_a_half_uploaded_one_is_retried(s3_server, tmp_path):
    s3_server.make_bucket(BUCKET)
    local = tmp_path / "exported"
    _upload(s3_server, make_tiny_serving_model(local, 1))
    env = {**s3_server.env, "CXR_S3_ENDPOINT_URL": s3_server.endpoint_url,
           "CXR_S3_REGION": "us-east-1"}
    server = ModelServer(tmp_path / "unused", tmp_path / "logs", env=env,
                         model_base_path=f"s3://{BUCKET}/{PREFIX}",
                         extra_args=["--model_cache_dir", str(tmp_path / "cache")])
    server.start(wait_for=1)
    try:
        assert predict(server).model_spec.version.value == 1

        version_2 = make_tiny_serving_model(local, 2, seed=2)
        _upload(s3_server, version_2, only=lambda relative: "/variables/" not in relative)
        wait_until(lambda: server.version_states().get(2) == "END", 60,
                   "version 2 without its variables fails to load", server.process)
        assert predict(server).model_spec.version.value == 1

        _upload(s3_server, version_2, only=lambda relative: "/variables/" in relative)
        server.wait_for_version(2, timeout=120)
        wait_until(lambda: server.version_states() == {2: "AVAILABLE", 1: "END"}, 30,
                   "version 1 unloaded", server.process)
        assert predict(server).model_spec.version.value == 2
        assert sorted(p.name for p in (tmp_path / "cache").glob("*/*")) == ["2"]
    finally:
        server.stop()
