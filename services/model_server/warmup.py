"""Warm-up: replay `assets.extra/tf_serving_warmup_requests` (a TFRecord of PredictionLog) on a
freshly loaded version before it takes traffic, as TF Serving does."""

from __future__ import annotations

import logging

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from services.model_server.servable import LoadedVersion
from services.model_server.tensors import array_from_proto

log = logging.getLogger(__name__)

WARMUP_PATH = ("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving's own cap


def run_warmup(servable: LoadedVersion) -> int:
    """Replay the version's warm-up records; returns how many ran. A bad record fails the load."""
    path = servable.path.joinpath(*WARMUP_PATH)
    if not path.is_file():
        return 0
    count = 0
    for record in tf.data.TFRecordDataset(str(path)):
        if count >= MAX_WARMUP_RECORDS:
            raise ValueError(f"more than {MAX_WARMUP_RECORDS} warm-up records in {path}")
        prediction_log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if prediction_log.WhichOneof("log_type") != "predict_log":
            raise ValueError(f"unsupported warm-up log type in {path}: only predict_log is served")
        request = prediction_log.predict_log.request
        inputs = {name: array_from_proto(name, proto) for name, proto in request.inputs.items()}
        servable.run(request.model_spec.signature_name, inputs, request.output_filter)
        count += 1
    log.info(
        "Finished reading warmup data for model at %s. Number of warmup records read: %d.",
        servable.path,
        count,
    )
    return count
