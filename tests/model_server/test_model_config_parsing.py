"""Model config parsing, validation and version policies (no server process)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf

from services.model_server.__main__ import parse_flags
from services.model_server.errors import ServingError
from services.model_server.model_config import (
    parse_model_config,
    single_model_config,
    wanted_versions,
)
from services.model_server.monitoring import metrics_path
from services.model_server.tensors import array_from_json

TWO_MODELS = """
model_config_list {
  config {
    name: "cxr-pneumonia"
    base_path: "s3://models/serving/cxr-pneumonia"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
  config {
    name: "other"
    base_path: "/srv/models/other"
    model_platform: "tensorflow"
    model_version_policy { all {} }
  }
}
"""


def _config(policy: str):
    return parse_model_config(
        'model_config_list { config { name: "m" base_path: "/m" model_platform: "tensorflow" '
        f"model_version_policy {{ {policy} }} }} }}"
    ).model_config_list.config[0]


def test_text_config_with_two_models_policies_and_labels():
    config = parse_model_config(TWO_MODELS)
    first, second = config.model_config_list.config
    assert first.name == "cxr-pneumonia"
    assert first.base_path == "s3://models/serving/cxr-pneumonia"
    assert list(first.model_version_policy.specific.versions) == [1, 2]
    assert dict(first.version_labels) == {"stable": 1, "canary": 2}
    assert second.model_version_policy.WhichOneof("policy_choice") == "all"


@pytest.mark.parametrize("text, words", [
    ("model_config_list { config { name: ", "not a valid text ModelServerConfig"),
    ('model_config_list { config { name: "m" base_path: "/m" model_platform: "pytorch" } }',
     "not supported"),
    ('model_config_list { config { name: "m" model_platform: "tensorflow" } }', "no base_path"),
    ('model_config_list { config { name: "m" base_path: "/a" } '
     'config { name: "m" base_path: "/b" } }',
     "more than once"),
    ('model_config_list { config { name: "m" base_path: "/m" '
     'version_labels { key: "x" value: 0 } } }',
     "version > 0"),
])
def test_bad_configs_are_invalid_arguments(text, words):
    with pytest.raises(ServingError) as caught:
        parse_model_config(text)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in caught.value.message


def test_config_from_flags_serves_latest_version_only():
    config = single_model_config("cxr-pneumonia", "/srv/models/cxr-pneumonia")
    model = config.model_config_list.config[0]
    assert (model.name, model.base_path, model.model_platform) == (
        "cxr-pneumonia", "/srv/models/cxr-pneumonia", "tensorflow")
    assert wanted_versions(model, [3, 1, 7, 2]) == {7}


@pytest.mark.parametrize("policy, candidates, wanted", [
    ("latest { num_versions: 2 }", [1, 5, 3], {3, 5}),
    ("latest { num_versions: 1 }", [], set()),
    ("all {}", [1, 5, 3], {1, 3, 5}),
    ("specific { versions: 1 versions: 4 }", [1, 2, 3], {1}),
])
def test_version_policies(policy, candidates, wanted):
    assert wanted_versions(_config(policy), candidates) == wanted


def test_json_values_take_the_signature_dtype():
    array = array_from_json("image", [[1, 2], [3, 255]], tf.uint8)
    assert array.dtype == np.uint8 and array.tolist() == [[1, 2], [3, 255]]
    assert array_from_json("x", [1, 2.5], tf.float32).dtype == np.float32


@pytest.mark.parametrize("value, dtype, words", [
    ([1.5, 2], tf.uint8, "non-integer"),
    ([300], tf.uint8, "outside the range"),
    ([[1, 2], [3]], tf.float32, "rectangular"),
    (["a"], tf.float32, "numbers"),
    (["a"], tf.uint8, "numbers"),
    ([1], tf.string, "only numbers"),
])
def test_json_values_that_do_not_fit_are_refused(value, dtype, words):
    with pytest.raises(ServingError) as caught:
        array_from_json("x", value, dtype)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in caught.value.message


def test_monitoring_config_sets_or_turns_off_the_metrics_page(tmp_path):
    config = tmp_path / "monitoring.config"
    config.write_text('prometheus_config { enable: true path: "/metrics/here" }')
    assert metrics_path(config) == "/metrics/here"
    config.write_text("prometheus_config { enable: false }")
    assert metrics_path(config) is None
    assert metrics_path(None) == "/monitoring/prometheus/metrics"
    config.write_text("prometheus { on }")
    with pytest.raises(ServingError) as caught:
        metrics_path(config)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_flags_are_read_like_tf_serving():
    flags = parse_flags(["--port=9000", "--model_base_path=/srv/m", "--model_name=m",
                         "--allow_version_labels_for_unavailable_models=true"])
    assert (flags.port, flags.rest_api_port, flags.file_system_poll_wait_seconds) == (9000, 8501, 1)
    assert flags.allow_version_labels_for_unavailable_models is True
    assert parse_flags(["--model_config_file=x", "--allow_version_labels_for_unavailable_models"]
                       ).allow_version_labels_for_unavailable_models is True
    with pytest.raises(SystemExit):
        parse_flags(["--port=9000"])  # neither a base path nor a config file
