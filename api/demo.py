"""Demo backends for `lbcp up`: tiny HTTP servers on loopback that answer with their name."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class DemoBackend:
    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as two writes; without TCP_NODELAY, Nagle plus the
            # peer's delayed ACK add ~15 ms to every keep-alive response.
            disable_nagle_algorithm = True

            def do_GET(self) -> None:  # noqa: N802
                body = f"{outer.name}\n".encode()
                self.send_response(200)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(body)))
                self.send_header("x-backend", outer.name)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.address, self.port = self.server.server_address[:2]
        threading.Thread(target=self.server.serve_forever, daemon=True, name=f"demo-{name}").start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
