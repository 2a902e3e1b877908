"""Publishing to the serving folder: TF Serving layout, models.config, S3, a real model server."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from services.trainer.registry.publish import (
    CONFIG_KEY,
    SAVED_MODEL_FILE,
    parse_models_config,
    publish_version,
    render_models_config,
    serving_storage,
)
from services.trainer.registry.version_wait import VersionLoadWaiter
from shared.storage import S3Storage
from tests.support.model_server import ModelServer
from tests.support.procs import free_port, wait_until
from tests.support.tiny_model import make_tiny_serving_model

MODEL = "cxr-pneumonia"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[int, Path]:
    """Two tiny SavedModels (as the registry would hand them over), keyed by version."""
    base = tmp_path_factory.mktemp("exported")
    return {v: make_tiny_serving_model(base, v, seed=v) for v in (1, 2)}


def served_versions(config_text: str) -> tuple[list[int], dict[str, int], str]:
    config = parse_models_config(config_text).model_config_list.config
    assert len(config) == 1 and config[0].name == MODEL
    return (list(config[0].model_version_policy.specific.versions),
            dict(config[0].version_labels), config[0].base_path)


def test_render_refuses_a_stable_version_that_is_not_served():
    with pytest.raises(ValueError, match="stable"):
        render_models_config(MODEL, "/srv/models/cxr-pneumonia", [1, 2], stable=3)


def test_local_publish_writes_tf_serving_layout_and_config(tmp_path, exported):
    storage = serving_storage(str(tmp_path / "serving"))
    first = publish_version(exported[1], 7, storage=storage, model_name=MODEL)
    version_dir = tmp_path / "serving" / MODEL / "7"
    assert (version_dir / SAVED_MODEL_FILE).is_file()
    assert (version_dir / "variables").is_dir()
    assert (version_dir / "assets.extra" / "tf_serving_warmup_requests").is_file()
    assert first.versions_served == [7]
    versions, labels, base_path = served_versions((tmp_path / "serving" / CONFIG_KEY).read_text())
    assert (versions, labels) == ([7], {"stable": 7})
    assert Path(base_path) == (tmp_path / "serving" / MODEL).resolve()

    second = publish_version(exported[2], 9, storage=storage, model_name=MODEL,
                             keep_versions=[7, 5])  # 5 was never published: not served
    assert second.versions_served == [7, 9]
    versions, labels, _ = served_versions((tmp_path / "serving" / CONFIG_KEY).read_text())
    assert (versions, labels) == ([7, 9], {"stable": 9})
    # Only finished version folders are left: no staging folder a server could trip over.
    assert sorted(p.name for p in (tmp_path / "serving" / MODEL).iterdir()) == ["7", "9"]


def test_republishing_keeps_the_immutable_version(tmp_path, exported):
    storage = serving_storage(str(tmp_path))
    publish_version(exported[1], 3, storage=storage, model_name=MODEL)
    before = (tmp_path / MODEL / "3" / SAVED_MODEL_FILE).read_bytes()
    publish_version(exported[2], 3, storage=storage, model_name=MODEL)
    assert (tmp_path / MODEL / "3" / SAVED_MODEL_FILE).read_bytes() == before


def test_publish_refuses_a_folder_without_a_saved_model(tmp_path):
    with pytest.raises(FileNotFoundError, match=SAVED_MODEL_FILE):
        publish_version(tmp_path, 1, storage=serving_storage(str(tmp_path / "serving")),
                        model_name=MODEL)
    assert not (tmp_path / "serving" / CONFIG_KEY).exists()


def test_the_stable_label_moves_only_after_the_new_version_is_loaded(tmp_path, exported):
    storage = serving_storage(str(tmp_path))
    seen: list[tuple[list[int], dict[str, int]]] = []

    def waiter(version: int) -> bool:
        seen.append(served_versions((tmp_path / CONFIG_KEY).read_text())[:2])
        return True

    publish_version(exported[1], 1, storage=storage, model_name=MODEL, wait_until_loaded=waiter)
    publish_version(exported[2], 2, storage=storage, model_name=MODEL, keep_versions=[1],
                    wait_until_loaded=waiter)
    # First start: listed without a label; a swap: listed while `stable` stays on the old one.
    assert seen == [([1], {}), ([1, 2], {"stable": 1})]
    assert served_versions((tmp_path / CONFIG_KEY).read_text())[:2] == ([1, 2], {"stable": 2})


def test_the_load_waiter_gives_up_at_once_without_a_model_server():
    assert VersionLoadWaiter(f"127.0.0.1:{free_port()}", MODEL, timeout_s=60).wait(1) is False


class RecordingS3Storage(S3Storage):
    """S3Storage that remembers the order of its writes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.written: list[str] = []

    def put(self, key, data, content_type=None) -> None:
        super().put(key, data, content_type)
        self.written.append(key)


def test_s3_publish_writes_saved_model_last_then_the_config(s3_server, exported):
    bucket = s3_server.make_bucket("serving-publish")
    storage = RecordingS3Storage(bucket, "prod/models", endpoint_url=s3_server.endpoint_url,
                                 region="us-east-1")
    published = publish_version(exported[1], 4, storage=storage, model_name=MODEL)
    version_keys = [k for k in storage.written if k.startswith(f"{MODEL}/4/")]
    assert version_keys[-1] == f"{MODEL}/4/{SAVED_MODEL_FILE}"
    assert storage.written[-1] == CONFIG_KEY
    listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix="prod/models/")
    keys = {item["Key"] for item in listed["Contents"]}
    assert f"prod/models/{MODEL}/4/variables/variables.index" in keys
    config = s3_server.client().get_object(Bucket=bucket, Key=f"prod/models/{CONFIG_KEY}")
    versions, labels, base_path = served_versions(config["Body"].read().decode())
    assert (versions, labels) == ([4], {"stable": 4})
    assert base_path == f"s3://{bucket}/prod/models/{MODEL}" == published.model_base_path
    assert isinstance(serving_storage(f"s3://{bucket}/prod/models", s3_server.endpoint_url),
                      S3Storage)


def predict_with_label(server: ModelServer, label: str) -> int:
    """The version that answers a Predict addressed by version label."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.version_label = label
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 224, 224, 1), np.uint8)))
    with grpc.insecure_channel(server.grpc_target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=30)
    return response.model_spec.version.value


@pytest.mark.slow
def test_model_server_follows_the_published_config_without_restart(tmp_path, exported):
    serving = tmp_path / "serving"
    storage = serving_storage(str(serving))
    publish_version(exported[1], 1, storage=storage, model_name=MODEL)
    server = ModelServer(serving, tmp_path / "logs", config_file=serving / CONFIG_KEY,
                         extra_args=["--model_config_file_poll_wait_seconds", "1"])
    server.start(wait_for=1)
    try:
        assert predict_with_label(server, "stable") == 1
        pid = server.process.pid
        waiter = VersionLoadWaiter(server.grpc_target, MODEL, timeout_s=120, poll_s=0.5)
        publish_version(exported[2], 2, storage=storage, model_name=MODEL, keep_versions=[1],
                        wait_until_loaded=waiter.wait)
        assert server.version_states()[2] == "AVAILABLE"
        # The server rereads the config once a second; the label moves with the next read.
        wait_until(lambda: predict_with_label(server, "stable") == 2, 60,
                   "label stable on version 2", server.process)
        assert server.version_states()[1] == "AVAILABLE"  # kept for a one-step rollback
        assert server.process.pid == pid and server.process.alive()  # no restart
    finally:
        server.stop()
