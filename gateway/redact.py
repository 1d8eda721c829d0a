"""Keeping secrets out of what the gateway prints, logs and writes to status files.

Secrets live in a few known fields (passwords, keys, tokens, secret references) and, by mistake, in URLs
(``opc.tcp://user:pass@host``). Configuration models refuse user info in URLs (:func:`userinfo_problem`); every
place that formats a URL anyway (a log line, a status file, an error from a library) passes it through
:func:`redact_url` or :func:`redact_text`, so that a secret that slipped in is never shown.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import urlsplit

# scheme://userinfo@host: userinfo is everything up to the last @ before the first / ? or # of the authority.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#\s@]*@)")

SECRET_WORDS = ("password", "passwd", "passwort", "secret", "token", "credential", "passphrase", "apikey",
                "privatekey", "hmac")
# Short or misspelled names that mean a secret (a key rejected as unknown would otherwise be echoed).
SECRET_NAMES = ("pasword", "pwd", "pw", "pass", "passw", "pin", "key", "auth", "sas")


def is_secret_key(key: object) -> bool:
    """Whether a configuration key (spelt right or not) names a secret whose value must never be shown."""
    name = str(key).lower().replace("_", "").replace("-", "")
    return any(w in name for w in SECRET_WORDS) or name in SECRET_NAMES


def redact_url(url: str) -> str:
    """``url`` with any user info (``user:pass@``) replaced by ``***@``; other text is returned unchanged."""
    return _URL_USERINFO.sub(lambda m: f"{m['scheme']}***@", url)


def redact_text(text: str) -> str:
    """Free text (a library's error message, a log argument) with the user info of every URL in it masked."""
    return redact_url(text)


def userinfo_problem(url: str, field: str) -> str | None:
    """Why ``url`` must be refused, or None: credentials inside a URL end up in logs, status files and CLI output."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None  # the field's own validation reports a malformed URL
    if parts.username is None and parts.password is None and "@" not in parts.netloc:
        return None
    return (f"{field} carries user info ({redact_url(url)}): credentials in a URL end up in logs and status files; "
            "remove the 'user:password@' part and give the identity in the fields meant for it (a username and "
            "password field, a secret reference, or the AWS credential chain)")


def scrub(value: Any) -> Any:
    """A status document with the user info of every URL in its texts masked (errors quote URLs)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


class RedactingFormatter(logging.Formatter):
    """Masks the user info of any URL in a formatted line: libraries put URLs into their errors and tracebacks."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))
