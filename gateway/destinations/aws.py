"""What the AWS destinations (SiteWise, Kinesis) share: the client, credentials, error policy and checks.

Clients are plain botocore clients (boto3 adds nothing we use and costs memory), created on first use so that a
gateway without AWS destinations never loads botocore. Credentials come from the standard chain: on a device, the
Greengrass token exchange service through ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` (botocore refreshes them before
they expire); elsewhere the environment, a profile or an instance role. SDK retries are off: the publisher retries
with its own backoff and counts every attempt. Nothing here ever logs or returns a credential.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from gateway.diagnostics import Finding, failed, passed, warning
from gateway.errors import DestinationError
from gateway.redact import redact_url, userinfo_problem

log = logging.getLogger(__name__)

CREDENTIALS_FIX = (
    "under Greengrass, deploy aws.greengrass.TokenExchangeService and give the device's token exchange role the "
    "IAM permission for this service; elsewhere set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY. "
    "Sending resumes by itself once credentials work"
)
#: Error codes that mean "the credentials are missing, wrong or expired", not "the data is bad".
CREDENTIAL_CODES = frozenset({
    "ExpiredTokenException", "ExpiredToken", "UnrecognizedClientException", "InvalidSignatureException",
    "InvalidClientTokenId", "IncompleteSignature", "MissingAuthenticationToken", "RequestExpired",
    "AccessDeniedException", "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId",
})
#: Error codes that a later retry can fix.
RETRYABLE_CODES = frozenset({
    "ThrottlingException", "Throttling", "ThrottledException", "InternalFailureException", "InternalFailure",
    "InternalServerError", "ServiceUnavailableException", "ServiceUnavailable", "LimitExceededException",
    "ProvisionedThroughputExceededException", "KMSThrottlingException", "ConflictingOperationException",
    "RequestTimeout", "RequestTimeoutException", "SlowDown",
})


class AwsSettings(BaseModel):
    """Where and how an AWS destination connects."""

    model_config = ConfigDict(extra="forbid")

    region: str | None = Field(
        default=None, description="AWS region; null takes AWS_REGION (set by Greengrass) or AWS_DEFAULT_REGION."
    )
    # allow_insecure_endpoint comes before endpoint_url: its validator reads it (pydantic validates in field order)
    allow_insecure_endpoint: bool = Field(
        default=False, description="Accept an http:// endpoint_url (a local test peer such as kinesalite): requests "
        "and records then travel unencrypted. Never for a real AWS endpoint.",
    )
    endpoint_url: str | None = Field(
        default=None, description="Service endpoint, https://; null for AWS's own (set it for a VPC endpoint).",
    )
    connect_timeout_s: float = Field(default=5.0, gt=0, description="TCP/TLS connect timeout of one call.")
    read_timeout_s: float = Field(default=30.0, gt=0, description="How long one call may wait for its answer.")

    @field_validator("endpoint_url")
    @classmethod
    def _secure_endpoint(cls, url: str | None, info: ValidationInfo) -> str | None:
        if url is None:
            return None
        problem = userinfo_problem(url, "aws.endpoint_url")
        if problem:
            raise PydanticCustomError("userinfo", problem)
        scheme = urlparse(url).scheme.lower()
        if scheme == "http" and not info.data.get("allow_insecure_endpoint"):
            # botocore signs the request but sends it, and every record, in clear to whoever answers
            raise PydanticCustomError("insecure_endpoint", "{url} is plain HTTP: requests and records would travel "
                                      "unencrypted and the endpoint is not authenticated; use an https:// endpoint "
                                      "(or null for AWS's own), or set aws.allow_insecure_endpoint: true for a "
                                      "local test peer", {"url": redact_url(url)})
        if scheme not in ("http", "https"):
            raise PydanticCustomError("endpoint_scheme", "{url} is not an https:// URL: use https://host[:port]",
                                      {"url": redact_url(url)})
        return url


def warn_insecure_endpoint(aws: AwsSettings, what: str) -> None:
    """One WARNING at a destination's start when it was knowingly allowed a plain HTTP endpoint."""
    if aws.endpoint_url and urlparse(aws.endpoint_url).scheme.lower() == "http":
        log.warning("%s: endpoint %s is plain HTTP (allow_insecure_endpoint): requests and records travel "
                    "unencrypted and the endpoint is not authenticated; use https:// outside tests", what,
                    aws.endpoint_url)


_SESSION_LOCK = threading.Lock()
_SESSION: tuple[tuple[str | None, ...], Any] | None = None
# The environment the standard chain reads: a session is made again only if it changes (tests do that).
_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                   "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                   "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN")


