"""gRPC client for TensorFlow Serving's PredictionService (or the local stand-in).

Tensor keys and dtypes come from `GetModelMetadata`, cached per model version and fetched again
when the server answers with a version the client has not seen (after a promotion). Which version
answers is the server's choice: the configured version label, or its latest version.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from services.worker.errors import (
    InferenceRejectedError,
    ModelSignatureError,
    error_from_rpc,
)
from shared.contract import GRADCAM_SIGNATURE, SERVING_SIGNATURE
from shared.tensors import to_ndarray, to_tensor_proto

SIGNATURE_DEF_FIELD = "signature_def"


@dataclass(frozen=True)
class SignatureIO:
    """One signature's single input (key, dtype, shape with None for free dims) and its outputs."""

    name: str
    input_key: str
    input_dtype: np.dtype
    input_shape: tuple[int | None, ...] | None
    output_dtypes: dict[str, np.dtype]

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """`batch` checked against the signature and cast to its dtype when that loses nothing."""
        batch = np.asarray(batch)
        if not np.can_cast(batch.dtype, self.input_dtype, casting="safe"):
            raise ModelSignatureError(
                f"Signature {self.name!r} takes {self.input_dtype}, not {batch.dtype} pixels."
            )
        if self.input_shape is not None and (
            len(self.input_shape) != batch.ndim
            or any(
                want not in (None, got)
                for want, got in zip(self.input_shape, batch.shape, strict=True)
            )
        ):
            raise ModelSignatureError(
                f"Signature {self.name!r} takes shape {self.input_shape}, not {batch.shape}."
            )
        return batch.astype(self.input_dtype, copy=False)


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    version: int
    signatures: dict[str, SignatureIO]

    def signature(self, name: str) -> SignatureIO:
        try:
            return self.signatures[name]
        except KeyError:
            raise ModelSignatureError(
                f"Model {self.name} version {self.version} has no signature {name!r} "
                f"(it has {sorted(self.signatures)})."
            ) from None


@dataclass(frozen=True)
class ServingAnswer:
    """What one Predict call returned and which model version computed it."""

    model_name: str
    version: int
    outputs: dict[str, np.ndarray]


def _numpy_dtype(dtype_enum: int) -> np.dtype:
    return np.dtype(tf.dtypes.as_dtype(dtype_enum).as_numpy_dtype)


def _shape(tensor_info) -> tuple[int | None, ...] | None:
    shape = tensor_info.tensor_shape
    if shape.unknown_rank:
        return None
    return tuple(None if dim.size < 0 else dim.size for dim in shape.dim)


def parse_metadata(response: get_model_metadata_pb2.GetModelMetadataResponse) -> ModelMetadata:
    """The signatures in a `GetModelMetadata` answer; a signature must have exactly one input."""
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    if not response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map):
        raise ModelSignatureError("The model server's metadata holds no signature definitions.")
    signatures = {}
    for name, definition in signature_map.signature_def.items():
        if name.startswith("__"):  # __saved_model_init_op and similar are not callable signatures
            continue
        if len(definition.inputs) != 1:
            raise ModelSignatureError(
                f"Signature {name!r} has inputs {sorted(definition.inputs)}; one is expected."
            )
        ((input_key, input_info),) = definition.inputs.items()
        signatures[name] = SignatureIO(
            name=name,
            input_key=input_key,
            input_dtype=_numpy_dtype(input_info.dtype),
            input_shape=_shape(input_info),
            output_dtypes={
                key: _numpy_dtype(info.dtype) for key, info in definition.outputs.items()
            },
        )
    spec = response.model_spec
    return ModelMetadata(name=spec.name, version=spec.version.value, signatures=signatures)


