"""The end-to-end demo: convert the example model (calibrated and thresholds fitted on the field set), start a local
mosquitto and `edgesight collect`, run the agent on the example's field images for a bounded number of frames
(taking the broker away for a few seconds in the middle), print what a subscriber receives, and export the
collected samples for Label Studio; then start the agent again and roll version 2.0.0 of the package out to it
(signed pack, HTTP server, `edgesight deploy`: shadow, swap without a restart, health window). Ends by itself. Run by examples/demo.sh after set-up, or directly:

    .venv/bin/python examples/demo.py [--frames 300] [--keep]
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DIGITS = os.path.join(HERE, "digits")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(work: str, port: int) -> subprocess.Popen:
    conf = os.path.join(work, "mosquitto.conf")
    with open(conf, "w") as f:
        # persistence: the collector's session and queue survive the broker's (clean) restart in the middle
        f.write("listener %d 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\n"
                % (port, work))
        if os.geteuid() == 0:
            f.write("user root\n")
    proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", conf],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit("mosquitto did not start")


def edgesight(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgesight"] + list(args), universal_newlines=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def camera_frames(field: str, work: str) -> str:
    """field/test as a camera sees it: the classes mixed (a folder camera plays files in name order, and the field
    set is sorted by class), links in a fixed shuffled order."""
    import random

    from edgesight.calibration.images import list_images

    files = [p for p, _ in list_images(os.path.join(field, "test"))]
    random.Random(0).shuffle(files)
    out = os.path.join(work, "camera")
    os.makedirs(out)
    for i, path in enumerate(files):
        os.symlink(os.path.abspath(path), os.path.join(out, "frame_%04d.jpg" % i))
    return out


def deploy_step(work: str, port: int, pkg: str, cfg_path: str, key: str) -> bool:
    """5. Pack a second version of the package, serve it, deploy it to the running agent: shadow, swap, health."""
    import paho.mqtt.client as mqtt
    import yaml

    from edgesight.fleet.serve import PackServer

    v2 = os.path.join(work, "digits-int8-v2")
    shutil.copytree(pkg, v2)
    manifest = os.path.join(v2, "edgesight.yaml")
    with open(manifest) as f:
        m = yaml.safe_load(f)
    m["version"] = "2.0.0"  # the retrained model would go here; the demo ships the same weights as 2.0.0
    with open(manifest, "w") as f:
        yaml.safe_dump(m, f, sort_keys=False)
    www = os.path.join(work, "www")
    os.makedirs(www)
    print("\n== 4. roll version 2.0.0 out to the running agent")
    print("   " + edgesight("package", "pack", v2, "--out", os.path.join(www, "digits-2.espkg"), "--key",
                             key).stdout.strip())
    server = PackServer(www, "127.0.0.1", 0).start()
    versions, lock = [], threading.Lock()

    def on_result(client, userdata, msg):
        if msg.topic.endswith("/result"):
            with lock:
                versions.append(json.loads(msg.payload)["model"]["version"])
        elif msg.topic.endswith("/model/state"):
            st = json.loads(msg.payload)
            print("   model/state %-11s %s%s" % (st["state"], st.get("health") or "", (" progress %.0f%%" % (
                100 * st["progress"])) if st.get("progress") is not None else ""))

    sub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = on_result
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe([("edgesight/+/front/result", 1),
                                                         ("edgesight/+/model/state", 1)])
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    agent = subprocess.Popen([sys.executable, "-m", "edgesight", "agent", "--config", cfg_path],
                             stderr=subprocess.PIPE, universal_newlines=True)
    try:
        end = time.time() + 60
        while time.time() < end and not versions:
            time.sleep(0.1)
        print("   agent pid %d runs %s" % (agent.pid, versions[-1] if versions else "-"))
        dep = edgesight("deploy", os.path.join(www, "digits-2.espkg"), "--url", server.url("digits-2.espkg"),
                        "--device", "demo-cam-01", "--key", key, "--host", "127.0.0.1", "--port", str(port),
                        "--shadow-frames", "50", "--health-seconds", "3", "--timeout", "120")
        print("\n".join("   " + line for line in (dep.stdout.strip() or dep.stderr.strip()).splitlines()))
        time.sleep(1.0)
        with lock:
            switched = bool(versions) and versions[-1] == "2.0.0" and versions[0] == "1.0.0"
        alive = agent.poll() is None
        print("   results: %d on 1.0.0, then %d on 2.0.0; agent pid %d still running: %s" % (
            versions.count("1.0.0"), versions.count("2.0.0"), agent.pid, "yes" if alive else "NO"))
        return dep.returncode == 0 and switched and alive
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
        sub.loop_stop()
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--keep", action="store_true", help="keep the work folder (package, outbox, config)")
    args = ap.parse_args()
    import paho.mqtt.client as mqtt
    import yaml

    from edgesight.converters import toolchain

    work = tempfile.mkdtemp(prefix="edgesight-demo-")
    print("== 1. convert the example model (work folder %s)" % work)
    targets = "onnx-int8-trt,onnx-int8-cpu" + (",tflite-int8" if toolchain.tool_path("tflite") else "")
    if "tflite" not in targets:
        print("   (no tflite toolchain: `edgesight toolchain install tflite` adds the INT8 TFLite target)")
    pkg = os.path.join(work, "digits-int8")
    # validated, calibrated and thresholds fitted on the field set (images as a cheap camera sees them, which the
    # model gets wrong ~15% of the time): accepted results should be right 98% of the time, per class
    field = os.path.join(DIGITS, "images", "field")
    conv = edgesight("convert", os.path.join(DIGITS, "package", "model.fp32.onnx"), "--calib",
                     os.path.join(DIGITS, "images", "calib"), "--val", os.path.join(field, "val"), "--test",
                     os.path.join(field, "test"), "--target-precision", "0.98",
                     "--labels", os.path.join(DIGITS, "labels.txt"), "--preprocess",
                     os.path.join(DIGITS, "preprocess.yaml"), "--out", pkg, "--name", "digits-cnn", "--targets",
                     targets, "-q")
    print(conv.stdout.rstrip())
    if conv.returncode != 0:
        print(conv.stderr[-3000:])
        return conv.returncode

    port = free_port()
    print("\n== 2. local mosquitto on 127.0.0.1:%d and a subscriber to edgesight/#" % port)
    broker = start_broker(work, port)
    seen = {"result": [], "sample": [], "state": [], "status": [], "stats": []}
    lock = threading.Lock()

    def on_message(client, userdata, msg):
        kind = "policy" if msg.topic.endswith("/config/sampling/status") else msg.topic.rsplit("/", 1)[-1]
        body = json.loads(msg.payload)
        with lock:
            seen.setdefault(kind, []).append(body)
            n = len(seen["result"])
        if kind == "sample":
            print("   sample  %s: %s %.4f < %.4f (%s, %d x %d JPEG)" % (body["id"][:8], body["label"], body["score"],
                                                                       body["threshold"], body["reason"],
                                                                       body["image"]["width"],
                                                                       body["image"]["height"]))
        elif kind == "result" and (n <= 3 or n % 50 == 0):
            print("   result #%d: %s %.3f %s, inference %.2f ms" % (n, body["label"], body["score"],
                                                                    "accepted" if body["accepted"] else "UNCERTAIN",
                                                                    body["latency_ms"]["inference"]))
        elif kind in ("status", "state"):
            print("   %-7s %s" % (kind, body.get("state") or body.get("label")))

    sub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="demo-subscriber",
                      protocol=mqtt.MQTTv5)
    sub.on_message = on_message
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("edgesight/#", qos=1)
    sub.reconnect_delay_set(1, 1)
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    dataset = os.path.join(work, "dataset")
    # --no-share: the demo restarts the broker, and mosquitto 2.0 restores only plain subscriptions (docs/collect.md)
    print("   and edgesight collect %s (persistent session)" % dataset)
    collector = subprocess.Popen([sys.executable, "-m", "edgesight", "collect", dataset, "--host", "127.0.0.1",
                                  "--port", str(port), "--client-id", "demo-collector", "--no-share",
                                  "--reconnect-max", "2", "--quiet", "--json"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    time.sleep(1.0)

    from edgesight.contract.signing import generate

    keys = generate(os.path.join(work, "keys"))  # (private, public): step 5 signs a rollout with it
    cfg = {"device_id": "demo-cam-01", "package": pkg, "runtime": "auto", "models": {"trusted_keys": [keys[1]]},
           "cameras": [{"name": "front", "source": {"type": "folder", "path": camera_frames(field, work),
                                                    "fps": 40, "loop": True}}],
           "thresholds": {"hysteresis": 2},  # the fitted per-class thresholds from the package
           "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min": 1, "reconnect_max": 2},
           "outbox": {"path": os.path.join(work, "outbox.db")},
           "samples": {"strategies": [{"type": "low_confidence"}, {"type": "random", "rate": 0.02}],
                       "max_per_minute": 20, "min_gap": 0.5}, "stats": {"interval": 5}}
    cfg_path = os.path.join(work, "agent.yaml")
    with open(cfg_path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    print("\n== 3. edgesight agent --config %s --max-frames %d" % (cfg_path, args.frames))
    agent = subprocess.Popen([sys.executable, "-m", "edgesight", "agent", "--config", cfg_path, "--max-frames",
                              str(args.frames), "--drain-timeout", "20"], stderr=subprocess.PIPE,
                             universal_newlines=True)
    try:
        while len(seen["result"]) < args.frames // 3 and agent.poll() is None:
            time.sleep(0.1)
        print("   -- broker stopped for 3 s: the agent keeps classifying into its outbox --")
        broker.send_signal(signal.SIGTERM)
        broker.wait(10)
        time.sleep(3)
        broker = start_broker(work, port)
        print("   -- broker back: the outbox drains --")
        _, err = agent.communicate(timeout=120)
        if agent.returncode != 0:
            print(err[-3000:])
            return agent.returncode
        time.sleep(1.5)
        manifest = os.path.join(dataset, "manifest.jsonl")
        end = time.time() + 15
        while time.time() < end:  # the collector reconnects with its own backoff
            with lock:
                want = len({x["id"] for x in seen["sample"]})
            if os.path.exists(manifest) and sum(1 for _ in open(manifest)) >= want:
                break
            time.sleep(0.2)
        collector.send_signal(signal.SIGTERM)
        out, err = collector.communicate(timeout=30)
        if collector.returncode != 0:
            print(err[-3000:])
            return collector.returncode
        collected = json.loads(out)
        collector_log = err
        sub.disconnect()  # the summary below counts steps 3-4; step 5 has its own subscriber
        sub.loop_stop()
        deployed = deploy_step(work, port, pkg, cfg_path, keys[0])
    finally:
        if agent.poll() is None:
            agent.kill()
        if collector.poll() is None:
            collector.kill()
        sub.loop_stop()
        broker.terminate()
        broker.wait(10)
    with lock:
        results = seen["result"]
        ids = {r["id"] for r in results}
        print("\n== 5. summary")
        print("   results received: %d (%d unique, %d duplicates), %d accepted, %d uncertain"
              % (len(results), len(ids), len(results) - len(ids), sum(r["accepted"] for r in results),
                 sum(not r["accepted"] for r in results)))
        print("   samples received: %d; state changes: %d; stats messages: %d; last status: %s"
              % (len(seen["sample"]), len(seen["state"]), len(seen["stats"]),
                 seen["status"][-1]["state"] if seen["status"] else "-"))
        print("   model: %s" % json.dumps(results[0]["model"]) if results else "   no results")
    sample_ids = {x["id"] for x in seen["sample"]}
    print("   collector: %d samples stored in %s (%d duplicates, %d rejected), by label %s"
          % (collected["stored"], dataset, collected["duplicates"], collected["rejected"],
             json.dumps(collected["by_label"])))
    export = edgesight("collect", "export", dataset, "--format", "labelstudio", "--out",
                       os.path.join(work, "labelstudio", "tasks.json"), "--labels", os.path.join(DIGITS, "labels.txt"))
    print("   " + (export.stdout.strip() or export.stderr.strip()))
    ok = len(ids) == args.frames
    print("   every processed frame's result arrived: %s" % ("yes" if ok else "NO"))
    stored_all = collected["dataset_total"] == len(sample_ids)
    print("   every sample is in the dataset once: %s" % ("yes" if stored_all else "NO"))
    if not stored_all:
        print(collector_log[-3000:])
    print("   the running agent took version 2.0.0 without a restart: %s" % ("yes" if deployed else "NO"))
    ok = ok and stored_all and export.returncode == 0 and deployed
    if args.keep:
        print("   kept %s" % work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
