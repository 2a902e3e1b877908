"""The PACS service's settings (env prefix `CXR_`); variables are listed in docs/settings.md."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, field_validator, model_validator

from shared.settings import SharedSettings


def _ae_title(value: str) -> str:
    title = value.strip()
    if not 1 <= len(title) <= 16 or "\\" in title or not title.isprintable():
        raise ValueError(f"{value!r} is not a valid AE title (1 to 16 printable characters, no \\)")
    return title


class PacsSettings(SharedSettings):
    """What `python -m services.pacs` and the `pacs` Celery queue read."""

    pacs_ae_title: str = Field(default="CXR", description=(
        "Our AE title: called by senders, calling when we send reports."))
    pacs_host: str = Field(default="0.0.0.0", description="C-STORE SCP listen address.")
    pacs_port: int = Field(default=11112, ge=1, le=65535, description="C-STORE SCP listen port.")
    pacs_allowed_calling_ae_titles: str = Field(default="", description=(
        "Comma list of the AE titles allowed to send. Empty: every calling AE title is accepted "
        "in development/test; in production the service refuses to start (it would otherwise "
        "accept images from anyone on the network)."))
    pacs_destination: str = Field(default="", description=(
        "`AET@host:port` of the PACS receiving the SR and Secondary Capture; empty: reports are "
        "not sent (`skipped`)."))
    pacs_stow_report_clients: str = Field(default="", description=(
        "Comma list of the API clients (names in `CXR_API_KEYS`) whose STOW-RS jobs get their SR "
        "and heatmap written into the PACS at `CXR_PACS_DESTINATION`. The report of a STOW-RS "
        "job from any other client is not sent (`extra.pacs_report.state` `not_sent`, reason "
        "`sender_not_allowed`): an API key alone does not let a client write into the "
        "hospital's PACS. Empty (the default): no STOW-RS job's results are sent. C-STORE jobs "
        "(from the AE titles in `CXR_PACS_ALLOWED_CALLING_AE_TITLES`) are not affected. The local "
        "stack (`make up`) lists its demo client, `demo`."))
    pacs_manufacturer: str = Field(default="cxr-pneumonia", description=(
        "Manufacturer written into the SR and Secondary Capture."))
    pacs_network_timeout_s: float = Field(default=10.0, gt=0, description=(
        "The report sender's ACSE, DIMSE and network timeouts; on the C-STORE SCP, the idle "
        "timeout of an established association (aborted after this long without a message)."))
    pacs_scp_acse_timeout_s: float = Field(default=5.0, gt=0, description=(
        "Seconds the C-STORE SCP waits for a new connection's A-ASSOCIATE request (and for an "
        "A-RELEASE answer); a connection that sends none in time (nothing, or a request "
        "trickling in) is closed a second later at the latest, so idle or unauthenticated "
        "connections cannot hold the node's association slots."))
    pacs_scp_dimse_timeout_s: float = Field(default=30.0, gt=0, description=(
        "Seconds the C-STORE SCP waits for a DIMSE message it expects within an association."))
    pacs_scp_max_associations: int = Field(default=32, ge=1, description=(
        "Associations (open connections) the C-STORE SCP serves at once; more are rejected "
        "(A-ASSOCIATE-RJ, local limit exceeded)."))
    pacs_scp_max_connections_per_address: int = Field(default=4, ge=1, description=(
        "Connections one sender address may hold open to the C-STORE SCP at once; a further "
        "connection from that address is closed at once, so one host cannot take every slot."))
    pacs_metrics_port: int | None = Field(default=None, ge=1, le=65535, description=(
        "Port of the C-STORE SCP's Prometheus endpoint (plain HTTP `GET /metrics`, for the "
        "scraper only; never the DICOM port); unset: none is served."))
    pacs_sender_metrics_port: int | None = Field(default=None, ge=1, le=65535, description=(
        "Port of the report sender's Prometheus endpoint, served by the Celery worker's main "
        "process; with the prefork pool `PROMETHEUS_MULTIPROC_DIR` must name a writable folder. "
        "Unset: none is served."))
    pacs_metrics_address: str = Field(default="127.0.0.1", description=(
        "Listen address of both Prometheus endpoints: `0.0.0.0` in a container, where the port "
        "is not published (compose) and a network policy admits only Prometheus (Kubernetes)."))
    pacs_report_max_retries: int = Field(default=8, ge=0, description=(
        "Retries of a report send that failed transiently."))
    pacs_report_backoff_s: int = Field(default=2, ge=1, description=(
        "Factor of the exponential backoff (full jitter) between report sends, in seconds."))
    pacs_report_backoff_max_s: int = Field(default=300, ge=1, description=(
        "Longest wait between report sends, in seconds."))

    @field_validator("pacs_ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        return _ae_title(value)

    @field_validator("pacs_destination")
    @classmethod
    def _check_destination(cls, value: str) -> str:
        if value.strip():
            parse_destination(value)
        return value.strip()

    @model_validator(mode="after")
    def _refuse_open_door_in_production(self) -> PacsSettings:
        if self.env == "production" and not self.allowed_calling_ae_titles:
            raise ValueError("CXR_PACS_ALLOWED_CALLING_AE_TITLES must list the AE titles allowed "
                             "to send images when CXR_ENV=production")
        return self

    @model_validator(mode="after")
    def _metrics_apart_from_dicom(self) -> PacsSettings:
        if self.pacs_metrics_port is not None and self.pacs_metrics_port == self.pacs_port:
            raise ValueError("CXR_PACS_METRICS_PORT must differ from CXR_PACS_PORT (the DICOM "
                             "port serves no metrics)")
        return self

    @property
    def allowed_calling_ae_titles(self) -> list[str]:
        return [_ae_title(title) for title in self.pacs_allowed_calling_ae_titles.split(",")
                if title.strip()]

    @property
    def stow_report_clients(self) -> frozenset[str]:
        """The API clients whose STOW-RS jobs' results are sent to the PACS."""
        return frozenset(name.strip() for name in self.pacs_stow_report_clients.split(",")
                         if name.strip())

    @property
    def destination(self) -> tuple[str, str, int] | None:
        """(AE title, host, port) of the PACS that receives reports, or None."""
        return parse_destination(self.pacs_destination) if self.pacs_destination else None


def parse_destination(value: str) -> tuple[str, str, int]:
    """`AET@host:port` -> (AET, host, port); ValueError when malformed."""
    title, at, address = value.strip().partition("@")
    host, colon, port = address.rpartition(":")
    if not (at and colon and host and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{value!r} is not AET@host:port")
    return _ae_title(title), host, int(port)


@lru_cache
def get_settings() -> PacsSettings:
    """The process settings, read once (tests call `get_settings.cache_clear()`)."""
    return PacsSettings()
