"""Agent benchmark on the MobileNetV2-class model of bench/convert.py (FP32 ONNX, ONNX Runtime, 2 threads).

    python bench/agent.py [--pairs 15] [--window 2] [--frames 1000] [--rss-minutes 10] [--threads 2]

Prints: bare runtime fps (preprocess + infer; infer only) vs the full agent pipeline fps (image-folder source,
local mosquitto), in alternating windows with the other side frozen (see throughput_pairs); capture->publish p50/p95 vs inference p50/p95; outbox durable accept rate and drain rate to the
local broker; agent RSS after --rss-minutes. Needs mosquitto. Targets (agent issue): pipeline >= 95% of bare fps;
p95 capture->publish <= inference p95 + 5 ms; >= 2,000 results/s accepted and drained; RSS <= 200 MB.
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
EXAMPLE = os.path.join(ROOT, "examples", "digits")

import mobilenetv2  # noqa: E402
from edgesight.agent.config import MqttConfig  # noqa: E402
from edgesight.agent.mqtt import MqttLink, Publisher  # noqa: E402
from edgesight.agent.outbox import Outbox  # noqa: E402
from edgesight.calibration.images import list_images, load_image  # noqa: E402
from edgesight.calibration.preprocess import PreprocessSpec, preprocess  # noqa: E402
from edgesight.converters.package_builder import create_fp32_package  # noqa: E402
from support.mqtt import Broker, Collector, free_port  # noqa: E402


def bare_loop(rt, spec, frames, seconds, with_preprocess=True):
    """(fps, per-call inference ms) of the bare runtime loop: preprocess + infer one frame after another (or infer
    only on one ready tensor)."""
    x = preprocess(frames[0], spec)[None]
    t0, n, lat = time.perf_counter(), 0, []
    while time.perf_counter() - t0 < seconds:
        if with_preprocess:
            x = preprocess(frames[n % len(frames)], spec)[None]
        t = time.perf_counter()
        rt.infer(x)
        lat.append(1000 * (time.perf_counter() - t))
        n += 1
    return n / (time.perf_counter() - t0), lat


def write_config(work, pkg_dir, port, threads, fps, stats_interval=5.0, metrics_port=None):
    cfg = {"device_id": "bench", "package": pkg_dir, "runtime": "onnxruntime", "runtime_options": {"threads": threads},
           "cameras": [{"name": "cam", "source": {"type": "folder", "path": os.path.join(EXAMPLE, "images", "val"),
                                                  "fps": fps, "loop": True}}],
           "mqtt": {"host": "127.0.0.1", "port": port}, "outbox": {"path": os.path.join(work, "agent-outbox.db")},
           "samples": {"enabled": False}, "stats": {"interval": stats_interval}}
    if metrics_port:
        cfg["metrics"] = {"enabled": True, "port": metrics_port}
    path = os.path.join(work, "agent.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def agent_run(work, pkg_dir, port, threads, fps, frames=None, duration=None, stats_interval=5.0):
    """Run the agent (the CLI, as systemd would) to the end; the stats messages it published."""
    path = write_config(work, pkg_dir, port, threads, fps, stats_interval)
    sub = Collector(port, topic="edgesight/bench/stats")
    args = [sys.executable, "-m", "edgesight", "agent", "--config", path]
    args += ["--max-frames", str(frames)] if frames else ["--duration", str(duration)]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    stats = [p for _, p, _ in sub.of("stats")]
    sub.close()
    return stats


def frames_total(metrics_port):
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % metrics_port, timeout=5).read().decode()
    return int(float(re.search(r"^edgesight_frames_total(?:\{[^}]*\})? (\S+)$", body, re.M).group(1)))


def throughput_pairs(work, pkg, port, threads, frames, pairs, window):
    """Bare loop vs agent pipeline in alternating windows of ``window`` s.

    This VM's speed drifts by 30% within seconds, so two long runs one after the other compare the drift, not the
    pipeline. Here one agent process runs throughout; it is frozen (SIGSTOP) while the bare loop runs in this
    process, and the bare loop is idle while the agent runs (SIGCONT), window after window. Agent fps = frames it
    processed in its window (from its /metrics endpoint). Each pair gives a ratio; the median is reported."""
    with pkg.open_runtime("onnxruntime", config={"threads": threads}) as rt:
        bare_loop(rt, pkg.preprocess, frames, 1.0)
        full_fps, _ = bare_loop(rt, pkg.preprocess, frames, 2.0)
        # the folder "camera" delivers frames faster than the pipeline can take them, as a camera would: the
        # pipeline is never starved (the capture thread's decoding and dropped frames count against the agent)
        camera_fps = 1.3 * full_fps
        metrics_port = free_port()
        path = write_config(work, pkg.root, port, threads, camera_fps, metrics_port=metrics_port)
        proc = subprocess.Popen([sys.executable, "-m", "edgesight", "agent", "--config", path, "--duration",
                                 str(pairs * window * 3 + 120)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows = []
        try:
            end = time.time() + 60
            while time.time() < end:  # started, model loaded, frames flowing
                try:
                    if frames_total(metrics_port) > 100:
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            for _ in range(pairs):
                proc.send_signal(signal.SIGSTOP)
                time.sleep(0.1)
                bare_fps, lat = bare_loop(rt, pkg.preprocess, frames, window)
                proc.send_signal(signal.SIGCONT)
                time.sleep(0.3)  # threads wake up; the camera refills its slot
                f0, t0 = frames_total(metrics_port), time.perf_counter()
                time.sleep(window)
                agent_fps = (frames_total(metrics_port) - f0) / (time.perf_counter() - t0)
                rows.append((bare_fps, agent_fps, np.percentile(lat, 50), np.percentile(lat, 95)))
        finally:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            proc.wait(30)
        infer_fps, lat = bare_loop(rt, pkg.preprocess, frames, 2.0, with_preprocess=False)
    return rows, camera_fps, infer_fps


def outbox_rates(work, port, n=5000):
    ob = Outbox(os.path.join(work, "rate.db"))
    payload = json.dumps({"v": 1, "id": "x" * 36, "label": "seven", "score": 0.99, "top_k": [1, 2, 3],
                          "pad": "y" * 400}).encode()
    t0 = time.perf_counter()
    for _ in range(n):
        ob.put("result", "edgesight/bench/cam/result", payload, qos=1)
    accept = n / (time.perf_counter() - t0)
    link = MqttLink(MqttConfig(host="127.0.0.1", port=port, inflight=100), "bench-drain")
    pub = Publisher(link, ob, inflight=100)
    link.start()
    link.connected.wait(10)
    t0 = time.perf_counter()
    pub.start()
    while ob.depth() > 0 and time.perf_counter() - t0 < 120:
        time.sleep(0.01)
    drain = (n - ob.depth()) / (time.perf_counter() - t0)
    pub.stop()
    link.stop()
    ob.close()
    return accept, drain


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rss-minutes", type=float, default=10.0)
    ap.add_argument("--pairs", type=int, default=15, help="alternating bare/agent windows")
    ap.add_argument("--window", type=float, default=2.0, help="seconds per window")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="edgesight-bench-agent-")
    broker = Broker(os.path.join(work, "broker"), save_every_change=False, extra_conf="set_tcp_nodelay true").start()
    try:
        model = mobilenetv2.build(os.path.join(work, "mobilenetv2.fp32.onnx"))
        spec = PreprocessSpec(size=(224, 224), resize="letterbox", color="rgb", mean=(0.485, 0.456, 0.406),
                              std=(0.229, 0.224, 0.225), layout="nchw")
        pkg = create_fp32_package(model, ["class_%d" % i for i in range(1000)], spec, os.path.join(work, "pkg"),
                                  name="mobilenetv2")
        frames = [load_image(p) for p, _ in list_images(os.path.join(EXAMPLE, "images", "val"))[:50]]
        print("MobileNetV2 FP32 224x224, onnxruntime, %d threads; %d pairs of %.1f s windows: bare loop (agent "
              "frozen), then agent pipeline (bare idle)" % (args.threads, args.pairs, args.window))
        rows, camera_fps, infer_fps = throughput_pairs(work, pkg, broker.port, args.threads, frames, args.pairs,
                                                       args.window)
        for i, (b, a, p50, p95) in enumerate(rows):
            print("pair %2d: bare preprocess+infer %.1f fps (inference p50 %.2f, p95 %.2f ms), agent %.1f fps = %.0f%%"
                  % (i + 1, b, p50, p95, a, 100 * a / b))
        ratios = [a / b for b, a, _, _ in rows]
        fps = statistics.median([a for _, a, _, _ in rows])
        print("agent pipeline: median %.0f%% of bare preprocess+infer over %d alternating %.1f s windows (quartiles "
              "%.0f%% / %.0f%%; agent median %.1f fps, bare median %.1f fps, bare infer only %.1f fps; camera at %.0f "
              "fps)" % (100 * statistics.median(ratios), len(rows), args.window, 100 * np.percentile(ratios, 25),
                        100 * np.percentile(ratios, 75), fps, statistics.median([b for b, _, _, _ in rows]),
                        infer_fps, camera_fps))
        # latency is measured below saturation: a camera at 70% of what the pipeline can take (a saturated pipeline
        # measures the queueing in front of it, not the pipeline)
        lat_fps = 0.7 * fps
        stats = agent_run(work, pkg.root, broker.port, args.threads, lat_fps, frames=max(200, args.frames // 2))
        last = stats[-1]
        print("agent latency:  camera at %.0f fps (70%% of the pipeline): inference p50 %.2f / p95 %.2f ms; "
              "capture->publish p50 %.2f / p95 %.2f ms; capture->PUBACK p50 %.2f / p95 %.2f ms"
              % (lat_fps, last["inference_ms"]["p50"], last["inference_ms"]["p95"],
                 last["capture_to_publish_ms"]["p50"], last["capture_to_publish_ms"]["p95"],
                 last["capture_to_ack_ms"]["p50"], last["capture_to_ack_ms"]["p95"]))
        accept, drain = outbox_rates(work, broker.port)
        print("outbox:         %.0f results/s durably accepted (SQLite WAL, synchronous=FULL), %.0f results/s drained "
              "to the local broker (QoS 1, 100 in flight)" % (accept, drain))
        if args.rss_minutes > 0:
            stats = agent_run(work, pkg.root, broker.port, args.threads, camera_fps, duration=args.rss_minutes * 60,
                              stats_interval=30)
            rss = [s["rss_bytes"] / 2 ** 20 for s in stats if s.get("rss_bytes")]
            print("agent RSS:      %.1f MiB after %.1f min (first report %.1f MiB, max %.1f MiB; %d frames)"
                  % (rss[-1], args.rss_minutes, rss[0], max(rss), stats[-1]["frames"]))
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
