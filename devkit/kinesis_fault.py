"""An HTTP proxy in front of kinesalite that makes Kinesis' partial failures and throttling happen on demand.

Neither kinesalite nor moto ever fails part of a ``PutRecords`` or throttles, but the real service does, and only
then does "resend only the failed records" matter. This proxy forwards every call to kinesalite, except that:

- ``fail_records(n, code)`` takes the next ``n`` records out of the PutRecords calls that follow, forwards the
  rest, and answers with a per-record ``ErrorCode`` (``ProvisionedThroughputExceededException`` or
  ``InternalFailure``) in their places, ``FailedRecordCount`` set. The failed records never reach kinesalite, just
  as with the real service, so reading the stream back shows exactly what was resent.
- ``throttle_calls(n)`` answers the next ``n`` PutRecords calls as a whole with HTTP 400
  ``ProvisionedThroughputExceededException``.
"""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

from devkit.localhttp import LocalHttpServer

_PUT_RECORDS = "Kinesis_20131202.PutRecords"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class KinesisFaultProxy(LocalHttpServer):
    """Forwards 127.0.0.1:``port`` to kinesalite on ``target_port`` with injectable PutRecords failures."""

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self.put_calls = 0
        self.records_failed = 0
        self.calls_throttled = 0
        self._fail: list[str] = []
        self._throttle = 0
        self._lock = threading.Lock()
        super().__init__(_handler(self), port, name="kinesis-fault")

    def fail_records(self, n: int, code: str = "ProvisionedThroughputExceededException") -> None:
        with self._lock:
            self._fail += [code] * n

    def throttle_calls(self, n: int) -> None:
        with self._lock:
            self._throttle += n

    def forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.target_port, timeout=30)
        try:
            conn.request(method, path, body=body, headers={k: v for k, v in headers.items()
                                                           if k.lower() not in _HOP_BY_HOP})
            response = conn.getresponse()
            return response.status, {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP}, \
                response.read()
        finally:
            conn.close()

    def put_records(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        request = json.loads(body)
        records = request["Records"]
        with self._lock:
            self.put_calls += 1
            if self._throttle:
                self._throttle -= 1
                self.calls_throttled += 1
                error = {"__type": "ProvisionedThroughputExceededException", "message": "Rate exceeded for stream"}
                return 400, {"content-type": "application/x-amz-json-1.1"}, json.dumps(error).encode()
            codes = [self._fail.pop(0) if self._fail else "" for _ in records]
            self.records_failed += sum(1 for c in codes if c)
        kept = [r for r, c in zip(records, codes, strict=True) if not c]
        answers: list[dict[str, Any]] = []
        if kept:
            status, out_headers, data = self.forward(
                "POST", "/", headers, json.dumps({**request, "Records": kept}).encode())
            if status != 200:
                return status, out_headers, data
            answers = list(json.loads(data)["Records"])
        merged = [answers.pop(0) if not c else {"ErrorCode": c, "ErrorMessage": f"injected {c}"} for c in codes]
        result = {"FailedRecordCount": sum(1 for c in codes if c), "Records": merged}
        return 200, {"content-type": "application/x-amz-json-1.1"}, json.dumps(result).encode()


def _handler(proxy: KinesisFaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # Answer in one segment: headers and body written apart meet the client's delayed ACK (40 ms a call).
        wbufsize = 1 << 16
        disable_nagle_algorithm = True
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # http.server calls it by this name
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = dict(self.headers.items())
            if self.headers.get("x-amz-target") == _PUT_RECORDS:
                status, out, data = proxy.put_records(headers, body)
            else:
                status, out, data = proxy.forward("POST", self.path, headers, body)
            self.send_response(status)
            for k, v in out.items():
                self.send_header(k, v)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read counters
            pass

    return Handler
