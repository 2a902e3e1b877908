"""gRPC status codes become typed errors, transient exactly where a retry can help."""

from __future__ import annotations

import grpc
import pytest

from services.worker.errors import (
    InferenceRejectedError,
    ModelNotFoundError,
    ModelServerError,
    ModelVersionGoneError,
    error_from_rpc,
)
from shared.errors import ModelUnavailableError


class FailedCall(grpc.RpcError):
    """What a stub raises: an RpcError that is also a Call with a code and details."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize("code", [
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
])
def test_unavailable_slow_or_overloaded_is_transient(code):
    error = error_from_rpc(FailedCall(code, "connection refused"), target="127.0.0.1:1")
    assert isinstance(error, ModelUnavailableError)
    assert error.transient
    assert error.code == "model_unavailable"
    assert code.name in error.message and "127.0.0.1:1" in error.message


def test_invalid_argument_is_permanent():
    error = error_from_rpc(FailedCall(grpc.StatusCode.INVALID_ARGUMENT, "bad dtype"), target="t")
    assert isinstance(error, InferenceRejectedError)
    assert not error.transient
    assert "bad dtype" in error.message


def test_missing_model_is_permanent():
    error = error_from_rpc(FailedCall(grpc.StatusCode.NOT_FOUND, "Servable not found"), target="t")
    assert isinstance(error, ModelNotFoundError)
    assert not error.transient


def test_a_pinned_version_that_was_unloaded_is_transient():
    error = error_from_rpc(FailedCall(grpc.StatusCode.NOT_FOUND), target="t", pinned_version=4)
    assert isinstance(error, ModelVersionGoneError)
    assert error.transient
    assert "4" in error.message


@pytest.mark.parametrize("code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                                  grpc.StatusCode.PERMISSION_DENIED])
def test_other_failures_are_permanent(code):
    error = error_from_rpc(FailedCall(code, "boom"), target="t")
    assert isinstance(error, ModelServerError)
    assert not error.transient