def make_client(service: str, aws: AwsSettings, what: str, pool: int = 4, *, validate: bool = True) -> Any:
    """A botocore client with our timeouts and no SDK retries. Raises a retryable DestinationError without region.

    ``validate=False`` turns off botocore's client-side parameter validation, for a caller whose every parameter is
    built by our code from checked settings (the service validates again either way).
    """
    import botocore.config
    import botocore.session

    region = aws.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        raise DestinationError(f"{what}: no AWS region", fix="set region in the destination, or AWS_REGION",
                               retryable=True)
    config = botocore.config.Config(
        connect_timeout=aws.connect_timeout_s, read_timeout=aws.read_timeout_s,
        retries={"total_max_attempts": 1}, max_pool_connections=pool, parameter_validation=validate,
        # Data-plane calls (SiteWise) prefix the host with "data."; a local endpoint has no such name.
        inject_host_prefix=aws.endpoint_url is None,
    )
    global _SESSION
    env = tuple(os.environ.get(name) for name in _CREDENTIAL_ENV)
    with _SESSION_LOCK:  # creating sessions and clients is not thread-safe in botocore
        if _SESSION is None or _SESSION[0] != env:
            # One session for every client: its loaded endpoint and model data and its credentials are shared
            # (a session per client costs ~7 MB more and fetches credentials from the TES once per client).
            _SESSION = (env, botocore.session.get_session())
        return _SESSION[1].create_client(service, region_name=region, endpoint_url=aws.endpoint_url, config=config)


def error_code(exc: BaseException) -> str:
    """The service's error code of a botocore ClientError ('' for other errors)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def classify(exc: Exception, what: str) -> DestinationError:
    """Turn a botocore failure of a whole call into our error: credentials and transport are retried, others not.

    A non-retryable result makes the publisher bisect the batch to find the record that causes it.
    """
    import botocore.exceptions as bx

    code = error_code(exc)
    if isinstance(exc, bx.NoCredentialsError | bx.CredentialRetrievalError | bx.NoRegionError) \
            or code in CREDENTIAL_CODES:
        reason = code or type(exc).__name__
        return DestinationError(f"{what}: AWS refused or found no credentials ({reason})", fix=CREDENTIALS_FIX,
                                retryable=True)
    if code in RETRYABLE_CODES:
        return DestinationError(f"{what}: {code}", fix="retried with backoff; raise the quota if it persists",
                                retryable=True)
    if isinstance(exc, bx.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        message = exc.response.get("Error", {}).get("Message", "")
        return DestinationError(f"{what}: {code or 'error'} (HTTP {status}): {message}",
                                fix="the service refused the request; see the message",
                                retryable=int(status) >= 500)
    if isinstance(exc, bx.ParamValidationError):
        return DestinationError(f"{what}: request refused by the SDK: {exc}", fix="report this bug with the record",
                                retryable=False)
    # EndpointConnectionError, timeouts, closed connections, proxy errors: the network or the service is down.
    return DestinationError(f"{what}: {type(exc).__name__}: {exc}",
                            fix="check the network, DNS and endpoint; the data stays buffered", retryable=True)


def endpoint_of(service_prefix: str, aws: AwsSettings) -> tuple[str, int]:
    """Host and port the client will connect to."""
    if aws.endpoint_url:
        url = urlparse(aws.endpoint_url)
        return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    region = aws.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return f"{service_prefix}.{region}.amazonaws.com", 443


async def diagnose_aws(service_prefix: str, aws: AwsSettings, timeout_s: float) -> list[Finding]:
    """Credentials resolvable (never shown), region set, endpoint reachable over TCP."""
    findings: list[Finding] = []
    region = aws.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    findings.append(passed("aws region", region) if region
                    else failed("aws region", "no region configured", "set region in the destination or AWS_REGION"))

    def resolve() -> tuple[str, str]:
        import botocore.session

        creds = botocore.session.get_session().get_credentials()
        if creds is None:
            return "", ""
        method = str(getattr(creds, "method", "") or "unknown")
        expiry = getattr(creds, "_expiry_time", None)
        creds.get_frozen_credentials()  # refreshes container credentials now: fails here if the TES is down
        return method, f" (expires {expiry.isoformat()})" if expiry is not None else ""

    import botocore.exceptions

    try:
        method, expiry = await asyncio.wait_for(asyncio.to_thread(resolve), timeout_s)
    except (botocore.exceptions.BotoCoreError, OSError, ValueError, asyncio.TimeoutError) as exc:
        findings.append(failed("aws credentials", f"resolving credentials failed: {type(exc).__name__}",
                               CREDENTIALS_FIX))
    else:
        if method:
            findings.append(passed("aws credentials", f"found via {method}{expiry}"))
        else:
            findings.append(failed("aws credentials", "no credentials in the standard chain", CREDENTIALS_FIX))
    host, port = endpoint_of(service_prefix, aws)
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(asyncio.to_thread(_tcp_check, host, port, timeout_s), timeout_s + 1)
    except (OSError, asyncio.TimeoutError) as exc:
        findings.append(failed("endpoint", f"{host}:{port} not reachable: {exc!r}",
                               "check DNS, firewall, proxy and endpoint_url"))
    else:
        findings.append(passed("endpoint", f"{host}:{port} reachable in {1000 * (time.monotonic() - t0):.0f} ms"))
    if aws.endpoint_url and urlparse(aws.endpoint_url).scheme == "http":
        findings.append(warning("endpoint security", f"{aws.endpoint_url} is plain HTTP", "use https outside tests"))
    return findings


def _tcp_check(host: str, port: int, timeout_s: float) -> None:
    with socket.create_connection((host, port), timeout=timeout_s):
        pass
