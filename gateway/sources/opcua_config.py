"""Configuration of an OPC UA connection: endpoint, nodes or browse patterns, subscription, security and identity.

Kept apart from :mod:`gateway.sources.opcua` so that reading or validating a configuration (every component,
gatewayctl, the build) never imports asyncua, the heaviest library of the gateway (~35 MB, 0.5 s).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from gateway.diagnostics import Finding
from gateway.redact import userinfo_problem
from gateway.sources.common import ConnectionBase
from gateway.sources.opcua_names import config_problem

if TYPE_CHECKING:
    from gateway.sources.opcua import OpcUaSource

# The OPC UA string form of a node id (Part 6, 5.3.1.10), after an optional nsu= prefix has been taken off.
_NODE_ID = re.compile(
    r"^(ns=\d+;)?(i=\d+|s=.+|g=[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}|b=[A-Za-z0-9+/]*=*)$", re.DOTALL
)


class OpcUaSecurity(BaseModel):
    """How the gateway authenticates the server and itself."""

    model_config = ConfigDict(extra="forbid")

    policy: Literal["None", "Basic256Sha256"] = Field(default="None", description="Security policy.")
    # validate_default: an omitted mode must be checked against the policy too (policy Basic256Sha256 without a
    # mode used to connect with no security at all)
    mode: Literal["None", "Sign", "SignAndEncrypt"] = Field(
        default="None", validate_default=True,
        description="Message security mode; Sign or SignAndEncrypt need policy Basic256Sha256, which needs one of "
        "them.",
    )
    allow_insecure_identity: bool = Field(
        default=False,
        description="Allow a password on a channel with mode None. Such a password is readable by whoever answers "
        "at the endpoint (sent in clear, or encrypted for a server certificate nobody checked); prefer mode Sign or "
        "SignAndEncrypt with a trusted server certificate.",
    )
    pki_dir: str = Field(
        default="opcua-pki",
        description="Folder of the gateway's own generated certificate (own/) and, by default, of the trust list "
        "(trusted/); relative paths are under the component's working directory, which survives restarts.",
    )
    trust_dir: str | None = Field(
        default=None,
        description="Folder of trusted server certificates (DER or PEM); default <pki_dir>/trusted. "
        "Add one with `gatewayctl opcua trust URL --trust-dir DIR --accept --thumbprint SHA256`.",
    )
    certificate: str | None = Field(
        default=None, description="Provided client certificate file (DER or PEM); generated when unset."
    )
    private_key: str | None = Field(default=None, validate_default=True,
                                    description="Private key file of the provided certificate.")
    application_uri: str | None = Field(
        default=None,
        description="Application URI of the gateway; must match the certificate's URI. Default: taken from a "
        "provided certificate, else urn:<hostname>:factoryedge:gateway.",
    )
    # password is declared before username, and every check is a field validator, so that no error message ever
    # echoes the security section with the password in it
    password: SecretStr | None = Field(default=None, description="Password of the user name identity; never logged.")
    username: str | None = Field(default=None, validate_default=True, description="User name identity (with "
                                 "password).")
    user_certificate: str | None = Field(default=None, description="Certificate identity: user certificate file.")
    user_private_key: str | None = Field(default=None, validate_default=True,
                                         description="Certificate identity: its private key file.")

    @field_validator("mode")
    @classmethod
    def _mode_needs_policy(cls, mode: str, info: ValidationInfo) -> str:
        policy = info.data.get("policy", "None")
        if mode != "None" and policy == "None":
            raise ValueError(f"mode {mode} needs a policy: set security.policy: Basic256Sha256")
        if policy != "None" and mode == "None":
            raise ValueError(f"policy {policy} needs a mode: set security.mode: Sign or SignAndEncrypt")
        return mode

    @field_validator("certificate", "private_key", "user_certificate")
    @classmethod
    def _exists(cls, path: str | None, info: ValidationInfo) -> str | None:
        if path and not Path(path).is_file():
            raise ValueError(f"file {path} does not exist: fix the path or copy the file there")
        if info.field_name == "private_key" and bool(path) != bool(info.data.get("certificate")):
            raise ValueError("certificate and private_key go together: set both (or neither, to generate one)")
        return path

    @field_validator("password")
    @classmethod
    def _password_needs_a_secure_channel(cls, password: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        # On a None channel the gateway checks no server certificate, so the password reaches whoever answers:
        # asyncua sends it in clear, or encrypted for the certificate that same server presents (docs/collectors.md)
        if password is not None and info.data.get("mode") == "None" and not info.data.get("allow_insecure_identity"):
            raise ValueError("a password on security mode None reaches whoever answers at the endpoint (no server "
                             "certificate is checked, the channel is not encrypted): set security.policy: "
                             "Basic256Sha256 and security.mode: SignAndEncrypt (or Sign), or set "
                             "security.allow_insecure_identity: true to send it anyway")
        return password

    @field_validator("username")
    @classmethod
    def _user_and_password(cls, username: str | None, info: ValidationInfo) -> str | None:
        has_password = info.data.get("password") is not None
        if has_password and not username:
            raise ValueError("a password is set without username: add security.username")
        if username and not has_password and "password" in info.data:
            raise ValueError("username needs a password: add security.password")
        return username

    @field_validator("user_private_key")
    @classmethod
    def _user_key(cls, key: str | None, info: ValidationInfo) -> str | None:
        if key and not Path(key).is_file():
            raise ValueError(f"file {key} does not exist: fix the path or copy the file there")
        if bool(key) != bool(info.data.get("user_certificate")):
            raise ValueError("user_certificate and user_private_key go together: set both")
        if key and info.data.get("username"):
            raise ValueError("username and user_certificate are both set: choose one identity")
        return key

    @property
    def secure(self) -> bool:
        return self.mode != "None"

    def trust_path(self) -> Path:
        return Path(self.trust_dir) if self.trust_dir else Path(self.pki_dir) / "trusted"


class OpcUaBackfill(BaseModel):
    """Filling a gap (link loss, server or gateway restart) from the server's history (HistoryRead raw)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=True,
        description="After every (re)connect, read what was missed since the last value stored per tag from the "
        "server's history and write it flagged backfill; a node the server does not historize gets a gap record.",
    )
    max_span_s: float = Field(
        default=3600.0, gt=0,
        description="Read at most this far back; the older part of a longer gap is written as a gap record, so a "
        "long outage does not flood the server or the stream.",
    )
    max_values_per_s: float = Field(
        default=20000.0, gt=0,
        description="Pace history reads to at most this many values a second, to spare the server.",
    )
    values_per_request: int = Field(
        default=1000, ge=1, le=100000,
        description="NumValuesPerNode of one HistoryRead request; the rest follows with continuation points.",
    )