class ServingClient:
    """Predict and Grad-CAM calls with a deadline; errors come out as `shared.errors` types."""

    def __init__(
        self,
        target: str,
        model_name: str,
        timeout_s: float,
        version_label: str | None = None,
        *,
        predict_signature: str = SERVING_SIGNATURE,
        heatmap_signature: str = GRADCAM_SIGNATURE,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.target = target
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.version_label = version_label or None
        self.predict_signature = predict_signature
        self.heatmap_signature = heatmap_signature
        # gRPC refuses messages over 4 MB by default; a batch of images or heatmaps can exceed it.
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
            ],
        )
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._lock = threading.Lock()
        self._metadata_by_version: dict[int, ModelMetadata] = {}
        self._serving_version: int | None = None

    def close(self) -> None:
        self._channel.close()

    def metadata(self, version: int | None = None) -> ModelMetadata:
        """Signatures of `version`, or of the version the server serves now (then cached)."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=[SIGNATURE_DEF_FIELD]
        )
        self._fill_spec(request.model_spec, version)
        response = self._call(self._stub.GetModelMetadata, request, pinned_version=version)
        metadata = parse_metadata(response)
        with self._lock:
            self._metadata_by_version[metadata.version] = metadata
            if version is None:
                self._serving_version = metadata.version
        return metadata

    def predict(self, batch: np.ndarray) -> ServingAnswer:
        """`serving_default` on the version the server picks."""
        return self._run(self.predict_signature, batch, version=None)

    def predict_with_heatmap(self, batch: np.ndarray) -> ServingAnswer:
        """The prediction and its Grad-CAM from one version, in one call where the model allows.

        A model whose `gradcam` signature also returns the prediction's outputs (the trainer's
        exports do) answers with one call; for another one the prediction is asked separately,
        pinned to the version that drew the heatmap, so both explain the same model.
        """
        answer = self._run(self.heatmap_signature, batch, version=None)
        metadata = self._known_metadata(answer.version)
        wanted = metadata.signature(self.predict_signature).output_dtypes
        if set(wanted) <= set(answer.outputs):
            return answer
        predicted = self._run(self.predict_signature, batch, version=answer.version)
        return ServingAnswer(
            model_name=predicted.model_name,
            version=answer.version,
            outputs={**answer.outputs, **predicted.outputs},
        )

    def _run(self, signature_name: str, batch: np.ndarray, version: int | None) -> ServingAnswer:
        signature = self._known_metadata(version).signature(signature_name)
        try:
            response = self._predict(signature, batch, version)
        except InferenceRejectedError:
            if version is not None or not self._serving_version_changed():
                raise
            # A new version with other tensor keys took over between metadata and Predict.
            signature = self._known_metadata(None).signature(signature_name)
            response = self._predict(signature, batch, version)
        answered = response.model_spec.version.value
        metadata = self._known_metadata(answered)  # new version: read and check its signature
        with self._lock:
            if version is None:
                self._serving_version = answered
        expected = metadata.signature(signature_name).output_dtypes
        outputs = {key: to_ndarray(proto) for key, proto in response.outputs.items()}
        missing = sorted(set(expected) - set(outputs))
        if missing:
            raise ModelSignatureError(f"Version {answered} answered without outputs {missing}.")
        return ServingAnswer(
            model_name=response.model_spec.name or self.model_name,
            version=answered,
            outputs=outputs,
        )

    def _predict(self, signature: SignatureIO, batch: np.ndarray, version: int | None):
        request = predict_pb2.PredictRequest()
        self._fill_spec(request.model_spec, version)
        request.model_spec.signature_name = signature.name
        request.inputs[signature.input_key].CopyFrom(to_tensor_proto(signature.prepare(batch)))
        return self._call(self._stub.Predict, request, pinned_version=version)

    def _known_metadata(self, version: int | None) -> ModelMetadata:
        with self._lock:
            key = self._serving_version if version is None else version
            cached = self._metadata_by_version.get(key) if key is not None else None
        return cached or self.metadata(version)

    def _serving_version_changed(self) -> bool:
        before = self._serving_version
        return self.metadata().version != before

    def _fill_spec(self, spec: model_pb2.ModelSpec, version: int | None) -> None:
        spec.name = self.model_name
        if version is not None:
            spec.version.value = version
        elif self.version_label:
            spec.version_label = self.version_label

    def _call(self, method, request, *, pinned_version: int | None):
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as error:
            raise error_from_rpc(
                error, target=self.target, pinned_version=pinned_version
            ) from error
