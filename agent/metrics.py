"""Optional Prometheus endpoint (off by default, loopback by default): the ``stats`` numbers as metrics.

A small HTTP server thread serves ``/metrics`` in the text exposition format (version 0.0.4) from a snapshot
function that reads live values without side effects.
"""
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn
from typing import Any, Callable, Dict, List, Optional

from ..errors import ConfigError

log = logging.getLogger(__name__)


def _esc(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(snap: Dict[str, Any]) -> str:
    """Prometheus text format for an agent snapshot (see Agent.metrics_snapshot)."""
    lines: List[str] = []

    def metric(name: str, kind: str, help_: str, samples: List[tuple]) -> None:
        lines.append("# HELP edgesight_%s %s" % (name, help_))
        lines.append("# TYPE edgesight_%s %s" % (name, kind))
        for labels, value in samples:
            if value is None:
                continue
            lab = ",".join('%s="%s"' % (k, _esc(v)) for k, v in sorted(labels.items()))
            lines.append("edgesight_%s%s %s" % (name, "{%s}" % lab if lab else "", repr(float(value))))

    metric("frames_total", "counter", "Frames processed since start.", [({}, snap["frames"])])
    metric("fps", "gauge", "Frames per second over the last stats period.", [({}, snap["fps"])])
    metric("inference_ms", "gauge", "Inference latency percentiles (ms).",
           [({"quantile": q}, snap["inference_ms"].get(k)) for q, k in (("0.5", "p50"), ("0.95", "p95"))])
    metric("capture_to_publish_ms", "gauge", "Capture to hand-off to the MQTT connection percentiles (ms).",
           [({"quantile": q}, snap["capture_to_publish_ms"].get(k)) for q, k in (("0.5", "p50"), ("0.95", "p95"))])
    metric("capture_to_ack_ms", "gauge", "Capture to the broker's acknowledgement percentiles (ms).",
           [({"quantile": q}, snap["capture_to_ack_ms"].get(k)) for q, k in (("0.5", "p50"), ("0.95", "p95"))])
    metric("stage_ms", "gauge", "Per-frame time in each stage (decode, preprocess, inference, postprocess, commit, "
           "publish) percentiles (ms).", [({"stage": st, "quantile": q}, p.get(k))
                                          for st, p in sorted(snap.get("stages_ms", {}).items())
                                          for q, k in (("0.5", "p50"), ("0.95", "p95"))])
    metric("dropped_frames_total", "counter", "Frames replaced in the latest-frame slot before processing.",
           [({}, snap["dropped_frames"])])
    metric("camera_up", "gauge", "1 when the camera delivers frames.",
           [({"camera": n, "state": c["state"]}, 1 if c["state"] == "online" else 0)
            for n, c in snap["cameras"].items()])
    metric("region_up", "gauge", "1 while the region of interest's box fits the camera's frames (0: skipped).",
           [(dict(zip(("camera", "region"), k.split("/", 1))), 0 if why else 1)
            for k, why in sorted(snap.get("regions", {}).items())])
    metric("outbox_depth", "gauge", "Messages waiting in the outbox.", [({}, snap["outbox"]["depth"])])
    metric("outbox_bytes", "gauge", "Bytes waiting in the outbox.", [({}, snap["outbox"]["bytes"])])
    metric("outbox_events_total", "counter", "Outbox events: sent, evicted, dropped, dead-lettered, by kind.",
           [({"event": e.split("_", 1)[0], "kind": e.split("_", 1)[1] if "_" in e else ""}, v)
            for e, v in sorted(snap["outbox"]["counters"].items())])
    samples = snap["samples"]
    metric("samples_total", "counter", "Samples sent, by reason (sampling strategy).",
           [({"reason": k}, v) for k, v in sorted(samples["by_reason"].items())])
    metric("samples_skipped_total", "counter", "Frames a strategy wanted but did not send: quota, cap, min_gap, "
           "duplicate, too_large, outbox_full.", [({"why": k}, v) for k, v in sorted(samples["skipped_by"].items())])
    metric("uncertain_share", "gauge", "Share of each top-1 class's results that were uncertain, since start.",
           [({"label": k}, v) for k, v in sorted(snap.get("uncertain_share", {}).items())])
    metric("calibrated", "gauge", "1 when the running model's scores are calibrated.",
           [({}, 1 if snap.get("calibrated") else 0)])
    model = snap.get("model") or {}
    metric("model_info", "gauge", "1 for the running model; its name, version, artifact and runtime as labels.",
           [({k: str(model[k])[:200] for k in ("name", "version", "artifact", "runtime") if k in model}, 1)]
           if model else [])
    metric("mqtt_connected", "gauge", "1 while connected to the broker.", [({}, 1 if snap["mqtt_connected"] else 0)])
    metric("rss_bytes", "gauge", "Resident memory of the agent.", [({}, snap.get("rss_bytes"))])
    metric("uptime_seconds", "gauge", "Seconds since the agent started.", [({}, snap["uptime_s"])])
    return "\n".join(lines) + "\n"


class _Server(ThreadingMixIn, HTTPServer):
    daemon_threads = True


class MetricsServer(object):
    def __init__(self, host: str, port: int, snapshot: Callable[[], Dict[str, Any]]) -> None:
        snap = snapshot

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = render(snap()).encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("metrics: " + fmt, *args)

        try:
            self.server = _Server((host, port), Handler)
        except OSError as exc:  # the port is taken, the address is not this host's, ...
            raise ConfigError("cannot listen on %s:%d (%s): choose another metrics.port or metrics.host, or turn "
                              "metrics off" % (host, port, exc.strerror or exc), field="metrics.port")
        self.server.timeout = 1.0
        self.port = self.server.server_address[1]
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "MetricsServer":
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="metrics", daemon=True)
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", self.server.server_address[0], self.port)
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
