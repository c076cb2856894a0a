"""A real HTTP server on 127.0.0.1 for download tests: serves a folder, honours Range requests,
and misbehaves once on request (drop the connection mid-file, answer 500)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FileServer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.faults: list[str] = []  # consumed one per request: "drop", "500"
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0].lstrip("/")
                server.requests.append((path, self.headers.get("Range")))
                fault = server.faults.pop(0) if server.faults else None
                target = server.folder / path
                if fault == "500":
                    self.send_error(500)
                    return
                if not target.is_file():
                    self.send_error(404)
                    return
                body = target.read_bytes()
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if fault == "drop":
                    self.wfile.write(body[start : start + (len(body) - start) // 3])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
