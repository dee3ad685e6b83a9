"""The capture thread of one camera: it runs a source (``agent/sources.py``), caps the rate at ``fps`` on a fixed
schedule, keeps only the latest frame (a slot, never a queue: a live camera's frame the pipeline did not take in time
is dropped and counted; a recording waits), and reopens a lost source with capped exponential backoff, reporting its
state. It never decodes: ``take`` decodes the frame it hands on, in the taking thread.
"""
import logging
import time
from typing import Any, Dict, Optional

from ..errors import ConfigError, MissingDependencyError
from .slot import SlotWorker
from .sources import Frame, Source, SourceLost

log = logging.getLogger(__name__)


def next_due(due: float, now: float, period: float) -> float:
    """When the next frame is due: one ``period`` after the last one was due, on a fixed schedule, so a late
    wake-up (a busy interpreter, a loaded host) does not slow a camera below its ``fps``; a source or pipeline that
    fell more than a period behind starts a new schedule at ``now`` instead of catching up in a burst."""
    due += period
    return now if due < now - period else due


class Capture(SlotWorker):
    """One camera's capture thread with a latest-frame slot; ``take`` gives the latest Frame not yet taken. A live
    camera replaces a frame the pipeline has not taken (dropped, counted); a replay (``Source.replay``) waits."""

    def __init__(self, name: str, source: Source, fps: float, reconnect_min: float = 0.5,
                 reconnect_max: float = 30.0) -> None:
        super().__init__("capture-%s" % name)
        self.name, self.source = name, source
        self.period = 1.0 / fps
        self.reconnect_min, self.reconnect_max = reconnect_min, reconnect_max
        self.state = "starting"  # starting | online | reconnecting | ended | stopped
        self.captured = 0
        self.dropped = 0  # frames replaced in the slot before the pipeline took them
        self.taken = 0  # frames the pipeline took
        self._decoding = False  # a taken frame is being decoded (a recording grabs its next frame after that)
        self.reconnects = 0
        self.last_error: Optional[str] = None

    def _taken(self, item: Any) -> None:
        self.taken += 1
        self._decoding = True

    def take(self, timeout: float) -> Optional[Frame]:
        """The latest frame not yet taken, decoded now, in this thread: only the frames taken are decoded."""
        item = super().take(timeout)
        if item is None:
            return None
        frame = None
        try:
            frame = self.source.decode(item)
        finally:
            with self._cond:
                self._decoding = False
                if frame is None:  # grabbed but not decodable: a dropped frame, not one handed on
                    self.taken -= 1
                    self.dropped += 1
                self._cond.notify_all()  # a recording grabs its next frame now
        return frame

    @property
    def ended(self) -> bool:
        return self.state == "ended"

    def _wait_taken(self) -> None:
        """A recording waits for the pipeline to take and decode its frame before it grabs the next one, instead
        of replacing it: every frame is processed, and a video's next grab cannot overtake that decode."""
        with self._cond:
            while (self._slot is not None or self._decoding) and not self._stop.is_set():
                self._cond.wait(0.5)

    def _put(self, frame: Any) -> None:
        with self._cond:
            if self._slot is not None:
                self.dropped += 1  # a live camera's stale frame: never processed
            self._slot = frame
            self.captured += 1
            self._cond.notify_all()
        self._tell()

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # not a known transient error: fail loudly, the main loop stops the agent
            log.exception("camera %s capture thread failed", self.name)
            self.failed, self.state, self.last_error = exc, "failed", "%s: %s" % (type(exc).__name__, exc)
            with self._cond:
                self._cond.notify_all()
            self._tell()

    def _loop(self) -> None:
        delay, due = self.reconnect_min, 0.0
        opened = False
        while not self._stop.is_set():
            if not opened:
                try:
                    self.source.open()
                    opened, delay = True, self.reconnect_min
                    if self.state == "reconnecting":
                        log.info("camera %s is back", self.name)
                    self.state = "online"
                    due = time.monotonic()  # frames at ``fps`` on a fixed schedule: a late wake-up does not slow it
                except (SourceLost, MissingDependencyError, ConfigError) as exc:
                    self.last_error = str(exc)
                    if isinstance(exc, (MissingDependencyError, ConfigError)):
                        log.error("camera %s cannot start: %s", self.name, exc)
                        self.state = "ended"
                        return
                    self.state = "reconnecting"
                    log.warning("camera %s: %s; retrying in %.1f s", self.name, exc, delay)
                    self._stop.wait(delay)
                    delay = min(self.reconnect_max, delay * 2)
                    self.reconnects += 1
                    continue
            if self.source.replay:
                self._wait_taken()
                if self._stop.is_set():
                    break
            try:
                frame = self.source.grab()
            except SourceLost as exc:
                self.last_error = str(exc)
                self.state = "reconnecting"
                log.warning("camera %s lost: %s", self.name, exc)
                self.source.close()
                opened = False
                continue
            if frame is None:
                self.state = "ended"
                log.info("camera %s: end of input", self.name)
                break
            self._put(frame)
            due = next_due(due, time.monotonic(), self.period)
            self._stop.wait(max(0.0, due - time.monotonic()))
        self.source.close()
        if self.state != "ended":
            self.state = "stopped"
        with self._cond:
            self._cond.notify_all()
        self._tell()

    def stats(self) -> Dict[str, Any]:
        return {"state": self.state, "captured": self.captured, "dropped": self.dropped,
                "reconnects": self.reconnects, "last_error": self.last_error}
