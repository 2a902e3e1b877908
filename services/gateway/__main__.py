"""`python -m services.gateway`: serve the API and web page with uvicorn (HTTPS by default)."""

from __future__ import annotations

import logging

import uvicorn

from services.gateway.app import create_app
from services.gateway.config import get_settings
from services.gateway.logredact import log_config
from services.gateway.tls import tls_files


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_settings()
    app = create_app(settings)
    tls = tls_files(settings)
    scheme = "https" if tls else "http"
    loopback_or_any = settings.gateway_host in ("127.0.0.1", "0.0.0.0")
    host = "localhost" if loopback_or_any else settings.gateway_host
    print(f"cxr-pneumonia gateway on {scheme}://{host}:{settings.gateway_port}/", flush=True)
    demo_key = app.state.resources.demo_key
    if demo_key:
        print(f"Development API key (client 'demo'): {demo_key}  "
              f"(also in {settings.demo_key_file})", flush=True)
    uvicorn.run(
        app, host=settings.gateway_host, port=settings.gateway_port,
        ssl_certfile=str(tls[0]) if tls else None, ssl_keyfile=str(tls[1]) if tls else None,
        server_header=False, proxy_headers=False, log_level="info", log_config=log_config(),
    )


if __name__ == "__main__":
    main()
