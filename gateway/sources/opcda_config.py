"""Configuration of an OPC DA connection through an OpenOPC Gateway Service.

Kept apart from :mod:`gateway.sources.opcda` so that reading or validating a configuration (every component,
gatewayctl, the build) never imports OpenOPC or Pyro4.
"""

from __future__ import annotations

from datetime import timezone, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from gateway.diagnostics import Finding
from gateway.sources.common import ConnectionBase

if TYPE_CHECKING:
    from gateway.sources.opcda import OpcDaSource


class OpcDaTls(BaseModel):
    """TLS to the gateway through Pyro's SSL settings; the gateway needs ``PYRO_SSL=1`` and its certificate."""

    model_config = ConfigDict(extra="forbid")

    ca_file: Path = Field(description="CA certificate(s) (PEM) that signed the gateway's certificate.")
    cert_file: Path | None = Field(default=None, description="Client certificate (PEM) for mutual TLS.")
    key_file: Path | None = Field(default=None, description="Private key (PEM, unencrypted) of cert_file.")

    @model_validator(mode="after")
    def _pair(self) -> OpcDaTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both for mutual TLS, or neither")
        return self


class OpcDaConnection(ConnectionBase):
    """One OPC DA server behind one OpenOPC Gateway Service."""

    type: Literal["opcda"] = Field(default="opcda", description="Connection type.")
    host: str = Field(min_length=1, description="Host of the OpenOPC Gateway Service (the Windows machine).")
    port: int = Field(default=7766, ge=1, le=65535, description="Port of the gateway service (Pyro4).")
    server: str = Field(
        min_length=1, description="OPC DA server ProgID on the Windows host, e.g. Matrikon.OPC.Simulation.1; "
        "several separated by ';' are tried in order."
    )
    opc_host: str = Field(default="localhost", description="Host of the OPC DA server as the gateway sees it.")
    items: list[str] = Field(default_factory=list, description="Item ids to read, e.g. Random.Real8.")
    browse: list[str] = Field(
        default_factory=list, description="Item id patterns with * and ?, e.g. 'Reactor.*', expanded with the "
        "gateway's flat browse after every connect; added to items."
    )
    scan_interval_s: float = Field(default=1.0, gt=0, description="Read every item this often (one group read).")
    sync: bool = Field(
        default=True, description="SyncRead from the server's cache (true) or OpenOPC's AsyncRefresh (false, for "
        "servers that only update through callbacks)."
    )
    timeout_s: float = Field(default=10.0, gt=0, le=600, description="Timeout of every call to the gateway.")
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120, description="Timeout of opening a session.")
    # allow_plaintext comes before tls: tls's validator reads it (pydantic validates in field order)
    allow_plaintext: bool = Field(
        default=False, description="Use the link without tls anyway: it is unencrypted and unauthenticated (Pyro4 "
        "has none), so anyone who reaches the port can read and write the OPC DA server, and anyone who can "
        "impersonate the gateway talks to this collector. A loud WARNING is logged at start. Only for a gateway "
        "on an isolated segment, better with hmac_key."
    )
    tls: OpcDaTls | None = Field(
        default=None, validate_default=True, description="TLS through Pyro's SSL settings (the gateway runs with "
        "PYRO_SSL=1). Required unless allow_plaintext is true."
    )
    hmac_key: SecretStr | None = Field(
        default=None, min_length=1, description="The gateway service's Pyro HMAC key, when it has one (every "
        "message is then signed with it, and unsigned answers are refused before they are decoded); never "
        "logged. A secret: prefer a secret reference under Greengrass."
    )
    rewrite_proxy_host: Literal["unspecified", "always", "never"] = Field(
        default="unspecified", description="Point the gateway's per-client proxy at host:port: when it says "
        "0.0.0.0 (a gateway bound to all interfaces), always (NAT, tunnels), or never."
    )
    naive_timestamp_tz: str = Field(
        default="UTC", description="Time zone of gateway timestamps without an offset (old pywin32 text "
        "'05/01/24 10:00:00'); the OPC DA host's zone if its wrapper reports local time."
    )

    @field_validator("tls")
    @classmethod
    def _tls_or_allowed_plaintext(cls, tls: OpcDaTls | None, info: ValidationInfo) -> OpcDaTls | None:
        if tls is None and not info.data.get("allow_plaintext"):
            raise ValueError("not set: without tls the link to the OpenOPC gateway is unencrypted and unauthenticated "
                             "(Pyro4 has none), anyone who can impersonate the gateway talks to this collector: "
                             "set tls (ca_file, cert_file, key_file), or set allow_plaintext: true to use a plain "
                             "link knowingly")
        return tls

    @field_validator("naive_timestamp_tz")
    @classmethod
    def _zone(cls, value: str) -> str:
        zone_of(value)
        return value

    @model_validator(mode="after")
    def _something_to_read(self) -> OpcDaConnection:
        if not self.items and not self.browse:
            raise ValueError("nothing to read: give items (item ids) or browse (patterns such as 'Reactor.*')")
        return self

    @property
    def naive_tz(self) -> tzinfo:
        """The zone of ``naive_timestamp_tz``, for timestamps the server sends without one."""
        return zone_of(self.naive_timestamp_tz)

    def build(self) -> OpcDaSource:
        """The connection's source (see :mod:`gateway.plugin`); OpenOPC and Pyro4 are loaded here, not by
        validation."""
        from gateway.sources.opcda import OpcDaSource

        return OpcDaSource(self)

    async def diagnose(self, timeout_s: float) -> list[Finding]:
        """Doctor's checks of this gateway service and server (see :mod:`gateway.plugin`)."""
        from gateway.sources.opcda import diagnose

        return await diagnose(self, timeout_s)


def zone_of(name: str) -> tzinfo:
    """The tzinfo of an IANA zone name; ValueError naming it when unknown."""
    if name.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}: use an IANA name such as UTC or Europe/Berlin") from exc
