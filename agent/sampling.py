"""Which frames become samples (active learning): strategies, quotas, caps, near-duplicate suppression.

Pure and clock-free: every call takes ``now`` (seconds, any monotonic origin) and, for the random baseline, a
uniform draw ``u`` in [0, 1), so each rule is unit-tested without devices. The order of one decision:

1. strategies in their configured order; the first that *fires* and has quota left names the ``reason``
   (a strategy that fires with its quota spent is counted as ``quota`` and the next one is tried);
2. the device-wide caps (per minute / hour / day) and the minimum gap between two samples;
3. near-duplicates: a frame whose perceptual hash is within ``max_distance`` bits of a recent sample of the same
   camera is skipped (checked last because hashing costs a resize of the frame);
4. ``commit`` records the sample against every quota, the gap, the class history and the hash window.
Quotas are only spent by frames that were really sent.
"""
from bisect import bisect_left
from collections import deque
from typing import Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0


class Quota(object):
    """Sliding-window limits: at most ``per_minute`` / ``per_hour`` / ``per_day`` events (None: no limit)."""

    def __init__(self, per_minute: Optional[int] = None, per_hour: Optional[int] = None,
                 per_day: Optional[int] = None) -> None:
        self.limits = [(w, n) for w, n in ((MINUTE, per_minute), (HOUR, per_hour), (DAY, per_day)) if n is not None]
        self._span = max([w for w, _ in self.limits] or [0.0])
        self._times: Deque[float] = deque()

    def _expire(self, now: float) -> None:
        while self._times and now - self._times[0] >= self._span:
            self._times.popleft()

    def room(self, now: float) -> bool:
        if not self.limits:
            return True
        self._expire(now)
        times = self._times
        for window, limit in self.limits:
            # events inside (now - window, now]: the deque is sorted, so count from the first one in the window
            inside = len(times) - bisect_left(times, now - window + 1e-9)
            if inside >= limit:
                return False
        return True

    def record(self, now: float) -> None:
        if self.limits:
            self._times.append(now)
            self._expire(now)


# -- strategy triggers (pure) -----------------------------------------------------------------------------------
def low_confidence(score: float, threshold: float) -> bool:
    """The top score is below the class threshold."""
    return score < threshold


def near_threshold(score: float, threshold: float, band: float) -> bool:
    """The top score is within ``band`` of the class threshold, on either side."""
    return abs(score - threshold) < band


def small_margin(top1: float, top2: float, max_margin: float) -> bool:
    """The two best classes are close: the model hesitates between them even when the top score is high."""
    return (top1 - top2) < max_margin


def random_baseline(accepted: bool, u: float, rate: float) -> bool:
    """A fraction ``rate`` of confident (accepted) frames, to watch for drift the model is sure about."""
    return accepted and u < rate


def class_target(label: str, classes: Sequence[str], recent_count: Optional[int], min_per_day: Optional[int]) -> bool:
    """Favour named classes, and classes with fewer than ``min_per_day`` samples in the last 24 h."""
    if label in classes:
        return True
    return min_per_day is not None and recent_count is not None and recent_count < min_per_day


# -- perceptual hash ---------------------------------------------------------------------------------------------
def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2.0 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT32 = _dct_matrix(32)


