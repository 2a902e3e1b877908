"""FastAPI dependencies with readable aliases (`ResourcesDep`, `ClientDep`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.gateway.errors import UnauthorizedError
from services.gateway.resources import GatewayResources

# Declares the scheme in the OpenAPI schema; the check itself runs in access.ApiAccessMiddleware.
bearer_scheme = HTTPBearer(auto_error=False, description="An API key issued to your client.")


def get_resources(request: Request) -> GatewayResources:
    return request.app.state.resources


ResourcesDep = Annotated[GatewayResources, Depends(get_resources)]


async def authenticated_client(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> str:
    """The client whose key the access middleware accepted for this request."""
    client = getattr(request.state, "client", None)
    if client is None:
        raise UnauthorizedError()
    return client


ClientDep = Annotated[str, Depends(authenticated_client)]
