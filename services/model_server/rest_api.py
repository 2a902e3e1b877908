"""TF Serving's REST API (JSON shapes and HTTP codes) plus the Prometheus metrics page."""

from __future__ import annotations

import json
import logging
import re
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import tensorflow as tf
from google.protobuf import json_format
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tensorflow_serving.apis import model_pb2

from services.model_server import metrics
from services.model_server.errors import ServingError, invalid_argument
from services.model_server.servable import DEFAULT_SIGNATURE, LoadedVersion
from services.model_server.tensors import array_from_json
from services.model_server.versions import ModelManager

log = logging.getLogger(__name__)

MODEL_URL = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<action>/metadata|:predict|:classify|:regress)?$"
)


def _model_spec(match: re.Match) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=match["name"])
    if match["version"]:
        spec.version.value = int(match["version"])
    elif match["label"]:
        spec.version_label = match["label"]
    return spec


def _proto_json(message) -> dict:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _parse_predict_body(body: bytes) -> dict:
    try:
        request = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid_argument(f"JSON Parse error: {exc}") from exc
    if not isinstance(request, dict):
        raise invalid_argument("JSON Value: the request body must be a JSON object")
    if not isinstance(request.get("signature_name", ""), str):
        raise invalid_argument("'signature_name' key must be a string value.")
    if ("instances" in request) == ("inputs" in request):
        raise invalid_argument(
            "Missing 'inputs' or 'instances' key"
            if "inputs" not in request
            else "Not both 'inputs' and 'instances' keys"
        )
    return request


def _named_values(request: dict, input_names: list[str]) -> tuple[dict, bool]:
    """{input name: JSON value with the batch first} and whether the request was row format."""
    if "instances" in request:
        rows = request["instances"]
        if not isinstance(rows, list) or not rows:
            raise invalid_argument("'instances' must be a non-empty list")
        if all(isinstance(row, dict) for row in rows):
            names = set().union(*rows)
            return {name: [row.get(name) for row in rows] for name in names}, True
        if len(input_names) != 1:
            raise invalid_argument(
                f"the signature has inputs {sorted(input_names)}: send each instance as an object"
            )
        return {input_names[0]: rows}, True
    columns = request["inputs"]
    if isinstance(columns, dict):
        return columns, False
    if len(input_names) != 1:
        raise invalid_argument(
            f"the signature has inputs {sorted(input_names)}: send 'inputs' as an object"
        )
    return {input_names[0]: columns}, False


def _json_outputs(outputs: dict, row_format: bool):
    if not row_format:
        if len(outputs) == 1:
            return {"outputs": next(iter(outputs.values())).tolist()}
        return {"outputs": {name: value.tolist() for name, value in outputs.items()}}
    if len(outputs) == 1:
        return {"predictions": next(iter(outputs.values())).tolist()}
    batch_sizes = {value.shape[0] if value.ndim else None for value in outputs.values()}
    if len(batch_sizes) != 1 or None in batch_sizes:
        raise invalid_argument(
            "the outputs have no common batch size: ask with 'inputs' for column format"
        )
    batch = batch_sizes.pop()
    return {
        "predictions": [
            {name: value[i].tolist() for name, value in outputs.items()} for i in range(batch)
        ]
    }


class RestApi:
    """The request handling, separate from the HTTP plumbing below."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def status(self, spec: model_pb2.ModelSpec) -> dict:
        with metrics.observed("rest", "status", spec.name):
            statuses = self.manager.version_statuses(spec)
        return {"model_version_status": [_proto_json(s) for s in statuses]}

    def metadata(self, spec: model_pb2.ModelSpec) -> dict:
        with metrics.observed("rest", "metadata", spec.name) as record:
            servable = self.manager.resolve(spec)
            record.version = servable.version
        return {
            "model_spec": {
                "name": servable.model_name,
                "signature_name": "",
                "version": str(servable.version),
            },
            "metadata": {"signature_def": _proto_json(servable.signature_def_map())},
        }

    def predict(self, spec: model_pb2.ModelSpec, body: bytes) -> dict:
        with metrics.observed("rest", "predict", spec.name) as record:
            request = _parse_predict_body(body)
            signature_name = request.get("signature_name") or DEFAULT_SIGNATURE
            record.signature_name = signature_name
            servable = self.manager.resolve(spec)
            record.version = servable.version
            inputs, row_format = self._inputs(servable, signature_name, request)
            outputs = servable.run(signature_name, inputs)
        return _json_outputs(outputs, row_format)

    @staticmethod
    def _inputs(servable: LoadedVersion, signature_name: str, request: dict) -> tuple[dict, bool]:
        signature = servable.signature(signature_name)
        values, row_format = _named_values(request, list(signature.inputs))
        arrays = {}
        for name, value in values.items():
            info = signature.inputs.get(name)
            # Unknown names pass through untyped so the signature check names them.
            dtype = tf.dtypes.as_dtype(info.dtype) if info is not None else None
            arrays[name] = array_from_json(name, value, dtype)
        return arrays, row_format


class _Handler(BaseHTTPRequestHandler):
    api: RestApi  # set on the subclass made by build_rest_server
    max_body_bytes: int
    metrics_path: str | None
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, delayed ACKs stall each answer.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload, indent=1).encode())

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if method == "GET" and self.metrics_path and path == self.metrics_path:
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
                return
            # Read the whole body first: one left unread would be taken for the next request.
            body = self._read_body() if method == "POST" else b""
            self._send_json(200, self._model_request(method, path, body))
        except ServingError as exc:
            self._send_json(exc.http_status, {"error": exc.message})
        except Exception:  # noqa: BLE001 - a bug must answer 500, not drop the connection
            log.exception("REST %s %s failed", method, path)
            self._send_json(500, {"error": "internal error"})

    def _model_request(self, method: str, path: str, body: bytes) -> dict:
        match = MODEL_URL.match(path)
        if match is None or (method == "GET") != (match["action"] in (None, "/metadata")):
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {method} {path}")
        spec = _model_spec(match)
        if match["action"] is None:
            return self.api.status(spec)
        if match["action"] == "/metadata":
            return self.api.metadata(spec)
        if match["action"] != ":predict":
            raise ServingError(
                grpc.StatusCode.UNIMPLEMENTED, f"{match['action'][1:]} is not served"
            )
        return self.api.predict(spec, body)

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise invalid_argument("Content-Length is not a number") from None
        if length > self.max_body_bytes:
            self.close_connection = True  # the unread body must not be taken for a request
            raise ServingError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request body of {length} bytes is over {self.max_body_bytes}",
            )
        return self.rfile.read(length)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")


class _IPv6HTTPServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def build_rest_server(
    manager: ModelManager, host: str, port: int, max_body_bytes: int, metrics_path: str | None
) -> ThreadingHTTPServer:
    attributes = {
        "api": RestApi(manager),
        "max_body_bytes": max_body_bytes,
        "metrics_path": metrics_path,
    }
    server_class = _IPv6HTTPServer if ":" in host else ThreadingHTTPServer
    server = server_class((host, port), type("RestHandler", (_Handler,), attributes))
    server.daemon_threads = True
    return server
