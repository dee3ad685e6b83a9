"""The per-frame pipeline: a preprocessed frame -> inference -> threshold -> result and state -> sampling (privacy
masks, near-duplicates, JPEG under the byte budget) -> durable outbox commits.

No threads, no broker and no clock of its own beyond time stamps: its collaborators (the runtime, the outbox, the
sampling policy in force, the telemetry) are passed in, so it is tested with a real runtime and a real outbox alone.
"""
import logging
import random
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..contract import payloads, topics
from ..runtimes.base import Runtime
from ..runtimes.postprocess import Prediction, to_probabilities, top_k
from . import decisions, sampling
from .config import CameraConfig
from .outbox import Outbox
from .policy import PolicyManager
from .prefetch import Prepared
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


def predict(rt: Runtime, model: ModelView, settings: Settings, tensor: np.ndarray) -> Outcome:
    """A model's verdict on one preprocessed frame, with its own temperature and thresholds (the shadow's)."""
    out = next(iter(rt.infer(tensor).values()))[0]
    best = top_k(to_probabilities(out, model.output, model.temperature), model.labels, 1)[0]
    threshold = decisions.threshold_for(best.label, settings.default_threshold, settings.per_class)
    return Outcome(best.label, best.score, decisions.is_accepted(best.score, threshold))


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
    def __init__(self, rt: Runtime, model: ModelView, settings: Settings, cameras: Sequence[CameraConfig],
                 outbox: Outbox, policy: PolicyManager, telemetry: Telemetry,
                 rng: Optional[random.Random] = None) -> None:
        self.rt, self.model, self.settings = rt, model, settings
        self.outbox, self.policy, self.telemetry = outbox, policy, telemetry
        self.rng = rng or random.Random()
        self.masks = Masks(cameras)
        self.trackers = {c.name: decisions.StateTracker(settings.hysteresis) for c in cameras}
        self.gates = {c.name: decisions.PublishGate(settings.publish_mode, settings.min_interval) for c in cameras}
        self.results_committed = 0

    def topic(self, camera: str, kind: str) -> str:
        return topics.topic(self.settings.prefix, self.settings.device_id, camera, kind)

    def swap(self, rt: Runtime, model: ModelView, settings: Settings) -> None:
        """Another model from the next frame on (a rollout's swap or rollback); states and gates carry over."""
        self.rt, self.model, self.settings = rt, model, settings

    def process(self, item: Prepared) -> Outcome:
        """One preprocessed frame: inference, decisions, durable commit of what is published. Nothing is committed
        before inference succeeded, so a frame whose inference failed can be run again on another model."""
        s, camera, frame, tel = self.settings, item.camera, item.frame, self.telemetry
        t0 = time.perf_counter()
        out = next(iter(self.rt.infer(item.tensor).values()))[0]
        t1 = time.perf_counter()
        inference_ms = 1000.0 * (t1 - t0)
        probs = to_probabilities(out, self.model.output, self.model.temperature)
        preds = top_k(probs, self.model.labels, s.top_k)
        best = preds[0]
        threshold = decisions.threshold_for(best.label, s.default_threshold, s.per_class)
        accepted = decisions.is_accepted(best.score, threshold)
        topk = [{"label": p.label, "score": round(p.score, 6)} for p in preds]
        tel.frame(best.label, best.score, accepted, inference_ms)
        now = time.time()
        result, body = None, None
        if self.gates[camera].should_publish(best.label, accepted, now):
            result = payloads.result(s.device_id, camera, self.model.info, best.label, best.score, accepted,
                                     threshold, topk, frame.captured, inference_ms, 1000.0 * (now - frame.captured),
                                     frame.seq, self.model.calibrated)
        changed = self.trackers[camera].update(best.label, accepted)
        if changed is not None:
            body = payloads.state(s.device_id, camera, changed, best.score, frame.captured)
        t2 = time.perf_counter()
        if result is not None and self.outbox.put("result", self.topic(camera, topics.RESULT), payloads.encode(result),
                                                  qos=1, captured=frame.captured) is not None:
            self.results_committed += 1
        if body is not None:
            self.outbox.put("state", self.topic(camera, topics.STATE), payloads.encode(body), qos=1, retain=True,
                            captured=frame.captured)
        t3 = time.perf_counter()
        for name, ms in (("decode", frame.decode_ms), ("preprocess", item.preprocess_ms), ("inference", inference_ms),
                         ("postprocess", 1000.0 * (t2 - t1)), ("commit", 1000.0 * (t3 - t2))):
            tel.stage(name, ms)
        second = float(np.partition(probs, -2)[-2]) if probs.size > 1 else 0.0
        self._maybe_sample(item, best, second, threshold, accepted, topk, result)
        log.debug("%s frame %d: %s %.3f (%s), preprocessed in %.1f ms, inference to commit %.1f ms", camera,
                  frame.seq, best.label, best.score, "accepted" if accepted else "uncertain", item.preprocess_ms,
                  1000.0 * (t3 - t0))
        return Outcome(best.label, best.score, accepted)

    def _maybe_sample(self, item: Prepared, best: Prediction, second: float, threshold: float, accepted: bool,
                      topk: List[Dict[str, Any]], result: Optional[payloads.Result]) -> None:
        sampler = self.policy.sampler
        mono = time.monotonic()
        decision = sampler.decide(best.label, best.score, second, threshold, accepted, mono, self.rng.random())
        if decision.reason is not None:
            skipped = self._sample(item.camera, item.frame, decision.reason, best, threshold, topk, result, mono)
            if skipped is not None:
                sampler.skip(skipped)
        elif decision.skipped is not None:
            sampler.skip(decision.skipped)

    def _sample(self, camera: str, frame: Frame, reason: str, best: Prediction, threshold: float,
                topk: List[Dict[str, Any]], result: Optional[payloads.Result], now: float) -> Optional[str]:
        """Mask, skip near-duplicates, JPEG under the byte budget, commit; the quotas count only what was sent.
        Returns why the frame was not sent, or None when it was."""
        sampler = self.policy.sampler
        policy = sampler.policy
        image = sampling.apply_mask(frame.image, self.masks.get(camera, *frame.image.shape[:2]))
        h = sampling.phash(image) if policy.dedup.enabled else None
        if h is not None and sampler.is_duplicate(camera, h, now):
            return "duplicate"
        enc = jpeg_within(image, frame.color, jpeg_budget(policy.max_bytes, 2048), policy.jpeg_quality)
        if enc is None:
            return "too_large"
        jpeg, w, h_px = enc
        body = payloads.encode(payloads.sample(self.settings.device_id, camera, self.model.info, reason, best.label,
                                               best.score, threshold, topk, frame.captured, jpeg, w, h_px,
                                               result.id if result is not None else None))
        if len(body) > policy.max_bytes:  # the JSON around the image was larger than reserved
            return "too_large"
        if self.outbox.put("sample", self.topic(camera, topics.SAMPLE), body, qos=1,
                           captured=frame.captured) is None:
            return "outbox_full"
        sampler.commit(camera, reason, best.label, h, now)
        return None