class OpcUaConnection(ConnectionBase):
    """One OPC UA server."""

    type: Literal["opcua"] = Field(default="opcua", description="Connection type.")
    endpoint: str = Field(pattern=r"^opc\.tcp://", description="Server endpoint, e.g. opc.tcp://10.0.0.5:4840; "
                          "without user info (the identity goes in security.username / security.password).")
    namespace_uri: str | None = Field(
        default=None,
        description="Namespace URI for node ids written without ns= (e.g. 's=Reactor/Pressure'); resolved to an "
        "index after every connect, because servers renumber namespaces.",
    )
    browse: list[str] = Field(
        default_factory=list,
        description="Browse patterns discovering tags after every connect: paths of browse names below Objects "
        "(a leading 'Objects/' is optional), each segment a shell pattern, '**' zero or more levels, e.g. "
        "'Reactor/*', 'Plant/**' or '**/Level'. Variables reached by hierarchical references become tags named by "
        "their path below Objects; properties only with browse_properties.",
    )
    browse_properties: bool = Field(
        default=False,
        description="Browse patterns also follow HasProperty references, so properties (EURange, "
        "EngineeringUnits, ...) become tags too. Off by default: properties describe a variable, they are not "
        "process values.",
    )
    nodes: list[str] = Field(
        default_factory=list,
        validate_default=True,  # so that 'neither nodes nor browse' is reported at nodes
        description="Node ids: 'ns=2;s=Tag', 'nsu=urn:x;s=Tag', or 's=Tag' / 'i=1001' with namespace_uri.",
    )
    mode: Literal["subscription", "polling"] = Field(
        default="subscription", description="subscription (report by exception) or polling (read every scan)."
    )
    publishing_interval_ms: float = Field(default=1000, gt=0, description="Subscription publishing interval.")
    sampling_interval_ms: float = Field(default=0, ge=0, description="Server sampling interval (0: fastest).")
    queue_size: int = Field(default=1, ge=1, description="Server-side queue per monitored item (1: latest only).")
    scan_interval_s: float = Field(default=1.0, gt=0, description="Polling interval in polling mode.")
    watchdog_s: float = Field(
        default=30.0, gt=0, description="Check a quiet subscription against a read this often; rebuild if silent."
    )
    keepalive_s: float = Field(
        default=5.0, gt=0, description="Read the server state this often; a link that does not answer within it is "
        "treated as lost and reconnected.",
    )
    session_timeout_s: float = Field(
        default=60.0, gt=0, description="Session timeout asked of the server: how long a session orphaned by a "
        "network cut lingers there (short avoids BadTooManySessions after many cuts).",
    )
    timeout_s: float = Field(default=10.0, gt=0, description="Request timeout.")
    arrays: Literal["json", "elements"] = Field(
        default="json",
        description="How an array value is carried: json, one record whose value is the JSON list (a list of lists "
        "for a matrix); elements, one tag per element named <tag>[i] (<tag>[i][j] for a matrix), each with its "
        "own deadband, for destinations that take scalars only (SiteWise).",
    )
    arrays_by_tag: dict[str, Literal["json", "elements"]] = Field(
        default_factory=dict,
        description="Source tag -> json or elements, for tags whose arrays go otherwise than `arrays` says, e.g. "
        "{'Line/Speeds': elements}.",
    )
    metadata: bool = Field(
        default=True, description="Read each tag's engineering units and ranges (the EURange, EngineeringUnits "
        "and InstrumentRange properties, and its Description) once per session and write them as one META record "
        "per tag, also shown in the status file; tags without those properties get none. false: two requests "
        "fewer per session.",
    )
    security: OpcUaSecurity = Field(default_factory=OpcUaSecurity, description="Security policy, certificates and "
                                    "identity.")
    backfill: OpcUaBackfill = Field(default_factory=OpcUaBackfill, description="Filling gaps from the server's "
                                    "history after a link loss or a restart.")

    @field_validator("endpoint")
    @classmethod
    def _no_user_info(cls, endpoint: str) -> str:
        # asyncua takes user:pass@ from the URL and uses it (NOTES 13), and the URL is shown everywhere
        problem = userinfo_problem(endpoint, "endpoint")
        if problem:
            raise PydanticCustomError("userinfo", problem)
        return endpoint

    @field_validator("nodes")
    @classmethod
    def _parseable(cls, nodes: list[str], info: ValidationInfo) -> list[str]:
        if not nodes and not info.data.get("browse"):
            raise PydanticCustomError("missing", "Field required: list node ids here, or browse patterns such as "
                                      "'Objects/Reactor/*' in browse")
        bad = []
        for nid in nodes:
            text = nid.split(";", 1)[1] if nid.startswith("nsu=") and ";" in nid else nid
            if not _NODE_ID.match(text):
                bad.append(nid)
        if bad:
            raise ValueError(f"node ids {bad} cannot be parsed: write them like 'ns=2;s=Reactor/Pressure', "
                             "'nsu=urn:site:plant;s=Tag' or 'i=1001'")
        return nodes

    @field_validator("nodes")
    @classmethod
    def _tags_unique(cls, nodes: list[str], info: ValidationInfo) -> list[str]:
        # one name in two namespaces is told apart by qualification (opcua_names); what it cannot tell apart is
        # refused here rather than merged into one tag at run time
        problem = config_problem(nodes, info.data.get("namespace_uri"), info.data.get("tag_map") or {},
                                 info.data.get("tag_prefix") or "")
        if problem:
            raise PydanticCustomError("tag_collision", problem)
        return nodes

    def build(self) -> OpcUaSource:
        """The connection's source (see :mod:`gateway.plugin`); asyncua is loaded here, not by validation."""
        from gateway.sources.opcua import OpcUaSource

        return OpcUaSource(self)

    async def diagnose(self, timeout_s: float) -> list[Finding]:
        """Doctor's checks of this server (see :mod:`gateway.plugin`)."""
        from gateway.sources.opcua_diagnose import diagnose

        return await diagnose(self, timeout_s)
