"""What `gatewayctl doctor` asks of every protocol and destination module.

Each source module (``gateway/sources/<type>.py``) and destination module (``gateway/destinations/<type>.py``) may
define ``async def diagnose(cfg, timeout_s: float) -> list[Finding]`` for one configured connection or destination.
It checks the live peer the way the component would use it (reachability, security, a first read or send) and says
what is wrong and how to fix it, in words for the engineer standing next to the gateway. It never raises for a
peer problem: a problem is a finding. Doctor finds the function by the config's ``type`` and falls back to a plain
TCP reachability check for modules that have none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Finding:
    """One verdict: ``ok`` True (fine), False (broken: ``fix`` says what to do) or None (warning / not checked)."""

    check: str
    ok: bool | None
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def passed(check: str, detail: str) -> Finding:
    return Finding(check, True, detail)


def failed(check: str, detail: str, fix: str) -> Finding:
    return Finding(check, False, detail, fix)


def warning(check: str, detail: str, fix: str = "") -> Finding:
    return Finding(check, None, detail, fix)
