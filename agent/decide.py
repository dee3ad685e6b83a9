"""The decisions stage: a frame's decisions, results and commits on their own thread, while the main loop runs the
next frame's inference.

With one runtime thread per spare core the main loop's core is the pipeline's bottleneck; everything it does after
the inference (top-k, thresholds, states, building and encoding the result, staging and committing it, sampling)
delays the next inference. Here that work overlaps it, on the core that also decodes and preprocesses. A one-slot
hand-off, in frame order: the main loop waits while the previous frame is still queued, so decisions never fall
more than two frames behind the inference and nothing piles up in memory.

Only while the pipeline runs at its maximum rate: when the next frame is not prepared yet (a camera at its own pace)
and nothing waits here, :meth:`submit` decides the frame in the calling thread, as before this stage existed: a
hand-off there would gain nothing and cost a thread wake-up a frame.

The main loop keeps what must happen between two frames: the inference (and a rollout's retry of a frame on the
restored model), the verdict a rollout compares (:meth:`FramePipeline.infer`), model swaps. ``decide`` runs with
the models the frame was inferred on, so a swap in between changes nothing for it.
"""
import logging
import time
from typing import Callable, Optional

from ..errors import InferenceError
from .pipeline import Inferred
from .slot import SlotWorker

log = logging.getLogger(__name__)
IDLE_POLL = 0.5  # s: a safety net only; put() and stop() wake this thread


class DecisionStage(SlotWorker):
    """``decide(inferred, more_waiting)``: :meth:`FramePipeline.decide`; ``upstream_ready()``: the next frame is
    already prepared (with one queued here, the pipeline runs at its maximum rate and may group its hand-offs)."""

    def __init__(self, decide: Callable[[Inferred, Callable[[], bool]], None],
                 upstream_ready: Callable[[], bool]) -> None:
        super().__init__("decisions")
        self._decide = decide
        self._upstream = upstream_ready
        self._busy = False  # a frame is being decided (the slot is already free for the next)
        self.decided = 0  # frames decided on this thread
        self.inline = 0  # frames decided in the caller's thread (submit)

    def submit(self, inferred: Inferred, timeout: float) -> None:
        """Decide one inferred frame: here, in the calling thread, when the next frame is not prepared yet and no
        earlier frame waits to be decided (frame order holds: only the caller queues frames); else :meth:`put`."""
        if self._upstream() or not self.idle():
            self.put(inferred, timeout)
            return
        self._decide(inferred, self._more)
        self.inline += 1

    def put(self, inferred: Inferred, timeout: float) -> None:
        """Queue one inferred frame, waiting while the one before it is still queued. Raises InferenceError when
        the thread failed, or stayed busy for ``timeout`` s (a commit that never returns: systemd restarts us)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._slot is not None and self.failed is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise InferenceError("the decisions thread has not taken a frame for %.0f s (a commit to the "
                                         "outbox hangs?): stopping" % timeout)
                self._cond.wait(left)
            if self.failed is not None:
                raise InferenceError("decisions thread failed: %s: %s" % (type(self.failed).__name__, self.failed))
            self._slot = inferred
            self._cond.notify_all()

    def idle(self) -> bool:
        """Nothing queued and nothing being decided."""
        with self._cond:
            return self._slot is None and not self._busy

    def stop(self, timeout: float = 5.0) -> None:
        """Decide what is queued, then end the thread (the agent commits the outbox after this)."""
        super().stop(timeout)
        if self._thread.is_alive():
            log.warning("the decisions thread did not finish within %.0f s", timeout)

    def _more(self) -> bool:
        return self.ready or self._upstream()

    def _run(self) -> None:
        try:
            while True:
                job = self._next()
                if job is None:
                    return
                try:
                    self._decide(job, self._more)
                    self.decided += 1
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
        except Exception as exc:  # not a known transient error: fail loudly, the main loop stops the agent
            log.exception("decisions thread failed")
            with self._cond:
                self.failed = exc
                self._cond.notify_all()

    def _next(self) -> Optional[Inferred]:
        """The queued frame, waiting for one; None once stopped with nothing queued."""
        with self._cond:
            while self._slot is None and not self._stop.is_set():
                self._cond.wait(IDLE_POLL)
            job, self._slot = self._slot, None
            self._busy = job is not None
            self._cond.notify_all()  # the slot is free: a put() waiting goes on
            return job
