"""Control API of a running simulator, spoken over its OPC UA endpoint (what ``gatewayctl sim`` calls).

Every function opens a short session, resolves the namespace by URI and calls the ``Simulator`` methods; errors
come back as :class:`ControlError` naming the server and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from asyncua import ua as _ua
from asyncua.client.client import Client
from asyncua.ua.uaerrors import UaError

from simulator.opcua_server import NAMESPACE_URI
from simulator.tags import KEY_TAGS, format_time, key_values_text

ua: Any = _ua  # see simulator.opcua_server: asyncua's NewType annotations reject plain ints
DEFAULT_URL = "opc.tcp://127.0.0.1:4840/"


class ControlError(Exception):
    """The simulator refused or could not be reached."""


@dataclass(frozen=True)
class Status:
    """What ``status`` reports: the status tags and the key process values (None when BAD, e.g. after a trip)."""

    t_s: float
    seed: int
    active_idvs: frozenset[int]
    shutdown: bool
    shutdown_reason: str
    values: dict[str, float | None] = field(default_factory=dict)

    def line(self) -> str:
        idvs = ",".join(str(n) for n in sorted(self.active_idvs)) or "-"
        state = f"TRIPPED: {self.shutdown_reason}" if self.shutdown else "running"
        return (f"t={format_time(self.t_s)} ({self.t_s:.0f} s) seed={self.seed} idv=[{idvs}] {state} | "
                f"{key_values_text(self.values)}")

    def as_json(self) -> dict[str, Any]:
        return {"simulated_time_s": self.t_s, "seed": self.seed, "active_disturbances": sorted(self.active_idvs),
                "shutdown": self.shutdown, "shutdown_reason": self.shutdown_reason or None, "values": self.values}


async def _call(url: str, method: str, *args: Any, timeout: float = 5.0) -> None:
    try:
        async with Client(url, timeout=timeout) as client:
            ns = await client.get_namespace_index(NAMESPACE_URI)
            node = client.get_node(ua.NodeId("Simulator", ns))
            await node.call_method(ua.QualifiedName(method, ns), *args)
    except UaError as exc:
        shown = ", ".join(str(getattr(a, "Value", a)) for a in args)
        raise ControlError(f"simulator at {url} refused {method}({shown}): {exc}") from exc
    except (OSError, TimeoutError) as exc:
        raise ControlError(f"simulator at {url} unreachable ({exc}); is `python -m simulator` running?") from exc


async def set_idv(url: str, n: int, on: bool) -> None:
    """Switch disturbance ``n`` on or off."""
    await _call(url, "SetDisturbance", ua.Variant(n, ua.VariantType.Int32), ua.Variant(on, ua.VariantType.Boolean))


async def clear_idvs(url: str) -> None:
    await _call(url, "ClearDisturbances")


async def reset(url: str, seed: int | None = None) -> None:
    """Restart the plant from the base case (clears a trip); ``seed=None`` keeps the current seed."""
    await _call(url, "Reset", ua.Variant(-1 if seed is None else seed, ua.VariantType.Int64))


async def status(url: str, timeout: float = 5.0) -> Status:
    """Read the status tags and the key process values of the simulator at ``url``."""
    try:
        async with Client(url, timeout=timeout) as client:
            ns = await client.get_namespace_index(NAMESPACE_URI)
            names = ("SimulatedTime", "Seed", "ActiveDisturbances", "Shutdown", "ShutdownReason")
            nodes = [client.get_node(ua.NodeId(f"Simulator/{name}", ns)) for name in names]
            nodes += [client.get_node(ua.NodeId(path, ns)) for path, _label, _fmt in KEY_TAGS]
            data = await client.read_attributes(nodes)
    except UaError as exc:
        raise ControlError(f"reading status from {url} failed: {exc}") from exc
    except (OSError, TimeoutError) as exc:
        raise ControlError(f"simulator at {url} unreachable ({exc}); is `python -m simulator` running?") from exc
    t_s, seed, idvs, shutdown, reason = (_value(dv) for dv in data[:5])
    values = {path: (None if value is None else float(value))
              for (path, _label, _fmt), value in zip(KEY_TAGS, map(_value, data[5:]), strict=True)}
    active = frozenset(int(x) for x in str(idvs).split(",") if x)
    return Status(float(t_s), int(seed), active, bool(shutdown), str(reason), values)


def _value(dv: Any) -> Any:
    """The value of a DataValue, None when it is BAD (a tripped plant's process values) or empty."""
    if dv.StatusCode is not None and not dv.StatusCode.is_good():
        return None
    return None if dv.Value is None else dv.Value.Value
