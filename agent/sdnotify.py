"""systemd's notify protocol over ``$NOTIFY_SOCKET`` without dependencies (sd_notify(3)).

READY=1 after the model is loaded, WATCHDOG=1 only after real progress, STATUS=..., STOPPING=1,
EXTEND_TIMEOUT_USEC=... while something slow (a TensorRT engine build) runs. Outside systemd every call is a no-op.
"""
import logging
import os
import socket
import time
from typing import Optional

log = logging.getLogger(__name__)


class Notifier(object):
    def __init__(self, socket_path: Optional[str] = None, watchdog_usec: Optional[int] = None) -> None:
        path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.address = ("\0" + path[1:]) if path.startswith("@") else path
        usec = watchdog_usec if watchdog_usec is not None else int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        pid = os.environ.get("WATCHDOG_PID")
        if pid and pid.isdigit() and int(pid) != os.getpid():
            usec = 0  # the watchdog is meant for another process
        self.watchdog_interval = usec / 2e6 if usec else None  # ping at half the timeout, as systemd advises
        self._last_ping = 0.0
        self._sock: Optional[socket.socket] = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.settimeout(1.0)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, message: str) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.sendto(message.encode("utf-8"), self.address)
            return True
        except OSError as exc:  # systemd gone or socket full: never fatal for the service itself
            log.warning("sd_notify failed: %s", exc)
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + ("\nSTATUS=%s" % status if status else ""))

    def status(self, text: str) -> bool:
        return self.notify("STATUS=%s" % text)

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def extend_timeout(self, seconds: float) -> bool:
        return self.notify("EXTEND_TIMEOUT_USEC=%d" % int(seconds * 1e6))

    def watchdog(self, now: Optional[float] = None) -> bool:
        """Ping if due. Call only after real progress (a frame processed and committed)."""
        if self.watchdog_interval is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_ping < self.watchdog_interval:
            return False
        self._last_ping = now
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
