"""The agent against the loop a user would write by hand, on the same model, images, threads and broker.

    python bench/agent_vs_loop.py [--short 150] [--long 450] [--repeats 2] [--threads 1,2]

The hand-written loop (``--hand``, run as its own process): read and decode the next image, edgesight's preprocess,
InferenceSession.run, softmax and top-3, json, paho publish QoS 1 (no durability, no threads of its own but paho's;
ONNX Runtime's defaults, so its workers spin-wait; OpenCV in the calling thread, as in the agent). The agent:
`edgesight agent --max-frames N` with an image-folder camera, samples off, the real outbox, its own defaults (ONNX
Runtime workers that do not spin). Model: the MobileNetV2-class FP32 ONNX of bench/mobilenetv2.py (224x224), ONNX
Runtime; frames: 640x480 JPEGs. Each side runs N_short and N_long frames as a fresh process; CPU per frame =
(CPU(N_long) - CPU(N_short)) / (N_long - N_short), user + system of the whole process from wait4, so start-up
cancels out; frame rate the same way from wall time. The loop and the agent take turns within each repeat; the CPU
and frame-rate ratios are the medians of the repeats' ratios (each repeat's CPU ratio is printed too).
"ceiling" (maximum rate only): the loop's time per frame over its own inference time per frame, both differenced
the same way: the most throughput a pipeline can gain over the loop by overlapping everything but the inference
(decode, preprocessing, decisions, publishing) with it on other cores, unless its inference runs faster.
Camera paced at 30 fps, and as fast as possible; first, the agent's CPU per second when idle.
Targets (issue 18): CPU per frame <= 1.10x the loop at 30 fps and at the maximum rate, 1 and 2 threads; throughput
>= 1.2x the loop with threads = cores - 1.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))


def hand_loop(args: argparse.Namespace) -> int:
    """The loop a user would write instead of the agent (the child process of one measurement)."""
    import numpy as np
    import onnxruntime as ort
    import paho.mqtt.client as mqtt

    from edgesight.agent.prefetch import opencv_in_calling_thread
    from edgesight.calibration.images import list_images, load_image
    from edgesight.calibration.preprocess import PreprocessSpec, preprocess

    opencv_in_calling_thread()  # the agent's OpenCV setting: the loop does not pay for OpenCV's spinning pool either
    spec = PreprocessSpec(size=(224, 224), resize="letterbox", color="rgb", mean=(0.485, 0.456, 0.406),
                          std=(0.229, 0.224, 0.225), layout="nchw")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    files = [p for p, _ in list_images(args.images)]
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", args.port)
    client.loop_start()
    period = 1.0 / args.fps if args.fps else 0.0
    last = None
    inference = 0.0
    for i in range(args.hand):
        t0 = time.monotonic()
        x = preprocess(load_image(files[i % len(files)]), spec)[None]
        t1 = time.perf_counter()
        logits = sess.run(None, {name: x})[0][0]
        inference += time.perf_counter() - t1
        e = np.exp(logits - logits.max())
        p = e / e.sum()
        top = np.argsort(-p)[:3]
        body = json.dumps({"frame": i, "label": "class_%d" % top[0], "score": float(p[top[0]]),
                           "top_k": [{"label": "class_%d" % j, "score": float(p[j])} for j in top]})
        last = client.publish("hand/cam/result", body, qos=1)
        if period:
            time.sleep(max(0.0, period - (time.monotonic() - t0)))
    last.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()
    if args.report:
        with open(args.report, "w") as f:
            json.dump({"inference_s": inference}, f)
    return 0


def measure(cmd, env=None, report=None):
    """(CPU seconds, wall seconds, the seconds in inference it wrote to ``report`` or None) of one child process run
    to the end."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("failed: %s\n%s" % (" ".join(cmd), proc.stderr.read().decode()[-2000:]))
    inference = None
    if report is not None:
        with open(report) as f:
            inference = json.load(f)["inference_s"]
    return ru.ru_utime + ru.ru_stime, wall, inference


def per_frame(run, short: int, long: int):
    """(CPU ms per frame, frames per second, inference ms per frame or None) of one pair of runs, two run lengths
    differenced."""
    c1, w1, i1 = run(short)
    c2, w2, i2 = run(long)
    inference = None if i1 is None else 1000.0 * (i2 - i1) / (long - short)
    return 1000.0 * (c2 - c1) / (long - short), (long - short) / max(1e-6, w2 - w1), inference


def paired(hand, agent, short: int, long: int, repeats: int):
    """The loop and the agent measured side by side in each repeat (in turns first), so that both see the same
    host: this machine's speed drifts between minutes, and measuring all the loop's repeats and then all the
    agent's compared the drift. Returns the medians (loop CPU ms/f, agent CPU ms/f, loop fps, agent fps) and the
    sorted per-repeat CPU ratios, the median of the per-repeat frame-rate ratios, and the median ceiling (the loop's
    time per frame / its inference time per frame)."""
    rows = []
    for i in range(repeats):
        if i % 2:
            a, h = per_frame(agent, short, long), per_frame(hand, short, long)
        else:
            h, a = per_frame(hand, short, long), per_frame(agent, short, long)
        rows.append((h[0], a[0], h[1], a[1], 1000.0 / h[1] / h[2]))
    medians = [statistics.median(r[k] for r in rows) for k in range(4)]
    return (medians, sorted(r[1] / r[0] for r in rows), statistics.median(r[3] / r[2] for r in rows),
            statistics.median(r[4] for r in rows))


