"""Downloading a packed package: HTTP(S) with Range resume, a size cap, timeouts and capped backoff
(docs/rollout.md). Device-side: Python 3.8-compatible, standard library only.

Transient failures (connection refused or reset, a read that stalls past the timeout, a short body, HTTP 5xx, 408,
429) are retried, resuming from the bytes already on disk; anything else (404, 403, a server that sends more than
the signed size, a Range the server cannot satisfy because its file is shorter) fails the download at once. The
finished file's sha256 must equal the signed one, else it is deleted and the download fails.
"""
import http.client
import logging
import os
import socket
import threading
import urllib.error
import urllib.request
from typing import Callable, Optional

from ..contract.pack import sha256_file
from ..errors import RolloutError

log = logging.getLogger(__name__)
TRANSIENT_HTTP = (408, 425, 429, 500, 502, 503, 504)
CHUNK = 256 << 10


class _Transient(Exception):
    pass


def download(url: str, path: str, size: int, sha256: str, timeout: float, attempts: int, backoff_max: float,
             stop: threading.Event, progress: Optional[Callable[[float], None]] = None) -> str:
    """Fetch ``url`` into ``path`` (resuming what is there); returns ``path`` once it is exactly ``size`` bytes
    with this ``sha256``. RolloutError when it cannot be."""
    last = "no attempt"
    for attempt in range(attempts):
        if stop.is_set():
            raise RolloutError("stopped during the download")
        have = os.path.getsize(path) if os.path.exists(path) else 0
        if have > size:
            os.unlink(path)
            have = 0
        if have == size:
            break
        try:
            _fetch(url, path, have, size, timeout, stop, progress)
            break
        except _Transient as exc:
            last = str(exc)
            wait = min(backoff_max, 0.5 * 2 ** attempt)
            log.warning("download of %s: %s (try %d of %d; again in %.1f s)", url, last, attempt + 1, attempts, wait)
            if attempt + 1 < attempts and stop.wait(wait):
                raise RolloutError("stopped during the download")
    have = os.path.getsize(path) if os.path.exists(path) else 0
    if have != size:
        raise RolloutError("download of %s failed after %d tries (%d of %d bytes): %s" % (url, attempts, have, size,
                                                                                         last))
    digest = sha256_file(path)
    if digest != sha256:
        os.unlink(path)
        raise RolloutError("downloaded file's sha256 is %s..., the signed one is %s...: the file on the server is "
                           "not the one that was signed" % (digest[:12], sha256[:12]))
    return path


def _fetch(url: str, path: str, have: int, size: int, timeout: float, stop: threading.Event,
           progress: Optional[Callable[[float], None]]) -> None:
    headers = {"User-Agent": "edgesight-agent"}
    if have:
        headers["Range"] = "bytes=%d-" % have
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:
            raise RolloutError("the server's file is shorter than the signed %d bytes (it refused bytes %d-)"
                               % (size, have))
        if exc.code in TRANSIENT_HTTP:
            raise _Transient("HTTP %d" % exc.code)
        raise RolloutError("the server answered HTTP %d %s for %s" % (exc.code, exc.reason, url))
    except (urllib.error.URLError, socket.timeout, ConnectionError, http.client.HTTPException, OSError) as exc:
        raise _Transient("cannot connect: %s" % getattr(exc, "reason", exc))
    with resp:
        if resp.status == 206:
            start = _range_start(resp.headers.get("Content-Range"))
            if start != have:
                raise _Transient("the server resumed at byte %s, not %d" % (start, have))
            mode = "ab"
        elif resp.status == 200:
            have, mode = 0, "wb"  # no Range support: start over
        else:
            raise RolloutError("the server answered HTTP %d for %s" % (resp.status, url))
        declared = resp.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and have + int(declared) > size:
            raise RolloutError("the server sends %d bytes; the signed size is %d" % (have + int(declared), size))
        with open(path, mode) as f:
            try:
                while not stop.is_set():
                    block = resp.read(min(CHUNK, size - have + 1))
                    if not block:
                        break
                    have += len(block)
                    if have > size:
                        raise RolloutError("the server sent more than the signed %d bytes" % size)
                    f.write(block)
                    if progress is not None:
                        progress(have / float(size))
            except (socket.timeout, ConnectionError, http.client.HTTPException, OSError) as exc:
                raise _Transient("the transfer broke off at byte %d: %s" % (have, exc or type(exc).__name__))
            finally:
                f.flush()
                os.fsync(f.fileno())
    if have < size and not stop.is_set():
        raise _Transient("the body ended at byte %d of %d" % (have, size))


def _range_start(header: Optional[str]) -> Optional[int]:
    try:
        return int(str(header).split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None
