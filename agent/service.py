"""`edgesight agent`: the service's lifecycle (load the model, start the parts, the main loop, drain, stop).

Threads: one capture thread per camera (latest-frame slot), the preprocessing stage (prepares the next frame while
the current one is inferred; agent/prefetch.py), the main loop (inference, rollouts, fleet policy messages, stats,
watchdog), the decisions stage (a frame's decisions and commits while the next one is inferred; agent/decide.py),
the publisher (outbox -> broker) and paho's network thread. Every loop waits on the stop event with a
timeout; SIGTERM sets it, the pipeline stops taking frames, the outbox is drained for up to ``drain_timeout``
seconds (what is not sent stays committed for the next start), and the process exits 0.

The work itself lives beside it: agent/pipeline.py (one frame), agent/policy.py (the sampling policy from the
fleet), agent/telemetry.py (stats and metrics); runtimes/package.py decides which artifact runs.
"""
import logging
import os
import queue
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from ..calibration.preprocess import PreprocessSpec
from ..contract.rollout import ModelRef
from ..errors import EdgesightError, InferenceError
from ..runtimes.base import Runtime
from ..runtimes.package import Choice, ModelPackage
from . import home_assistant
from .capture import Capture
from .config import AgentConfig, models_dir, read_password
from .decide import DecisionStage
from .modelstore import ModelStore, Version
from .mqtt import MqttLink, Publisher
from .outbox import Outbox
from .pipeline import FramePipeline, ModelView, Runner, Settings, predict
from .policy import PolicyManager
from .prefetch import Prefetch, Prepared, opencv_in_calling_thread
from .regions import MAIN, Preparer, RegionProblems
from .rollout import Rollout
from .shadow import Outcome
from .sdnotify import Notifier
from .sources import make_source
from .telemetry import Telemetry

log = logging.getLogger(__name__)
DECIDE_WAIT = 30.0  # s the main loop waits to hand a frame to the decisions stage before it gives up (a hang)
IDLE_WAIT = 0.25  # s the main loop waits for a frame before it looks at threads, rollout and stats (a message or a
# frame wakes it at once): each idle wake-up of each thread costs CPU, 17.5 ms a second in all when it was 50 ms


class _Parts(NamedTuple):
    """What runs while the agent runs."""

    outbox: Outbox
    link: MqttLink
    publisher: Publisher
    captures: List[Capture]
    prefetch: Prefetch
    decisions: DecisionStage
    policy: PolicyManager
    telemetry: Telemetry
    pipeline: FramePipeline
    metrics: Any
    rollout: Rollout


class Loaded(NamedTuple):
    """A model package opened on this device: what the pipeline runs, and which stored version it is."""

    pkg: ModelPackage
    choice: Choice
    rt: Runtime
    spec: PreprocessSpec  # the package's preprocessing, in the runtime's input layout
    model: ModelView
    version: Version


