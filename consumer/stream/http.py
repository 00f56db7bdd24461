"""One HTTP endpoint for Prometheus and Kubernetes: /metrics, /healthz and /readyz."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def serve(
    host: str,
    port: int,
    registry: CollectorRegistry,
    alive: Callable[[], bool],
    unready_reason: Callable[[], str | None],
) -> ThreadingHTTPServer:
    """Start serving in a daemon thread; returns the server (its real port is server_port).
    `unready_reason` is None when ready, else what /readyz answers with its 503."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok = alive()
                self._reply(200 if ok else 503, b"ok\n" if ok else b"stuck or fatal\n")
            elif path == "/readyz":
                reason = unready_reason()
                if reason is None:
                    self._reply(200, b"ready\n")
                else:
                    self._reply(503, f"not ready: {reason}\n".encode())
            else:
                self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Scrapes and probes every few seconds would drown the detector's own log."""

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
