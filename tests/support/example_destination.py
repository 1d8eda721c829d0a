"""A walk-through destination, kept as a test and never shipped: type ``null`` counts the records it is sent.

A destination is one module holding three things, as this one does:

1. its configuration model: a subclass of :class:`~gateway.destinations.base.DestinationConfigBase` with a
   ``type`` literal, its settings (``extra="forbid"`` is inherited; every field described), and the two methods of
   the plugin contract (:mod:`gateway.plugin`): ``build()`` returns the implementation (a shipped destination
   imports its SDK inside its methods, never at the module's top: every component reads these models) and
   ``diagnose(timeout_s)`` returns doctor's findings;
2. its implementation: ``name``, ``start()``, ``send(records) -> SendResult`` and ``close(timeout_s)``, the
   contract in :mod:`gateway.destinations.base` (refuse a record for good in ``SendResult.rejected``, ask for a
   later resend in ``SendResult.retry``, raise a retryable ``DestinationError`` when nothing is known to have
   arrived, return from ``close`` within its deadline);
3. its checks, which ``diagnose`` runs against the live peer.

A shipped destination then takes one line in the union ``DestinationConfig`` (gateway/componentconfig.py) and a
harness in tests/support/destination_harness.py, which runs the conformance suite over it. This one stays out of the
union: tests extend the publisher's configuration with it (``publisher_config_with(NullConfig)``).
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from pydantic import Field

from gateway.destinations.base import DestinationConfigBase, SendResult
from gateway.diagnostics import Finding, passed
from gateway.record import Record

#: Records counted per destination name, across instances (the publisher builds its own).
COUNTED: Counter[str] = Counter()


class NullConfig(DestinationConfigBase):
    """Count records and drop them (an example)."""

    type: Literal["null"] = Field(default="null", description="Destination type.")
    refuse_tag: str | None = Field(
        default=None, description="Records of this tag are refused for good (they go to the dead-letter stream)."
    )

    def build(self) -> NullDestination:
        """The destination for this configuration (see :mod:`gateway.plugin`)."""
        return NullDestination(self)

    async def diagnose(self, timeout_s: float) -> list[Finding]:
        """Doctor's checks (see :mod:`gateway.plugin`): a null destination has no peer to reach."""
        return [passed("null destination", f"{self.name} counts records; there is no peer to reach")]


class NullDestination:
    """Counts what it accepts in :data:`COUNTED`."""

    def __init__(self, cfg: NullConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name

    async def start(self) -> None:
        """Nothing to connect to."""

    async def send(self, records: list[Record]) -> SendResult:
        refused = [(r, f"tag {r.tag} is the refuse_tag of null destination {self.name}: route it elsewhere")
                   for r in records if r.tag == self.cfg.refuse_tag]
        COUNTED[self.name] += len(records) - len(refused)
        return SendResult(rejected=refused)

    async def close(self, timeout_s: float) -> None:
        """Nothing to release."""
