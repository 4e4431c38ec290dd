"""A JWKS endpoint on loopback for tests that point a provider's `jwks_url` at it (ext_authz's fetcher, Envoy's
jwt_authn remote_jwks): the document and the status can change under it; it counts fetches."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class JwksEndpoint:
    """A JWKS endpoint whose document (and status) the test changes; counts fetches."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.status = 200
        self.fetches = 0
        self.fetched = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with outer.fetched:
                    outer.fetches += 1
                    outer.fetched.notify_all()
                if outer.status != 200:
                    self.send_error(outer.status)
                    return
                body = json.dumps(outer.document).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_fetches(self, count: int, timeout_s: float = 30.0) -> None:
        with self.fetched:
            assert self.fetched.wait_for(lambda: self.fetches >= count, timeout_s), f"{self.fetches} fetches"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
