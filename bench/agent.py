"""Agent benchmark on the MobileNetV2-class model of bench/convert.py (FP32 ONNX, ONNX Runtime, 2 threads).

    python bench/agent.py [--frames 400] [--rss-minutes 10] [--threads 2]

Prints: bare runtime fps (infer only; preprocess + infer) vs the full agent pipeline fps (image-folder source,
local mosquitto); capture->publish p50/p95 vs inference p50/p95; outbox durable accept rate and drain rate to the
local broker; agent RSS after --rss-minutes. Needs mosquitto. Targets (agent issue): pipeline >= 95% of bare fps;
p95 capture->publish <= inference p95 + 5 ms; >= 2,000 results/s accepted and drained; RSS <= 200 MB.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

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
from mqtt_util import Broker, Collector  # noqa: E402


def bare(pkg, frames, threads, seconds=8.0):
    with pkg.open_runtime("onnxruntime", config={"threads": threads}) as rt:
        x = preprocess(frames[0], pkg.preprocess)[None]
        for _ in range(5):
            rt.infer(x)
        t0, n, lat = time.perf_counter(), 0, []
        while time.perf_counter() - t0 < seconds:
            t = time.perf_counter()
            rt.infer(x)
            lat.append(1000 * (time.perf_counter() - t))
            n += 1
        infer_fps = n / (time.perf_counter() - t0)
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            rt.infer(preprocess(frames[n % len(frames)], pkg.preprocess)[None])
            n += 1
        full_fps = n / (time.perf_counter() - t0)
    return infer_fps, full_fps, np.percentile(lat, 50), np.percentile(lat, 95)


def agent_run(work, pkg_dir, port, threads, fps, frames=None, duration=None, stats_interval=5.0, spinning=True):
    cfg = {"device_id": "bench", "package": pkg_dir, "runtime": "onnxruntime", "runtime_options": {"threads": threads, "spinning": spinning},
           "cameras": [{"name": "cam", "source": {"type": "folder", "path": os.path.join(EXAMPLE, "images", "val"),
                                                  "fps": fps, "loop": True}}],
           "mqtt": {"host": "127.0.0.1", "port": port}, "outbox": {"path": os.path.join(work, "agent-outbox.db")},
           "samples": {"enabled": False}, "stats": {"interval": stats_interval}}
    path = os.path.join(work, "agent.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    sub = Collector(port, topic="edgesight/bench/stats")
    args = [sys.executable, "-m", "edgesight", "agent", "--config", path]
    args += ["--max-frames", str(frames)] if frames else ["--duration", str(duration)]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    stats = [p for _, p, _ in sub.of("stats")]
    sub.close()
    return stats


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
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="edgesight-bench-agent-")
    broker = Broker(os.path.join(work, "broker"), save_every_change=False).start()
    try:
        model = mobilenetv2.build(os.path.join(work, "mobilenetv2.fp32.onnx"))
        spec = PreprocessSpec(size=(224, 224), resize="letterbox", color="rgb", mean=(0.485, 0.456, 0.406),
                              std=(0.229, 0.224, 0.225), layout="nchw")
        pkg = create_fp32_package(model, ["class_%d" % i for i in range(1000)], spec, os.path.join(work, "pkg"),
                                  name="mobilenetv2")
        frames = [load_image(p) for p, _ in list_images(os.path.join(EXAMPLE, "images", "val"))[:50]]
        print("MobileNetV2 FP32 224x224, onnxruntime, %d threads; %d rounds of bare loop then agent pipeline "
              "(the VM's speed drifts: each ratio compares neighbours)" % (args.threads, args.rounds))
        ratios = []
        for r in range(args.rounds):
            infer_fps, full_fps, p50, p95 = bare(pkg, frames, args.threads)
            # the folder "camera" delivers frames a little faster than bare preprocess + infer can take them, as a
            # camera would: the pipeline is never starved, and the capture thread does not burn the CPU decoding
            # frames for nothing (with 2 cores that would measure the decoder, not the pipeline)
            camera_fps = 1.2 * full_fps
            stats = agent_run(work, pkg.root, broker.port, args.threads, camera_fps, frames=args.frames)
            last = stats[-1]
            steady = [s for s in stats if s["frames"] > 0][:-1] or stats  # periodic reports (the last is partial)
            fps = statistics.median([s["fps"] for s in steady])
            ratios.append(fps / full_fps)
            print("round %d: bare %.1f fps infer only, %.1f fps preprocess + infer (inference p50 %.2f, p95 %.2f ms); "
                  "agent %.1f fps with the camera at %.0f fps = %.0f%% of bare preprocess+infer; %d frames, %d "
                  "dropped by the latest-frame slot" % (r + 1, infer_fps, full_fps, p50, p95, fps, camera_fps,
                                                         100 * fps / full_fps, last["frames"],
                                                         last["dropped_frames"]))
        print("agent pipeline: median %.0f%% of bare preprocess+infer (rounds: %s)"
              % (100 * statistics.median(ratios), ", ".join("%.0f%%" % (100 * x) for x in ratios)))
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
