"""Demo backends for `lbcp up`: tiny HTTP servers on loopback that answer with their name.

`GET` answers `NAME\n` (and an `x-backend: NAME` header), after `?delay_ms=N` if given. A WebSocket upgrade (RFC 6455)
greets with `NAME` and then echoes every text or binary message, so a persistent
connection through Envoy shows which backend holds it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_WS_MESSAGE = 1 << 20


def ws_accept(key: str) -> str:
    """The Sec-WebSocket-Accept answer to a client's Sec-WebSocket-Key (RFC 6455)."""
    return base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest()).decode()


def _read_exact(f: io.BufferedIOBase, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ConnectionError("peer closed")
    return data


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 1 << 16:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def _unmask(data: bytes, mask: bytes) -> bytes:
    # One big-integer XOR instead of a Python loop per byte.
    key = (mask * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(len(data), "big")


def _ws_echo(rfile: io.BufferedIOBase, wfile: io.BufferedIOBase, greeting: bytes) -> None:
    """Serve one WebSocket connection: greet, then echo until close (fragmented messages too)."""
    wfile.write(_ws_frame(0x1, greeting))
    wfile.flush()
    message, message_op = b"", 0
    while True:
        b0, b1 = _read_exact(rfile, 2)
        fin, opcode, masked, n = b0 & 0x80, b0 & 0x0F, b1 & 0x80, b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", _read_exact(rfile, 2))[0]
        elif n == 127:
            n = struct.unpack("!Q", _read_exact(rfile, 8))[0]
        if not masked or n > _MAX_WS_MESSAGE:
            wfile.write(_ws_frame(0x8, struct.pack("!H", 1002 if not masked else 1009)))
            return
        mask = _read_exact(rfile, 4)
        payload = _unmask(_read_exact(rfile, n), mask)
        if opcode == 0x8:  # close: answer with the same code
            wfile.write(_ws_frame(0x8, payload[:2]))
            wfile.flush()
            return
        if opcode == 0x9:  # ping
            wfile.write(_ws_frame(0xA, payload))
        elif opcode in (0x0, 0x1, 0x2):
            if opcode:
                message, message_op = b"", opcode
            message += payload
            if len(message) > _MAX_WS_MESSAGE:
                wfile.write(_ws_frame(0x8, struct.pack("!H", 1009)))
                return
            if fin:
                wfile.write(_ws_frame(message_op, message))
        wfile.flush()


class _Server(ThreadingHTTPServer):
    # The default listen backlog is 5: when an Envoy opens a burst of upstream connections
    # (a cluster update drains and refills its pools), SYNs beyond it are dropped and the
    # connects time out as 503s. A real backend's backlog is in the thousands.
    request_queue_size = 4096
    daemon_threads = True


class DemoBackend:
    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as two writes; without TCP_NODELAY, Nagle plus the
            # peer's delayed ACK add ~15 ms to every keep-alive response.
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                if self.headers.get("upgrade", "").lower() == "websocket" and self.headers.get("sec-websocket-key"):
                    self._websocket()
                    return
                # `?delay_ms=N` answers after N ms (at most 60 s): a request in flight.
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                asked = (query.get("delay_ms") or ["0"])[0]
                delay = min(60_000, int(asked)) if asked.isdigit() else 0
                if delay > 0:
                    time.sleep(delay / 1000)
                body = f"{outer.name}\n".encode()
                self.send_response(200)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(body)))
                self.send_header("x-backend", outer.name)
                self.end_headers()
                self.wfile.write(body)

            def _websocket(self) -> None:
                self.send_response(101)
                self.send_header("upgrade", "websocket")
                self.send_header("connection", "Upgrade")
                self.send_header("sec-websocket-accept", ws_accept(self.headers["sec-websocket-key"]))
                self.send_header("x-backend", outer.name)
                self.end_headers()
                self.wfile.flush()
                try:
                    _ws_echo(self.rfile, self.wfile, outer.name.encode())
                except (ConnectionError, OSError):
                    pass
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _Server((host, port), Handler)
        self.server.daemon_threads = True
        bound, self.port = self.server.server_address[:2]
        self.address = bound if isinstance(bound, str) else bytes(bound).decode()
        threading.Thread(target=self.server.serve_forever, daemon=True, name=f"demo-{name}").start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
