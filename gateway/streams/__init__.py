"""The stream layer: the offline buffer between collectors, the anomaly component and the publisher.

``open_store`` picks the implementation: stream manager under Greengrass, the embedded store otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.streams.base import (
    Persistence,
    StoredMessage,
    StrategyOnFull,
    StreamInfo,
    StreamSpec,
    StreamStore,
)
from gateway.streams.positions import PositionStore
from gateway.streams.records import ReadBatch, RecordReader, RecordWriter

__all__ = [
    "Persistence",
    "PositionStore",
    "ReadBatch",
    "RecordReader",
    "RecordWriter",
    "StoreConfig",
    "StoredMessage",
    "StrategyOnFull",
    "StreamInfo",
    "StreamSpec",
    "StreamStore",
    "open_store",
]


class StoreConfig(BaseModel):
    """Where streams live."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["auto", "embedded", "stream_manager"] = Field(
        default="auto",
        description="auto: stream manager when running under Greengrass, the embedded store otherwise.",
    )
    path: str = Field(
        default="data",
        description="Folder of the embedded store and of reader positions (relative to the working directory, "
        "which is the component's work path under Greengrass). Every local process of one gateway shares it.",
    )
    stream_manager_host: str = Field(default="127.0.0.1", description="Stream manager host.")
    stream_manager_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Stream manager port; null reads STREAM_MANAGER_SERVER_PORT, else 8088 (the default).",
    )
    connect_timeout_s: float = Field(
        default=60.0, gt=0, description="How long to keep retrying the first stream manager connection."
    )


def resolve_kind(cfg: StoreConfig) -> Literal["embedded", "stream_manager"]:
    if cfg.kind != "auto":
        return cfg.kind
    return "stream_manager" if os.environ.get("SVCUID") else "embedded"


def open_store(cfg: StoreConfig) -> tuple[StreamStore, PositionStore]:
    """Open the configured stream store and the reader positions that go with it."""
    root = Path(cfg.path)
    positions = PositionStore(root / "positions")
    if resolve_kind(cfg) == "embedded":
        from gateway.streams.embedded import EmbeddedStore

        return EmbeddedStore(root), positions
    from gateway.streams.stream_manager import StreamManagerStore

    port = cfg.stream_manager_port or int(os.environ.get("STREAM_MANAGER_SERVER_PORT", "8088"))
    return StreamManagerStore(cfg.stream_manager_host, port, connect_timeout_s=cfg.connect_timeout_s), positions
