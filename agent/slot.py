"""A worker thread that hands items to one consumer through a one-item slot, never a queue.

Shared by the capture threads (latest frame) and the preprocessing stage (next prepared frame). A subclass runs its
loop in ``_run``, fills ``_slot`` under ``_cond`` (replacing or waiting, as it needs) and sets ``failed`` when an
unexpected error ends the thread: ``take`` then returns at once and the agent's main loop stops the agent. A
``listener`` is told of every item put and of the thread's end, so a consumer of several workers sleeps until one
has something instead of polling them.
"""
import threading
from typing import Any, Callable, Optional


class SlotWorker(object):
    def __init__(self, thread_name: str) -> None:
        self.failed: Optional[BaseException] = None
        self._slot: Any = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self.listener: Optional[Callable[[], None]] = None  # told when an item is put or the thread ends

    def _tell(self) -> None:
        if self.listener is not None:
            self.listener()

    def start(self) -> Any:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)

    def take(self, timeout: float) -> Any:
        """The item in the slot, waiting up to ``timeout`` s; None if none arrived (or the thread failed)."""
        with self._cond:
            if self._slot is None and self.failed is None:
                self._cond.wait(timeout)
            item, self._slot = self._slot, None
            if item is not None:
                self._taken(item)
                self._cond.notify_all()  # the slot is free
            return item

    @property
    def ready(self) -> bool:
        """An item is waiting in the slot."""
        with self._cond:
            return self._slot is not None

    def poke(self) -> None:
        """Wake a ``take`` that is waiting: it returns None at once (the consumer has something else to look at)."""
        with self._cond:
            self._cond.notify_all()

    def _taken(self, item: Any) -> None:
        """Called under the lock for every item taken (counters)."""

    def _run(self) -> None:
        raise NotImplementedError
