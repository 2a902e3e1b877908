"""What model answers predictions: TF Serving's REST API for the version and threshold, and the
MLflow registry's REST API (alias `champion`) for its evaluation metrics and model card."""

from __future__ import annotations

import logging
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from shared.contract import CHAMPION_ALIAS, SERVING_SIGNATURE, THRESHOLD

log = logging.getLogger("cxr.gateway")
MODEL_CARD_ARTIFACT = "model_card.md"
MODEL_CARD_MAX_CHARS = 64_000
# What a down or misbehaving upstream raises here; callers degrade instead of failing.
UPSTREAM_ERRORS = (httpx.HTTPError, KeyError, ValueError, TypeError, StopIteration)


class ServingStatus(BaseModel):
    """Versions the model server reports for one model name."""

    available_versions: list[int] = Field(default_factory=list)
    states: dict[int, str] = Field(default_factory=dict)

    @property
    def serving_version(self) -> int | None:
        return max(self.available_versions) if self.available_versions else None


class RegistryInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_version: str
    alias: str = CHAMPION_ALIAS
    run_id: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    model_card: str | None = Field(
        default=None, description="The version's description, else its run's model_card.md.")


class ServingClient:
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


class RegistryClient:
    """MLflow's REST API: the version behind alias `champion` and its run's metrics."""

    def __init__(self, http: httpx.AsyncClient, tracking_uri: str, model_name: str) -> None:
        self._http = http
        self._root = tracking_uri.rstrip("/")
        self._api = f"{self._root}/api/2.0/mlflow"
        self._model_name = model_name

    async def champion(self) -> RegistryInfo | None:
        response = await self._http.get(
            f"{self._api}/registered-models/alias",
            params={"name": self._model_name, "alias": CHAMPION_ALIAS},
        )
        if response.status_code == 404:
            return None
        response.raise_for_status()
        version: dict[str, Any] = response.json()["model_version"]
        tags = {t["key"]: str(t.get("value", "")) for t in version.get("tags", [])}
        # Versions registered from a LoggedModel carry their run only as a tag.
        run_id = version.get("run_id") or tags.get("run_id") or None
        card = version.get("description") or (await self._model_card(run_id) if run_id else None)
        return RegistryInfo(
            model_version=str(version["version"]), run_id=run_id, tags=tags, model_card=card,
            metrics=await self._run_metrics(run_id) if run_id else {},
        )

    async def _model_card(self, run_id: str) -> str | None:
        """The run's `model_card.md` artifact, through the server's artifact download endpoint."""
        response = await self._http.get(f"{self._root}/get-artifact",
                                        params={"path": MODEL_CARD_ARTIFACT, "run_uuid": run_id})
        if response.status_code != 200:
            return None
        return response.text[:MODEL_CARD_MAX_CHARS]

    async def _run_metrics(self, run_id: str) -> dict[str, float]:
        response = await self._http.get(f"{self._api}/runs/get", params={"run_id": run_id})
        response.raise_for_status()
        metrics = response.json()["run"]["data"].get("metrics", [])
        return {m["key"]: float(m["value"]) for m in metrics}
