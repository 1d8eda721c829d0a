"""Secret references: a password field naming a secret of ``aws.greengrass.SecretManager`` instead of holding it.

Why: under Greengrass any component on the core can read any other component's configuration (GetConfiguration
takes a ``componentName`` and needs no authorisation), so a password written into a deployment is shared with all
of them. A secret deployed through the SecretManager component is decrypted only for the components whose recipe
has an ``accessControl`` policy for it.

**Form.** Any :class:`~pydantic.SecretStr` or :class:`~pydantic.SecretBytes` field of a configuration model (the OPC
UA and MQTT passwords, keys added later) may hold, instead of the value:

- ``secretsmanager:<secret ARN>``: the secret's SecretString (or its SecretBinary);
- ``secretsmanager:<secret ARN>#<key>``: the value of ``<key>`` in a SecretString holding a JSON object (the
  key/value secrets of the Secrets Manager console).

The ARN is the full one (with the 6-character suffix), as ``cloudSecrets`` and the accessControl resources name it.

**When.** :func:`resolve` runs where the deployed configuration is read (:mod:`gateway.ipc_config`): at start and at
each configuration update, never at validation (the accessControl policy arriving with the same deployment is not
in force yet). Outside Greengrass there is nothing to fetch from: :func:`refuse_outside_greengrass` refuses a file
holding a reference, naming the field.

**Never shown.** Resolved values live only in the SecretStr/SecretBytes fields (masked in repr, dumps and logs).
Errors name the field, the ARN (not a secret), a JSON key name at most, and the fix.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, SecretBytes, SecretStr

from gateway.errors import ConfigError, GatewayError

M = TypeVar("M", bound=BaseModel)

PREFIX = "secretsmanager:"
SECRET_MANAGER = "aws.greengrass.SecretManager"
_ARN_PARTS = 7  # arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME
_FETCH_ATTEMPTS, _FETCH_FIRST_WAIT_S = 4, 0.5


class SecretSource(Protocol):
    """What resolution needs of :class:`gateway.ipc.GreengrassIpc`."""

    async def get_secret_value(self, secret_id: str) -> Any:
        """Return an object with ``text`` (str | None) and ``binary`` (bytes | None)."""


@dataclass(frozen=True)
class SecretRef:
    """A reference found in a configuration: where it is, which secret, which JSON key (if any)."""

    field: str
    arn: str
    key: str | None
    binary: bool = False  # the field is SecretBytes (takes a SecretBinary as is)


def parse(value: str, field: str, *, binary: bool = False) -> SecretRef | None:
    """The reference a field's value holds, or None when it holds a plain value.

    Raises:
        ConfigError: the value starts with ``secretsmanager:`` but is not a valid reference.
    """
    if not value.startswith(PREFIX):
        return None
    arn, _, key = value[len(PREFIX):].partition("#")
    parts = arn.split(":")
    if (len(parts) != _ARN_PARTS or parts[0] != "arn" or parts[2] != "secretsmanager" or parts[5] != "secret"
            or not parts[4].isdigit() or len(parts[4]) != 12 or not parts[6]):
        raise ConfigError(f"{field}: {PREFIX}{arn} is not a secret reference",
                          fix=f"write {PREFIX}arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME-XXXXXX (the full ARN "
                          "from the Secrets Manager console), optionally followed by #KEY")
    if "#" in value[len(PREFIX):] and not key:
        raise ConfigError(f"{field}: {PREFIX}{arn}# names no JSON key", fix="write the key after #, or drop the #")
    return SecretRef(field, arn, key or None, binary)


def _text(secret: SecretStr | SecretBytes) -> str | None:
    raw = secret.get_secret_value()
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace") if raw.startswith(PREFIX.encode()) else None
    return raw


def _walk(value: Any, path: str, visit: Callable[[str, SecretStr | SecretBytes], Any]) -> Any:
    """``value`` with ``visit(path, secret)`` applied to every secret field at any depth; unchanged parts are kept
    (the same objects), changed models are shallow copies."""
    if isinstance(value, SecretStr | SecretBytes):
        return visit(path, value)
    if isinstance(value, BaseModel):
        updates = {}
        for name in type(value).model_fields:
            old = getattr(value, name)
            new = _walk(old, f"{path}.{name}" if path else name, visit)
            if new is not old:
                updates[name] = new
        return value.model_copy(update=updates) if updates else value
    if isinstance(value, list | tuple):
        items = [_walk(item, f"{path}.{i}", visit) for i, item in enumerate(value)]
        return type(value)(items) if any(a is not b for a, b in zip(items, value, strict=True)) else value
    if isinstance(value, dict):
        entries = {k: _walk(v, f"{path}.{k}", visit) for k, v in value.items()}
        return entries if any(entries[k] is not v for k, v in value.items()) else value
    return value


def references(config: BaseModel) -> list[SecretRef]:
    """Every reference in ``config``, in field order.

    Raises:
        ConfigError: one line per malformed reference.
    """
    found: list[SecretRef] = []
    problems: list[str] = []

    def visit(path: str, secret: SecretStr | SecretBytes) -> Any:
        text = _text(secret)
        try:
            ref = parse(text, path, binary=isinstance(secret, SecretBytes)) if text is not None else None
        except ConfigError as exc:
            problems.append(str(exc))
            return secret
        if ref is not None:
            found.append(ref)
        return secret

    _walk(config, "", visit)
    if problems:
        raise ConfigError(f"{len(problems)} malformed secret reference(s)", problems=problems)
    return found


def problems(config: BaseModel) -> list[str]:
    """One line per malformed reference (for deployment validation); empty when all are well formed."""
    try:
        references(config)
    except ConfigError as exc:
        return exc.problems
    return []


def refuse_outside_greengrass(config: M, origin: str) -> M:
    """``config`` unchanged when it holds no reference; otherwise a ConfigError naming each field."""
    refs = references(config)
    if not refs:
        return config
    lines = [f"{ref.field}: {PREFIX}{ref.arn} is fetched from {SECRET_MANAGER}, which only runs under Greengrass. "
             "Fix: outside Greengrass write the value itself in this file and keep the file private (chmod 600), "
             "or run the component under Greengrass or `gatewayctl dev run`" for ref in refs]
    raise ConfigError(f"{origin}: {len(lines)} secret reference(s) cannot be resolved here", problems=lines)


def _policy_fix(ref: SecretRef, component: str) -> str:
    return (f"give {component} the policy accessControl: {{{SECRET_MANAGER}: {{\"{component}:secrets:1\": "
            f"{{operations: [aws.greengrass#GetSecretValue], resources: [{ref.arn}]}}}}}} in its recipe or the "
            f"deployment, and list the ARN in cloudSecrets of {SECRET_MANAGER}; then deploy again")


async def _fetch(source: SecretSource, arn: str) -> Any:
    """One secret; errors the nucleus may recover from (a ServiceError, a stalled connection) are retried briefly,
    since the SecretManager component may still be downloading at start."""
    wait_s = _FETCH_FIRST_WAIT_S
    for attempt in range(_FETCH_ATTEMPTS):
        try:
            return await source.get_secret_value(arn)
        except GatewayError as exc:
            if not exc.retryable or attempt == _FETCH_ATTEMPTS - 1:
                raise
        await asyncio.sleep(wait_s)
        wait_s *= 2
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _value(ref: SecretRef, secret: Any) -> str | bytes:
    """The referenced value out of a fetched secret; ConfigError naming field, ARN and key when it is not there."""
    where = f"{ref.field}: secret {ref.arn}"
    if ref.key is None:
        if secret.text is None:
            binary = bytes(secret.binary or b"")
            if ref.binary:
                return binary
            try:
                return binary.decode()
            except UnicodeDecodeError:
                raise ConfigError(f"{where} is binary, not UTF-8 text",
                                  fix="store the value as a SecretString (the field takes text)") from None
        try:
            parsed = json.loads(secret.text)
        except ValueError:
            return str(secret.text)
        if isinstance(parsed, dict):
            raise ConfigError(f"{where} holds key/value pairs ({', '.join(sorted(map(str, parsed)))})",
                              fix=f"name the key: {PREFIX}{ref.arn}#KEY")
        return str(secret.text)
    try:
        parsed = json.loads(secret.text) if secret.text is not None else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ConfigError(f"{where} is not a JSON object, so #{ref.key} selects nothing",
                          fix=f"drop #{ref.key}, or store the secret as key/value pairs")
    if not isinstance(parsed.get(ref.key), str):
        missing = "has no" if ref.key not in parsed else "has a non-text value at"
        raise ConfigError(f"{where} {missing} key {ref.key!r} (keys: {', '.join(sorted(map(str, parsed)))})",
                          fix="use one of those keys, or add the key to the secret in Secrets Manager")
    return str(parsed[ref.key])


async def resolve(config: M, ipc: SecretSource, *, component: str = "this component") -> M:
    """``config`` with every reference replaced by the secret's value (the same object when it has none).

    Each secret is fetched once however many fields name it.

    Raises:
        ConfigError: one line per field that cannot be resolved, naming the field, the ARN and the fix.
        GatewayError: the nucleus did not answer (retryable).
    """
    refs = references(config)
    if not refs:
        return config
    fetched: dict[str, Any] = {}
    lines: list[str] = []
    for ref in refs:
        if ref.arn in fetched:
            continue
        try:
            fetched[ref.arn] = await _fetch(ipc, ref.arn)
        except ConfigError as exc:
            fix = _policy_fix(ref, component) if "not authorized" in exc.message else exc.fix
            lines += [f"{r.field}: cannot read {PREFIX}{r.arn}: {exc.message}. Fix: {fix}"
                      for r in refs if r.arn == ref.arn]
    values: dict[str, str | bytes] = {}
    for ref in refs:
        if ref.arn not in fetched:
            continue
        try:
            values[ref.field] = _value(ref, fetched[ref.arn])
        except ConfigError as exc:
            lines.append(str(exc))
    if lines:
        raise ConfigError(f"{component}: {len(lines)} secret reference(s) could not be resolved", problems=lines)

    def visit(path: str, secret: SecretStr | SecretBytes) -> Any:
        if path not in values:
            return secret
        value = values[path]
        if isinstance(secret, SecretBytes):
            return SecretBytes(value if isinstance(value, bytes) else value.encode())
        return SecretStr(value if isinstance(value, str) else value.decode())

    resolved: M = _walk(config, "", visit)
    return resolved
