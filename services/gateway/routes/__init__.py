"""One router per resource; `services.gateway.app` includes them all."""
