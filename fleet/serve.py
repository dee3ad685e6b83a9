"""``edgesight package serve``: a small HTTP server for packed packages, for fleets without one of their own.

GET and HEAD of the files in one folder (no listing, no sub-folders, no path out of it), with ``Range: bytes=``
requests answered ``206 Partial Content`` so a device resumes an interrupted download. Any HTTP(S) server or an S3
pre-signed URL works the same; put TLS in front (a reverse proxy) when the network is not yours: devices check
every byte against the signed sha256 either way.
"""
import http.server
import logging
import os
import re
import threading
from typing import Optional, Tuple
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: Optional[str], size: int) -> Optional[Tuple[int, int]]:
    """(first, last) byte of a single ``bytes=`` range, None for no (or an ignored multi-) range, ValueError for
    one that cannot be satisfied."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # suffix: the last N bytes
        n = int(m.group(2))
        if n == 0:
            raise ValueError("empty suffix range")
        return max(0, size - n), size - 1
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else size - 1
    if first >= size or last < first:
        raise ValueError("range outside the file")
    return first, min(last, size - 1)


class Handler(http.server.BaseHTTPRequestHandler):
    root = "."
    server_version = "edgesight-serve"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: object) -> None:
        log.info("%s %s", self.address_string(), fmt % args)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _path(self) -> Optional[str]:
        name = unquote(urlsplit(self.path).path).lstrip("/")
        if not name or "/" in name or "\\" in name or name.startswith(".") or "\x00" in name:
            return None
        path = os.path.join(self.root, name)
        return path if os.path.isfile(path) and not os.path.islink(path) else None

    def _serve(self, body: bool) -> None:
        path = self._path()
        if path is None:
            self.send_error(404, "not found")
            return
        size = os.path.getsize(path)
        try:
            rng = parse_range(self.headers.get("Range"), size)
        except ValueError:
            self.send_response(416)
            self.send_header("Content-Range", "bytes */%d" % size)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        first, last = rng if rng else (0, size - 1)
        self.send_response(206 if rng else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(last - first + 1))
        if rng:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (first, last, size))
        self.end_headers()
        if body and size:
            with open(path, "rb") as f:
                f.seek(first)
                self._copy(f, last - first + 1)

    def _copy(self, f: "object", n: int) -> None:
        left = n
        while left > 0:
            block = f.read(min(1 << 20, left))  # type: ignore[attr-defined]
            if not block:
                break
            self.wfile.write(block)
            left -= len(block)


class PackServer(object):
    """The server on ``host:port`` (port 0: a free one) serving ``root``; ``start()`` runs it in a thread."""

    def __init__(self, root: str, host: str = "0.0.0.0", port: int = 8080, handler: type = Handler) -> None:
        if not os.path.isdir(root):
            from ..errors import ConfigError

            raise ConfigError("is not a folder of packed packages", file=root)
        self.root = os.path.abspath(root)
        cls = type("BoundHandler", (handler,), {"root": self.root})
        self.httpd = http.server.ThreadingHTTPServer((host, port), cls)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread: Optional[threading.Thread] = None

    def url(self, name: str, host: str = "127.0.0.1") -> str:
        return "http://%s:%d/%s" % (host, self.port, name)

    def start(self) -> "PackServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="pack-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.5)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
