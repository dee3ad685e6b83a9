"""`edgesight agent`: the service's lifecycle (load the model, start the parts, the main loop, drain, stop).

Threads: one capture thread per camera (latest-frame slot), the preprocessing stage (prepares the next frame while
the current one is inferred; agent/prefetch.py), the main loop (the frame pipeline, fleet policy messages, stats,
watchdog), the publisher (outbox -> broker) and paho's network thread. Every loop waits on the stop event with a
timeout; SIGTERM sets it, the pipeline stops taking frames, the outbox is drained for up to ``drain_timeout``
seconds (what is not sent stays committed for the next start), and the process exits 0.

The work itself lives beside it: agent/pipeline.py (one frame), agent/policy.py (the sampling policy from the
fleet), agent/telemetry.py (stats and metrics); runtimes/package.py decides which artifact runs.
"""
import logging
import queue
import threading
import time
from typing import Any, List, NamedTuple, Optional, Tuple

from ..calibration.preprocess import PreprocessSpec, preprocess
from ..errors import InferenceError
from ..runtimes.base import Runtime
from ..runtimes.package import Choice, ModelPackage
from .config import AgentConfig, read_password
from .mqtt import MqttLink, Publisher
from .outbox import Outbox
from .pipeline import FramePipeline, ModelView, Settings
from .policy import PolicyManager
from .prefetch import Prefetch
from .sdnotify import Notifier
from .sources import Capture, make_source
from .telemetry import Telemetry

log = logging.getLogger(__name__)


class _Parts(NamedTuple):
    """What runs while the agent runs."""

    outbox: Outbox
    link: MqttLink
    publisher: Publisher
    captures: List[Capture]
    prefetch: Prefetch
    policy: PolicyManager
    telemetry: Telemetry
    pipeline: FramePipeline
    metrics: Any


