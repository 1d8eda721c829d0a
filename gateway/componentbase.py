"""What every component configuration shares: the store, logging and status settings, the stream checks, and the
collectors' connection list rules. A leaf under every component's model (:mod:`gateway.componentconfig`,
:mod:`gateway.anomaly.config`), so that no package imports a module above it for its configuration's base."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.streams import StoreConfig, StreamSpec


def unique_names(items: list[Any], what: str) -> list[Any]:
    """``items`` if no two share a name; each name keys positions, status and restarts, so a repeat would silently
    drop one of them."""
    seen: set[str] = set()
    repeated = [i.name for i in items if i.name in seen or seen.add(i.name)]  # type: ignore[func-returns-value]
    if repeated:
        raise ValueError(f"{what} names {sorted(set(repeated))} are used more than once: give every {what} its own "
                         "name")
    return items


class CollectorBase(BaseModel):
    """What every collector configuration has: its connection list, checked, and its counters as records."""

    metrics_interval_s: float = Field(
        default=60.0, gt=0, description="How often the connections' counters (read, written, dropped, gaps) are "
        "written to the stream as METRIC records, for the fleet to see in the cloud; also at stop."
    )

    @field_validator("connections", check_fields=False)
    @classmethod
    def _unique(cls, connections: list[Any]) -> list[Any]:
        # runs only on a list that was given (pydantic does not validate the default): left out, the collector
        # deploys idle, as a bare deployment of the bundle does; written empty, it is a mistake
        if not connections:
            raise ValueError("an empty list: list the servers to read (see docs/examples), or leave connections out "
                             "to deploy the component idle")
        return unique_names(connections, "connection")


class ComponentBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    store: StoreConfig = Field(default_factory=StoreConfig, description="Where streams and reader positions live.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")
    status_interval_s: float = Field(default=2.0, gt=0, description="How often counters are written for gatewayctl.")

    @model_validator(mode="after")
    def _streams_that_cannot_jam(self) -> ComponentBase:
        # Stream manager frees a full RejectNewData stream only by time to live (reading deletes nothing): without
        # one it refuses data for good. With store kind auto the same check runs when the stream is created.
        if self.store.kind != "stream_manager":
            return self
        for name in type(self).model_fields:
            spec = getattr(self, name)
            if isinstance(spec, StreamSpec) and spec.strategy_on_full == "RejectNewData" and spec.ttl_s is None:
                raise ValueError(f"{name}: RejectNewData without ttl_s on stream manager refuses data for good once "
                                 f"the stream is full (reading frees nothing there): set {name}.ttl_s, or use "
                                 "strategy_on_full: OverwriteOldestData")
        return self
