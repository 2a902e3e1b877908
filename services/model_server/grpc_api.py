"""gRPC servicers from tensorflow-serving-api's protos: PredictionService and ModelService."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from services.model_server import metrics
from services.model_server.errors import ServingError, invalid_argument
from services.model_server.servable import DEFAULT_SIGNATURE
from services.model_server.tensors import array_from_proto, proto_from_array
from services.model_server.versions import ModelManager

log = logging.getLogger(__name__)

SIGNATURE_DEF_FIELD = "signature_def"


@contextmanager
def _answering(
    context: grpc.ServicerContext, method: str, spec, signature_name: str = ""
) -> Iterator[metrics.RequestRecord]:
    """Metrics for the call, and a ServingError turned into the call's gRPC status."""
    try:
        with metrics.observed("grpc", method, spec.name, signature_name) as record:
            yield record
    except ServingError as exc:
        context.abort(exc.code, exc.message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        with _answering(context, "predict", request.model_spec, signature_name) as record:
            servable = self.manager.resolve(request.model_spec)
            record.version = servable.version
            inputs = {name: array_from_proto(name, proto) for name, proto in request.inputs.items()}
            outputs = servable.run(signature_name, inputs, request.output_filter)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = servable.model_name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = signature_name
            for name, value in outputs.items():
                response.outputs[name].CopyFrom(proto_from_array(value))
            return response

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context):
        with _answering(context, "metadata", request.model_spec) as record:
            if not request.metadata_field:
                raise invalid_argument(
                    "GetModelMetadataRequest must specify at least one metadata_field"
                )
            for field in request.metadata_field:
                if field != SIGNATURE_DEF_FIELD:
                    raise invalid_argument(f"Metadata field {field} is not supported")
            servable = self.manager.resolve(request.model_spec)
            record.version = servable.version
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.model_name
            response.model_spec.version.value = servable.version
            response.metadata[SIGNATURE_DEF_FIELD].Pack(servable.signature_def_map())
            return response

    def _unimplemented(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "only Predict and GetModelMetadata are served")

    Classify = Regress = MultiInference = _unimplemented


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context):
        with _answering(context, "status", request.model_spec):
            return get_model_status_pb2.GetModelStatusResponse(
                model_version_status=self.manager.version_statuses(request.model_spec)
            )

    def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest, context):
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise invalid_argument(
                    "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                    "Only ModelConfigList is currently supported"
                )
            self.manager.apply_config(request.config)
        except ServingError as exc:
            log.error("Config reload failed: %s", exc.message)
            context.abort(exc.code, exc.message)
        log.info(
            "Model config reloaded: %s", [m.name for m in request.config.model_config_list.config]
        )
        return model_management_pb2.ReloadConfigResponse()


def build_grpc_server(
    manager: ModelManager, host: str, port: int, max_message_bytes: int, max_workers: int = 16
) -> grpc.Server:
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(manager), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(manager), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # IPv6 in brackets
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen for gRPC on {address}")
    return server
