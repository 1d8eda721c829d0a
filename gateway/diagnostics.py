"""What `gatewayctl doctor` gets from every connection and destination: a list of :class:`Finding`.

Every connection and destination configuration model has ``async def diagnose(self, timeout_s: float) ->
list[Finding]`` (the plugin contract, :mod:`gateway.plugin`), which calls its module's checks. They check the live
peer the way the component would use it (reachability, security, a first read or send) and say what is wrong and
how to fix it, in words for the engineer standing next to the gateway. They never raise for a peer problem: a
problem is a finding.
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
