"""`edgesight agent`: camera frames -> runtime -> thresholds -> durable outbox -> MQTT, as a systemd service.

Threads: one capture thread per camera (latest-frame slot), the preprocessing stage (prepares the next frame while
the current one is inferred; agent/prefetch.py), the main loop (inference, decisions, outbox commits, stats,
watchdog), the publisher (outbox -> broker) and paho's network thread. Every loop waits on the stop event
with a timeout; SIGTERM sets it, the pipeline stops taking frames, the outbox is drained for up to
``drain_timeout`` seconds (what is not sent stays committed for the next start), and the process exits 0.
"""
import logging
import platform
import queue
import random
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

import numpy as np

from ..calibration.preprocess import PreprocessSpec, preprocess
from ..errors import ConfigError, InferenceError, PackageError
from ..runtimes.base import Runtime
from ..runtimes.package import Artifact, ModelPackage
from ..runtimes.postprocess import to_probabilities, top_k
from ..runtimes.registry import is_installed
from . import decisions, payloads, sampling
from .config import AgentConfig, SamplingPolicy, parse_policy, read_password
from .mqtt import MqttLink, Publisher
from .outbox import Outbox
from .prefetch import Prefetch, Prepared
from .samples import jpeg_budget, jpeg_within
from .sdnotify import Notifier
from .sources import Capture, Frame, make_source

log = logging.getLogger(__name__)


def choose_artifact(pkg: ModelPackage, runtime: str = "auto", machine: Optional[str] = None) -> Tuple[int, Artifact]:
    """``auto``: TFLite on ARM, else ONNX Runtime (TensorRT once its backend exists); within a runtime, INT8 that
    passed validation before FP32, and for ONNX Runtime the ``cpu`` profile (the ``tensorrt-qdq`` one is slow on
    CPUs). Artifacts whose validation failed are never chosen automatically."""
    machine = (machine or platform.machine()).lower()
    arm = machine.startswith(("arm", "aarch64"))
    order = [runtime] if runtime != "auto" else (
        ["tensorrt"] + (["tflite", "onnxruntime"] if arm else ["onnxruntime", "tflite"]))

    def rank(a: Artifact) -> int:
        r = 0 if a.precision == "int8" else 1
        if a.profile == "tensorrt-qdq":
            r = 2
        return r

    for rt in order:
        if runtime == "auto" and not is_installed(rt):
            continue
        if rt == "tensorrt":  # TensorRT runs an engine built here from the TensorRT-safe Q/DQ ONNX
            qdq = [(i, a) for i, a in enumerate(pkg.manifest.artifacts) if a.profile == "tensorrt-qdq" and
                   (a.validation is None or a.validation.get("passed", True))]
            if qdq:
                return qdq[0]
            continue
        cands = [(i, a) for i, a in enumerate(pkg.manifest.artifacts) if a.runtime == rt and
                 (a.validation is None or a.validation.get("passed", True))]
        if cands:
            return sorted(cands, key=lambda ia: (rank(ia[1]), ia[0]))[0]
    raise PackageError("has no usable artifact for runtime %s on this device (%s; installed runtimes decide 'auto')"
                       % (runtime, machine), file=pkg.manifest_path, field="artifacts")


