"""One loaded model version: its SavedModel, its signature defs, and running a signature."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from services.model_server.errors import ServingError, invalid_argument

# TF Serving answers a request that names no signature with the SavedModel default one.
DEFAULT_SIGNATURE = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY


def read_signature_defs(version_dir: Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The serving meta graph's signature defs, as TF Serving reports them in metadata."""
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError(f"{version_dir} has no meta graph tagged 'serve'")


def _shape_fits(shape: tuple[int, ...], expected) -> bool:
    if expected.unknown_rank:
        return True
    if len(shape) != len(expected.dim):
        return False
    return all(dim.size in (-1, size) for dim, size in zip(expected.dim, shape, strict=True))


def _describe_shape(expected) -> str:
    return "unknown" if expected.unknown_rank else str([d.size for d in expected.dim])


class LoadedVersion:
    """A model version in memory; thread-safe to run once constructed."""

    def __init__(self, model_name: str, version: int, path: Path) -> None:
        self.model_name = model_name
        self.version = version
        self.path = Path(path)
        self.signature_defs = read_signature_defs(self.path)
        self._module = tf.saved_model.load(str(self.path), tags=["serve"])
        self._functions = dict(self._module.signatures)

    def signature_def_map(self) -> get_model_metadata_pb2.SignatureDefMap:
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in self.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature)
        return signature_map

    def signature(self, name: str) -> meta_graph_pb2.SignatureDef:
        name = name or DEFAULT_SIGNATURE
        if name not in self._functions:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f'Serving signature key "{name}" not found.',
            )
        return self.signature_defs[name]

    def run(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_filter: Iterable[str] = (),
    ) -> dict[str, np.ndarray]:
        """Run a signature on named inputs; INVALID_ARGUMENT for inputs that do not match it."""
        signature_name = signature_name or DEFAULT_SIGNATURE
        signature = self.signature(signature_name)
        self._check_inputs(signature, inputs)
        wanted = list(output_filter)
        unknown = [name for name in wanted if name not in signature.outputs]
        if unknown:
            raise invalid_argument(
                f"output tensor alias not found in signature: {unknown[0]} Outputs expected to be "
                f"in the set {{{','.join(sorted(signature.outputs))}}}."
            )
        function = self._functions[signature_name]
        try:
            outputs = function(**{name: tf.constant(value) for name, value in inputs.items()})
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
            raise invalid_argument(f"running signature {signature_name!r} failed: {exc}") from exc
        return {
            name: tensor.numpy() for name, tensor in outputs.items() if not wanted or name in wanted
        }

    @staticmethod
    def _check_inputs(
        signature: meta_graph_pb2.SignatureDef, inputs: Mapping[str, np.ndarray]
    ) -> None:
        for name in inputs:
            if name not in signature.inputs:
                raise invalid_argument(
                    f"input tensor alias not found in signature: {name}. Inputs expected to be in "
                    f"the set {{{','.join(sorted(signature.inputs))}}}."
                )
        missing = sorted(set(signature.inputs) - set(inputs))
        if missing:
            raise invalid_argument(
                f"Request inputs do not match required inputs for the signature. "
                f"Missing but required: {{{','.join(missing)}}}."
            )
        for name, value in inputs.items():
            info = signature.inputs[name]
            expected = tf.dtypes.as_dtype(info.dtype)
            actual = tf.dtypes.as_dtype(value.dtype)
            if actual != expected:
                raise invalid_argument(
                    f"Expects arg {name!r} to be {expected.name} but {actual.name} is provided"
                )
            if not _shape_fits(value.shape, info.tensor_shape):
                raise invalid_argument(
                    f"input {name!r} has shape {list(value.shape)} but the signature expects "
                    f"{_describe_shape(info.tensor_shape)}"
                )
