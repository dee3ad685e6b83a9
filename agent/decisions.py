"""Pure decisions of the pipeline: thresholds, state hysteresis, publish-on-change (sampling: ``sampling.py``).

No I/O, no clocks read here: every function takes the time it needs, so each is unit-tested without devices.
"""
from typing import Dict, Mapping, Optional, Tuple

from ..runtimes import postprocess


def threshold_for(label: str, default: float, per_class: Mapping[str, float]) -> float:
    return float(per_class.get(label, default))


def is_accepted(score: float, threshold: float) -> bool:
    """A result at or above its class threshold is accepted; below it is uncertain (published, never dropped).
    A threshold of 1.0 accepts nothing: it is what a fitted class that could not meet its goal gets."""
    return bool(postprocess.accepted(score, threshold))


class StateTracker(object):
    """The retained ``state`` label per camera: changes only after ``hysteresis`` consecutive accepted frames agree.

    ``update`` returns the new state when it changes, else None. Uncertain frames neither count nor reset.
    """

    def __init__(self, hysteresis: int = 1) -> None:
        if hysteresis < 1:
            raise ValueError("hysteresis must be >= 1")
        self.hysteresis = hysteresis
        self.state: Optional[str] = None
        self._candidate: Optional[str] = None
        self._count = 0

    def update(self, label: str, accepted: bool) -> Optional[str]:
        if not accepted:
            return None
        if label == self._candidate:
            self._count += 1
        else:
            self._candidate, self._count = label, 1
        if self._count >= self.hysteresis and label != self.state:
            self.state = label
            return label
        return None


class PublishGate(object):
    """``every_frame``: publish each result; ``on_change``: publish when the (label, accepted) pair changes.
    Either way no more often than ``min_interval`` seconds, except that a change is never held back."""

    def __init__(self, mode: str = "every_frame", min_interval: float = 0.0) -> None:
        if mode not in ("every_frame", "on_change"):
            raise ValueError("mode must be every_frame or on_change")
        self.mode = mode
        self.min_interval = float(min_interval)
        self._last: Optional[Tuple[str, bool]] = None
        self._last_time: Optional[float] = None

    def should_publish(self, label: str, accepted: bool, now: float) -> bool:
        key = (label, accepted)
        changed = key != self._last
        if self.mode == "on_change" and not changed:
            return False
        if not changed and self._last_time is not None and now - self._last_time < self.min_interval:
            return False
        self._last, self._last_time = key, now
        return True


def percentile(values, q: float) -> Optional[float]:
    """Nearest-rank percentile of a sequence (None when empty); q in [0, 100]."""
    data = sorted(values)
    if not data:
        return None
    k = max(0, min(len(data) - 1, int(round(q / 100.0 * (len(data) - 1)))))
    return float(data[k])


def counts_add(counts: Dict[str, int], key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n
