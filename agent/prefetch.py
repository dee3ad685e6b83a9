"""The preprocessing stage: prepares the next frame while the main loop runs inference on the current one.

A one-slot hand-off between two threads, never a queue. The stage waits until the main loop has taken the prepared
frame, and only then takes the latest frame from a camera (round robin over cameras), so what it prepares is as fresh
as the cameras allow; frames the cameras replaced in the meantime are dropped and counted there, as before. With the
stage, a frame costs the main loop its inference and commit only: preprocessing overlaps the previous inference.
"""
import logging
import threading
import time
from typing import Callable, List, NamedTuple, Optional

import numpy as np

from .sources import Capture, Frame

log = logging.getLogger(__name__)


class Prepared(NamedTuple):
    camera: str
    frame: Frame
    tensor: np.ndarray  # the batch of one the runtime takes
    preprocess_ms: float


class Prefetch(object):
    """One thread that preprocesses frames from ``captures`` into a one-frame slot for the main loop."""

    def __init__(self, captures: List[Capture], prepare: Callable[[Frame], np.ndarray]) -> None:
        self.captures = captures
        self.prepare = prepare
        self.failed: Optional[BaseException] = None  # an unexpected error ended the thread: the agent must exit
        self.handed = 0  # prepared frames taken by the main loop
        self._slot: Optional[Prepared] = None
        self._next = 0  # round robin over cameras
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)

    def start(self) -> "Prefetch":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)

    def take(self, timeout: float) -> Optional[Prepared]:
        """The prepared frame, waiting up to ``timeout`` s; None if none is ready."""
        with self._cond:
            if self._slot is None and self.failed is None:
                self._cond.wait(timeout)
            item, self._slot = self._slot, None
            if item is not None:
                self.handed += 1
                self._cond.notify_all()  # the slot is free: prepare the next one
            return item

    def drained(self) -> bool:
        """Every camera reached the end of its input and every frame the cameras delivered was handed on.

        Lock-free across the stages and still exact: ``handed`` is read first, and a camera's ``taken`` only grows
        and is never below what was handed on, so equal counts mean no frame is in this stage's hands."""
        with self._cond:
            handed = self.handed
            if self._slot is not None:
                return False
        if not all(c.ended and not c.has_frame for c in self.captures):
            return False
        return sum(c.taken for c in self.captures) == handed

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # not a known transient error: fail loudly, the main loop stops the agent
            log.exception("preprocessing thread failed")
            self.failed = exc
            with self._cond:
                self._cond.notify_all()

    def _loop(self) -> None:
        wait = 0.05 if len(self.captures) == 1 else 0.01
        while not self._stop.is_set():
            with self._cond:
                while self._slot is not None and not self._stop.is_set():
                    self._cond.wait(0.1)
            if self._stop.is_set():
                break
            item = self._prepare_next(wait)
            if item is not None:
                with self._cond:
                    self._slot = item
                    self._cond.notify_all()

    def _prepare_next(self, wait: float) -> Optional[Prepared]:
        n = len(self.captures)
        for i in range(n):
            cap = self.captures[(self._next + i) % n]
            frame = cap.take(timeout=wait)
            if frame is None:
                continue
            self._next = (self._next + i + 1) % n
            t0 = time.perf_counter()
            tensor = self.prepare(frame)
            return Prepared(cap.name, frame, tensor, 1000.0 * (time.perf_counter() - t0))
        return None
