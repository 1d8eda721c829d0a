"""Configuration from a Greengrass deployment: read at start, validated before every new deployment applies.

Validation of a proposed deployment (``SubscribeToValidateConfigurationUpdates``) rejects, naming the field:

- anything the component's pydantic model refuses: an unknown key, a wrong type, a value out of range, and the
  cross-field checks the models make (a tag group naming a tag no connection reads, ...);
- an **unreachable endpoint**, but only one the deployment *adds or changes*: every ``host``/``port`` pair and
  every ``endpoint``/``url`` of an enabled part of the configuration gets a TCP connect with a
  :data:`PROBE_TIMEOUT_S` timeout, all in parallel. Endpoints the running configuration already has are not
  probed, so a device that is down for maintenance never blocks an unrelated change (the collector keeps
  reconnecting to it). Only reachability is checked; protocol and credentials are the running component's job;
- a malformed **secret reference** (``secretsmanager:...`` in a password field, :mod:`gateway.secretrefs`). A
  well-formed one is fetched only when the configuration applies, at start and at each update, since the
  accessControl policy deployed with it is not in force before; a reference that cannot be fetched then is logged
  in one line per field (field, ARN, fix) and the running configuration stays (at start: ERRORED);
- a **tag group member** (``groups[*].tags`` over ``input_streams``, the anomaly detector) that no record among the
  last :data:`RECENT_MESSAGES` messages of those streams carries. While the streams hold no data yet nothing can
  be judged, and the deployment is accepted.

The nucleus waits for the report (its ``configurationValidationPolicy`` timeout, 20 s by default), so probes are
kept well under that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pydantic import BaseModel

from gateway import secretrefs
from gateway.config import validate
from gateway.endpoints import host_port
from gateway.errors import ConfigError, EndpointError, GatewayError
from gateway.ipc import GreengrassIpc

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
RECENT_MESSAGES = 200


def load_deployed(model: type[M], *, origin: str) -> M:
    """Read this component's configuration from the nucleus, validate it and resolve its secret references
    (synchronous; outside a loop)."""

    async def fetch() -> M:
        ipc = await GreengrassIpc.connect()
        try:
            return await secretrefs.resolve(validate(model, await ipc.get_configuration(), origin=origin), ipc,
                                            component=origin)
        finally:
            ipc.close()

    return asyncio.run(fetch())


def endpoints(config: BaseModel, prefix: str = "") -> Iterator[tuple[str, str, int]]:
    """Every network endpoint of an enabled part of ``config``: ``(field path, host, port)``.

    A model with ``host`` and ``port`` fields gives one (path of ``host``); a string field named ``endpoint`` or
    ``url`` with a ``scheme://host[:port]`` gives one (the scheme's usual port when none is written). Parts whose
    ``enabled`` is false are skipped.
    """
    if getattr(config, "enabled", True) is False:
        return
    host, port = getattr(config, "host", None), getattr(config, "port", None)
    if isinstance(host, str) and host and isinstance(port, int):
        yield f"{prefix}host", host, port
    for name in type(config).model_fields:
        value = getattr(config, name)
        if name in ("endpoint", "url") and isinstance(value, str) and "://" in value:
            try:
                found = host_port(value, what=f"{prefix}{name}")
            except EndpointError:  # no host or no port: the model should have refused it; nothing to probe
                pass
            else:
                yield f"{prefix}{name}", *found
        for path, item in _children(value, f"{prefix}{name}"):
            yield from endpoints(item, f"{path}.")


def _children(value: Any, path: str) -> Iterator[tuple[str, BaseModel]]:
    if isinstance(value, BaseModel):
        yield path, value
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _children(item, f"{path}.{index}")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _children(item, f"{path}.{key}")


async def _probe(path: str, host: str, port: int) -> str | None:
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PROBE_TIMEOUT_S)
    except asyncio.TimeoutError:
        reason = f"no answer within {PROBE_TIMEOUT_S:g} s"
    except OSError as exc:
        reason = exc.strerror or str(exc)
    else:
        writer.close()
        return None
    return (f"{path}: {host}:{port} is unreachable from this gateway ({reason}). Fix: correct the address, open the "
            "firewall, or start the peer before deploying")


async def unreachable_endpoints(new: BaseModel, running: BaseModel | None) -> list[str]:
    """One line per endpoint that ``new`` adds or changes and that does not accept a TCP connection."""
    known = {(host, port) for _path, host, port in endpoints(running)} if running is not None else set()
    fresh = [(path, host, port) for path, host, port in endpoints(new) if (host, port) not in known]
    results = await asyncio.gather(*(_probe(*endpoint) for endpoint in fresh))
    return [problem for problem in results if problem is not None]


def _recent_tags(config: BaseModel, streams: list[str]) -> set[str]:
    """Tags of the last :data:`RECENT_MESSAGES` messages of each stream (nothing when no stream has data)."""
    from gateway.codec import decode_batch
    from gateway.streams import open_store

    store_cfg = getattr(config, "store", None)
    if store_cfg is None:
        return set()
    store, _positions = open_store(store_cfg.model_copy(update={"connect_timeout_s": PROBE_TIMEOUT_S}))
    seen: set[str] = set()
    try:
        for stream in streams:
            if stream not in store.list_streams():
                continue
            info = store.describe(stream)
            start = max(info.oldest_seq, info.next_seq - RECENT_MESSAGES)
            for message in store.read(stream, start, min_count=0, max_count=RECENT_MESSAGES):
                with contextlib.suppress(GatewayError):  # a corrupt message is the reader's business, not ours
                    seen.update(record.tag for record in decode_batch(message.payload))
    finally:
        store.close()
    return seen


async def unknown_group_members(new: BaseModel) -> list[str]:
    """For a configuration with tag ``groups`` over ``input_streams`` (the anomaly detector): one line per member
    tag that no recent record of those streams carries. Nothing is judged while the streams hold no data yet."""
    groups, streams = getattr(new, "groups", None), getattr(new, "input_streams", None)
    if not groups or not streams:
        return []
    try:
        seen = await asyncio.to_thread(_recent_tags, new, list(streams))
    except GatewayError as exc:  # streams unreachable: the endpoint and store checks report that, not this one
        log.warning("tag group members not checked: %s", exc)
        return []
    if not seen:
        return []
    known = ", ".join(sorted(seen)[:8]) + (", ..." if len(seen) > 8 else "")
    return [
        f"groups.{g}.tags.{t}: {tag!r} is in no recent record of {', '.join(streams)} (tags seen: {known}). Fix: "
        "use the tag name a collector writes (`gatewayctl tail STREAM`), or add the tag to a collector first"
        for g, group in enumerate(groups)
        for t, tag in enumerate(getattr(group, "tags", []))
        if tag not in seen
    ]


async def check_deployment(model: type[M], proposed: dict[str, Any], running: M | None, origin: str) -> M:
    """Validate a proposed configuration as a deployment would apply it; raise ConfigError naming each field."""
    new = validate(model, proposed, origin=origin)
    problems = [*secretrefs.problems(new), *await unreachable_endpoints(new, running),
                *await unknown_group_members(new)]
    if problems:
        raise ConfigError(f"{origin}: {len(problems)} problem(s) found checking the configuration against this "
                          "gateway", problems=problems)
    return new


async def connect_deployment(
    name: str, model: type[M], accepted: Callable[[M], None], running: Callable[[], M | None]
) -> tuple[GreengrassIpc, M | None]:
    """Connect to the nucleus, read and validate the configuration, subscribe to validation and updates.

    Returns the connection and the validated configuration, or None when the deployed one is invalid (logged with
    every problem; the runtime reports ERRORED and exits: only a deployment fixes it). Every configuration that
    passes validation after a change is handed to ``accepted``, also one found on reading the configuration again
    after the IPC connection dropped and was made again.
    """
    ipc = await GreengrassIpc.connect()
    origin = f"{name} deployment"
    last: list[M] = []
    last_raw: list[M] = []  # as deployed, references unresolved: a deployment notifies once per changed key

    async def check(proposed: dict[str, Any]) -> str | None:
        try:
            await check_deployment(model, proposed, running(), origin)
        except ConfigError as exc:
            log.error("%s: rejected a deployment:\n%s", name, exc)
            return str(exc)
        return None

    async def changed(_key_path: list[str]) -> None:
        try:
            raw = validate(model, await ipc.get_configuration(), origin=origin)
            if last_raw and raw == last_raw[0]:
                return
            new = await secretrefs.resolve(raw, ipc, component=name)
            last_raw[:] = [raw]  # only once resolved: a deployment that adds the missing policy must retry
        except ConfigError as exc:  # validation should have stopped it; keep running the old configuration
            log.error("%s: deployed configuration is invalid, keeping the running one:\n%s", name, exc)
            return
        except GatewayError as exc:
            log.error("%s: cannot read the new configuration: %s", name, exc)
            return
        if new != (last[0] if last else running()):  # a deployment notifies once per changed key: hand it over once
            last[:] = [new]
            accepted(new)

    await ipc.subscribe_validate_configuration(check)
    await ipc.subscribe_configuration_updates(changed)
    # After a dropped connection the subscriptions are made again (gateway.ipc); a deployment that applied while
    # the connection was down sent its event to nobody: read the configuration again.
    ipc.on_reconnect(lambda: changed([]))
    config: M | None = None
    try:
        raw = validate(model, await ipc.get_configuration(), origin=origin)
    except ConfigError as exc:
        log.error("%s:\n%s", name, exc)
    else:
        try:
            config = await secretrefs.resolve(raw, ipc, component=name)
            last_raw[:] = [raw]
        except GatewayError as exc:  # also the nucleus not answering for a secret: ERRORED until redeployed
            log.error("%s:\n%s", name, exc)
    return ipc, config
