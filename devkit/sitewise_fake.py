"""A local stand-in for AWS IoT SiteWise's ``BatchPutAssetPropertyValue`` (no emulator exists; moto has none).

HTTP on 127.0.0.1, the REST-JSON wire format botocore speaks (``POST /properties``), with what the real service
enforces and answers:

- at most 10 entries a request and 10 values an entry, unique entry ids (else ``InvalidRequestException`` for the
  request, HTTP 400);
- a signed request (``Authorization`` with a SigV4 credential); access keys listed in ``expired_keys`` get
  ``ExpiredTokenException`` (HTTP 403), as an expired token exchange credential would;
- a request rate quota (``ThrottlingException``, HTTP 429) and an optional per-property value rate (per-entry
  ``ThrottlingException`` with the refused timestamps);
- per entry: an unknown alias gives ``ResourceNotFoundException``; a value variant that does not match the
  property's data type gives ``InvalidRequestException``; timestamps outside [now - 7 days, now + 10 min] give
  ``TimestampOutOfRangeException`` listing them (the entry's other values are stored);
- ``inject(code, entries)`` makes the next entries fail with ``code`` (e.g. ``InternalFailureException``).

Accepted values are kept per alias, duplicates included (SiteWise bills them twice), so a test can check exactly
what arrived. Run in-process (``SiteWiseFake(...).start()``) or as ``python -m devkit.sitewise_fake``.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler
from typing import Any

from devkit.localhttp import LocalHttpServer

DataType = str  # DOUBLE | INTEGER | BOOLEAN | STRING
_VARIANT = {"DOUBLE": "doubleValue", "INTEGER": "integerValue", "BOOLEAN": "booleanValue", "STRING": "stringValue"}
_ENTRY_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class SiteWiseFake(LocalHttpServer):
    """The fake service.

    Args:
        properties: alias -> data type (DOUBLE, INTEGER, BOOLEAN, STRING) of the properties that exist.
        auto_create: an unknown alias is created with the data type of its first value (for benchmarks).
        requests_per_s: request quota (token bucket with a one-second burst); None for no limit.
        values_per_s_per_alias: per-property value quota; None for no limit.
        expired_keys: access key ids whose token counts as expired.
    """

    def __init__(
        self,
        properties: dict[str, DataType] | None = None,
        *,
        auto_create: bool = False,
        requests_per_s: float | None = None,
        values_per_s_per_alias: float | None = None,
        expired_keys: set[str] | None = None,
        port: int = 0,
    ) -> None:
        self.properties = dict(properties or {})
        self.auto_create = auto_create
        self.requests_per_s = requests_per_s
        self.values_per_s_per_alias = values_per_s_per_alias
        self.expired_keys = set(expired_keys or ())
        self.values: dict[str, list[tuple[int, Any, str]]] = defaultdict(list)  # alias -> (ts_ns, value, quality)
        self.requests = 0
        self.throttled = 0
        self.entry_errors: dict[str, int] = defaultdict(int)
        self._injected: list[str] = []
        self._lock = threading.Lock()
        self._bucket = (float(requests_per_s or 0), time.monotonic())
        self._alias_buckets: dict[str, tuple[float, float]] = {}
        super().__init__(_handler(self), port, name="sitewise-fake")

    def inject(self, code: str, entries: int = 1) -> None:
        """Fail the next ``entries`` entries with the per-entry error ``code``."""
        with self._lock:
            self._injected += [code] * entries

    def value_count(self) -> int:
        with self._lock:
            return sum(len(v) for v in self.values.values())

    # ---- the operation ---------------------------------------------------------------------------------------

    def handle(self, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        self._authenticate(headers.get("authorization", ""))
        with self._lock:
            self.requests += 1
            self._take_request_token()
        try:
            entries = json.loads(body)["entries"]
        except (ValueError, KeyError, TypeError) as exc:
            raise _Refused(400, "InvalidRequestException", f"malformed request: {exc}") from exc
        if not isinstance(entries, list) or not 1 <= len(entries) <= 10:
            raise _Refused(400, "InvalidRequestException", "entries must hold 1 to 10 items")
        ids = [e.get("entryId") for e in entries]
        if len(set(ids)) != len(ids) or not all(isinstance(i, str) and _ENTRY_ID.match(i) for i in ids):
            raise _Refused(400, "InvalidRequestException", "entryId values must be unique and match [a-zA-Z0-9_-]+")
        for e in entries:
            if not 1 <= len(e.get("propertyValues") or []) <= 10:
                raise _Refused(400, "InvalidRequestException", f"entry {e['entryId']}: 1 to 10 propertyValues")
        now = time.time()
        errors = []
        with self._lock:
            for e in entries:
                problems = self._entry(e, now)
                if problems:
                    errors.append({"entryId": e["entryId"], "errors": problems})
        return {"errorEntries": errors}

    def _authenticate(self, authorization: str) -> None:
        found = _CREDENTIAL.search(authorization)
        if not found:
            raise _Refused(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        if found.group(1) in self.expired_keys:
            raise _Refused(403, "ExpiredTokenException", "The security token included in the request is expired")

    def _take_request_token(self) -> None:
        if self.requests_per_s is None:
            return
        tokens, at = self._bucket
        now = time.monotonic()
        tokens = min(self.requests_per_s, tokens + (now - at) * self.requests_per_s)
        if tokens < 1:
            self._bucket = (tokens, now)
            self.throttled += 1
            raise _Refused(429, "ThrottlingException", "Rate exceeded")
        self._bucket = (tokens - 1, now)

    def _entry(self, e: dict[str, Any], now: float) -> list[dict[str, Any]]:
        values = e["propertyValues"]
        stamps = [v["timestamp"] for v in values]
        if self._injected:
            code = self._injected.pop(0)
            self.entry_errors[code] += 1
            return [{"errorCode": code, "errorMessage": f"injected {code}", "timestamps": stamps}]
        alias = e.get("propertyAlias", "")
        dtype = self.properties.get(alias)
        if dtype is None and self.auto_create and values:
            dtype = next((t for t, k in _VARIANT.items() if k in values[0].get("value", {})), None)
            if dtype is not None:
                self.properties[alias] = dtype
        if dtype is None:
            self.entry_errors["ResourceNotFoundException"] += 1
            return [{"errorCode": "ResourceNotFoundException",
                     "errorMessage": f"No property found with alias {alias}", "timestamps": stamps}]
        out_of_range, wrong_type, throttled = [], [], []
        for v in values:
            ts = v["timestamp"]
            secs = ts["timeInSeconds"] + ts.get("offsetInNanos", 0) / 1e9
            variant = v.get("value", {})
            if not now - 7 * 86400 <= secs <= now + 600:
                out_of_range.append(ts)
            elif list(variant) != [_VARIANT[dtype]] or (dtype == "INTEGER" and not -(2**31) <= variant[
                    "integerValue"] < 2**31):
                wrong_type.append(ts)
            elif not self._alias_token(alias):
                throttled.append(ts)
            else:
                ts_ns = ts["timeInSeconds"] * 1_000_000_000 + ts.get("offsetInNanos", 0)
                self.values[alias].append((ts_ns, variant[_VARIANT[dtype]], v.get("quality", "GOOD")))
        problems = []
        for code, hit, message in (
            ("TimestampOutOfRangeException", out_of_range, "timestamps outside [now - 7 days, now + 10 minutes]"),
            ("InvalidRequestException", wrong_type, f"value does not match the property's data type {dtype}"),
            ("ThrottlingException", throttled, "Rate exceeded for the property"),
        ):
            if hit:
                self.entry_errors[code] += 1
                problems.append({"errorCode": code, "errorMessage": message, "timestamps": hit})
        return problems

    def _alias_token(self, alias: str) -> bool:
        rate = self.values_per_s_per_alias
        if rate is None:
            return True
        now = time.monotonic()
        tokens, at = self._alias_buckets.get(alias, (rate, now))
        tokens = min(rate, tokens + (now - at) * rate)
        ok = tokens >= 1
        self._alias_buckets[alias] = (tokens - 1 if ok else tokens, now)
        return ok


def _handler(fake: SiteWiseFake) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # Answer in one segment: headers and body written apart meet the client's delayed ACK (40 ms a call).
        wbufsize = 1 << 16
        disable_nagle_algorithm = True
        protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects

        def do_POST(self) -> None:  # http.server calls it by this name
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.path.split("?")[0] != "/properties":
                self._answer(404, {"message": f"{self.path} is not implemented by the fake"},
                             "ResourceNotFoundException")
                return
            try:
                self._answer(200, fake.handle({k.lower(): v for k, v in self.headers.items()}, body))
            except _Refused as refused:
                self._answer(refused.status, {"message": str(refused)}, refused.code)

        def _answer(self, status: int, payload: dict[str, Any], code: str = "") -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            if code:
                self.send_header("x-amzn-ErrorType", code)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read counters
            pass

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--auto-create", action="store_true", help="accept any alias (type of its first value)")
    parser.add_argument("--requests-per-s", type=float, default=None)
    args = parser.parse_args(argv)
    fake = SiteWiseFake(auto_create=args.auto_create, requests_per_s=args.requests_per_s, port=args.port)
    print(f"listening on 127.0.0.1:{fake.port}", flush=True)
    try:
        fake.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
