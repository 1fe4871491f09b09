"""A fault-injecting HTTP proxy on 127.0.0.1 in front of an S3 endpoint (tests only; docs/reliability.md).

``with FaultProxy(upstream, rate=0.05, seed=1) as proxy: ... proxy.endpoint, proxy.counts()``. Each request is
forwarded to ``upstream`` (the loopback moto server) unless a seeded draw picks a fault for it, with probability
``rate``, of one of these kinds (equally likely):

* ``slowdown``: HTTP 503 with S3's ``SlowDown`` error body, not forwarded (what AWS, R2 or Ceph say when throttling);
* ``internal_error``: HTTP 500 ``InternalError``, not forwarded;
* ``reset``: the request is forwarded and served, then the connection is reset (RST) in the middle of the response
  body: the status, the headers and half the body arrive (counted as ``reset_mid_body``); an answer without a body
  (HEAD, PUT) is reset before anything is sent (``reset_no_response``: the request did take effect);
* ``delay``: the request waits ``delay`` seconds (uniform in the range), then is forwarded normally.

The draw is seeded (``seed``) and made under a lock in arrival order, so one sequential client gets the same faults
every time; concurrent clients get the same rate. ``counts()`` says how many requests came and how many faults of
each kind were injected; ``rate`` can be changed while the proxy runs. Requests the predicate ``eligible(method,
path)`` refuses are always forwarded.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

KINDS = ("slowdown", "internal_error", "reset", "delay")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "upgrade", "te"}
ERRORS = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "internal_error": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Retry."),
}


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 0.0,
        seed: int = 0,
        kinds: tuple[str, ...] = KINDS,
        delay: tuple[float, float] = (0.5, 2.0),
        eligible: Callable[[str, str], bool] | None = None,
        port: int = 0,
    ):
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {KINDS}")
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// endpoint, not {upstream!r}")
        self.upstream = (parts.hostname, parts.port or 80)
        self.rate, self.kinds, self.delay, self.eligible = rate, kinds, delay, eligible
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.requests = 0
        self.faults: Counter[str] = Counter()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def draw(self, method: str, path: str) -> tuple[str | None, float]:
        """The fault for this request (None: forward it untouched) and, for a delay, its length."""
        with self._lock:
            self.requests += 1
            if self.eligible is not None and not self.eligible(method, path):
                return None, 0.0
            if self._rng.random() >= self.rate:
                return None, 0.0
            kind = self._rng.choice(self.kinds)
            return kind, self._rng.uniform(*self.delay) if kind == "delay" else 0.0

    def count(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] += 1

    def counts(self) -> dict[str, Any]:
        """``{"requests": n, "faults": {kind: n}, "total_faults": n}`` since the start or the last ``reset()``."""
        with self._lock:
            return {"requests": self.requests, "faults": dict(self.faults), "total_faults": sum(self.faults.values())}

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.faults.clear()

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like a real S3 endpoint (and Expect: 100-continue handled)

        def log_message(self, format: str, *args: Any) -> None:  # no line per request on stderr
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                            pass
                        return bytes(data)
                    data += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _reset(self) -> None:
            """Close with RST (SO_LINGER 0): the client sees 'connection reset by peer'."""
            self.close_connection = True
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            except OSError:
                pass

        def _error(self, kind: str) -> None:
            status, reason, code, message = ERRORS[kind]
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                f"<Resource>{self.path.split('?')[0]}</Resource><RequestId>fault-proxy</RequestId></Error>"
            ).encode()
            self.send_response_only(status, reason)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
            conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = b"" if self.command == "HEAD" else response.read()
                return response.status, response.reason, response.getheaders(), data
            finally:
                conn.close()

        def _handle(self) -> None:
            body = self._body()
            kind, seconds = proxy.draw(self.command, self.path)
            if kind in ERRORS:
                proxy.count(kind)
                self._error(kind)
                return
            if kind == "delay":
                proxy.count(kind)
                time.sleep(seconds)
            status, reason, headers, data = self._forward(body)
            if kind == "reset":
                if len(data) >= 2:
                    proxy.count("reset_mid_body")
                    self._send(status, reason, headers, data, cut=len(data) // 2)
                else:
                    proxy.count("reset_no_response")
                self._reset()
                return
            self._send(status, reason, headers, data)

        def _send(
            self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes, cut: int | None = None
        ) -> None:
            self.send_response_only(status, reason)
            for name, value in headers:
                if name.lower() in HOP_BY_HOP or (name.lower() == "content-length" and self.command != "HEAD"):
                    continue
                self.send_header(name, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data if cut is None else data[:cut])
            self.wfile.flush()

        def _serve(self) -> None:
            try:
                self._handle()
            except (ConnectionError, TimeoutError, OSError):  # the client went away (or upstream did): drop it
                self.close_connection = True

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

    return Handler
