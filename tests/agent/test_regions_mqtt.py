"""Regions of interest end to end: the agent as a process, a real mosquitto, the example config's counter camera.
Each region's results, states and samples arrive on its own topics with the right crops (pixel check on the decoded
samples); Home Assistant sees each region as an entity, removed when the region leaves the config; a box outside
the frame is reported in stats and /metrics while the rest runs on."""
import base64
import io
import os
import urllib.request

import numpy as np
import yaml
from PIL import Image

from edgesight.calibration.images import load_image

from support import EXAMPLE
from support.mqtt import Collector, agent_config, finish, free_port, retained, start_agent
from support.templates import render

ROOT = os.path.dirname(os.path.dirname(EXAMPLE))
COUNTER = os.path.join(EXAMPLE, "images", "counter")
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def example_counter(**source):
    """The ``counter`` camera of examples/agent.yaml (two regions), replaying its frames once."""
    with open(os.path.join(ROOT, "examples", "agent.yaml")) as f:
        cams = yaml.safe_load(f)["cameras"]
    cam = [c for c in cams if c["name"] == "counter"][0]
    assert [r["name"] for r in cam["regions"]] == ["tens", "ones"], "the example shows one camera with two regions"
    cam["source"] = dict(cam["source"], path=COUNTER, **source)
    return cam


def test_a_camera_with_two_regions_publishes_each_region_with_its_own_crop(broker, tmp_path):
    sub = Collector(broker.port)
    cam = example_counter(fps=50, loop=False)
    samples = {"strategies": [{"type": "low_confidence"}, {"type": "random", "rate": 1.0}],
               "max_per_minute": 1000, "min_gap": 0, "dedup": {"enabled": False}}
    cfg = agent_config(tmp_path, broker.port, cameras=[cam], samples=samples, home_assistant={"enabled": True})
    code, _, err = finish(start_agent(cfg))
    assert code == 0, err[-3000:]
    assert sub.wait_for(lambda s: s.saw_status("stopped"))
    results = sub.of("result")
    assert len(results) == 120  # 60 frames, two regions each
    by_id = {}
    for topic, r, _ in results:
        reading = 37 + (r["frame"] - 1) // 3  # frame_000 (frame 1) reads 37; a step every three frames
        digit = reading // 10 % 10 if r["region"] == "tens" else reading % 10
        assert topic == "edgesight/dev1/counter/%s/result" % r["region"] and r["camera"] == "counter"
        assert r["label"] == DIGITS[digit], (r["frame"], r["region"], r["label"])
        by_id[r["id"]] = r
    tens = [p["label"] for _, p, _ in sub.of("counter/tens/state")]
    assert tens == ["three", "four", "five"] and len(sub.of("counter/ones/state")) == 20  # 37 to 56
    sent = sub.of("sample")
    assert len(sent) == 120
    for topic, s, _ in sent:
        r = by_id[s["result_id"]]
        assert topic == "edgesight/dev1/counter/%s/sample" % r["region"] and s["region"] == r["region"]
        frame = load_image(os.path.join(COUNTER, "frame_%03d.png" % (r["frame"] - 1)))
        x, y, w, h = s["box"]
        crop = np.asarray(Image.open(io.BytesIO(base64.b64decode(s["image"]["data"]))).convert("RGB")).astype(int)
        assert crop.shape == (h, w, 3) and np.abs(crop - frame[y:y + h, x:x + w]).mean() < 4
        other = 64 if x == 16 else 16
        assert np.abs(crop - frame[y:y + h, other:other + w]).mean() > 20
        assert (s["context"]["width"], s["context"]["height"]) == (64, 32)  # region_sample_frame: 64
    stats = sub.of("stats")[-1][1]
    assert stats["frames"] == 60 and stats["regions"] == {"counter/tens": None, "counter/ones": None}
    configs = retained(broker.port, "homeassistant/#")
    assert set(configs) == {"homeassistant/sensor/edgesight_dev1/counter__tens/config",
                            "homeassistant/sensor/edgesight_dev1/counter__ones/config"}
    tens_state = sub.of("counter/tens/state")[-1][1]
    assert render(configs["homeassistant/sensor/edgesight_dev1/counter__tens/config"]["value_template"],
                  tens_state) == "five"  # what Home Assistant shows: the retained state of the region
    sub.close()

    # the ones region leaves the config and a region whose box lies outside the 128x64 frames comes in: the ones
    # entity is removed, the far region is reported (stats, /metrics) and skipped, tens runs on
    port = free_port()
    far = {"name": "far", "box": [150, 0, 40, 40]}
    cam = dict(example_counter(fps=20, loop=True), regions=[cam["regions"][0], far])
    cfg = agent_config(tmp_path, broker.port, cameras=[cam], home_assistant={"enabled": True},
                       metrics={"enabled": True, "port": port})
    sub = Collector(broker.port)
    agent = start_agent(cfg)
    try:
        assert sub.wait_for(lambda s: s.of("stats") and s.of("stats")[-1][1]["frames"] > 0, 30)
        stats = sub.of("stats")[-1][1]
        assert stats["regions"]["counter/tens"] is None and "outside the 128x64 frame" in stats["regions"][
            "counter/far"]
        metrics = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()
        assert 'edgesight_region_up{camera="counter",region="far"} 0.0' in metrics
        assert 'edgesight_region_up{camera="counter",region="tens"} 1.0' in metrics
        assert {t.split("/")[-2] for t, _, _ in sub.of("result")} == {"tens"}
        assert agent.poll() is None
        configs = retained(broker.port, "homeassistant/#")
        assert set(configs) == {"homeassistant/sensor/edgesight_dev1/counter__tens/config",
                                "homeassistant/sensor/edgesight_dev1/counter__far/config"}
        # the region's entity is available while the agent is, by its Last Will
        availability = configs["homeassistant/sensor/edgesight_dev1/counter__tens/config"]["availability"][0]
        agent.kill()
        _, _, err = finish(agent)
        status = lambda: [p for t, p, _ in sub.of("status") if t == availability["topic"]]  # noqa: E731
        assert sub.wait_for(lambda s: status() and status()[-1]["state"] == "offline", 30)
        assert render(availability["value_template"], status()[-1]) == "offline"
    finally:
        if agent.poll() is None:
            agent.kill()
        sub.close()
    assert "region counter/far skipped: box [150, 0, 40, 40] (pixels) reaches x=190" in err
