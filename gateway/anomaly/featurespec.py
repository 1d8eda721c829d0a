"""Names of a group's features over time, and the window they need, without numpy.

Kept apart from :mod:`gateway.anomaly.features` because the anomaly config model imports them, and every
component validates its configuration through the component table: a collector or the publisher must be able to
import the config models without numpy, which they do not ship.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Feature = Literal["level", "std", "delta"]

#: Known features, in the order they are documented.
FEATURES = ("level", "std", "delta")
#: The default: the levels alone, as before features existed.
LEVELS_ONLY = ("level",)


def levels_only() -> list[Feature]:
    """The default feature list (a fresh list: pydantic's default factory)."""
    return ["level"]


def windowed(features: Sequence[str]) -> bool:
    """Whether ``features`` need a window (anything besides the level alone)."""
    return tuple(features) != LEVELS_ONLY


def window_of(features: Sequence[str], window: int) -> int:
    """Vectors a feature vector needs: ``window``, or 1 for levels only."""
    return window if windowed(features) else 1
