"""The per-frame pipeline: a preprocessed frame -> inference (one run per model, every region of interest of the
frame in one batch) -> per view (the whole frame, or each region): threshold -> result and state -> sampling
(privacy masks, the region's crop, near-duplicates, JPEG under the byte budget) -> durable outbox commits.

Two halves, :meth:`FramePipeline.infer` and :meth:`FramePipeline.decide`, which the agent runs on two threads at the
maximum frame rate (agent/decide.py). No threads here, no broker and no clock of its own beyond time stamps: its
collaborators (the runtimes, the outbox, the sampling policy in force, the telemetry) are passed in, so it is tested
with a real runtime and a real outbox alone.
"""
import logging
import random
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..contract import payloads, topics
from ..runtimes.base import Runtime
from ..runtimes.postprocess import Prediction, to_probabilities, top_k
from . import decisions, sampling
from .cameras import CameraConfig, target_key
from .outbox import Outbox
from . import staging
from .staging import commit_due
from .policy import PolicyManager
from .prefetch import Prepared
from .regions import MAIN, View, crop
from .samples import jpeg_budget, jpeg_within
from .shadow import Outcome
from .sources import Frame
from .telemetry import Telemetry

log = logging.getLogger(__name__)


class ModelView(NamedTuple):
    """What the pipeline needs to know of the running model."""

    labels: List[str]
    output: str  # logits | probabilities
    info: Dict[str, Any]  # the ``model`` object of every result: name, version, sha256 prefix, artifact, runtime
    temperature: float = 1.0  # the artifact's fitted calibration: scores are softmax(logits / temperature)
    calibrated: bool = False  # a temperature (and thresholds) fitted for this artifact are in force


class Settings(NamedTuple):
    device_id: str
    prefix: str
    top_k: int
    default_threshold: float
    per_class: Dict[str, float]
    hysteresis: int = 1
    publish_mode: str = "every_frame"
    min_interval: float = 0.0


class Runner(NamedTuple):
    """One model the pipeline runs: the agent's package (group ``MAIN``) or a region's package of its own."""

    rt: Runtime
    model: ModelView
    settings: Settings


def probabilities(runner: Runner, batch: np.ndarray) -> np.ndarray:
    """Calibrated class scores, one row per image of ``batch`` (one run of the model where it takes a batch)."""
    out = next(iter(runner.rt.infer(batch).values()))
    return to_probabilities(out, runner.model.output, runner.model.temperature)


def verdict(runner: Runner, probs: np.ndarray) -> Outcome:
    """A model's top-1 verdict on one image's class scores, with its own thresholds."""
    best = top_k(probs, runner.model.labels, 1)[0]
    threshold = decisions.threshold_for(best.label, runner.settings.default_threshold, runner.settings.per_class)
    return Outcome(best.label, best.score, decisions.is_accepted(best.score, threshold))


def predict(runner: Runner, batch: np.ndarray) -> Outcome:
    """A model's verdict on the first image of a batch, with its own thresholds (the shadow's)."""
    return verdict(runner, probabilities(runner, batch)[0])


class Inferred(NamedTuple):
    """A frame after its inference, before its decisions (:meth:`FramePipeline.decide`)."""

    item: Prepared
    runners: Dict[str, Runner]  # the models it ran on: a swap after its inference does not change its decisions
    scores: Dict[str, np.ndarray]  # per model group, one row of class scores per image of its batch
    inference_ms: float
    outcome: Optional[Outcome]  # the agent's package's verdict on the frame's first view it ran (None: no view did)


class Masks(object):
    """Each camera's privacy mask, rasterised once per frame size."""

    def __init__(self, cameras: Sequence[CameraConfig]) -> None:
        self.cameras = {c.name: c for c in cameras}
        self._cache: Dict[str, Tuple[Tuple[int, int], Optional[np.ndarray]]] = {}

    def get(self, camera: str, height: int, width: int) -> Optional[np.ndarray]:
        cached = self._cache.get(camera)
        if cached is not None and cached[0] == (height, width):
            return cached[1]
        cam = self.cameras[camera]
        mask = None
        if cam.privacy_masks:
            polys = sampling.scale_polygons(cam.privacy_masks, cam.mask_units == "relative", height, width)
            mask = sampling.polygon_mask(height, width, polys)
        self._cache[camera] = ((height, width), mask)
        return mask