def rss_bytes() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class Agent(object):
    def __init__(self, cfg: AgentConfig, notifier: Optional[Notifier] = None, drain_timeout: float = 10.0) -> None:
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.drain_timeout = drain_timeout
        self.started = time.time()
        self.processed = 0
        self.inference_ms: Deque[float] = deque(maxlen=2000)
        self.counts: Dict[str, int] = {}
        self.classes: Dict[str, Dict[str, Any]] = {}  # drift: per-class count + confidence histogram per report
        self.sampler = sampling.Sampler(cfg.samples)
        self.policy_source = "config"
        self._policy_payload: Optional[bytes] = None
        self._masks: Dict[str, Tuple[Tuple[int, int], Optional[np.ndarray]]] = {}
        self._rng = random.Random()
        self.results_published = 0
        self.pkg: Optional[ModelPackage] = None
        self.rt: Optional[Runtime] = None
        self.artifact: Optional[Artifact] = None
        self.spec: Optional[PreprocessSpec] = None  # the package's preprocessing, in the runtime's input layout

    # -- set-up ----------------------------------------------------------------------------------------------
    def load_model(self) -> None:
        self.pkg = ModelPackage.load(self.cfg.package)  # schema, files, sha256: always verified on the device
        idx, self.artifact = choose_artifact(self.pkg, self.cfg.runtime)
        if self.artifact.profile == "tensorrt-qdq" and self.cfg.runtime in ("auto", "tensorrt"):
            self.rt = self._open_tensorrt(idx)
        else:
            self.rt = self.pkg.open_runtime(artifact_index=idx, config=self.cfg.runtime_options or None,
                                            input_layout="native")
        # frames are preprocessed straight into the model's own layout (NHWC for TFLite): no transpose per frame
        self.spec = self.pkg.preprocess_for(self.rt)
        m = self.pkg.manifest
        self.model_info = {"name": m.name, "version": m.version, "sha256": self.artifact.sha256[:12],
                           "artifact": self.artifact.file, "runtime": self.artifact.runtime}
        log.info("model %s %s: %s on %s, frames preprocessed to %s", m.name, m.version, self.artifact.file,
                 self.artifact.runtime, self.spec.layout)

    def _open_tensorrt(self, qdq_index: int) -> Runtime:
        """An engine for this device (shipped, cached or built now from the Q/DQ ONNX), loaded."""
        from ..runtimes.engine_cache import engine_for
        from ..runtimes.registry import create_runtime

        assert self.pkg is not None
        qdq = self.pkg.manifest.artifacts[qdq_index]
        shipped = [(self.pkg.path(a), a.built_for) for a in self.pkg.manifest.artifacts if a.runtime == "tensorrt"]
        self.notifier.status("preparing the TensorRT engine")
        engine = engine_for(self.pkg.path(qdq), qdq.sha256, self.cfg.engine_cache,
                            self.pkg.preprocess.input_shape()[1:], shipped=shipped[0] if shipped else None,
                            extend_timeout=self.notifier.extend_timeout)
        rt = create_runtime("tensorrt", engine, input_layout="native", layout=qdq.layout,
                            config=self.cfg.runtime_options or None)
        rt.load()
        self.pkg.check_runtime(rt, qdq_index)
        self.artifact = qdq.model_copy(update={"runtime": "tensorrt"})
        return rt

    def run(self, stop: threading.Event, max_frames: Optional[int] = None, duration: Optional[float] = None) -> int:
        cfg = self.cfg
        self.notifier.status("loading model")
        self.load_model()
        assert self.pkg is not None and self.rt is not None
        outbox = Outbox(cfg.outbox.path, cfg.outbox.max_bytes, cfg.outbox.max_attempts)
        link = MqttLink(cfg.mqtt, cfg.device_id, read_password(cfg.mqtt))
        publisher = Publisher(link, outbox, cfg.mqtt.inflight)
        caps = [Capture(c.name, make_source(c.source), c.source.fps, c.source.reconnect_min,
                        c.source.reconnect_max) for c in cfg.cameras]
        self.outbox, self.link, self.publisher, self.captures = outbox, link, publisher, caps
        trackers = {c.name: decisions.StateTracker(cfg.thresholds.hysteresis) for c in cfg.cameras}
        gates = {c.name: decisions.PublishGate(cfg.mqtt.publish_mode, cfg.mqtt.min_interval) for c in cfg.cameras}
        self.policy_topic = payloads.topic(cfg.mqtt.topic_prefix, cfg.device_id, "config", "sampling")
        link.subscriptions[self.policy_topic] = 1
        self._report_policy(outbox, "applied")
        prefetch = Prefetch(caps, lambda frame: preprocess(frame.image, self.spec, input_color=frame.color)[None])
        link.start()
        publisher.start()
        for cap in caps:
            cap.start()
        prefetch.start()
        metrics = None
        if cfg.metrics.enabled:
            from .metrics import MetricsServer

            metrics = MetricsServer(cfg.metrics.host, cfg.metrics.port, self.metrics_snapshot).start()
        self.notifier.ready("running %s on %d camera(s)" % (self.artifact.file, len(caps)))
        last_stats = time.monotonic()
        deadline = None if duration is None else time.monotonic() + duration
        try:
            while not stop.is_set():
                self._check_threads(caps, publisher, prefetch)
                self._read_messages(outbox)
                progressed = False
                item = prefetch.take(timeout=0.05)
                if item is not None:
                    self.process(item, outbox, trackers[item.camera], gates[item.camera])
                    publisher.wake()
                    progressed = True
                if progressed or all(c.state in ("reconnecting", "ended") for c in caps):
                    # real progress (a frame processed and committed), or every camera is in a known, reported
                    # outage that the capture threads are handling: a restart would not bring a camera back, and
                    # restart loops would hit the unit's StartLimitBurst and stop the service for good
                    self.notifier.watchdog()
                if time.monotonic() - last_stats >= cfg.stats.interval:
                    self.commit_stats(outbox, time.monotonic() - last_stats)
                    last_stats = time.monotonic()
                if max_frames is not None and self.processed >= max_frames:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if not progressed and prefetch.drained():
                    log.info("every camera reached the end of its input")
                    break
        finally:
            self.notifier.stopping()
            if metrics is not None:
                metrics.stop()
            prefetch.stop()
            for cap in caps:
                cap.stop()
            self.commit_stats(outbox, max(1e-3, time.monotonic() - last_stats))
            self._drain(outbox, link)
            publisher.stop()
            link.stop("stopped")
            outbox.close()
            self.rt.close()
        return 0

    @staticmethod
    def _check_threads(caps: List[Capture], publisher: Publisher, prefetch: Prefetch) -> None:
        """A worker thread that died of an unexpected error stops the agent (exit 6, systemd restarts it)."""
        workers: List[Tuple[Any, str]] = [(c, "camera %s" % c.name) for c in caps]
        for worker, name in workers + [(publisher, "MQTT publisher"), (prefetch, "preprocessing")]:
            if worker.failed is not None:
                raise InferenceError("%s thread failed: %s: %s" % (name, type(worker.failed).__name__,
                                                                   worker.failed))

    def _drain(self, outbox: Outbox, link: MqttLink) -> None:
        """Publish what the outbox holds for up to ``drain_timeout`` seconds, waiting for a reconnect when the
        broker is away at that moment (a broker restart during a stop must not strand results until the next
        start); the publisher and paho's reconnect loop keep running meanwhile."""
        end = time.monotonic() + self.drain_timeout
        if outbox.depth() > 0 and not link.connected.is_set() and self.drain_timeout > 0:
            log.info("broker away: waiting up to %.0f s to publish %d message(s)", self.drain_timeout,
                     outbox.depth())
        while time.monotonic() < end and outbox.depth() > 0:
            time.sleep(0.05)
        left = outbox.depth()
        if left:
            log.warning("%d message(s) stay in the outbox for the next start", left)

    # -- per frame -------------------------------------------------------------------------------------------
    def process(self, item: Prepared, outbox: Outbox, tracker: decisions.StateTracker,
                gate: decisions.PublishGate) -> None:
        """One preprocessed frame: inference, decisions, durable commit of what is published."""
        assert self.pkg is not None and self.rt is not None
        cfg, m = self.cfg, self.pkg.manifest
        camera, frame = item.camera, item.frame
        t0 = time.perf_counter()
        out = next(iter(self.rt.infer(item.tensor).values()))[0]
        inference_ms = 1000.0 * (time.perf_counter() - t0)
        probs = to_probabilities(out, m.output)
        preds = top_k(probs, m.labels, cfg.mqtt.top_k)
        best = preds[0]
        default = cfg.thresholds.default if cfg.thresholds.default is not None else m.thresholds.default
        per_class = dict(m.thresholds.per_class)
        per_class.update(cfg.thresholds.per_class)
        threshold = decisions.threshold_for(best.label, default, per_class)
        accepted = decisions.is_accepted(best.score, threshold)
        topk = [{"label": p.label, "score": round(p.score, 6)} for p in preds]
        prefix, dev = cfg.mqtt.topic_prefix, cfg.device_id
        self.inference_ms.append(inference_ms)
        self.processed += 1
        decisions.counts_add(self.counts, best.label if accepted else "_uncertain")
        now = time.time()
        result = None
        if gate.should_publish(best.label, accepted, now):
            result = payloads.result(dev, camera, self.model_info, best.label, best.score, accepted, threshold,
                                     topk, frame.captured, inference_ms, 1000.0 * (now - frame.captured),
                                     frame.seq)
            if outbox.put("result", payloads.topic(prefix, dev, camera, "result"), payloads.encode(result), qos=1,
                          captured=frame.captured) is not None:
                self.results_published += 1
        changed = tracker.update(best.label, accepted)
        if changed is not None:
            outbox.put("state", payloads.topic(prefix, dev, camera, "state"),
                       payloads.encode(payloads.state(dev, camera, changed, best.score, frame.captured)), qos=1,
                       retain=True, captured=frame.captured)
        sampling.drift_add(self.classes, best.label, best.score)
        second = float(np.partition(probs, -2)[-2]) if probs.size > 1 else 0.0
        mono = time.monotonic()
        decision = self.sampler.decide(best.label, best.score, second, threshold, accepted, mono, self._rng.random())
        if decision.reason is not None:
            self._sample(camera, frame, outbox, decision.reason, best, threshold, topk, result, mono)
        elif decision.skipped is not None:
            self.sampler.skip(decision.skipped)
        log.debug("%s frame %d: %s %.3f (%s), preprocessed in %.1f ms, inference to commit %.1f ms", camera,
                  frame.seq, best.label, best.score, "accepted" if accepted else "uncertain", item.preprocess_ms,
                  1000.0 * (time.perf_counter() - t0))

    def _mask_for(self, camera: str, height: int, width: int) -> Optional[np.ndarray]:
        cached = self._masks.get(camera)
        if cached is not None and cached[0] == (height, width):
            return cached[1]
        cam = next(c for c in self.cfg.cameras if c.name == camera)
        mask = None
        if cam.privacy_masks:
            polys = sampling.scale_polygons(cam.privacy_masks, cam.mask_units == "relative", height, width)
            mask = sampling.polygon_mask(height, width, polys)
        self._masks[camera] = ((height, width), mask)
        return mask

    def _sample(self, camera: str, frame: Frame, outbox: Outbox, reason: str, best, threshold: float,
                topk: List[Dict[str, Any]], result: Optional[Dict[str, Any]], now: float) -> None:
        """Mask, skip near-duplicates, JPEG under the byte budget, commit; the quotas count only what was sent."""
        policy = self.sampler.policy
        image = sampling.apply_mask(frame.image, self._mask_for(camera, *frame.image.shape[:2]))
        h = sampling.phash(image) if policy.dedup.enabled else None
        if h is not None and self.sampler.is_duplicate(camera, h, now):
            self.sampler.skip("duplicate")
            return
        enc = jpeg_within(image, frame.color, jpeg_budget(policy.max_bytes, 2048), policy.jpeg_quality)
        if enc is None:
            self.sampler.skip("too_large")
            return
        jpeg, w, h_px = enc
        body = payloads.encode(payloads.sample(self.cfg.device_id, camera, self.model_info, reason, best.label,
                                               best.score, threshold, topk, frame.captured, jpeg, w, h_px,
                                               result["id"] if result else None))
        if len(body) > policy.max_bytes:  # the JSON around the image was larger than reserved
            self.sampler.skip("too_large")
            return
        if outbox.put("sample", payloads.topic(self.cfg.mqtt.topic_prefix, self.cfg.device_id, camera, "sample"),
                      body, qos=1, captured=frame.captured) is None:
            self.sampler.skip("outbox_full")
            return
        self.sampler.commit(camera, reason, best.label, h, now)

    # -- the sampling policy from the fleet ------------------------------------------------------------------
    def _read_messages(self, outbox: Outbox) -> None:
        for _ in range(8):
            try:
                topic, payload = self.link.messages.get_nowait()
            except queue.Empty:
                return
            if topic == self.policy_topic:
                self.apply_policy_message(payload, outbox)

    def apply_policy_message(self, payload: bytes, outbox: Outbox) -> None:
        """A retained policy replaces the ``samples`` section; an empty one restores the YAML's; an invalid one
        is reported on ``config/sampling/status`` and the policy in force stays. Never raises on the payload."""
        if payload == self._policy_payload:
            return  # the retained copy again, after a reconnect
        self._policy_payload = payload
        if not payload:
            policy, source = self.cfg.samples, "config"
        else:
            try:
                policy, source = parse_policy(payload), "fleet"
            except ConfigError as exc:
                log.warning("sampling policy on %s rejected (the policy in force stays): %s", self.policy_topic, exc)
                self._report_policy(outbox, "rejected", str(exc))
                return
        self._set_policy(policy, source)
        log.info("sampling policy from %s applied", "the fleet" if source == "fleet" else "the config")
        self._report_policy(outbox, "applied")

    def _set_policy(self, policy: SamplingPolicy, source: str) -> None:
        fresh = sampling.Sampler(policy)
        fresh.carry_over(self.sampler)
        self.sampler, self.policy_source = fresh, source

    def _report_policy(self, outbox: Outbox, state: str, error: Optional[str] = None) -> None:
        body = payloads.policy_status(self.cfg.device_id, state, self.policy_source,
                                      self.sampler.policy.model_dump(mode="json"), error)
        outbox.put("state", self.policy_topic + "/status", payloads.encode(body), qos=1, retain=True)

    # -- stats -----------------------------------------------------------------------------------------------
    def stats_payload(self, elapsed: float) -> Dict[str, Any]:
        """The ``stats`` message: the live snapshot plus what only the periodic report carries (fps over the
        period, per-class counts since the last report, in-flight messages, MQTT link details)."""
        fps = round(self._fps_window(elapsed), 3)
        body = self.metrics_snapshot()
        counters = body["outbox"]["counters"]
        body["outbox"]["inflight"] = self.publisher.inflight()
        body["samples"]["evicted"] = counters.get("evicted_sample", 0) + counters.get("dropped_sample", 0)
        body.update(fps=fps, counts=dict(self.counts), classes=self.classes,
                    mqtt={"connected": body.pop("mqtt_connected"), "connects": self.link.connects,
                          "last_error": self.link.last_error})
        return payloads.stats(self.cfg.device_id, body)

    _last_frames = 0
    _last_fps = 0.0

    def metrics_snapshot(self) -> Dict[str, Any]:
        """Live numbers for /metrics (and the base of ``stats``), read without side effects."""
        def pct(values) -> Dict[str, Optional[float]]:
            data = list(values)
            return {"p50": decisions.percentile(data, 50), "p95": decisions.percentile(data, 95)}

        return {"frames": self.processed, "fps": self._last_fps, "inference_ms": pct(self.inference_ms),
                "capture_to_publish_ms": pct(self.publisher.capture_to_publish_ms),
                "capture_to_ack_ms": pct(self.publisher.capture_to_ack_ms),
                "dropped_frames": sum(c.dropped for c in self.captures),
                "cameras": {c.name: c.stats() for c in self.captures},
                "outbox": {"depth": self.outbox.depth(), "bytes": self.outbox.bytes,
                           "counters": self.outbox.counters()},
                "samples": {"sent": sum(self.sampler.taken.values()), "skipped": sum(self.sampler.skipped.values()),
                            "by_reason": dict(self.sampler.taken), "skipped_by": dict(self.sampler.skipped),
                            "policy": self.policy_source},
                "mqtt_connected": self.link.connected.is_set(), "rss_bytes": rss_bytes(),
                "uptime_s": round(time.time() - self.started, 1)}

    def _fps_window(self, elapsed: float) -> float:
        frames, self._last_frames = self.processed - self._last_frames, self.processed
        self._last_fps = frames / elapsed if elapsed > 0 else 0.0
        return self._last_fps

    def commit_stats(self, outbox: Outbox, elapsed: float) -> None:
        body = self.stats_payload(elapsed)
        outbox.put("stats", payloads.topic(self.cfg.mqtt.topic_prefix, self.cfg.device_id, "stats"),
                   payloads.encode(body), qos=0)
        self.counts, self.classes = {}, {}
        self.notifier.status("%d frames, %.1f fps, outbox %d" % (self.processed, body["fps"], body["outbox"]["depth"]))
