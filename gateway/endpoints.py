"""Where a peer listens: one parser for ``scheme://host[:port]`` and ``host[:port]``, one table of default ports.

Deployment validation probes, ``gatewayctl doctor`` and the command line's ``HOST:PORT`` options all read addresses
here, so that they agree on which port an address without one means.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.errors import EndpointError
from gateway.redact import redact_url

DEFAULT_PORTS: dict[str, int] = {
    "opc.tcp": 4840,  # OPC UA
    "modbus": 502,  # Modbus TCP ...
    "tcp": 502,  # ... as pymodbus spells its URLs
    "mqtt": 1883,
    "mqtts": 8883,
    "http": 80,
    "https": 443,
    "ntp": 123,  # SNTP, gatewayctl doctor's clock check (UDP)
}


def host_port(
    value: str, default_scheme: str | None = None, *, what: str = "endpoint", default_host: str | None = None
) -> tuple[str, int]:
    """The host and port of a URL (``opc.tcp://10.0.0.5:4840``) or of a bare ``host[:port]``.

    A URL without a port gets its scheme's port from :data:`DEFAULT_PORTS`; a bare host without one gets
    ``default_scheme``'s. IPv6 hosts are written in brackets (``[::1]:502``). Host names come back lower case.

    Args:
        value: The address as configured or typed.
        default_scheme: The scheme whose default port a bare ``host`` (no ``://``, no port) means; None to require
            a port there.
        what: The address's name in an error (a field path or a command line option).
        default_host: The host a bare ``:port`` means; None to require a host.

    Returns:
        ``(host, port)``.

    Raises:
        EndpointError: No host, a port that is not a number from 0 to 65535, or no port written and none known for
            the scheme; the message names ``what`` and the value (user info masked).
    """
    is_url = "://" in value
    scheme = urlsplit(value).scheme.lower() if is_url else (default_scheme or "")
    example = f"{scheme}://HOST:PORT" if is_url else "HOST:PORT"
    if scheme in DEFAULT_PORTS:
        example += f", e.g. {scheme + '://' if is_url else ''}10.0.0.5:{DEFAULT_PORTS[scheme]}"
    bare = value
    if not is_url and value.count(":") > 1 and not value.startswith("["):  # ::1:8088, an IPv6 host unbracketed
        address, _, port_text = value.rpartition(":")
        bare = f"[{address}]:{port_text}"
    try:
        parts = urlsplit(value if is_url else f"//{bare}")
        port = parts.port
    except ValueError as exc:  # a port that is not a number or out of range, a broken [IPv6] bracket
        raise _error(what, value, str(exc), example) from exc
    host = parts.hostname or default_host
    if not host:
        raise _error(what, value, "no host", example)
    if port is None:
        port = DEFAULT_PORTS.get(scheme)
    if port is None:
        raise _error(what, value, f"no port, and none is usual for {scheme!r}" if scheme else "no port", example)
    return host, port


def _error(what: str, value: str, why: str, example: str) -> EndpointError:
    return EndpointError(f"{what} {redact_url(value)!r} is not a usable address ({why})",
                         fix=f"write it as {example}")
