"""Serpent only: no Pyro4 message in this process is ever decoded with pickle, marshal, json, dill, cloudpickle or
msgpack.

Pyro4 4.82 decodes the answer to its connect handshake with whatever serializer the *server* names in the message
header, and pickle (which runs code while decoding) is always registered (NOTES 13). A rogue or impersonated
OpenOPC gateway could therefore run code in the collector, ``gatewayctl opcda`` and ``gatewayctl doctor``. Pyro4 is
no longer developed, so instead of waiting for a fix we take the choice away from the peer, process-wide, when
:mod:`gateway.sources.opcda` is imported:

1. every serializer but serpent leaves Pyro4's registry (``Pyro4.util._serializers`` and ``_serializers_by_id``);
2. the registry becomes a mapping that refuses to hold anything else, so a later registration raises;
3. ``Pyro4.util.get_serializer`` and ``get_serializer_by_id`` (the only lookups Pyro4's core uses) answer serpent
   and raise :class:`ForeignSerializer` for any other name or id, whatever the registry holds;
4. :func:`check` runs before every session and re-applies all of it if anything was put back.

Serpent itself only builds literals (and a few Pyro classes through Pyro's own allow-list), never calls code.
"""

from __future__ import annotations

import logging
import re
from typing import Any, NoReturn

import Pyro4
import Pyro4.errors
import Pyro4.util

log = logging.getLogger(__name__)

SERPENT = "serpent"
SERPENT_ID = 1
# Pyro4's fixed serializer ids ("never change this" in Pyro4/util.py), to name what a peer tried.
NAMES = {1: "serpent", 2: "json", 3: "marshal", 4: "pickle", 5: "dill", 6: "msgpack", 7: "cloudpickle"}


class ForeignSerializer(Pyro4.errors.SerializeError):  # type: ignore[misc]  # Pyro4 is untyped
    """A peer or a caller asked for a serializer other than serpent; nothing was decoded."""


def _refuse(what: str) -> NoReturn:
    raise ForeignSerializer(f"refused a message encoded with {what}: only serpent is accepted (other Pyro "
                            "serializers can run code chosen by the peer while decoding)")


class _SerpentOnly(dict[Any, Any]):
    """Pyro4's serializer registry, kept to serpent: registering another serializer raises."""

    def __setitem__(self, key: Any, value: Any) -> None:
        if key not in (SERPENT, SERPENT_ID) or getattr(value, "serializer_id", None) != SERPENT_ID:
            _refuse(f"{key!r} (registration)")
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def __ior__(self, other: Any) -> _SerpentOnly:  # type: ignore[override,misc]
        self.update(other)
        return self


_SERPENT = Pyro4.util.SerpentSerializer()


def get_serializer(name: str) -> Any:
    """Pyro4's lookup by name, serpent only."""
    if name != SERPENT:
        _refuse(str(name))
    return _SERPENT


def get_serializer_by_id(sid: int) -> Any:
    """Pyro4's lookup by the id a message header names, serpent only."""
    if sid != SERPENT_ID:
        _refuse(f"{NAMES.get(sid, 'an unknown serializer')} (serializer id {sid})")
    return _SERPENT


_MISMATCH = re.compile(r"invalid serializer in response: (\d+)")


def refusal(exc: BaseException) -> str | None:
    """What a refused foreign serializer looks like in one line, or None if ``exc`` is something else.

    Pyro4 refuses a call's answer in another serializer than the call's before decoding it, with its own words;
    those are said in ours, so every path reports the same thing.
    """
    if isinstance(exc, ForeignSerializer):
        return str(exc)
    found = _MISMATCH.search(str(exc)) if isinstance(exc, Pyro4.errors.SerializeError) else None
    if found:
        sid = int(found[1])
        return (f"refused a message encoded with {NAMES.get(sid, 'an unknown serializer')} (serializer id {sid}): "
                "only serpent is accepted (other Pyro serializers can run code chosen by the peer while decoding)")
    return None


def _registries() -> tuple[Any, Any]:
    return Pyro4.util._serializers, Pyro4.util._serializers_by_id  # type: ignore[attr-defined]


def _enforced() -> bool:
    by_name, by_id = _registries()
    return (Pyro4.util.get_serializer is get_serializer and Pyro4.util.get_serializer_by_id is get_serializer_by_id
            and isinstance(by_name, _SerpentOnly) and isinstance(by_id, _SerpentOnly)
            and set(by_name) == {SERPENT} and set(by_id) == {SERPENT_ID}
            and Pyro4.config.SERIALIZER == SERPENT and set(Pyro4.config.SERIALIZERS_ACCEPTED) == {SERPENT})


def enforce() -> None:
    """Make serpent the only serializer Pyro4 can use in this process (see the module docstring)."""
    by_name, by_id = _SerpentOnly(), _SerpentOnly()
    dict.__setitem__(by_name, SERPENT, _SERPENT)
    dict.__setitem__(by_id, SERPENT_ID, _SERPENT)
    Pyro4.util._serializers = by_name  # type: ignore[attr-defined]
    Pyro4.util._serializers_by_id = by_id  # type: ignore[attr-defined]
    Pyro4.util.get_serializer = get_serializer
    Pyro4.util.get_serializer_by_id = get_serializer_by_id
    Pyro4.config.SERIALIZER = SERPENT
    Pyro4.config.SERIALIZERS_ACCEPTED = {SERPENT}


def check() -> None:
    """Before a session: if anything in the process undid :func:`enforce`, say so once and enforce again."""
    if not _enforced():
        log.warning("Pyro4's serializers were changed in this process after start; serpent-only enforced again")
        enforce()


enforce()
