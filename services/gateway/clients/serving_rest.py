"""The model server's REST API (TF Serving's): the versions it serves and a version's threshold."""

from __future__ import annotations

import httpx
from pydantic import BaseModel, Field

from shared.contract import SERVING_SIGNATURE, THRESHOLD


class ServingStatus(BaseModel):
    """Versions the model server reports for one model name."""

    available_versions: list[int] = Field(default_factory=list)
    states: dict[int, str] = Field(default_factory=dict)

    @property
    def serving_version(self) -> int | None:
        return max(self.available_versions) if self.available_versions else None


class ServingRestClient:
    """TF Serving REST calls (GET status and metadata, one tiny predict for the threshold)."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, model_name: str) -> None:
        self._http = http
        self._base = f"{base_url.rstrip('/')}/v1/models/{model_name}"
        self._thresholds: dict[int, float] = {}  # a version's threshold never changes

    async def status(self) -> ServingStatus:
        response = await self._http.get(self._base)
        response.raise_for_status()
        states: dict[int, str] = {}
        for entry in response.json().get("model_version_status", []):
            states[int(entry["version"])] = str(entry.get("state", "UNKNOWN"))
        available = sorted(v for v, state in states.items() if state == "AVAILABLE")
        return ServingStatus(available_versions=available, states=states)

    async def threshold(self, version: int, image_size: int) -> float:
        """The decision threshold the version's `serving_default` signature outputs."""
        if version not in self._thresholds:
            input_name = await self._input_name(version)
            blank = [[[0] for _ in range(image_size)] for _ in range(image_size)]
            response = await self._http.post(
                f"{self._base}/versions/{version}:predict",
                json={"signature_name": SERVING_SIGNATURE, "inputs": {input_name: [blank]}},
            )
            response.raise_for_status()
            outputs = response.json()["outputs"]
            self._thresholds[version] = float(outputs[THRESHOLD][0])
        return self._thresholds[version]

    async def _input_name(self, version: int) -> str:
        """The single input of `serving_default`, read from the metadata, not assumed."""
        response = await self._http.get(f"{self._base}/versions/{version}/metadata")
        response.raise_for_status()
        signatures = response.json()["metadata"]["signature_def"]["signature_def"]
        inputs = signatures[SERVING_SIGNATURE]["inputs"]
        return str(next(iter(inputs)))
