"""A rollout on a running agent, measured: frames lost during the swap, frame rate while shadowing against before,
time from deploy to active.

    python bench/rollout.py [--model digits|mobilenetv2] [--shares 0.1,1.0] [--shadow-frames 300]

The agent runs as a process on a looping image folder as fast as it can (camera fps 1000: the frame rate is the
agent's own), with a real broker and the pack served by `edgesight package serve`'s server. For each shadow share
a fresh agent on v1 gets v2 (the same weights, version 2.0.0) through `edgesight deploy`. Frame rate = results per
second from the results' capture times: "before" over the 5 s before the deploy, "shadow" between the shadow and
active states. Lost frames = gaps in the results' frame numbers over the whole run. Targets (issue 17): 0 frames
lost, shadow frame rate >= 90% of before with a bounded share.
"""
import argparse
import calendar
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))


def packages(work, which):
    from support.rollout import PACKAGE, variant

    if which == "digits":
        v1 = PACKAGE
        images = os.path.join(ROOT, "examples", "digits", "images", "val")
    else:
        from agent_vs_loop import make_images, mobilenet_package

        v1 = mobilenet_package(work, "v1")[1]
        images = make_images(os.path.join(work, "frames"))
    import support.rollout as r

    saved = r.PACKAGE
    r.PACKAGE = v1
    try:
        v2 = variant(os.path.join(work, "v2"))
    finally:
        r.PACKAGE = saved
    return v1, v2, images


def run_once(work, port, v1, pack_file, url, key, pub, images, share, shadow_frames, run):
    import yaml

    from support.mqtt import Collector, start_agent

    home = tempfile.mkdtemp(dir=work)
    device = "bench-%d" % run  # a fresh device each run: no retained state or desired message from the last
    cfg = {"device_id": device, "package": v1, "runtime": "onnxruntime", "runtime_options": {"threads": 1},
           "cameras": [{"name": "cam", "source": {"type": "folder", "path": images, "fps": 1000, "loop": True}}],
           "mqtt": {"host": "127.0.0.1", "port": port}, "outbox": {"path": os.path.join(home, "outbox.db")},
           "samples": {"enabled": False}, "stats": {"interval": 60},
           "models": {"trusted_keys": [pub], "shadow_share": share}}
    path = os.path.join(home, "agent.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    col = Collector(port, topic="edgesight/%s/#" % device)
    agent = start_agent(path)
    try:
        end = time.time() + 60
        while time.time() < end and len(col.of("result")) < 20:
            time.sleep(0.1)
        time.sleep(5.0)
        t_deploy = time.time()
        dep = subprocess.run([sys.executable, "-m", "edgesight", "deploy", pack_file, "--url", url, "--device",
                              device, "--key", key, "--host", "127.0.0.1", "--port", str(port), "--shadow-frames",
                              str(shadow_frames), "--health-seconds", "3", "--timeout", "300", "--json"],
                             capture_output=True, text=True, timeout=400)
        t_done = time.time()
        if dep.returncode != 0:
            raise SystemExit("deploy failed: %s" % dep.stderr[-2000:])
        time.sleep(1.0)
    finally:
        agent.terminate()
        agent.communicate(timeout=60)
        col.close()
    states = [(p["state"], p.get("health"), p["ts"]) for _, p, _ in col.of("model/state")]
    results = [p for _, p, _ in col.of("result")]

    def ts(s):
        return calendar.timegm(time.strptime(s[:19], "%Y-%m-%dT%H:%M:%S")) + float("0" + s[19:-1])

    t_shadow = min(ts(t) for s, _, t in states if s == "shadow")
    t_active = min(ts(t) for s, h, t in states if s == "active" and h == "watching")
    caps = [ts(r["ts"]) for r in results]
    before = sum(1 for c in caps if t_deploy - 5.0 <= c < t_deploy) / 5.0
    during = sum(1 for c in caps if t_shadow <= c < t_active) / max(t_active - t_shadow, 1e-9)
    seq = [r["frame"] for r in results]
    lost = (seq[-1] - seq[0] + 1) - len(set(seq))
    versions = [r["model"]["version"] for r in results]
    first_v2 = versions.index("2.0.0")
    mixed = any(v != "1.0.0" for v in versions[:first_v2]) or any(v != "2.0.0" for v in versions[first_v2:])
    return {"share": share, "before_fps": before, "shadow_fps": during, "ratio": during / before if before else 0,
            "shadow_s": t_active - t_shadow, "lost": lost, "mixed": mixed, "results": len(results),
            "deploy_to_active_s": t_active - t_deploy, "deploy_to_healthy_s": t_done - t_deploy}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("digits", "mobilenetv2"), default="mobilenetv2")
    ap.add_argument("--shares", default="0.1,1.0")
    ap.add_argument("--shadow-frames", type=int, default=100)
    args = ap.parse_args()

    from edgesight.contract.signing import generate, load_private
    from edgesight.fleet.serve import PackServer
    from edgesight.runtimes.package import ModelPackage
    from edgesight.contract.pack import pack
    from support.mqtt import Broker

    work = tempfile.mkdtemp(prefix="edgesight-bench-rollout-")
    broker = Broker(os.path.join(work, "broker"), save_every_change=False).start()
    try:
        v1, v2, images = packages(work, args.model)
        key, pub = generate(os.path.join(work, "keys"))
        www = os.path.join(work, "www")
        os.makedirs(www)
        pack_file = os.path.join(www, "v2.espkg")
        m = ModelPackage.load(v2).manifest
        pack(v2, m.name, m.version, pack_file, load_private(key), counter=2)
        server = PackServer(www, "127.0.0.1", 0).start()
        print("%s, agent at the camera's fastest, 1 runtime thread, %d cores, %d shadow frames, health 3 s" % (
            args.model, os.cpu_count(), args.shadow_frames))
        print("%-6s %10s %10s %7s %9s %5s %6s %12s %13s" % ("share", "before fps", "shadow fps", "ratio",
                                                          "shadow s", "lost", "mixed", "to active s",
                                                          "to healthy s"))
        for run, share in enumerate(float(s) for s in args.shares.split(",")):
            r = run_once(work, broker.port, v1, pack_file, server.url("v2.espkg"), key, pub, images, share,
                         args.shadow_frames, run)
            print("%-6.2f %10.1f %10.1f %6.0f%% %9.1f %5d %6s %12.1f %13.1f" % (
                share, r["before_fps"], r["shadow_fps"], 100 * r["ratio"], r["shadow_s"], r["lost"],
                "yes" if r["mixed"] else "no", r["deploy_to_active_s"], r["deploy_to_healthy_s"]))
        server.stop()
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