def idle_cpu(work, pkg, images, port, seconds):
    """The agent's CPU per second with nothing to process, from /proc/PID/stat (user + system) between 5 s after its
    start and ``seconds`` later: the start-up's own variation (a second of CPU, give or take 0.1) would drown it in
    a difference of two runs. Its threads used to wake every 10-50 ms to look for work."""
    import signal

    cfg = agent_config(work, pkg, images, port, 1, 0.01)

    def cpu(pid):
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))

    proc = subprocess.Popen([sys.executable, "-m", "edgesight", "agent", "--config", cfg],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(5.0)
        c0, t0 = cpu(proc.pid), time.perf_counter()
        time.sleep(seconds)
        c1, t1 = cpu(proc.pid), time.perf_counter()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return 1000.0 * (c1 - c0) / (t1 - t0)


def agent_config(work, pkg, images, port, threads, fps):
    import yaml

    cfg = {"device_id": "bench", "package": pkg, "runtime": "onnxruntime", "runtime_options": {"threads": threads},
           "cameras": [{"name": "cam", "source": {"type": "folder", "path": images, "fps": fps, "loop": True}}],
           "mqtt": {"host": "127.0.0.1", "port": port}, "outbox": {"path": os.path.join(work, "outbox.db")},
           "samples": {"enabled": False}, "stats": {"interval": 60}}
    path = os.path.join(work, "agent-%d-%g.yaml" % (threads, fps))
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def mobilenet_package(work, name="pkg"):
    """(the FP32 ONNX, a package of it): bench/mobilenetv2.py's model with the ImageNet preprocessing."""
    import mobilenetv2
    from edgesight.calibration.preprocess import PreprocessSpec
    from edgesight.converters.package_builder import create_fp32_package

    model = mobilenetv2.build(os.path.join(work, "mobilenetv2.fp32.onnx"))
    spec = PreprocessSpec(size=(224, 224), resize="letterbox", color="rgb", mean=(0.485, 0.456, 0.406),
                          std=(0.229, 0.224, 0.225), layout="nchw")
    return model, create_fp32_package(model, ["class_%d" % i for i in range(1000)], spec, os.path.join(work, name),
                                      name="mobilenetv2").root


def make_images(folder, n=60):
    import numpy as np
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        yy, xx = np.mgrid[0:480, 0:640]
        img = np.stack([(xx * rng.uniform(0.1, 1) + i) % 256, (yy * rng.uniform(0.1, 1)) % 256,
                        ((xx + yy) * rng.uniform(0.1, 1)) % 256], axis=2).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(folder, "f%03d.jpg" % i), quality=85)
    return folder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", type=int, default=150)
    ap.add_argument("--long", type=int, default=450)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rates", default="30,0", help="camera fps; 0: as fast as possible")
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of the idle measurement (0: skip it)")
    ap.add_argument("--hand", type=int, help=argparse.SUPPRESS)  # child mode: run the hand loop for N frames
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--images", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--fps", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--report", help=argparse.SUPPRESS)
    ap.add_argument("--threads-child", dest="threads_child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hand:
        args.threads = args.threads_child
        return hand_loop(args)

    from support.mqtt import Broker

    work = tempfile.mkdtemp(prefix="edgesight-bench-loop-")
    broker = Broker(os.path.join(work, "broker"), save_every_change=False).start()
    try:
        model, pkg = mobilenet_package(work)
        images = make_images(os.path.join(work, "frames"))
        print("MobileNetV2 FP32 224x224 on ONNX Runtime, 640x480 JPEG folder, %d cores; N = %d and %d frames "
              "differenced, median of %d" % (os.cpu_count(), args.short, args.long, args.repeats))
        print("%-8s %7s %14s %14s %8s %10s %10s %8s %8s  %s" % (
            "camera", "threads", "loop CPU ms/f", "agent CPU ms/f", "x loop", "loop fps", "agent fps", "x loop",
            "ceiling", "CPU x loop by repeat"))
        if args.idle:
            print("agent idle (a camera at 0.01 fps): %.2f ms CPU per second" % idle_cpu(work, pkg, images,
                                                                                      broker.port, args.idle))
        for threads in [int(t) for t in args.threads.split(",")]:
            for rate in [float(r) for r in args.rates.split(",")]:
                def hand(n, threads=threads, rate=rate):
                    report = os.path.join(work, "hand.json")
                    return measure([sys.executable, os.path.abspath(__file__), "--hand", str(n), "--model", model,
                                    "--images", images, "--port", str(broker.port), "--fps", str(rate),
                                    "--threads-child", str(threads), "--report", report], report=report)

                cfg = agent_config(work, pkg, images, broker.port, threads, rate or 1000.0)

                def agent(n, cfg=cfg):
                    if os.path.exists(os.path.join(work, "outbox.db")):
                        for suffix in ("", "-wal", "-shm"):
                            if os.path.exists(os.path.join(work, "outbox.db" + suffix)):
                                os.unlink(os.path.join(work, "outbox.db" + suffix))
                    return measure([sys.executable, "-m", "edgesight", "agent", "--config", cfg, "--max-frames",
                                    str(n)])

                (hc, ac, hf, af), ratios, fps_x, ceiling = paired(hand, agent, args.short, args.long, args.repeats)
                print("%-8s %7d %14.2f %14.2f %8.2f %10.1f %10.1f %8.2f %8s  %s" % (
                    "%g fps" % rate if rate else "max", threads, hc, ac, statistics.median(ratios), hf, af, fps_x,
                    "-" if rate else "%.2f" % ceiling, " ".join("%.2f" % r for r in ratios)), flush=True)
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