def lower_thread_priority(nice: int = 10) -> None:
    """This thread only (Linux: a thread's nice value is its own): a TensorRT engine build in the background must
    not take the frames' CPU."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError) as exc:
        log.debug("cannot lower the thread's priority: %s", exc)


class Agent(object):
    def __init__(self, cfg: AgentConfig, notifier: Optional[Notifier] = None, drain_timeout: float = 10.0) -> None:
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.drain_timeout = drain_timeout
        self.current: Optional[Loaded] = None
        self.store: Optional[ModelStore] = None
        self._boot_note: Optional[Dict[str, Any]] = None
        self._probation: Optional[float] = None
        self._generation = 0  # bumped at every swap: frames prepared for the old model are prepared again
        self.region_models: Dict[str, Loaded] = {}  # packages of regions that name their own ``model``, by path
        self.region_problems = RegionProblems()

    # the running model's parts (tests and tools read them)
    pkg = property(lambda self: self.current.pkg if self.current else None)
    choice = property(lambda self: self.current.choice if self.current else None)
    rt = property(lambda self: self.current.rt if self.current else None)
    spec = property(lambda self: self.current.spec if self.current else None)
    model = property(lambda self: self.current.model if self.current else None)

    # -- set-up ----------------------------------------------------------------------------------------------
    def open_model(self, path: str, ref: ModelRef, background: bool = False) -> Loaded:
        """Load, verify and open the package at ``path`` on the runtime this device runs."""
        cfg = self.cfg
        pkg = ModelPackage.load(path)  # schema, files, sha256: always verified on the device
        choice = pkg.artifact_for(cfg.runtime)
        if choice.runtime == "tensorrt":
            if background:
                lower_thread_priority()
            else:
                self.notifier.status("preparing the TensorRT engine")
        # frames are preprocessed straight into the model's own layout (NHWC for TFLite): no transpose per frame
        rt = pkg.open_runtime(choice=choice, config=cfg.runtime_options.for_runtime(choice.runtime),
                              input_layout="native", engine_cache=cfg.engine_cache,
                              extend_timeout=None if background else self.notifier.extend_timeout)
        spec = pkg.preprocess_for(rt)
        m, art = pkg.manifest, choice.artifact
        cal = art.calibration
        model = ModelView(list(m.labels), m.output, {
            "name": m.name, "version": m.version, "sha256": art.sha256[:12], "artifact": art.file,
            "runtime": choice.runtime}, cal.temperature if cal else 1.0, cal is not None)
        log.info("model %s %s: %s on %s, frames preprocessed to %s, %s", m.name, m.version, art.file,
                 choice.runtime, spec.layout, "calibrated (temperature %.3f%s)" % (
                     cal.temperature, ", fitted thresholds" if cal.thresholds else "") if cal else "not calibrated")
        if ref.counter == 0:  # the config's package: its own name and version
            ref = ModelRef(name=m.name, version=m.version, counter=0)
        return Loaded(pkg, choice, rt, spec, model, Version(ref, path))

    def load_model(self) -> None:
        """The active model: the stored pointer's (after a crash loop, the one before it), else the config's."""
        cfg = self.cfg
        factory = Version(ModelRef(name="config", version="-", counter=0), cfg.package)
        self.store = store = ModelStore(models_dir(cfg), factory, cfg.models.keep, cfg.models.crash_starts)
        boot = store.boot()
        self._boot_note, self._probation = boot.note, boot.probation
        try:
            self.current = self.open_model(boot.version.path, boot.version.ref)
        except EdgesightError as exc:
            if boot.version.path == cfg.package:
                raise
            reason = "the active model %s %s does not load here: %s" % (boot.version.ref.name,
                                                                        boot.version.ref.version, exc)
            log.error("%s; starting on the one before it", reason)
            back = store.rollback(reason)
            self._boot_note = {"state": "rolled_back", "reason": reason, "candidate": boot.version.ref}
            self._probation = None
            self.current = self.open_model(back.path, back.ref)
        for path in sorted({r.model for c in cfg.cameras for r in c.regions if r.model}):
            # a region's own package: loaded and verified like the agent's; rollouts replace only the agent's
            self.region_models[path] = self.open_model(path, ModelRef(name="region", version="-", counter=0))

    def settings_for(self, loaded: Loaded) -> Settings:
        cfg, m = self.cfg, loaded.pkg.manifest
        t = cfg.thresholds
        # the artifact's fitted thresholds (else the package's); agent.yaml's per_class on top, its default for
        # the classes neither names; a per_class label the package lacks does not apply to it
        default, per_class = m.thresholds_for(loaded.choice.artifact.calibration)
        mine = {k: v for k, v in t.per_class.items() if k in m.labels}
        return Settings(cfg.device_id, cfg.mqtt.topic_prefix, cfg.mqtt.top_k,
                        t.default if t.default is not None else default, dict(per_class, **mine),
                        t.hysteresis, cfg.mqtt.publish_mode, cfg.mqtt.min_interval)

    def settings(self) -> Settings:
        assert self.current is not None
        return self.settings_for(self.current)

    def runner(self, loaded: Loaded) -> Runner:
        return Runner(loaded.rt, loaded.model, self.settings_for(loaded))

    def _prepare(self, loaded: Loaded) -> Preparer:
        """Frames into batches for ``loaded`` as the agent's package (and the regions' own packages)."""
        specs = {path: m.spec for path, m in self.region_models.items()}
        specs[MAIN] = loaded.spec
        return Preparer(self.cfg.cameras, specs, self.region_problems)

    def entities(self, loaded: Loaded) -> List[home_assistant.Entity]:
        """Every classified target with its model's labels (``loaded``: the agent's package)."""
        return [home_assistant.Entity(c.name, r and r.name, (self.region_models[r.model] if r and r.model else
                                                             loaded).model.labels)
                for c in self.cfg.cameras for r in c.targets()]

    # -- running ---------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event, max_frames: Optional[int] = None, duration: Optional[float] = None) -> int:
        self.notifier.status("loading model")
        self.load_model()
        parts = self._start()
        self.notifier.ready("running %s on %d camera(s)" % (self.current.choice.artifact.file,  # type: ignore
                                                             len(parts.captures)))
        try:
            self._loop(stop, parts, max_frames, duration)
        finally:
            self._stop(parts)
        return 0

    def _home_assistant(self, outbox: Outbox) -> Callable[["Loaded"], None]:
        cfg = self.cfg
        memory = home_assistant.memory_path(cfg.outbox.path)

        def announce(loaded: "Loaded") -> None:
            home_assistant.announce(outbox, memory, cfg.home_assistant.enabled, home_assistant.configs(
                cfg.home_assistant.discovery_prefix, cfg.mqtt.topic_prefix, cfg.device_id, self.entities(loaded),
                loaded.model.info))
        return announce

    def _start(self) -> "_Parts":
        cfg = self.cfg
        cur = self.current
        assert cur is not None and self.store is not None
        outbox = Outbox(cfg.outbox.path, cfg.outbox.max_bytes, cfg.outbox.max_attempts)
        link = MqttLink(cfg.mqtt, cfg.device_id, read_password(cfg.mqtt))
        publisher = Publisher(link, outbox, cfg.mqtt.inflight)
        outbox.on_put = publisher.wake  # every committed row (results, stats, states) is published at once
        caps = [Capture(c.name, make_source(c.source), c.source.fps, c.source.reconnect_min,
                        c.source.reconnect_max) for c in cfg.cameras]
        policy = PolicyManager(cfg.samples, cfg.device_id, cfg.mqtt.topic_prefix, outbox)
        telemetry = Telemetry(cfg.device_id, cfg.mqtt.topic_prefix, caps, outbox, publisher, link, policy,
                              cur.model.calibrated,
                              self.region_problems if any(c.regions for c in cfg.cameras) else None)
        telemetry.model = cur.model.info
        runners = {path: self.runner(m) for path, m in self.region_models.items()}
        runners[MAIN] = self.runner(cur)
        pipeline = FramePipeline(runners, cfg.cameras, outbox, policy, telemetry)
        link.subscriptions[policy.topic] = 1
        policy.report("applied")
        announce = self._home_assistant(outbox)
        announce(cur)
        opencv_in_calling_thread()
        prefetch = Prefetch(caps, self._prepare(cur))
        decide = DecisionStage(pipeline.decide, lambda: prefetch.ready)
        link.on_message = prefetch.poke  # a message wakes the main loop, which waits on the prefetch slot

        def apply(loaded: Loaded) -> None:  # the swap (or rollback), between two frames
            self.current = loaded
            pipeline.swap(self.runner(loaded))
            telemetry.calibrated, telemetry.model = loaded.model.calibrated, loaded.model.info
            announce(loaded)  # the device card names the model now running
            self._generation += 1
            prefetch.set_prepare(self._prepare(loaded), self._generation)

        def infer(loaded: Loaded, item: Prepared) -> Outcome:  # the candidate on a frame's first view, in shadow
            batch = item.batches[MAIN] if loaded.spec == self.current.spec else \
                self._prepare(loaded)(item.camera, item.frame)[0][MAIN]  # type: ignore[union-attr]
            return predict(self.runner(loaded), batch[:1])

        rollout = Rollout(cfg.models, self.store, cfg.device_id, cfg.mqtt.topic_prefix, outbox, cur, self.open_model,
                          apply, infer, health_seconds=self._probation,
                          cameras_live=lambda: all(c.state == "online" for c in caps))
        link.subscriptions[rollout.topic] = 1
        if self._boot_note is not None:
            note = self._boot_note
            rollout.report(note["state"], reason=note["reason"], candidate=note["candidate"],
                           desired_id=note.get("desired_id"))
        elif self._probation is None:
            rollout.report("active", health="passed")
        metrics = None
        if cfg.metrics.enabled:  # bound before any thread starts: a port in use is a config error, nothing runs
            from .metrics import MetricsServer

            metrics = MetricsServer(cfg.metrics.host, cfg.metrics.port, telemetry.snapshot)
        link.start()
        publisher.start()
        for cap in caps:
            cap.start()
        decide.start()
        prefetch.start()
        if metrics is not None:
            metrics.start()
        return _Parts(outbox, link, publisher, caps, prefetch, decide, policy, telemetry, pipeline, metrics, rollout)

    def _loop(self, stop: threading.Event, p: "_Parts", max_frames: Optional[int], duration: Optional[float]) -> None:
        deadline = None if duration is None else time.monotonic() + duration
        while not stop.is_set():
            self._check_threads(p.captures, p.publisher, p.prefetch, p.decisions)
            self._read_messages(p.link, p.policy, p.rollout)
            item = p.prefetch.take(timeout=max(0.0, min(IDLE_WAIT, p.pipeline.commit_wait())))
            outcome = None
            if item is not None:
                outcome = self._process(p, item)
            else:
                p.pipeline.commit_overdue()  # no frame came: the staged results must not wait longer
            p.rollout.tick(item, outcome, time.time())
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

    def _process(self, p: "_Parts", item: Prepared) -> Optional[Outcome]:
        """One frame's inference here, its decisions by the decisions stage; when the model swapped in moments ago
        fails on it, the rollout rolls back and the same frame runs on the restored model (nothing was staged for
        it yet): no frame is lost."""
        if item.generation != self._generation:  # prepared for the model before a swap
            item = self._prepare_again(item)
        try:
            inferred = p.pipeline.infer(item)
        except Exception as exc:
            if not p.rollout.on_inference_error(exc):
                raise
            inferred = p.pipeline.infer(self._prepare_again(item))
        p.decisions.submit(inferred, DECIDE_WAIT)
        return inferred.outcome

    def _prepare_again(self, item: Prepared) -> Prepared:
        """The frame of ``item`` prepared for the model running now."""
        batches, views = self._prepare(self.current)(item.camera, item.frame)  # type: ignore[arg-type]
        return item._replace(batches=batches, views=views, generation=self._generation)

    def _stop(self, p: "_Parts") -> None:
        self.notifier.stopping()
        p.rollout.abandon("the agent is stopping", stopping=True)
        if p.metrics is not None:
            p.metrics.stop()
        p.decisions.stop(DECIDE_WAIT)  # the frame it holds decided and staged first
        p.prefetch.stop()
        for cap in p.captures:
            cap.stop()
        p.outbox.flush()  # what is staged and not acknowledged yet: committed before anything else
        end = time.monotonic() + self.drain_timeout
        self._drain(p.outbox, p.link, end)  # the results first, so that the final stats count them as sent
        p.telemetry.commit_stats()
        self._drain(p.outbox, p.link, end, last=True)
        p.publisher.stop()
        p.link.stop("stopped")
        p.outbox.close()
        running = [self.current, p.rollout.previous] + list(self.region_models.values())
        for loaded in {id(x): x for x in running if x is not None}.values():
            loaded.rt.close()

    @staticmethod
    def _read_messages(link: MqttLink, policy: PolicyManager, rollout: Rollout) -> None:
        for _ in range(8):
            try:
                topic, payload = link.messages.get_nowait()
            except queue.Empty:
                return
            if topic == policy.topic:
                policy.apply(payload)
            elif topic == rollout.topic:
                rollout.on_message(payload)

    @staticmethod
    def _check_threads(caps: List[Capture], publisher: Any, prefetch: Any, decisions: Any) -> None:
        """A worker thread that died of an unexpected error stops the agent (exit 6, systemd restarts it)."""
        workers: List[Tuple[Any, str]] = [(c, "camera %s" % c.name) for c in caps]
        for worker, name in workers + [(publisher, "MQTT publisher"), (prefetch, "preprocessing"),
                                       (decisions, "decisions")]:
            if worker.failed is not None:
                raise InferenceError("%s thread failed: %s: %s" % (name, type(worker.failed).__name__,
                                                                   worker.failed))

    def _drain(self, outbox: Outbox, link: MqttLink, end: float, last: bool = False) -> None:
        """Publish what the outbox holds until ``end`` (monotonic), waiting for a reconnect when the broker is away
        at that moment (a broker restart during a stop must not strand results until the next start); the publisher
        and paho's reconnect loop keep running meanwhile. A row counts as gone once its PUBACK deleted it."""
        if not last and outbox.depth() > 0 and not link.connected.is_set() and end > time.monotonic():
            log.info("broker away: waiting up to %.0f s to publish %d message(s)", end - time.monotonic(),
                     outbox.depth())
        while time.monotonic() < end and outbox.depth() > 0:
            time.sleep(0.05)
        left = outbox.depth()
        if left and last:
            log.warning("%d message(s) stay in the outbox for the next start", left)
