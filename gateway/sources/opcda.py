"""OPC DA collector connection, through the OpenOPC Gateway Service (Pyro4) on the Windows host.

OpenOPC-Python3x is blocking, so each connection runs its gateway calls in a thread of its own and the event loop
only emits what they return. A session does what ``OpenOPC.open_client`` does (proxy to ``PYRO:opc@host:port``,
``create_client()``) with what that function leaves out (NOTES 5): a timeout on every call (Pyro's default is to
wait forever), the per-client proxy's host rewritten when the gateway hands out ``0.0.0.0``, OPCError registered
with Pyro's serializer so it arrives as itself, and TLS through Pyro's own SSL settings. After any gateway failure
(a restart shows as a closed connection or "unknown object") the whole session is dropped and the next one starts
from a fresh proxy and a new client: nothing from the old gateway process is reused.

Nothing the gateway sends is decoded with anything but serpent (:mod:`gateway.sources.opcda_wire`, enforced for
the whole process when this module is imported); a link without TLS needs ``allow_plaintext`` and warns loudly; the
gateway's HMAC key, when it has one, signs every message both ways.

Every scan is one group read: the first read of a named group creates it on the gateway (and reports why items are
unknown), later reads of the group reuse the server-side items. Unknown items read ``Error`` quality and go BAD
alone; a failed read makes every tag BAD once (carrying its last value) and reconnects.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any

import OpenOPC
import Pyro4
import Pyro4.constants
import Pyro4.errors
import Pyro4.socketutil
import Pyro4.util

from gateway.diagnostics import Finding, failed, passed, warning
from gateway.errors import SourceError
from gateway.record import Quality, Value
from gateway.redact import redact_text
from gateway.sources.common import Emitter
from gateway.sources.opcda_wire import check as check_serpent_only
from gateway.sources.opcda_wire import refusal

if TYPE_CHECKING:  # hints only: the config model imports this module (build, diagnose), not the reverse
    from gateway.sources.opcda_config import OpcDaConnection, OpcDaTls

log = logging.getLogger(__name__)

QUALITIES = {"Good": Quality.GOOD, "Uncertain": Quality.UNCERTAIN}  # Bad, Unknown, Error and anything else: BAD
UNSPECIFIED_HOSTS = ("0.0.0.0", "::", "")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_LEGACY_FORMATS = ("%m/%d/%y %H:%M:%S", "%m/%d/%Y %H:%M:%S")
_SSL_KEYS = ("SSL", "SSL_CACERTS", "SSL_CLIENTCERT", "SSL_CLIENTKEY")
_SSL_CONTEXT_CACHE = "__ssl_client_context"  # Pyro4.socketutil caches one client TLS context per process
_BIND_LOCK = threading.Lock()
_warned_plain: set[tuple[str, str, int]] = set()


def _error_from_dict(exc_type: type[Exception]) -> Callable[[str, dict[str, Any]], Exception]:
    return lambda _name, data: exc_type(*data.get("args", ()))


# Without this the gateway's own exceptions arrive as SerializeError and their message is lost (NOTES 5).
for _exc in (OpenOPC.OPCError, OpenOPC.TimeoutError):
    Pyro4.util.SerializerBase.register_dict_to_class(f"OpenOPC.{_exc.__name__}", _error_from_dict(_exc))


def parse_timestamp(text: Any, naive_tz: tzinfo = timezone.utc) -> int | None:
    """UTC ns of a gateway timestamp: ``2024-05-01 10:00:00.123000+00:00`` or ``05/01/24 10:00:00``; None if not."""
    if not isinstance(text, str) or not text:
        return None
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        for fmt in _LEGACY_FORMATS:
            try:
                stamp = datetime.strptime(text, fmt)
                break
            except ValueError:
                continue
        else:
            return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=naive_tz)
    return (stamp - _EPOCH) // timedelta(microseconds=1) * 1000  # integer arithmetic: no float rounding


def quality_of(text: Any) -> Quality:
    return QUALITIES.get(text, Quality.BAD)


def _value(raw: Any) -> tuple[Value, bool]:
    if raw is None or isinstance(raw, bool | int | float | str):
        return raw, True
    return None, False  # arrays and other variants have no place in a record


def describe_error(exc: BaseException, cfg: OpcDaConnection) -> str:
    """One line saying what went wrong with the gateway, in its terms."""
    where = f"gateway {cfg.host}:{cfg.port}"
    text = redact_text(_without_secret(str(exc), cfg))
    refused = refusal(exc)
    if refused:
        return (f"{where} {refused}; nothing was decoded. A genuine OpenOPC gateway answers in serpent: check what "
                f"listens on {cfg.host}:{cfg.port} (a rogue or misconfigured service)")
    if isinstance(exc, Pyro4.errors.SecurityError) or isinstance(exc.__cause__, Pyro4.errors.SecurityError):
        return (f"{where} refused by HMAC: {text} (the gateway and this connection must use the same hmac_key, "
                "or both none)")
    if isinstance(exc, Pyro4.errors.TimeoutError):
        return f"{where} did not answer within the timeout ({text})"
    if isinstance(exc, Pyro4.errors.DaemonError) and "unknown object" in str(exc):
        return f"{where} no longer knows our client (the gateway restarted)"
    if isinstance(exc, Pyro4.errors.CommunicationError):
        return f"{where} link failed: {text}"
    if isinstance(exc, OpenOPC.OPCError | OpenOPC.TimeoutError):
        return f"OPC DA server {cfg.server!r} via {where}: {text}"
    return f"{where}: {type(exc).__name__}: {text}"


def _without_secret(text: str, cfg: OpcDaConnection) -> str:
    """``text`` with the HMAC key masked, should a library ever quote it."""
    key = cfg.hmac_key.get_secret_value() if cfg.hmac_key else ""
    return text.replace(key, "***") if key else text


def _hmac(cfg: OpcDaConnection) -> bytes | None:
    return cfg.hmac_key.get_secret_value().encode() if cfg.hmac_key else None


@contextmanager
def pyro_tls(tls: OpcDaTls | None) -> Iterator[None]:
    """Pyro's SSL settings for ``tls`` while proxies connect, restored afterwards.

    Pyro4 reads its SSL settings (one global configuration, one cached client context) when a proxy connects, so
    connections are opened one at a time under a lock; once connected a proxy no longer looks at them.
    """
    with _BIND_LOCK:
        config = Pyro4.config
        saved = {k: getattr(config, k) for k in _SSL_KEYS}
        saved_ctx = getattr(Pyro4.socketutil, _SSL_CONTEXT_CACHE)
        config.SSL = tls is not None
        config.SSL_CACERTS = str(tls.ca_file) if tls else ""
        config.SSL_CLIENTCERT = str(tls.cert_file) if tls and tls.cert_file else ""
        config.SSL_CLIENTKEY = str(tls.key_file) if tls and tls.key_file else ""
        setattr(Pyro4.socketutil, _SSL_CONTEXT_CACHE, None)
        try:
            yield
        finally:
            for k, v in saved.items():
                setattr(config, k, v)
            setattr(Pyro4.socketutil, _SSL_CONTEXT_CACHE, saved_ctx)


class Session:
    """One OpenOPC client on the gateway, used from one thread only (all methods block)."""

    def __init__(self, cfg: OpcDaConnection) -> None:
        self.cfg = cfg
        self.client: Any = None
        self.reported_location = ""
        self.items: list[str] = []
        self.unknown: dict[str, str] = {}
        self.group = f"factoryedge-{cfg.name}"
        self._naive_tz = cfg.naive_tz

    def open(self) -> None:
        """Create a client on the gateway and connect it to the OPC DA server."""
        self.open_client()
        self.client.connect(self.cfg.server, self.cfg.opc_host)

    def open_client(self) -> None:
        """Create a client on the gateway: what ``OpenOPC.open_client`` does, with timeouts, rewrite and TLS."""
        cfg = self.cfg
        check_serpent_only()
        gateway = Pyro4.Proxy(f"PYRO:opc@{cfg.host}:{cfg.port}")
        gateway._pyroTimeout = cfg.connect_timeout_s
        gateway._pyroSerializer = "serpent"
        gateway._pyroHmacKey = _hmac(cfg)
        try:
            with pyro_tls(cfg.tls):
                client = gateway.create_client()
                self.reported_location = f"{client._pyroUri.host}:{client._pyroUri.port}"
                mode = cfg.rewrite_proxy_host
                if mode == "always" or (mode == "unspecified" and client._pyroUri.host in UNSPECIFIED_HOSTS):
                    client._pyroUri.host, client._pyroUri.port = cfg.host, cfg.port
                client._pyroTimeout = cfg.connect_timeout_s
                client._pyroSerializer = "serpent"  # whatever the gateway wrote into the proxy it handed out
                client._pyroHmacKey = _hmac(cfg)  # ours, not the one (if any) in that proxy's state
                client._pyroBind()
        finally:
            gateway._pyroRelease()
        self.client = client
        client._pyroTimeout = cfg.timeout_s

    def resolve(self) -> list[str]:
        """The item list: configured items plus what the browse patterns match now, in order, without repeats."""
        found: list[str] = list(self.cfg.items)
        for pattern in self.cfg.browse:
            matched = [str(i) for i in self.client.list(pattern, flat=True)]
            if not matched:
                log.warning("connection %s: browse pattern %r matches no item on %s (check it with gatewayctl "
                            "opcda list %s %r)", self.cfg.name, pattern, self.cfg.server, self.cfg.host, pattern)
            found += matched
        self.items = list(dict.fromkeys(found))
        if not self.items:
            raise SourceError(f"{self.cfg.server}: the browse patterns {self.cfg.browse} match no item",
                              fix="correct the patterns (gatewayctl opcda list HOST PATTERN)", retryable=True)
        return self.items

    def first_read(self) -> list[tuple[str, Value, Quality, int | None]]:
        """Create the group with every item; learn which items the server does not know, and why."""
        if self.cfg.sync:
            rows = self.client.read(self.items, group=self.group, sync=True, include_error=True,
                                    timeout=int(self.cfg.timeout_s * 1000))
            self.unknown = {str(r[0]): str(r[4]) for r in rows if r[2] == "Error"}
        else:
            rows = self.client.read(self.items, group=self.group, timeout=int(self.cfg.timeout_s * 1000))
            self.unknown = {str(r[0]): "" for r in rows if r[2] == "Error"}
        return self._rows(rows)

    def read(self) -> list[tuple[str, Value, Quality, int | None]]:
        """One group read of every item (the group's items live on the gateway)."""
        rows = self.client.read(group=self.group, sync=self.cfg.sync, timeout=int(self.cfg.timeout_s * 1000))
        if len(rows) != len(self.items):
            raise SourceError(f"gateway {self.cfg.host}:{self.cfg.port} returned {len(rows)} rows for group "
                              f"{self.group} of {len(self.items)} items", retryable=True)
        return self._rows(rows)

    def _rows(self, rows: list[Any]) -> list[tuple[str, Value, Quality, int | None]]:
        out: list[tuple[str, Value, Quality, int | None]] = []
        stamps: dict[Any, int | None] = {}  # a group read repeats a handful of timestamps
        for row in rows:
            item, raw, quality_text, stamp = row[0], row[1], row[2], row[3]
            value, ok = _value(raw)
            if stamp not in stamps:
                stamps[stamp] = parse_timestamp(stamp, self._naive_tz)
            out.append((str(item), value, quality_of(quality_text) if ok else Quality.BAD, stamps[stamp]))
        return out

    def close(self) -> None:
        """Release the client on the gateway (no session leak), then the socket; quietly, the link may be gone."""
        if self.client is None:
            return
        if self.client._pyroConnection is not None:  # a broken link is already released: never reconnect for this
            try:
                self.client._pyroTimeout = min(self.cfg.timeout_s, 2.0)
                self.client.close()
            except Exception:  # noqa: BLE001 - best effort on a link that may be broken; the gateway expires it
                pass
        self.client._pyroRelease()


class OpcDaSource:
    """Reads one OPC DA server through the gateway; see the module docstring."""

    def __init__(self, cfg: OpcDaConnection) -> None:
        self.cfg = cfg

    async def run(self, emitter: Emitter, on_connected: Callable[[], None]) -> None:
        cfg = self.cfg
        warn_if_plain(cfg)
        pool = ThreadPoolExecutor(1, thread_name_prefix=f"opcda-{cfg.name}")
        loop = asyncio.get_running_loop()
        session = Session(cfg)

        async def call(fn: Callable[[], Any]) -> Any:
            try:
                return await loop.run_in_executor(pool, fn)
            except SourceError:
                raise
            except Exception as exc:  # OPCError, Pyro, OS and remote errors all mean: reconnect
                raise SourceError(describe_error(exc, cfg), retryable=True) from exc

        try:
            await call(session.open)
            await call(session.resolve)
            rows = await call(session.first_read)
            self._report_unknown(session, emitter)
            on_connected()
            while True:
                t0 = time.monotonic()
                for item, value, quality, ts in rows:
                    emitter.emit(item, value, quality, ts)
                await asyncio.sleep(max(0.0, cfg.scan_interval_s - (time.monotonic() - t0)))
                await emitter.room()
                try:
                    rows = await call(session.read)
                except SourceError:
                    # the values are unknown from now on: say so once, each carrying the last value read (as
                    # OPC UA and Modbus do)
                    last = {item: value for item, value, _, _ in rows}
                    for item in session.items:
                        emitter.emit(item, last.get(item), Quality.BAD)
                    raise
        finally:
            # also after a failed connect(): the client exists on the gateway and must not leak
            pool.submit(session.close)  # runs after any call still in flight, never on the loop
            pool.shutdown(wait=False)

    def _report_unknown(self, session: Session, emitter: Emitter) -> None:
        emitter.counters.extra.update(items=len(session.items), unknown_items=sorted(session.unknown),
                                      proxy_location=session.reported_location)
        if session.unknown:
            emitter.counters.read_errors += len(session.unknown)
            reasons = "; ".join(f"{k} ({v})" if v else k for k, v in list(session.unknown.items())[:20])
            log.warning("connection %s: %d item(s) unknown to %s, they read BAD: %s. Fix: correct the item ids "
                        "(gatewayctl opcda list %s PATTERN)", self.cfg.name, len(session.unknown), self.cfg.server,
                        reasons, self.cfg.host)


def warn_if_plain(cfg: OpcDaConnection) -> None:
    """Once per connection and gateway: say loudly that a link without TLS is open to anyone on the network."""
    key = (cfg.name, cfg.host, cfg.port)
    if cfg.tls is None and key not in _warned_plain:
        _warned_plain.add(key)
        log.warning("connection %s: the link to the OpenOPC gateway %s:%d is UNENCRYPTED and UNAUTHENTICATED "
                    "(allow_plaintext: true; Pyro4 has no authentication%s): anyone who reaches the port can read "
                    "and write the OPC DA server. Fix: run the gateway with PYRO_SSL=1 and a certificate, and set "
                    "tls (ca_file, cert_file, key_file) on this connection", cfg.name, cfg.host, cfg.port,
                    ", the HMAC key only signs messages" if cfg.hmac_key else "")


async def diagnose(cfg: OpcDaConnection, timeout_s: float) -> list[Finding]:
    """``gatewayctl doctor`` checks: gateway reachable, Pyro answers, TLS, server, first read, unknown items."""
    short = cfg.model_copy(update={"timeout_s": min(cfg.timeout_s, timeout_s),
                                   "connect_timeout_s": min(cfg.connect_timeout_s, timeout_s)})
    return await asyncio.to_thread(_diagnose, short)


def _diagnose(cfg: OpcDaConnection) -> list[Finding]:
    where = f"{cfg.host}:{cfg.port}"
    out: list[Finding] = []
    try:
        socket.create_connection((cfg.host, cfg.port), timeout=cfg.connect_timeout_s).close()
    except OSError as exc:
        return [failed("opcda gateway reachable", f"{where}: {exc}",
                       "start the OpenOPC Gateway Service on the Windows host, check host and port, and that the "
                       "firewall lets this machine reach the port")]
    out.append(passed("opcda gateway reachable", f"TCP {where} accepts connections"))
    check_serpent_only()
    daemon = Pyro4.Proxy(f"PYRO:{Pyro4.constants.DAEMON_NAME}@{cfg.host}:{cfg.port}")
    daemon._pyroTimeout = cfg.connect_timeout_s
    daemon._pyroSerializer = "serpent"
    daemon._pyroHmacKey = _hmac(cfg)
    try:
        with pyro_tls(cfg.tls):
            daemon.ping()
    except Exception as exc:  # noqa: BLE001 - any failure here is the finding
        fix = ("the gateway may require TLS (set tls) or use other certificates" if cfg.tls is None else
               "check tls.ca_file signs the gateway's certificate, the certificate names the host, and the "
               "client certificate is one the gateway trusts")
        return [*out, failed("opcda pyro ping", describe_error(exc, cfg), fix)]
    finally:
        daemon._pyroRelease()
    out.append(passed("opcda pyro ping", f"Pyro4 daemon at {where} answers"))
    out.append(passed("opcda tls", f"TLS with CA {cfg.tls.ca_file}"
                      f"{' and client certificate ' + str(cfg.tls.cert_file) if cfg.tls.cert_file else ''}")
               if cfg.tls else
               warning("opcda tls", "link is unencrypted and unauthenticated (allow_plaintext: true; Pyro4 has "
                       "no authentication)",
                       "run the gateway with PYRO_SSL=1 and a certificate, and set tls on this connection"))
    session, check = Session(cfg), "opcda server"
    try:
        session.open()
        if session.reported_location.split(":")[0] in UNSPECIFIED_HOSTS:
            out.append(warning("opcda proxy host", f"gateway hands out proxies for {session.reported_location}; "
                               f"rewritten to {where}" if cfg.rewrite_proxy_host != "never" else
                               "not rewritten (rewrite_proxy_host: never)",
                               "bind the gateway to its address, or keep rewrite_proxy_host at unspecified"))
        out.append(passed(check, f"connected to {cfg.server} via {where}"))
        check = "opcda first read"
        session.resolve()
        rows = session.first_read()
    except Exception as exc:  # noqa: BLE001 - any failure here is the finding
        servers = _servers(session) if check == "opcda server" else []
        return [*out, failed(check, describe_error(exc, cfg) + (f"; the gateway offers {servers}" if servers
                             else ""), "check server (the ProgID), opc_host and items/browse")]
    finally:
        session.close()
    good = sum(q == Quality.GOOD for _, _, q, _ in rows)
    out.append(passed("opcda first read", f"{len(rows)} items read, {good} Good") if good else
               failed("opcda first read", f"{len(rows)} items read, none Good", "check the server's state and items"))
    if session.unknown:
        names = ", ".join(list(session.unknown)[:10]) + (" ..." if len(session.unknown) > 10 else "")
        out.append(failed("opcda unknown items", f"{len(session.unknown)} unknown: {names}",
                          f"correct the item ids (gatewayctl opcda list {cfg.host} 'PATTERN')"))
    return out


def _servers(session: Session) -> list[str]:
    try:
        return [str(s) for s in session.client.servers(session.cfg.opc_host)] if session.client else []
    except Exception:  # noqa: BLE001 - only a hint for the message
        return []
