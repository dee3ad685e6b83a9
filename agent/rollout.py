"""Model rollouts on the device (docs/rollout.md): a signed desired-model message in, a new model out, or the old one
kept with the reason.

    desired message --verify signature, device, expiry, counter--> downloading --> verifying (sha256 of the file
    and every entry, safe unpack, the package loads and opens on this device) --> shadow (the candidate runs beside
    the current model on live frames, within a share of the loop's time) --> swap between two frames --> health
    window --> active (passed) | rolled_back

Download, unpacking and loading run in a worker thread (a TensorRT engine build at low priority), so frames keep
flowing; shadow, swap and health checks run in the main loop between frames. Every step is reported on the
retained ``model/state``. A message from the network can never stop the agent: any failure while reading or
following it is a rejection, and a rejection is remembered (``modelstore``) so a retained bad message is not tried
again at the next start. Device-side: Python 3.8-compatible.
"""
import logging
import calendar
import os
import shutil
import threading
import time
from typing import Any, Callable, Dict, Optional

from ..contract import payloads, topics
from ..contract.pack import unpack
from ..contract.rollout import Desired, ModelRef, model_state, parse
from ..contract.signing import open_envelope, trusted
from ..errors import EdgesightError
from ..files import fsync_dir
from .config import ModelsConfig
from .fetch import download
from .modelstore import ModelStore
from .outbox import Outbox
from .shadow import Baseline, Outcome, ShadowStats, health_verdict, shadow_due

log = logging.getLogger(__name__)


def parse_ts(ts: str) -> float:
    """Seconds since the epoch of a payload time stamp (``2026-12-04T05:00:00.123Z``)."""
    return calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + float("0" + ts[19:-1])


def _why(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, EdgesightError) else "%s: %s" % (type(exc).__name__, str(exc)[:500])


class Fetch(object):
    """The worker thread of one rollout: download, verify, unpack, load. ``stage`` and ``progress`` are read by the
    main loop; ``result`` (the opened model) or ``error`` when ``done``."""

    def __init__(self, desired: Desired, store: ModelStore, cfg: ModelsConfig,
                 open_model: Callable[[str, ModelRef, bool], Any]) -> None:
        self.desired, self.store, self.cfg, self.open_model = desired, store, cfg, open_model
        self.stage, self.progress = "downloading", 0.0
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.done = threading.Event()
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rollout-%d" % desired.counter, daemon=True)

    def start(self) -> "Fetch":
        self._thread.start()
        return self

    def cancel(self, timeout: float = 5.0) -> None:
        self.stop.set()
        self._thread.join(timeout)
        if self.result is not None:
            self.result.rt.close()
            self.result = None

    def _progress(self, p: float) -> None:
        self.progress = p

    def _run(self) -> None:
        d, store = self.desired, self.store
        try:
            path = download(d.url, store.download_path(d.counter), d.archive.size, d.archive.sha256,
                            self.cfg.download_timeout, self.cfg.download_attempts, self.cfg.backoff_max, self.stop,
                            self._progress)
            self.stage = "verifying"
            dest = store.version_dir(d.counter)
            store.drop_unpacked(d.counter)
            unpack(path, dest + ".tmp", d.files, self.cfg.max_package_bytes)
            os.rename(dest + ".tmp", dest)
            fsync_dir(store.versions_dir)
            if self.stop.is_set():
                return
            loaded = self.open_model(dest, ModelRef(name=d.name, version=d.version, counter=d.counter), True)
            m = loaded.pkg.manifest
            if (m.name, m.version) != (d.name, d.version):
                loaded.rt.close()
                raise EdgesightError("the package inside is %s %s, the signed message says %s %s" % (
                    m.name, m.version, d.name, d.version))
            self.result = loaded
        except BaseException as exc:  # anything: a rejection with the reason, never a dead agent
            self.error = exc
        finally:
            self.done.set()