def _gray32(image: np.ndarray) -> np.ndarray:
    """HxW or HxWxC -> 32x32 float gray, by block means (box filter) over an even grid: cheap and alias-free."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img[:, :, :3].mean(axis=2)
    h, w = img.shape
    ys = (np.arange(33) * h // 32).astype(int)
    xs = (np.arange(33) * w // 32).astype(int)
    if h >= 32 and w >= 32:
        csum = np.zeros((h + 1, w + 1), np.float64)
        csum[1:, 1:] = img.cumsum(0).cumsum(1)
        tot = csum[ys[1:]][:, xs[1:]] - csum[ys[:-1]][:, xs[1:]] - csum[ys[1:]][:, xs[:-1]] + csum[ys[:-1]][:, xs[:-1]]
        area = np.outer(ys[1:] - ys[:-1], xs[1:] - xs[:-1])
        return (tot / area).astype(np.float32)
    # tiny frames: nearest neighbour up to 32x32
    return img[(np.arange(32) * h // 32)][:, (np.arange(32) * w // 32)]


def phash(image: np.ndarray) -> int:
    """64-bit perceptual hash (pHash): 32x32 gray, 2-D DCT, the 8x8 lowest frequencies against their median."""
    g = _gray32(image)
    d = _DCT32 @ g @ _DCT32.T
    low = d[:8, :8].flatten()
    bits = low > np.median(low[1:])  # DC term left out of the median: it only says how bright the frame is
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


class HashWindow(object):
    """The hashes of the last ``size`` samples of one camera, each kept for ``ttl`` seconds."""

    def __init__(self, size: int, ttl: float) -> None:
        self.ttl = ttl
        self._items: Deque[Tuple[float, int]] = deque(maxlen=size)

    def near(self, h: int, max_distance: int, now: float) -> bool:
        while self._items and now - self._items[0][0] >= self.ttl:
            self._items.popleft()
        return any(hamming(h, other) <= max_distance for _, other in self._items)

    def add(self, h: int, now: float) -> None:
        self._items.append((now, h))


# -- the sampler ----------------------------------------------------------------------------------------------
class Decision(object):
    __slots__ = ("reason", "skipped")

    def __init__(self, reason: Optional[str] = None, skipped: Optional[str] = None) -> None:
        self.reason = reason  # the strategy that takes the frame, or None
        self.skipped = skipped  # why a frame that some strategy wanted was not taken: quota | cap | min_gap

    def __repr__(self) -> str:
        return "Decision(reason=%r, skipped=%r)" % (self.reason, self.skipped)


class Sampler(object):
    """Applies one sampling policy (``agent.config.SamplingPolicy``) to a stream of predictions.

    ``decide`` takes no decision state (it only forgets class history older than a day); ``is_duplicate`` and
    ``commit`` are called only for frames that ``decide`` took. ``skip`` counts a frame skipped later (duplicate,
    too large, outbox full). ``taken`` counts the samples committed, by reason."""

    def __init__(self, policy) -> None:
        self.policy = policy
        self.strategies = list(policy.strategies)
        self.quotas = {s.reason: Quota(s.per_minute, s.per_hour, s.per_day) for s in self.strategies}
        self.cap = Quota(policy.max_per_minute, policy.max_per_hour, policy.max_per_day)
        self.last_time: Optional[float] = None
        self.class_times: Dict[str, Deque[float]] = {}
        self.windows: Dict[str, HashWindow] = {}
        self.taken: Dict[str, int] = {}
        self.skipped: Dict[str, int] = {}

    def _recent(self, label: str, now: float) -> int:
        times = self.class_times.get(label)
        if not times:
            return 0
        while times and now - times[0] >= DAY:
            times.popleft()
        return len(times)

    def fires(self, strategy, label: str, score: float, second: float, threshold: float, accepted: bool,
              u: float, now: float) -> bool:
        t = strategy.type
        if t == "low_confidence":
            return low_confidence(score, threshold)
        if t == "near_threshold":
            return near_threshold(score, threshold, strategy.band)
        if t == "margin":
            return small_margin(score, second, strategy.max_margin)
        if t == "random":
            return random_baseline(accepted, u, strategy.rate)
        if t == "class_target":
            return class_target(label, strategy.classes, self._recent(label, now), strategy.min_per_day)
        raise ValueError("unknown sampling strategy %r" % t)

    def decide(self, label: str, score: float, second: float, threshold: float, accepted: bool, now: float,
               u: float = 1.0) -> Decision:
        if not self.policy.enabled:
            return Decision()
        reason, quota_spent = None, False
        for s in self.strategies:
            if not self.fires(s, label, score, second, threshold, accepted, u, now):
                continue
            if self.quotas[s.reason].room(now):
                reason = s.reason
                break
            quota_spent = True
        if reason is None:
            return Decision(skipped="quota" if quota_spent else None)
        if not self.cap.room(now):
            return Decision(skipped="cap")
        if self.last_time is not None and now - self.last_time < self.policy.min_gap:
            return Decision(skipped="min_gap")
        return Decision(reason)

    def is_duplicate(self, camera: str, h: int, now: float) -> bool:
        dd = self.policy.dedup
        if not dd.enabled:
            return False
        win = self.windows.get(camera)
        return win is not None and win.near(h, dd.max_distance, now)

    def commit(self, camera: str, reason: str, label: str, h: Optional[int], now: float) -> None:
        if reason in self.quotas:
            self.quotas[reason].record(now)
        self.cap.record(now)
        self.last_time = now
        self.class_times.setdefault(label, deque()).append(now)
        if h is not None and self.policy.dedup.enabled:
            dd = self.policy.dedup
            self.windows.setdefault(camera, HashWindow(dd.window, dd.ttl)).add(h, now)
        self.taken[reason] = self.taken.get(reason, 0) + 1

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def carry_over(self, old: "Sampler") -> None:
        """A new policy keeps what already happened: the last sample time, class history, hashes and counts
        (quotas start afresh because their limits may have changed)."""
        self.last_time = old.last_time
        self.class_times = old.class_times
        self.windows = old.windows
        self.taken, self.skipped = old.taken, old.skipped


# -- privacy masks ----------------------------------------------------------------------------------------------
def polygon_mask(height: int, width: int, polygons: Sequence[Sequence[Tuple[float, float]]]) -> np.ndarray:
    """Boolean HxW mask of the pixels whose centres lie inside any polygon (even-odd rule), polygons in pixels."""
    ys = np.arange(height, dtype=np.float64)[:, None] + 0.5
    xs = np.arange(width, dtype=np.float64)[None, :] + 0.5
    out = np.zeros((height, width), dtype=bool)
    for poly in polygons:
        inside = np.zeros((height, width), dtype=bool)
        pts = [(float(x), float(y)) for x, y in poly]
        for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1]):
            if y1 == y2:
                continue
            crosses = (ys >= min(y1, y2)) & (ys < max(y1, y2))  # Hx1: rows this edge spans
            x_at = x1 + (ys - y1) * (x2 - x1) / (y2 - y1)  # Hx1: where the edge meets each row
            inside ^= crosses & (xs < x_at)
        out |= inside
    return out


def scale_polygons(polygons: Sequence[Sequence[Sequence[float]]], relative: bool, height: int,
                   width: int) -> List[List[Tuple[float, float]]]:
    if not relative:
        return [[(float(x), float(y)) for x, y in p] for p in polygons]
    return [[(float(x) * width, float(y) * height) for x, y in p] for p in polygons]


def apply_mask(image: np.ndarray, mask: Optional[np.ndarray]) -> np.ndarray:
    """A copy of ``image`` with the masked pixels black (the frame itself is not changed)."""
    if mask is None or not mask.any():
        return image
    out = np.array(image, copy=True)
    out[mask] = 0
    return out


# -- drift telemetry -------------------------------------------------------------------------------------------
HIST_BINS = 10


def drift_add(classes: Dict[str, Dict[str, object]], label: str, score: float, bins: int = HIST_BINS) -> None:
    """Count a top-1 prediction and its score in the per-class confidence histogram (bins of equal width on
    [0, 1]; a score of exactly 1.0 goes into the last bin)."""
    entry = classes.get(label)
    if entry is None:
        entry = classes[label] = {"count": 0, "hist": [0] * bins}
    entry["count"] = int(entry["count"]) + 1  # type: ignore[call-overload]
    b = min(bins - 1, max(0, int(score * bins)))
    entry["hist"][b] += 1  # type: ignore[index]
