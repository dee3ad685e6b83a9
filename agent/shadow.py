"""The pure decisions of a rollout (docs/rollout.md): how a candidate compares with the current model in shadow,
how much of the main loop the shadow may take, and whether a freshly swapped model is healthy. No threads, no
clock of their own: times are passed in. Device-side: Python 3.8-compatible.
"""
from collections import deque
from typing import Deque, NamedTuple, Optional, Tuple


class Outcome(NamedTuple):
    """One model's verdict on one frame."""

    label: str
    score: float
    accepted: bool


class ShadowStats(object):
    """Top-1 agreement (by label: a candidate with permuted labels disagrees) and both models' confidence."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.frames = self.agree = 0
        self.cur_score = self.cand_score = 0.0
        self.cur_uncertain = self.cand_uncertain = 0

    def add(self, current: Outcome, candidate: Outcome) -> None:
        self.frames += 1
        self.agree += current.label == candidate.label
        self.cur_score += current.score
        self.cand_score += candidate.score
        self.cur_uncertain += not current.accepted
        self.cand_uncertain += not candidate.accepted

    @property
    def done(self) -> bool:
        return self.frames >= self.target

    @property
    def agreement(self) -> Optional[float]:
        return self.agree / float(self.frames) if self.frames else None

    def numbers(self) -> dict:
        n = float(self.frames) or 1.0
        some = self.frames > 0
        return {"frames": self.frames, "target": self.target, "agreement": self.agreement,
                "current_mean_score": round(self.cur_score / n, 6) if some else None,
                "candidate_mean_score": round(self.cand_score / n, 6) if some else None,
                "current_uncertain": round(self.cur_uncertain / n, 6) if some else None,
                "candidate_uncertain": round(self.cand_uncertain / n, 6) if some else None}


def shadow_due(spent: float, elapsed: float, share: float) -> bool:
    """Run the candidate on this frame? Only while the time spent in it stays within ``share`` of the time since
    the shadow began, so the main loop keeps at least ``1 - share`` of its frame rate (1.0: every frame)."""
    return share >= 1.0 or spent <= share * elapsed


class Baseline(object):
    """The current model's frame rate and uncertain share over the last ``window`` seconds."""

    def __init__(self, window: float = 30.0) -> None:
        self.window = window
        self._frames: Deque[Tuple[float, bool]] = deque(maxlen=20000)

    def add(self, now: float, accepted: bool) -> None:
        self._frames.append((now, accepted))
        while self._frames and self._frames[0][0] < now - self.window:
            self._frames.popleft()

    def fps(self) -> Optional[float]:
        if len(self._frames) < 10:
            return None
        span = self._frames[-1][0] - self._frames[0][0]
        return (len(self._frames) - 1) / span if span >= 2.0 else None

    def uncertain(self) -> Optional[float]:
        if len(self._frames) < 20:
            return None
        return sum(1 for _, ok in self._frames if not ok) / float(len(self._frames))


def health_verdict(elapsed: float, frames: int, uncertain: int, before_fps: Optional[float],
                   before_uncertain: Optional[float], min_fps_ratio: float, max_uncertain_increase: float,
                   window: float, fps_span: Optional[Tuple[float, int]] = None) -> Tuple[str, Optional[str]]:
    """("watching" | "passed" | "failed", reason) for a model swapped in ``elapsed`` seconds ago that has since
    processed ``frames`` frames, ``uncertain`` of them below threshold. The frame rate is judged over
    ``fps_span`` = (seconds, frames) since every camera was last delivering (default: the whole time), so a camera
    outage is not blamed on the model."""
    fps_elapsed, fps_frames = fps_span if fps_span is not None else (elapsed, frames)
    if before_fps and fps_elapsed >= min(3.0, window / 2.0):
        fps = fps_frames / fps_elapsed
        if fps < min_fps_ratio * before_fps:
            return "failed", "frame rate fell to %.1f fps from %.1f before the swap (bound %.0f%%)" % (
                fps, before_fps, 100 * min_fps_ratio)
    if before_uncertain is not None and frames >= 20:
        share = uncertain / float(frames)
        if share - before_uncertain > max_uncertain_increase:
            return "failed", "uncertain results surged to %.0f%% from %.0f%% before the swap (bound +%.0f points)" % (
                100 * share, 100 * before_uncertain, 100 * max_uncertain_increase)
    if elapsed >= window:
        return "passed", None
    return "watching", None