class FramePipeline(object):
    """``runners``: the models by group (``MAIN``: the agent's package; a region's own package by its path)."""

    def __init__(self, runners: Dict[str, Runner], cameras: Sequence[CameraConfig], outbox: Outbox,
                 policy: PolicyManager, telemetry: Telemetry, rng: Optional[random.Random] = None) -> None:
        self.runners = dict(runners)
        self.outbox, self.policy, self.telemetry = outbox, policy, telemetry
        self.rng = rng or random.Random()
        self.masks = Masks(cameras)
        self.context_side = {c.name: c.region_sample_frame for c in cameras}
        keys = [target_key(c.name, r and r.name) for c in cameras for r in c.targets()]
        self.trackers = {k: decisions.StateTracker(self.main.settings.hysteresis) for k in keys}
        self.gates = {k: decisions.PublishGate(self.main.settings.publish_mode, self.main.settings.min_interval)
                      for k in keys}
        self._frame_s = 0.0  # the last frame's time in this pipeline (group commit's look ahead)
        self._held: Optional[float] = None  # monotonic time since staged messages wait to be offered

    @property
    def results_committed(self) -> int:
        return self.outbox.committed.get("result", 0)

    @property
    def main(self) -> Runner:
        return self.runners[MAIN]

    def topic(self, camera: str, region: Optional[str], kind: str) -> str:
        s = self.main.settings
        return topics.topic(s.prefix, s.device_id, *(topics.target(camera, region) + (kind,)))

    def swap(self, runner: Runner) -> None:
        """Another model for the agent's package from the next frame on (a rollout's swap or rollback); states
        and gates carry over, regions with a package of their own keep it."""
        self.runners[MAIN] = runner

    def process(self, item: Prepared, more_waiting: Optional[Callable[[], bool]] = None) -> Optional[Outcome]:
        """One preprocessed frame, :meth:`infer` then :meth:`decide`, in this thread; the agent runs the two on
        two threads (agent/decide.py). Returns the agent's package's verdict on the frame's first view it ran."""
        inferred = self.infer(item)
        self.decide(inferred, more_waiting)
        return inferred.outcome

    def infer(self, item: Prepared) -> Inferred:
        """One run per model group (every region of the frame in one batch), and the agent's package's verdict on
        the first view it ran (what a rollout's shadow and health check compare). Stages nothing, so a frame whose
        inference failed can be run again on another model."""
        runners = dict(self.runners)
        t0 = time.perf_counter()
        scores = {g: probabilities(runners[g], batch) for g, batch in item.batches.items()}
        inference_ms = 1000.0 * (time.perf_counter() - t0)
        self.telemetry.frame(inference_ms)
        first = next((v for v in item.views if v.group == MAIN), None)
        outcome = None if first is None else verdict(runners[MAIN], scores[MAIN][first.row])
        return Inferred(item, runners, scores, inference_ms, outcome)

    def decide(self, inferred: Inferred, more_waiting: Optional[Callable[[], bool]] = None) -> None:
        """For every view of an inferred frame its decisions, and what is published staged in the outbox.

        The frame's results and states are offered to the publisher (at once unless ``more_waiting()`` says the next
        frame is already waiting: then with the next frames', :meth:`_offer`) and wait for a commit shared with the
        next frames' (``commit_due``: at most 16 messages, and 50 ms, counting the next frame's time); the ones the
        broker acknowledges first are never written. :meth:`commit_overdue` commits them when no frame comes. A
        sample commits at once, with what is staged."""
        item, tel = inferred.item, self.telemetry
        t0 = time.perf_counter()
        post_ms = commit_ms = 0.0
        for view in item.views:
            runner = inferred.runners[view.group]
            post, commit = self._view(item, view, runner, inferred.scores[view.group][view.row],
                                      inferred.inference_ms)
            post_ms, commit_ms = post_ms + post, commit_ms + commit
        t2 = time.perf_counter()
        self._offer(more_waiting is not None and more_waiting())
        if commit_due(self.outbox.staged, self.outbox.staged_age(), self._frame_s):
            self.outbox.flush()
        t3 = time.perf_counter()
        self._frame_s = t3 - t0 + inferred.inference_ms / 1000.0
        frame = item.frame
        for name, ms in (("decode", frame.decode_ms), ("preprocess", item.preprocess_ms),
                         ("inference", inferred.inference_ms), ("postprocess", post_ms),
                         ("commit", commit_ms + 1000.0 * (t3 - t2))):
            tel.stage(name, ms)
        log.debug("%s frame %d: %d view(s), preprocessed in %.1f ms, inference %.1f ms, decisions and commit %.1f ms",
                  item.camera, frame.seq, len(item.views), item.preprocess_ms, inferred.inference_ms,
                  1000.0 * (time.perf_counter() - t0))

    def _offer(self, waiting: bool) -> None:
        """Wake the publisher for what is staged; while the next frame already waits (the maximum rate), once for
        the frames of half a ``GROUP_DELAY`` instead: a hand-off per frame there cost the publisher and paho more
        CPU than the commits it saves (the acks still come back well before the group's commit is due)."""
        now = time.monotonic()
        if self._held is None:
            self._held = now
        if not waiting or now - self._held + self._frame_s >= staging.GROUP_DELAY / 2:
            self._held = None
            self.outbox.offer()

    def commit_wait(self) -> float:
        """Seconds until what is staged must be committed (``GROUP_DELAY`` after the oldest; inf: nothing staged)."""
        return staging.GROUP_DELAY - self.outbox.staged_age() if self.outbox.staged else float("inf")

    def commit_overdue(self) -> None:
        """Between frames: commit what is staged once its oldest message has waited ``GROUP_DELAY``."""
        if self.commit_wait() <= 0:
            self.outbox.flush()

    def _view(self, item: Prepared, view: View, runner: Runner, probs: np.ndarray, inference_ms: float
              ) -> Tuple[float, float]:
        """One view's decisions and commits; (postprocess ms, commit ms)."""
        t1 = time.perf_counter()
        camera, frame = item.camera, item.frame
        s, model, key = runner.settings, runner.model, target_key(camera, view.region)
        preds = top_k(probs, model.labels, s.top_k)
        best = preds[0]
        threshold = decisions.threshold_for(best.label, s.default_threshold, s.per_class)
        accepted = decisions.is_accepted(best.score, threshold)
        topk = [{"label": p.label, "score": round(p.score, 6)} for p in preds]
        self.telemetry.verdict(best.label, best.score, accepted)
        now = time.time()
        result, body = None, None
        if self.gates[key].should_publish(best.label, accepted, now):
            result = payloads.result(s.device_id, camera, model.info, best.label, best.score, accepted, threshold,
                                     topk, frame.captured, inference_ms, 1000.0 * (now - frame.captured), frame.seq,
                                     model.calibrated, region=view.region)
        changed = self.trackers[key].update(best.label, accepted)
        if changed is not None:
            body = payloads.state(s.device_id, camera, changed, best.score, frame.captured, region=view.region)
        t2 = time.perf_counter()
        if result is not None:
            self.outbox.stage("result", self.topic(camera, view.region, topics.RESULT), payloads.encode(result),
                              qos=1, captured=frame.captured)
        if body is not None:
            self.outbox.stage("state", self.topic(camera, view.region, topics.STATE), payloads.encode(body), qos=1,
                              retain=True, captured=frame.captured)
        t3 = time.perf_counter()
        second = float(np.partition(probs, -2)[-2]) if probs.size > 1 else 0.0
        self._maybe_sample(item, view, runner, best, second, threshold, accepted, topk, result)
        return 1000.0 * (t2 - t1), 1000.0 * (t3 - t2)

    def _maybe_sample(self, item: Prepared, view: View, runner: Runner, best: Prediction, second: float,
                      threshold: float, accepted: bool, topk: List[Dict[str, Any]],
                      result: Optional[payloads.Result]) -> None:
        sampler = self.policy.sampler
        mono = time.monotonic()
        decision = sampler.decide(best.label, best.score, second, threshold, accepted, mono, self.rng.random())
        if decision.reason is not None:
            skipped = self._sample(item.camera, item.frame, view, runner, decision.reason, best, threshold, topk,
                                   result, mono)
            if skipped is not None:
                sampler.skip(skipped)
        elif decision.skipped is not None:
            sampler.skip(decision.skipped)

    def _sample(self, camera: str, frame: Frame, view: View, runner: Runner, reason: str, best: Prediction,
                threshold: float, topk: List[Dict[str, Any]], result: Optional[payloads.Result],
                now: float) -> Optional[str]:
        """Mask, crop a region, skip near-duplicates, JPEG under the byte budget, commit; the quotas count only
        what was sent. Returns why the frame was not sent, or None when it was."""
        sampler = self.policy.sampler
        policy = sampler.policy
        masked = sampling.apply_mask(frame.image, self.masks.get(camera, *frame.image.shape[:2]))
        image = masked if view.box is None else crop(masked, view.box)
        key = target_key(camera, view.region)
        h = sampling.phash(image) if policy.dedup.enabled else None
        if h is not None and sampler.is_duplicate(key, h, now):
            return "duplicate"
        budget = jpeg_budget(policy.max_bytes, 2048)
        context = None
        side = self.context_side.get(camera, 0)
        if view.box is not None and side:  # the whole frame, reduced, beside the crop: a third of the budget
            context = jpeg_within(masked, frame.color, budget // 3, policy.jpeg_quality, max_side=side)
            if context is None:
                return "too_large"
            budget -= len(context[0])
        enc = jpeg_within(image, frame.color, budget, policy.jpeg_quality)
        if enc is None:
            return "too_large"
        jpeg, w, h_px = enc
        body = payloads.encode(payloads.sample(self.main.settings.device_id, camera, runner.model.info, reason,
                                               best.label, best.score, threshold, topk, frame.captured, jpeg, w,
                                               h_px, result.id if result is not None else None, view.region,
                                               view.box, context))
        if len(body) > policy.max_bytes:  # the JSON around the image was larger than reserved
            return "too_large"
        if self.outbox.put("sample", self.topic(camera, view.region, topics.SAMPLE), body, qos=1,
                           captured=frame.captured) is None:
            return "outbox_full"
        sampler.commit(key, reason, best.label, h, now)
        return None
