"""An upstream of the test's own that answers with exactly the bytes a test registered (hostile JSON bodies)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Canned:
    body: bytes
    chunked: bool = False               # Transfer-Encoding: chunked (no content-length), in 64 KiB chunks
    content_type: str = "application/json"


class RawUpstream:
    """GET .../<name> answers 200 with the body registered under `name` (the last path segment)."""

    def __init__(self) -> None:
        self.bodies: dict[str, Canned] = {}
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and chunked responses

            def do_GET(self) -> None:
                canned = bodies.get(self.path.split("?", 1)[0].rsplit("/", 1)[-1])
                if canned is None:
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-type", canned.content_type)
                if not canned.chunked:
                    self.send_header("content-length", str(len(canned.body)))
                    self.end_headers()
                    self.wfile.write(canned.body)
                    return
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                try:
                    for start in range(0, len(canned.body), 65536):
                        chunk = canned.body[start:start + 65536]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:  # Envoy gave up on the response (a local reply was sent instead)
                    self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> RawUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