class Agent(object):
    def __init__(self, cfg: AgentConfig, notifier: Optional[Notifier] = None, drain_timeout: float = 10.0) -> None:
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.drain_timeout = drain_timeout
        self.pkg: Optional[ModelPackage] = None
        self.choice: Optional[Choice] = None
        self.rt: Optional[Runtime] = None
        self.spec: Optional[PreprocessSpec] = None  # the package's preprocessing, in the runtime's input layout
        self.model: Optional[ModelView] = None

    # -- set-up ----------------------------------------------------------------------------------------------
    def load_model(self) -> None:
        cfg = self.cfg
        self.pkg = ModelPackage.load(cfg.package)  # schema, files, sha256: always verified on the device
        self.choice = self.pkg.artifact_for(cfg.runtime)
        if self.choice.runtime == "tensorrt":
            self.notifier.status("preparing the TensorRT engine")
        # frames are preprocessed straight into the model's own layout (NHWC for TFLite): no transpose per frame
        self.rt = self.pkg.open_runtime(choice=self.choice, config=cfg.runtime_options.for_runtime(
            self.choice.runtime), input_layout="native", engine_cache=cfg.engine_cache,
            extend_timeout=self.notifier.extend_timeout)
        self.spec = self.pkg.preprocess_for(self.rt)
        m, art = self.pkg.manifest, self.choice.artifact
        cal = art.calibration
        self.model = ModelView(list(m.labels), m.output, {
            "name": m.name, "version": m.version, "sha256": art.sha256[:12], "artifact": art.file,
            "runtime": self.choice.runtime}, cal.temperature if cal else 1.0, cal is not None)
        log.info("model %s %s: %s on %s, frames preprocessed to %s, %s", m.name, m.version, art.file,
                 self.choice.runtime, self.spec.layout, "calibrated (temperature %.3f%s)" % (
                     cal.temperature, ", fitted thresholds" if cal.thresholds else "") if cal else "not calibrated")

    def settings(self) -> Settings:
        cfg, m = self.cfg, self.pkg.manifest  # type: ignore[union-attr]
        t = cfg.thresholds
        # the artifact's fitted thresholds (else the package's); agent.yaml's per_class on top, its default for
        # the classes neither names
        default, per_class = m.thresholds_for(self.choice.artifact.calibration)  # type: ignore[union-attr]
        return Settings(cfg.device_id, cfg.mqtt.topic_prefix, cfg.mqtt.top_k,
                        t.default if t.default is not None else default, dict(per_class, **t.per_class),
                        t.hysteresis, cfg.mqtt.publish_mode, cfg.mqtt.min_interval)

    # -- running ---------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event, max_frames: Optional[int] = None, duration: Optional[float] = None) -> int:
        self.notifier.status("loading model")
        self.load_model()
        parts = self._start()
        self.notifier.ready("running %s on %d camera(s)" % (self.choice.artifact.file,  # type: ignore[union-attr]
                                                             len(parts.captures)))
        try:
            self._loop(stop, parts, max_frames, duration)
        finally:
            self._stop(parts)
        return 0

    def _start(self) -> "_Parts":
        cfg = self.cfg
        assert self.rt is not None and self.model is not None and self.spec is not None
        outbox = Outbox(cfg.outbox.path, cfg.outbox.max_bytes, cfg.outbox.max_attempts)
        link = MqttLink(cfg.mqtt, cfg.device_id, read_password(cfg.mqtt))
        publisher = Publisher(link, outbox, cfg.mqtt.inflight)
        caps = [Capture(c.name, make_source(c.source), c.source.fps, c.source.reconnect_min,
                        c.source.reconnect_max) for c in cfg.cameras]
        policy = PolicyManager(cfg.samples, cfg.device_id, cfg.mqtt.topic_prefix, outbox)
        telemetry = Telemetry(cfg.device_id, cfg.mqtt.topic_prefix, caps, outbox, publisher, link, policy,
                              self.model.calibrated)
        pipeline = FramePipeline(self.rt, self.model, self.settings(), cfg.cameras, outbox, policy, telemetry)
        link.subscriptions[policy.topic] = 1
        policy.report("applied")
        spec = self.spec
        prefetch = Prefetch(caps, lambda frame: preprocess(frame.image, spec, input_color=frame.color)[None])
        metrics = None
        if cfg.metrics.enabled:  # bound before any thread starts: a port in use is a config error, nothing runs
            from .metrics import MetricsServer

            metrics = MetricsServer(cfg.metrics.host, cfg.metrics.port, telemetry.snapshot)
        link.start()
        publisher.start()
        for cap in caps:
            cap.start()
        prefetch.start()
        if metrics is not None:
            metrics.start()
        return _Parts(outbox, link, publisher, caps, prefetch, policy, telemetry, pipeline, metrics)

    def _loop(self, stop: threading.Event, p: "_Parts", max_frames: Optional[int], duration: Optional[float]) -> None:
        deadline = None if duration is None else time.monotonic() + duration
        while not stop.is_set():
            self._check_threads(p.captures, p.publisher, p.prefetch)
            self._read_messages(p.link, p.policy)
            item = p.prefetch.take(timeout=0.05)
            if item is not None:
                p.pipeline.process(item)
                p.publisher.wake()
            if item is not None or all(c.state in ("reconnecting", "ended") for c in p.captures):
                # real progress (a frame processed and committed), or every camera is in a known, reported
                # outage that the capture threads are handling: a restart would not bring a camera back, and
                # restart loops would hit the unit's StartLimitBurst and stop the service for good
                self.notifier.watchdog()
            if p.telemetry.period() >= self.cfg.stats.interval:
                body = p.telemetry.commit_stats()
                self.notifier.status("%d frames, %.1f fps, outbox %d" % (body.frames, body.fps, body.outbox.depth))
            if max_frames is not None and p.telemetry.processed >= max_frames:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            if item is None and p.prefetch.drained():
                log.info("every camera reached the end of its input")
                break

    def _stop(self, p: "_Parts") -> None:
        self.notifier.stopping()
        if p.metrics is not None:
            p.metrics.stop()
        p.prefetch.stop()
        for cap in p.captures:
            cap.stop()
        p.telemetry.commit_stats()
        self._drain(p.outbox, p.link)
        p.publisher.stop()
        p.link.stop("stopped")
        p.outbox.close()
        self.rt.close()  # type: ignore[union-attr]

    @staticmethod
    def _read_messages(link: MqttLink, policy: PolicyManager) -> None:
        for _ in range(8):
            try:
                topic, payload = link.messages.get_nowait()
            except queue.Empty:
                return
            if topic == policy.topic:
                policy.apply(payload)

    @staticmethod
    def _check_threads(caps: List[Capture], publisher: Any, prefetch: Any) -> None:
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
