"""The preprocessing stage: prepares the next frame while the main loop runs inference on the current one.

A one-slot hand-off between two threads, never a queue. The stage waits until the main loop has taken the prepared
frame, and only then takes the latest frame from a camera (round robin over cameras), so what it prepares is as fresh
as the cameras allow; frames the cameras replaced in the meantime are dropped and counted there, as before. With the
stage, a frame costs the main loop its inference and commit only: preprocessing overlaps the previous inference.
"""
import logging
import threading
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from ..calibration.images import optional_cv2
from .capture import Capture
from .regions import View
from .slot import SlotWorker
from .sources import Frame

log = logging.getLogger(__name__)
IDLE_POLL = 0.5  # s: a safety net only; the captures' listener and take() wake this thread


def opencv_in_calling_thread() -> bool:
    """Make OpenCV run its kernels (the resize of preprocessing, a camera's colour conversion) in the calling thread
    instead of its pool of one thread per core: this stage already overlaps preprocessing with inference, and the
    pool's threads spin-wait after every call, which cost the agent about 1 ms of CPU a frame at 30 fps on 2 cores
    (docs/benchmarks.md). Process-wide, so the agent calls it, not the library. False without OpenCV."""
    cv2 = optional_cv2()
    if cv2 is None:
        return False
    cv2.setNumThreads(1)
    return True


class Prepared(NamedTuple):
    camera: str
    frame: Frame
    batches: Dict[str, np.ndarray]  # per model group, the batch its runtime takes (agent/regions.py)
    views: List[View]  # which row of which batch is the whole frame or which region
    preprocess_ms: float
    generation: int = 0  # which model's preprocessing made ``batches`` (a swap bumps it)


Prepare = Callable[[str, Frame], Tuple[Dict[str, np.ndarray], List[View]]]


class Prefetch(SlotWorker):
    """One thread that preprocesses frames from ``captures`` into a one-frame slot; ``take`` gives a Prepared."""

    def __init__(self, captures: List[Capture], prepare: Prepare) -> None:
        super().__init__("prefetch")
        self.captures = captures
        self._prepare = (0, prepare)  # (generation, function): replaced as one at a model swap
        self.handed = 0  # prepared frames taken by the main loop
        self._next = 0  # round robin over cameras
        self._arrived = threading.Event()  # a camera put a frame or ended: set by the captures' listener
        for cap in captures:
            cap.listener = self._arrived.set

    def stop(self, timeout: float = 5.0) -> None:
        self._arrived.set()
        super().stop(timeout)

    def set_prepare(self, prepare: Prepare, generation: int) -> None:
        """Prepare frames for another model from now on; a frame prepared before carries the old generation."""
        self._prepare = (generation, prepare)

    def _taken(self, item: Prepared) -> None:
        self.handed += 1  # (take() then wakes this thread to prepare the next one)

    def drained(self) -> bool:
        """Every camera reached the end of its input and every frame the cameras delivered was handed on.

        Lock-free across the stages and still exact: ``handed`` is read first, and a camera's ``taken`` only grows
        and is never below what was handed on, so equal counts mean no frame is in this stage's hands."""
        with self._cond:
            handed = self.handed
            if self._slot is not None:
                return False
        if not all(c.ended and not c.ready for c in self.captures):
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
        while not self._stop.is_set():
            with self._cond:
                while self._slot is not None and not self._stop.is_set():
                    self._cond.wait(IDLE_POLL)  # take() wakes it
            if self._stop.is_set():
                break
            self._arrived.clear()  # before looking: a frame put after the look sets it again
            item = self._prepare_next()
            if item is None:
                self._arrived.wait(IDLE_POLL)
                continue
            with self._cond:
                self._slot = item
                self._cond.notify_all()

    def _prepare_next(self) -> Optional[Prepared]:
        n = len(self.captures)
        for i in range(n):
            cap = self.captures[(self._next + i) % n]
            frame = cap.take(timeout=0.0)
            if frame is None:
                continue
            self._next = (self._next + i + 1) % n
            t0 = time.perf_counter()
            generation, prepare = self._prepare
            batches, views = prepare(cap.name, frame)
            return Prepared(cap.name, frame, batches, views, 1000.0 * (time.perf_counter() - t0), generation)
        return None
