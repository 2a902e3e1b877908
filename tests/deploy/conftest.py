"""Fixtures for the deployment checks: each overlay rendered once per test run."""

from __future__ import annotations

import pytest

from tests.deploy.loaders import K8S_DIR, OVERLAYS, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """Overlay name -> the objects `kubectl kustomize` renders for it."""
    return {overlay: render(K8S_DIR / "overlays" / overlay) for overlay in OVERLAYS}


@pytest.fixture(params=OVERLAYS)
def overlay_objects(request, rendered) -> list[dict]:
    return rendered[request.param]
