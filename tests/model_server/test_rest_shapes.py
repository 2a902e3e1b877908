"""TF Serving's JSON request/response shapes (row and column formats), without a server."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from services.model_server.errors import ServingError
from services.model_server.rest_api import _json_outputs, _named_values


def test_row_and_column_requests_name_their_inputs():
    assert _named_values({"instances": [[1], [2]]}, ["image"]) == ({"image": [[1], [2]]}, True)
    rows = {"instances": [{"x": 1, "y": 2}, {"x": 3, "y": 4}]}
    assert _named_values(rows, ["x", "y"]) == ({"x": [1, 3], "y": [2, 4]}, True)
    assert _named_values({"inputs": {"x": [1]}}, ["x", "y"]) == ({"x": [1]}, False)
    assert _named_values({"inputs": [[1]]}, ["image"]) == ({"image": [[1]]}, False)
    with pytest.raises(ServingError):
        _named_values({"instances": [[1]]}, ["x", "y"])
    with pytest.raises(ServingError):
        _named_values({"instances": []}, ["x"])


def test_row_and_column_responses():
    both = {"p": np.array([0.1, 0.9]), "c": np.array([[1, 2], [3, 4]])}
    assert _json_outputs(both, row_format=True) == {
        "predictions": [{"p": 0.1, "c": [1, 2]}, {"p": 0.9, "c": [3, 4]}]}
    assert _json_outputs(both, row_format=False) == {"outputs": {"p": [0.1, 0.9],
                                                                 "c": [[1, 2], [3, 4]]}}
    assert _json_outputs({"p": np.array([0.5])}, row_format=True) == {"predictions": [0.5]}


def test_rows_need_one_batch_size_across_outputs():
    with pytest.raises(ServingError) as caught:
        _json_outputs({"p": np.array([1.0, 2.0]), "t": np.array(0.5)}, row_format=True)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
