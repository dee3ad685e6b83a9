"""Sampling in the running agent against a real mosquitto: fleet policy, masks, near-duplicates, quotas, drift."""
import base64
import io
import json
import os
import shutil
import signal
import time

import numpy as np
from PIL import Image

from support import EXAMPLE
from edgesight.calibration.images import list_images
from support.mqtt import Collector, agent_config, finish, folder_camera, publish, start_agent

VAL = os.path.join(EXAMPLE, "images", "val")


def image_of(sample):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(sample["image"]["data"]))).convert("RGB"))


def run_until_stopped(broker, cfg):
    """Run the agent to the end of its folder camera; the subscriber that saw everything it published."""
    sub = Collector(broker.port)
    code, _, err = finish(start_agent(cfg))
    assert code == 0, err[-2000:]
    assert sub.wait_for(lambda s: s.saw_status("stopped"))
    return sub


def every(**kw):
    """A policy that wants every frame (random baseline at rate 1 with threshold 0), limited only by ``kw``."""
    out = {"strategies": [{"type": "random", "rate": 1.0}], "max_per_minute": None, "min_gap": 0,
           "dedup": {"enabled": False}}
    out.update(kw)
    return out


def test_policy_from_the_fleet_is_validated_applied_and_reverted(broker, tmp_path):
    sub = Collector(broker.port)
    cfg = agent_config(tmp_path, broker.port, thresholds={"default": 0.0}, stats={"interval": 0.5},
                       cameras=folder_camera(fps=20))
    proc = start_agent(cfg)
    topic = "edgesight/dev1/config/sampling"

    def status_count():
        return len(sub.of("config/sampling/status"))

    try:
        assert sub.wait_for(lambda s: s.of("status") and s.of("stats"), 30), proc.stderr
        assert sub.of("config/sampling/status")[-1][1]["source"] == "config"
        assert not sub.of("sample")  # threshold 0: every frame is confident, low_confidence never fires
        for bad in (b"{not json", b'{"strategies": [{"type": "random", "rate": 7}]}', b'{"v": 9}'):
            n = status_count()
            publish(broker.port, topic, bad, retain=True)
            assert sub.wait_for(lambda s: status_count() > n, 10)
            st = sub.of("config/sampling/status")[-1][1]
            assert st["state"] == "rejected" and st["source"] == "config" and "config/sampling" in st["error"]
        assert "strategies[0].rate" in sub.of("config/sampling/status")[-2][1]["error"]
        assert proc.poll() is None  # never crashes on a payload
        assert not sub.of("sample")  # the old policy stayed

        n = status_count()
        publish(broker.port, topic, json.dumps({"v": 1, "strategies": [{"type": "random", "rate": 1.0}],
                                                "max_per_minute": None, "min_gap": 0}).encode(), retain=True)
        assert sub.wait_for(lambda s: status_count() > n and len(s.of("sample")) >= 5, 15)
        st = sub.of("config/sampling/status")[-1][1]
        assert st["state"] == "applied" and st["source"] == "fleet" and st["policy"]["strategies"][0]["rate"] == 1.0
        assert {p["reason"] for _, p, _ in sub.of("sample")} == {"random"}
        assert sub.wait_for(lambda s: any(p["samples"]["policy"] == "fleet" for _, p, _ in s.of("stats")), 5)

        n = status_count()
        publish(broker.port, topic, b"", retain=True)  # cleared: back to the YAML's policy
        assert sub.wait_for(lambda s: status_count() > n, 10)
        assert sub.of("config/sampling/status")[-1][1]["source"] == "config"
        time.sleep(0.5)
        k = len(sub.of("sample"))
        time.sleep(1.5)
        assert len(sub.of("sample")) == k
        proc.send_signal(signal.SIGTERM)
        code, _, err = finish(proc)
        assert code == 0, err[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()


def test_retained_policy_applies_at_start_and_stats_carry_drift(broker, tmp_path):
    publish(broker.port, "edgesight/dev1/config/sampling",
            json.dumps({"strategies": [{"type": "margin", "max_margin": 1.0}], "max_per_minute": 3,
                        "min_gap": 0}).encode(), retain=True)
    cfg = agent_config(tmp_path, broker.port, cameras=folder_camera(fps=30, loop=False))
    sub = run_until_stopped(broker, cfg)
    samples = [p for _, p, _ in sub.of("sample")]
    assert len(samples) == 3 and {s["reason"] for s in samples} == {"margin"}  # the fleet's cap, not the YAML's
    stats = [p for _, p, _ in sub.of("stats")]
    frames = sum(sum(c["count"] for c in st["classes"].values()) for st in stats)
    assert frames == stats[-1]["frames"]  # every frame in exactly one report
    for st in stats:
        for label, c in st["classes"].items():
            assert len(c["hist"]) == 10 and sum(c["hist"]) == c["count"]
    assert stats[-1]["samples"]["skipped_by"].get("cap", 0) > 0
    sub.close()


def test_privacy_mask_blacks_out_the_polygon_in_every_sample(broker, tmp_path):
    folder = tmp_path / "bright"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        img = np.clip(180 + rng.integers(-40, 40, (120, 160, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(str(folder / ("f%02d.png" % i)))
    cfg = agent_config(tmp_path, broker.port, thresholds={"default": 0.0}, samples=every(), cameras=[
        {"name": "front", "privacy_masks": [[[0, 0], [0.5, 0], [0.5, 1], [0, 1]]], "mask_units": "relative",
         "source": {"type": "folder", "path": str(folder), "fps": 10, "loop": False}}])
    sub = run_until_stopped(broker, cfg)
    samples = [p for _, p, _ in sub.of("sample")]
    assert len(samples) == 6
    for s in samples:
        img = image_of(s).astype(int)
        assert img.shape == (120, 160, 3)
        assert img[:, :76].max() <= 24  # masked half: black (JPEG ringing only at the edge)
        assert img[:, 84:].mean() > 150  # the rest of the frame is there
    sub.close()


def test_near_duplicate_frames_are_skipped_and_counted(broker, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    files = [p for p, _ in list_images(VAL)][:40]
    for i in range(10):  # one scene, ten frames
        shutil.copy(files[0], str(folder / ("a%02d.png" % i)))
    distinct = [f for f in files[1:] if open(f, "rb").read() != open(files[0], "rb").read()][:5]
    for i, f in enumerate(distinct):
        shutil.copy(f, str(folder / ("b%02d.png" % i)))
    cfg = agent_config(tmp_path, broker.port, thresholds={"default": 0.0},
                       samples=every(max_per_minute=None, dedup={"max_distance": 4}),
                       cameras=folder_camera(folder, fps=10, loop=False))
    sub = run_until_stopped(broker, cfg)
    samples = [p for _, p, _ in sub.of("sample")]
    stats = sub.of("stats")[-1][1]
    assert stats["frames"] == 15
    assert stats["samples"]["skipped_by"]["duplicate"] >= 9  # the nine repeats of the first frame
    assert len(samples) == 15 - stats["samples"]["skipped_by"]["duplicate"] and len(samples) >= 2
    sub.close()


def test_quota_and_min_gap_hold_under_a_burst_in_the_agent(broker, tmp_path):
    cfg = agent_config(tmp_path, broker.port, thresholds={"default": 0.0},
                       samples=every(max_per_minute=4, min_gap=0.3),
                       cameras=[{"name": "front", "source": {"type": "folder", "path": VAL, "fps": 100,
                                                            "loop": False}}])
    sub = run_until_stopped(broker, cfg)
    samples = [p for _, p, _ in sub.of("sample")]
    stats = sub.of("stats")[-1][1]
    assert len(samples) == 4 and stats["frames"] > 200  # every frame wanted, four taken
    results = {p["id"]: p for _, p, _ in sub.of("result")}
    frames = sorted(results[s["result_id"]]["frame"] for s in samples)
    assert min(np.diff(frames)) >= 10  # >= 0.3 s apart at ~100 frames/s (the frame counter is the clock here)
    assert stats["samples"]["skipped_by"]["min_gap"] > 0 and stats["samples"]["skipped_by"]["cap"] > 0
    sub.close()
