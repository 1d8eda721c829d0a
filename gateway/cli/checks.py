"""The checks of ``gatewayctl doctor`` that look at peers and data: sources, destinations and clocks.

Each connection's and destination's configuration model checks its own peer (``cfg.diagnose(timeout_s)``, see
:mod:`gateway.plugin`); a TCP connect to the configured endpoint is only the fallback for a model without one.
The components' counters (status files) then say whether data actually flows, which no probe can: "connected but
no data" shows up here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import struct
import time
from pathlib import Path
from typing import Any

from gateway.cli.common import age_s, fmt_age, fmt_duration
from gateway.counters import current_names
from gateway.diagnostics import Finding, failed, passed, warning
from gateway.endpoints import host_port
from gateway.errors import EndpointError

FUTURE_LIMIT_S = 10 * 60  # SiteWise rejects values more than 10 minutes in the future ...
PAST_LIMIT_S = 7 * 86400  # ... and more than 7 days in the past
SKEW_WARN_S = 60.0


def endpoint_of(cfg: Any) -> tuple[str, int] | None:
    """The (host, port) a connection or destination talks to, from its endpoint/url or host/port fields."""
    for attr in ("endpoint", "url", "endpoint_url"):
        text = getattr(cfg, attr, None)
        if isinstance(text, str) and "://" in text:
            with contextlib.suppress(EndpointError):  # no host, or no port known: no endpoint to check
                return host_port(text, what=attr)
    host = getattr(cfg, "host", None)
    port = getattr(cfg, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return host, port
    return None


async def tcp_check(check: str, cfg: Any, timeout_s: float) -> list[Finding]:
    """The fallback for a model without ``diagnose``: can a TCP connection be opened to the peer?"""
    target = endpoint_of(cfg)
    path = getattr(cfg, "path", None)
    if target is None and isinstance(path, str):  # a file destination: is its folder writable?
        folder = Path(path).parent
        probe = folder if folder.exists() else next((p for p in folder.parents if p.exists()), Path("/"))
        if os.access(probe, os.W_OK):
            return [passed(check, f"{folder} is writable")]
        return [failed(check, f"{folder} is not writable", f"fix the permissions of {probe} or change path")]
    if target is None or not target[1]:
        return [warning(check, "no network endpoint to check for this type")]
    host, port = target
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, asyncio.TimeoutError) as exc:
        why = "no answer (filtered or host down)" if isinstance(exc, asyncio.TimeoutError) else str(exc)
        return [failed(check, f"{host}:{port} unreachable: {why}",
                       f"check that the peer runs and listens on {port}, the address, and firewalls between")]
    writer.close()
    return [passed(check, f"{host}:{port} accepts connections")]


async def probe(cfg: Any, timeout_s: float) -> list[Finding]:
    """``cfg.diagnose(timeout_s)`` for one connection or destination (its model's own checks), within a margin.

    Every model in the configuration unions has ``diagnose`` (tests/destinations, tests/sources check it); the TCP
    check is the fallback for a model that has none.
    """
    check = f"{getattr(cfg, 'name', '?')} reachable"
    diagnose = getattr(cfg, "diagnose", None)
    if diagnose is None:
        return await tcp_check(check, cfg, timeout_s)
    try:
        return list(await asyncio.wait_for(diagnose(timeout_s), timeout_s + 2))
    except asyncio.TimeoutError:
        return [failed(check, f"no verdict within {timeout_s + 2:.0f} s", "the peer hangs: check it and the network")]
    except Exception as exc:  # noqa: BLE001 - a plugin's bug must not hide every other check
        return [warning(f"{cfg.name} diagnose", f"{type(cfg).__name__}.diagnose ({cfg.type}) raised "
                        f"{type(exc).__name__}: {exc}", "report this bug; the counters below still tell whether data "
                        "flows")]


def source_counters(name: str, c: dict[str, Any] | None, max_age_s: float, now_ns: int, stale: str = "") -> Finding:
    """``stale``: why the collector's status is history (it stopped, or stopped writing it), or "" when fresh."""
    check = f"{name} data"
    if c is None:
        return warning(check, "no counters: the collector has not reported this connection",
                       "start the collector with this configuration (or wait for its first status)")
    if stale:
        return failed(check, f"STALE: {stale}; its counters are history, no data is read",
                      "restart the collector; its log (or journalctl) says why it stopped")
    c = current_names(c)  # a status file of the previous version, upgraded in place, has the old names
    bad, read = c.get("bad_values_read", 0), c.get("values_read", 0)
    last_good = age_s(c.get("last_good_read_ns"), now_ns)
    error = c.get("last_error") or ""
    rate = c.get("values_per_s")
    if not c.get("connected"):
        retries = c.get("connect_retries", 0)
        return failed(check, f"not connected ({error or 'no error recorded'}), {retries} reconnects",
                      "see the reachability checks above; the collector keeps retrying with backoff")
    if last_good is None:
        return failed(check, f"connected but no good value read ({bad} BAD of {read} read){_err(error)}",
                      "the node ids / addresses are wrong or not readable: check them with gatewayctl opcua read "
                      "URL NODE (or modbus read / opcda read) and fix the configuration")
    if last_good > max_age_s:
        return failed(check, f"no good value for {fmt_duration(last_good)} ({bad} BAD of {read}){_err(error)}",
                      "the peer stopped delivering: check the tags on the server and the collector's log")
    detail = f"last good read {fmt_age(last_good)}" + (f", {rate:.1f} values/s" if rate is not None else "")
    lost, messages = c.get("values_lost", 0), c.get("notification_messages_lost", 0)
    if lost or messages:  # the server dropped values because the collector did not keep up (OPC UA)
        text = (f"the server lost values before the collector read them: {lost} values with the Overflow bit, "
                f"{messages} notification messages missing, in {c.get('overloads', 0)} episodes (values after a "
                "loss carry the OVERFLOW flag)")
        detail = f"{detail}; {text}" if not bad else f"{detail}; {bad} of {read} values BAD{_err(error)}; {text}"
        return warning(check, detail, "the collector does not keep up: give the stream a faster disk, read fewer "
                       "nodes or sample them less often (sampling_interval_ms), or raise queue_size to ride out "
                       "bursts" + ("; some node ids / addresses fail: check them with gatewayctl opcua read"
                                   if bad else ""))
    if bad:
        return warning(check, f"{detail}; {bad} of {read} values BAD{_err(error)}",
                       "some node ids / addresses fail: check them with gatewayctl opcua read (or modbus read)")
    return passed(check, detail)


def destination_counters(name: str, d: dict[str, Any] | None, max_age_s: float, now_ns: int,
                         stale: str = "") -> list[Finding]:
    check = f"{name} delivery"
    if d is None:
        return [warning(check, "no counters: the publisher has not reported this destination",
                        "start the publisher with this configuration (or wait for its first status)")]
    if stale:
        return [failed(check, f"STALE: {stale}; its counters are history, nothing is sent",
                       "restart the publisher; its log (or journalctl) says why it stopped")]
    d = current_names(d)
    backlog, oldest = d.get("backlog_messages", 0), float(d.get("oldest_unsent_age_s") or 0.0)
    last = age_s(d.get("last_success_ns"), now_ns)
    error = d.get("last_error") or ""
    detail = f"last success {fmt_age(last)}, backlog {backlog} messages, oldest unsent {fmt_duration(oldest)}"
    out = []
    if error and backlog and (last is None or last > max_age_s or oldest > max_age_s):
        out.append(failed(check, f"failing: {error}; {detail}",
                          "fix the cause in the error and the reachability check above; nothing is lost while the "
                          "stream holds the backlog (gatewayctl buffer shows how much room is left)"))
    elif oldest > max_age_s:
        out.append(failed(check, f"backlog growing: {detail}",
                          "the destination is slower than the data arrives: raise batch_messages (and batch_bytes) or "
                          "max_records_per_s, check the link's bandwidth, or route fewer tags here"))
    else:
        out.append(passed(check, detail))
    if d.get("records_dead_lettered"):
        reasons = "; ".join(list(d.get("dead_letter_reasons", {}))[:3])
        out.append(warning(f"{name} dead letters", f"{d['records_dead_lettered']} records refused for good ({reasons})",
                           "the records are in the dead-letter stream: fix their mapping, then gatewayctl replay"))
    return out


def staleness(status: dict[str, Any], default_s: float, now_ns: int) -> str:
    """Why a component's status is stale ("" when fresh): its pid is gone, or it is older than three intervals."""
    from gateway.cli.common import pid_alive
    from gateway.cli.status import stale_limit_s

    if not status:
        return ""
    pid, age = int(status.get("pid") or 0), age_s(status.get("updated_ns"), now_ns)
    if not pid_alive(pid):
        return f"{status.get('component', 'the component')} stopped (pid {pid} is gone), status {fmt_age(age)}"
    limit = stale_limit_s(status, default_s)
    if age is None or age > limit:
        return f"{status.get('component', 'the component')} wrote no status for {fmt_age(age)} (limit {limit:g} s)"
    return ""


def _err(error: str) -> str:
    return f"; last error: {error[:160]}" if error else ""


def source_skew(stream: str, records: list[Any]) -> list[Finding]:
    """Source clock vs gateway clock, per source, from recent records (median of source - gateway time)."""
    by_source: dict[str, list[float]] = {}
    for r in records:
        by_source.setdefault(r.source, []).append((r.source_ts_ns - r.gateway_ts_ns) / 1e9)
    out = []
    for source, deltas in sorted(by_source.items()):
        d = statistics.median(deltas)
        check = f"clock of {source}"
        if d > FUTURE_LIMIT_S:
            out.append(failed(check, f"source timestamps are {fmt_duration(d)} ahead of the gateway clock: SiteWise "
                              "rejects values more than 10 min in the future",
                              f"synchronise the clock of {source} (or the gateway's) with NTP"))
        elif d < -PAST_LIMIT_S:
            out.append(failed(check, f"source timestamps are {fmt_duration(-d)} behind the gateway clock: SiteWise "
                              "rejects values more than 7 days old",
                              f"synchronise the clock of {source} (or the gateway's) with NTP"))
        elif abs(d) > SKEW_WARN_S:
            out.append(warning(check, f"source clock {'ahead of' if d > 0 else 'behind'} the gateway by "
                               f"{fmt_duration(abs(d))} (stream {stream})", f"synchronise the clock of {source}"))
        else:
            out.append(passed(check, f"within {abs(d):.1f} s of the gateway clock ({len(deltas)} recent values)"))
    return out


def recent_records(store: Any, stream: str, messages: int = 20) -> list[Any]:
    from gateway.codec import decode_batch
    from gateway.errors import GatewayError

    try:
        info = store.describe(stream)
        got = store.read(stream, max(info.oldest_seq, info.next_seq - messages), max_count=messages)
    except GatewayError:
        return []
    out = []
    for msg in got:
        try:
            out += decode_batch(msg.payload)
        except GatewayError:
            continue
    return out


def ntp_offset(server: str, timeout_s: float) -> float:
    """The gateway clock's offset from an NTP server in seconds (positive: the gateway is ahead). SNTP, RFC 4330."""
    host, port = host_port(server, "ntp", what="NTP server")
    packet = b"\x23" + 47 * b"\0"  # LI 0, version 4, mode 3 (client)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout_s)
        t0 = time.time()
        s.sendto(packet, (host, port))
        data, _ = s.recvfrom(512)
        t3 = time.time()
    if len(data) < 48:
        raise OSError(f"short NTP answer ({len(data)} bytes)")
    secs, frac = struct.unpack("!II", data[40:48])  # transmit timestamp
    server_time = secs - 2_208_988_800 + frac / 2**32  # NTP era 0 starts 1900-01-01
    return float((t0 + t3) / 2 - server_time)


def clock_vs_ntp(server: str, timeout_s: float) -> Finding:
    check = "gateway clock"
    try:
        offset = ntp_offset(server, timeout_s)
    except (OSError, ValueError, EndpointError) as exc:
        return warning(check, f"NTP server {server} did not answer ({exc})", "check --ntp and UDP port 123")
    way = f"{fmt_duration(abs(offset))} {'ahead of' if offset > 0 else 'behind'} {server}"
    fix = "enable time synchronisation on the gateway (timedatectl set-ntp true, or chrony)"
    if offset > FUTURE_LIMIT_S or offset < -PAST_LIMIT_S:
        return failed(check, f"gateway clock is {way}: SiteWise rejects values stamped more than 10 min in the "
                      "future or 7 days in the past", fix)
    if abs(offset) > SKEW_WARN_S:
        return failed(check, f"gateway clock is {way}", fix)
    if abs(offset) > 1:
        return warning(check, f"gateway clock is {offset:+.1f} s off {server}", fix)
    return passed(check, f"within {abs(offset) * 1000:.0f} ms of {server}")
