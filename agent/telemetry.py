"""What the agent reports about itself: the live numbers behind ``/metrics`` (a snapshot read without side effects)
and the periodic ``stats`` message, which adds fps over the period, per-class counts and drift histograms since the
last report, and the MQTT link's details."""
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional

from ..contract import payloads, topics
from . import decisions, sampling


def rss_bytes() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


STAGES = ("decode", "preprocess", "inference", "postprocess", "commit")  # per frame, in the pipeline's order


def _pct(values: Any) -> Dict[str, Optional[float]]:
    data = list(values)
    return {"p50": decisions.percentile(data, 50), "p95": decisions.percentile(data, 95)}


class Telemetry(object):
    """Counts frames as the pipeline processes them and reads the other parts' counters when asked.

    ``captures``, ``outbox``, ``publisher``, ``link`` and ``policy`` are the running agent's parts (anything with the
    same attributes will do in tests). Verdicts come from the decisions thread while the main loop and the metrics
    server read them: the per-label counters are read and reset under a lock."""

    def __init__(self, device_id: str, prefix: str, captures: List[Any], outbox: Any, publisher: Any, link: Any,
                 policy: Any, calibrated: bool = False, regions: Any = None) -> None:
        self.device_id, self.prefix = device_id, prefix
        self.regions = regions  # the regions' problems now (agent/regions.RegionProblems), None: no regions
        self.captures, self.outbox, self.publisher, self.link, self.policy = captures, outbox, publisher, link, policy
        self.started = time.time()
        self.processed = 0
        self.inference_ms: Deque[float] = deque(maxlen=2000)
        self.stages: Dict[str, Deque[float]] = {s: deque(maxlen=2000) for s in STAGES}
        self.counts: Dict[str, int] = {}  # per label since the last report (_uncertain for uncertain frames)
        self.classes: Dict[str, Dict[str, Any]] = {}  # drift: per-class count + confidence histogram per report
        self.calibrated = calibrated
        self.model: Dict[str, Any] = {}  # the running model's ``info`` (name, version, artifact, runtime)
        self.seen: Dict[str, int] = {}  # per top-1 label since start (labels come from the package: bounded)
        self.uncertain: Dict[str, int] = {}  # of those, uncertain
        self._last_frames = 0
        self._last_fps = 0.0
        self._period_start = time.monotonic()
        self._lock = threading.Lock()  # counts, classes, seen, uncertain

    def stage(self, name: str, ms: float) -> None:
        """One frame's time in one stage (decode, preprocess, inference, postprocess, commit)."""
        self.stages[name].append(ms)

    def frame(self, inference_ms: float) -> None:
        """One frame processed, its inference (every model it ran on) taking ``inference_ms``."""
        self.inference_ms.append(inference_ms)
        self.processed += 1

    def verdict(self, label: str, score: float, accepted: bool) -> None:
        """One classification: the whole frame's, or one region's."""
        with self._lock:
            decisions.counts_add(self.counts, label if accepted else "_uncertain")
            decisions.counts_add(self.seen, label)
            if not accepted:
                decisions.counts_add(self.uncertain, label)
            sampling.drift_add(self.classes, label, score)

    def snapshot(self) -> Dict[str, Any]:
        """Live numbers for /metrics (and the base of ``stats``), read without side effects."""
        sampler = self.policy.sampler
        with self._lock:
            uncertain = {k: round(self.uncertain.get(k, 0) / float(n), 6) for k, n in self.seen.items()}
        return {"frames": self.processed, "fps": self._last_fps, "inference_ms": _pct(self.inference_ms),
                "capture_to_publish_ms": _pct(self.publisher.capture_to_publish_ms),
                "capture_to_ack_ms": _pct(self.publisher.capture_to_ack_ms),
                "stages_ms": dict({s: _pct(d) for s, d in self.stages.items()},
                                  publish=_pct(getattr(self.publisher, "commit_to_publish_ms", ()))),
                "dropped_frames": sum(c.dropped for c in self.captures),
                "cameras": {c.name: c.stats() for c in self.captures},
                "regions": self.regions.snapshot() if self.regions is not None else {},
                "outbox": {"depth": self.outbox.depth(), "bytes": self.outbox.bytes,
                           "counters": self.outbox.counters()},
                "samples": {"sent": sum(sampler.taken.values()), "skipped": sum(sampler.skipped.values()),
                            "by_reason": dict(sampler.taken), "skipped_by": dict(sampler.skipped),
                            "policy": self.policy.source},
                "uncertain_share": uncertain,
                "calibrated": self.calibrated, "model": dict(self.model),
                "mqtt_connected": self.link.connected.is_set(), "rss_bytes": rss_bytes(),
                "uptime_s": round(time.time() - self.started, 1)}

    def period(self) -> float:
        """Seconds since the current stats period started."""
        return time.monotonic() - self._period_start

    def stats(self) -> payloads.Stats:
        """The ``stats`` message for the period now ending; starts the next period."""
        elapsed = max(1e-3, self.period())
        self._period_start = time.monotonic()
        frames, self._last_frames = self.processed - self._last_frames, self.processed
        self._last_fps = frames / elapsed
        body = self.snapshot()
        body.pop("model")  # /metrics only: every result already names its model
        counters = body["outbox"]["counters"]
        body["outbox"]["inflight"] = self.publisher.inflight()
        body["samples"]["evicted"] = counters.get("evicted_sample", 0) + counters.get("dropped_sample", 0)
        with self._lock:
            counts, classes, self.counts, self.classes = self.counts, self.classes, {}, {}
        body.update(fps=round(self._last_fps, 3), counts=counts, classes=classes,
                    mqtt={"connected": body.pop("mqtt_connected"), "connects": self.link.connects,
                          "last_error": self.link.last_error})
        return payloads.stats(self.device_id, body)

    def commit_stats(self) -> payloads.Stats:
        body = self.stats()
        self.outbox.put("stats", topics.topic(self.prefix, self.device_id, topics.STATS), payloads.encode(body),
                        qos=0)
        return body