class Rollout(object):
    def __init__(self, cfg: ModelsConfig, store: ModelStore, device_id: str, prefix: str, outbox: Outbox,
                 current: Any, open_model: Callable[[str, ModelRef, bool], Any], apply: Callable[[Any], None],
                 infer: Callable[[Any, Any], Outcome], health_seconds: Optional[float] = None,
                 cameras_live: Callable[[], bool] = lambda: True) -> None:
        self.cfg, self.store, self.device_id, self.outbox = cfg, store, device_id, outbox
        self.open_model, self.apply, self.infer, self.cameras_live = open_model, apply, infer, cameras_live
        self.keys = trusted(cfg.trusted_keys) if cfg.trusted_keys else {}
        self.topic = topics.topic(prefix, device_id, *topics.MODEL_DESIRED)
        self.state_topic = topics.topic(prefix, device_id, *topics.MODEL_STATE)
        self.current = current  # the loaded model the pipeline runs
        self.previous: Any = None  # kept open during the health window
        self.phase: Optional[str] = None  # fetching | shadow | health
        self.desired: Optional[Desired] = None
        self.fetch: Optional[Fetch] = None
        self.candidate: Any = None
        self.shadow: Optional[ShadowStats] = None
        self.baseline = Baseline()
        self._payload: Optional[bytes] = None
        self._pending: Optional[bytes] = None
        self._reported = (None, -1.0)  # (stage, time) of the last progress report
        self._shadow_start = self._shadow_spent = 0.0
        self._health: Dict[str, Any] = {}
        if health_seconds is not None:  # started on a model still on probation after a swap
            self._begin_health((store.data.get("probation") or {}).get("desired_id"), health_seconds, None)

    # -- messages --------------------------------------------------------------------------------------------
    def on_message(self, payload: bytes) -> None:
        """A ``model/desired`` message (the retained copy again after a reconnect is ignored)."""
        if payload == self._payload:
            return
        self._payload = payload
        if self.phase == "health":
            self._pending = payload  # considered once the health window ends
            return
        try:
            self._consider(payload)
        except Exception as exc:  # a remote party's bytes must never stop the agent
            log.warning("desired model on %s rejected: %s", self.topic, _why(exc))
            self.report("rejected", reason=_why(exc))

    def _consider(self, payload: bytes) -> None:
        if not payload:
            log.info("desired model cleared on %s", self.topic)
            return
        body, _ = open_envelope(payload, self.keys, self.cfg.allow_unsigned)  # before anything reads the body
        d = parse(body, Desired)
        active = self.current.version.ref
        ref = ModelRef(name=d.name, version=d.version, counter=d.counter)
        fields = {"candidate": ref, "desired_id": d.id}
        if d.device != self.device_id:
            raise EdgesightError("the message is for device %s, not %s" % (d.device, self.device_id))
        if d.expires is not None and parse_ts(d.expires) < time.time():
            self.report("rejected", reason="the message expired at %s" % d.expires, **fields)
            return
        if d.archive.size > self.cfg.max_package_bytes:
            self.report("rejected", reason="the package is %d bytes; models.max_package_bytes is %d" % (
                d.archive.size, self.cfg.max_package_bytes), **fields)
            return
        if d.counter == active.counter and (d.name, d.version) == (active.name, active.version):
            log.info("desired %s %s (counter %d) is the active model", d.name, d.version, d.counter)
            self.report("active", health="passed", **fields)  # deploying it again finishes at once
            return
        if d.counter <= active.counter:
            self.report("rejected", reason="counter %d is not above the active model's %d: a replayed or older "
                        "message is ignored (sign a higher counter to roll an older package out again)"
                        % (d.counter, active.counter), **fields)
            return
        done = self.store.finished(d.counter)
        if done is not None:
            log.info("desired counter %d already ended %s: %s", d.counter, done["state"], done["reason"])
            self.report(done["state"], reason=done["reason"], **fields)
            return
        if self.desired is not None and self.desired.counter == d.counter and self.desired.id == d.id:
            return
        free = shutil.disk_usage(self.store.root).free
        if free < 2 * d.archive.size + (16 << 20):  # the download and its unpacked copy, and some room
            self.report("rejected", reason="not enough disk space in %s: %d bytes free, the package needs %d twice"
                        % (self.store.root, free, d.archive.size), **fields)
            return
        self.abandon("replaced by counter %d" % d.counter)
        self.store.begin(ref, d.id)
        self.desired, self.phase, self._reported = d, "fetching", (None, -1.0)
        self.fetch = Fetch(d, self.store, self.cfg, self.open_model).start()
        log.info("rolling out %s %s (counter %d) from %s", d.name, d.version, d.counter, d.url)
        self.report("downloading", progress=0.0, **fields)

    # -- the main loop's part, between frames ----------------------------------------------------------------
    def tick(self, item: Any, outcome: Optional[Outcome], now: float) -> None:
        """After each frame (``item`` None when there was none): follow the fetch, shadow, watch health."""
        if outcome is not None:
            self.baseline.add(now, outcome.accepted)
        try:
            if self.phase == "fetching":
                self._follow_fetch(now)
            elif self.phase == "shadow" and item is not None and outcome is not None:
                self._shadow_frame(item, outcome, now)
            elif self.phase == "health":
                self._watch(outcome, now)
        except Exception as exc:  # the rollout fails, the agent runs on with the model in force
            log.exception("rollout step failed")
            if self.phase == "health":
                self.rollback("the health check failed: %s" % _why(exc))
            else:
                self._reject("rollout step failed: %s" % _why(exc))

    def _follow_fetch(self, now: float) -> None:
        f = self.fetch
        assert f is not None and self.desired is not None
        if not f.done.is_set():
            if f.stage != self._reported[0] or now - self._reported[1] >= 2.0:
                self.report(f.stage, progress=round(f.progress, 4) if f.stage == "downloading" else None,
                            **self._fields())
                self._reported = (f.stage, now)
            return
        if f.error is not None:
            self._reject(_why(f.error))
            return
        if self._reported[0] != "verifying":  # every stage is reported, however fast it was
            self.report("verifying", **self._fields())
        self.candidate, f.result = f.result, None
        target = self.desired.rollout.shadow_frames
        if target == 0:
            self.swap(now)
            return
        self.phase, self.shadow = "shadow", ShadowStats(target)
        self._shadow_start, self._shadow_spent = time.monotonic(), 0.0
        self.report("shadow", progress=0.0, shadow=self.shadow.numbers(), **self._fields())
        self._reported = ("shadow", now)

    def _shadow_frame(self, item: Any, current: Outcome, now: float) -> None:
        s = self.shadow
        assert s is not None and self.desired is not None
        if not shadow_due(self._shadow_spent, time.monotonic() - self._shadow_start, self.cfg.shadow_share):
            return
        t0 = time.monotonic()
        try:
            cand = self.infer(self.candidate, item)
        except Exception as exc:
            self._reject("the candidate failed at inference in shadow: %s" % _why(exc))
            return
        self._shadow_spent += time.monotonic() - t0
        s.add(current, cand)
        if s.done:
            if (s.agreement or 0.0) >= self.desired.rollout.min_agreement:
                self.swap(now)
            else:
                self._reject("shadow top-1 agreement %.1f%% is below the %.1f%% required (%d frames)" % (
                    100 * (s.agreement or 0.0), 100 * self.desired.rollout.min_agreement, s.frames),
                    shadow=s.numbers())
        elif now - self._reported[1] >= 2.0:
            self.report("shadow", progress=round(s.frames / float(s.target), 4), shadow=s.numbers(), **self._fields())
            self._reported = ("shadow", now)

    def swap(self, now: float) -> None:
        """Between two frames: the pointer first (atomic), then the pipeline; the old model stays open."""
        assert self.candidate is not None and self.desired is not None
        d, cand = self.desired, self.candidate
        before = (self.baseline.fps(), self.baseline.uncertain())
        self.store.activate(cand.version, d.id, d.rollout.health_seconds)
        self.previous, self.current, self.candidate = self.current, cand, None
        self.apply(cand)
        log.info("swapped to %s %s (counter %d)", d.name, d.version, d.counter)
        shadow = self.shadow.numbers() if self.shadow is not None else None
        self._begin_health(d.id, d.rollout.health_seconds, before, shadow)

    def _begin_health(self, desired_id: Optional[str], seconds: float, before: Any, shadow: Any = None) -> None:
        self.phase = "health"
        self._health = {"start": time.monotonic(), "seconds": seconds, "frames": 0, "uncertain": 0,
                        "before": before or (None, None), "shadow": shadow, "desired_id": desired_id,
                        "fps_start": time.monotonic(), "fps_frames": 0}
        self.report("active", health="watching", shadow=shadow, desired_id=self._health["desired_id"])
        self._watch(None, time.time())

    def _watch(self, outcome: Optional[Outcome], now: float) -> None:
        h = self._health
        mono = time.monotonic()
        if outcome is not None:
            h["frames"] += 1
            h["fps_frames"] += 1
            h["uncertain"] += not outcome.accepted
        if not self.cameras_live():  # an outage is the camera's, not the model's: the frame rate starts over
            h["fps_start"], h["fps_frames"] = mono, 0
        verdict, reason = health_verdict(mono - h["start"], h["frames"], h["uncertain"], h["before"][0],
                                         h["before"][1], self.cfg.min_fps_ratio, self.cfg.max_uncertain_increase,
                                         h["seconds"], (mono - h["fps_start"], h["fps_frames"]))
        if verdict == "failed":
            self.rollback(reason or "health check failed")
        elif verdict == "passed":
            self.store.passed()
            if self.previous is not None:
                self.previous.rt.close()
                self.previous = None
            self.phase, self.desired, self.shadow = None, None, None
            self.report("active", health="passed", shadow=h["shadow"], desired_id=h["desired_id"])
            log.info("model %s %s passed its health window", self.current.version.ref.name,
                     self.current.version.ref.version)
            pending, self._pending, self._payload = self._pending, None, None
            if pending is not None:
                self.on_message(pending)

    def on_inference_error(self, exc: BaseException) -> bool:
        """The running model failed on a frame: inside the health window that rolls back (True: run the frame
        again on the restored model); outside it the agent stops, as before (False)."""
        if self.phase != "health":
            return False
        self.rollback("the new model failed at inference: %s" % _why(exc))
        return True

    def rollback(self, reason: str) -> None:
        bad = self.current
        back = self.store.rollback(reason)
        restored = self.previous
        if restored is None:  # started on probation: the previous model was never opened in this process
            restored = self.open_model(back.path, back.ref, False)
        self.current, self.previous = restored, None
        self.apply(restored)
        bad.rt.close()
        log.warning("rolled back to %s %s: %s", back.ref.name, back.ref.version, reason)
        desired_id = self._health.get("desired_id")
        self.phase, self.desired, self.shadow = None, None, None
        self.report("rolled_back", reason=reason, candidate=bad.version.ref, desired_id=desired_id)

    # -- endings ---------------------------------------------------------------------------------------------
    def _fields(self) -> Dict[str, Any]:
        d = self.desired
        if d is None:
            return {}
        return {"candidate": ModelRef(name=d.name, version=d.version, counter=d.counter), "desired_id": d.id}

    def _reject(self, reason: str, shadow: Any = None) -> None:
        d = self.desired
        fields = self._fields()
        log.warning("rollout of %s rejected: %s", "%s %s" % (d.name, d.version) if d else "?", reason)
        self._close_candidate()
        if d is not None:
            self.store.finish(d.counter, "rejected", reason, d.id)
        self.phase, self.desired, self.shadow = None, None, None
        self.report("rejected", reason=reason, shadow=shadow, **fields)

    def _close_candidate(self) -> None:
        if self.fetch is not None:
            self.fetch.cancel()
            self.fetch = None
        if self.candidate is not None:
            self.candidate.rt.close()
            self.candidate = None

    def abandon(self, why: str, stopping: bool = False) -> None:
        """Stop a rollout in progress (a newer message, the agent stopping); its files stay for a resume."""
        if self.phase in ("fetching", "shadow"):
            if stopping:
                self.store.paused()  # a clean stop is not a death: the next start does not count against it
            log.info("rollout of counter %d abandoned: %s", self.desired.counter if self.desired else -1, why)
            self._close_candidate()
            self.phase, self.desired, self.shadow = None, None, None

    def report(self, state: str, **fields: Any) -> None:
        body = model_state(self.device_id, state, self.current.version.ref, **{k: v for k, v in fields.items()
                                                                            if v is not None})
        self.outbox.put("state", self.state_topic, payloads.encode(body), qos=1, retain=True)
