"""The configuration revision a component reports: which settings it runs, comparable across a fleet.

:func:`revision_of` is the first 12 hex digits of the SHA-256 of the validated configuration in canonical JSON
(defaults filled in, keys sorted), so the same settings give the same revision on every device whatever their source
or number formatting. Secrets are not in that JSON (pydantic dumps them masked); a keyed digest of them follows as a
suffix, so that a password change is a new revision without the revision revealing anything about the password.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets as secrets_module
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr

log = logging.getLogger(__name__)


def revision_of(config: BaseModel, key: bytes | None = None) -> str:
    """The configuration revision: 12 hex digits of the SHA-256 of the canonical JSON of ``config``.

    Secrets dump as ``**********``, so a password change alone would keep the revision. When the configuration
    holds secrets, ``.`` and 6 hex digits of an HMAC of them follow, keyed with the device's revision key
    (:func:`revision_key`): the suffix changes when a secret changes, and cannot be used to guess one offline.
    The 12 digits stay comparable across a fleet.
    """
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    revision = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    secrets = sorted(_secrets(config))
    if not secrets:
        return revision
    if key is None:
        key = revision_key(config)
    mac = hmac.new(key, json.dumps(secrets, separators=(",", ":")).encode(), hashlib.sha256)
    return f"{revision}.{mac.hexdigest()[:6]}"


def _secrets(value: Any, path: str = "") -> list[tuple[str, str]]:
    """(path, secret) of every SecretStr/SecretBytes in a model, at any depth."""
    if isinstance(value, SecretStr | SecretBytes):
        secret = value.get_secret_value()
        return [(path, secret if isinstance(secret, str) else secret.hex())]
    if isinstance(value, BaseModel):
        return [s for name in type(value).model_fields for s in _secrets(getattr(value, name), f"{path}.{name}")]
    if isinstance(value, list | tuple):
        return [s for i, v in enumerate(value) for s in _secrets(v, f"{path}.{i}")]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _secrets(v, f"{path}.{k}")]
    return []


def revision_key(config: BaseModel) -> bytes:
    """The device's random revision key, ``<store.path>/revision.key`` (0600), created on first use."""
    store = getattr(config, "store", None)
    path = Path(str(getattr(store, "path", "data"))) / "revision.key"
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        pass
    key = secrets_module.token_bytes(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key.hex())
    except FileExistsError:  # another component of this gateway made it first: use theirs
        return bytes.fromhex(path.read_text().strip())
    except OSError as exc:
        log.warning("cannot keep the configuration revision key in %s (%s): secret changes show in the revision "
                    "only until the next restart", path, exc.strerror)
    return key
