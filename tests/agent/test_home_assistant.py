"""Home Assistant MQTT discovery: the configs against the discovery schema Home Assistant documents (topic
format, required keys, templates rendered with Jinja2's sandbox as Home Assistant does), then a real agent process
and broker: retained, availability bound to the Last Will, removed when a camera leaves the config."""
import json
import os
import re
import signal
import subprocess
import time

import pytest

import support

from edgesight.agent import home_assistant
from edgesight.agent.home_assistant import Entity

from support.mqtt import Collector, agent_config, folder_camera, retained, start_agent
from support.templates import render

# as homeassistant/components/mqtt/discovery.py matches a topic once the discovery prefix is taken off
TOPIC = re.compile(r"^(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config$")
REQUIRED = {"sensor": {"state_topic", "unique_id", "device", "availability", "value_template"},
            "binary_sensor": {"state_topic", "unique_id", "device", "availability", "value_template", "payload_on",
                              "payload_off"}}


def check_schema(topic, cfg, discovery_prefix="homeassistant"):
    assert topic.startswith(discovery_prefix + "/"), topic
    m = TOPIC.match(topic[len(discovery_prefix) + 1:])
    assert m and m.group("component") in REQUIRED, topic
    missing = REQUIRED[m.group("component")] - set(cfg)
    assert not missing, (topic, missing)
    assert cfg["device"]["identifiers"] and cfg["device"]["name"], cfg["device"]
    for a in cfg["availability"]:
        assert a["topic"] and a["payload_available"] != a["payload_not_available"]
    return m.group("component")


def test_configs_follow_the_discovery_schema_and_render():
    labels = ["closed", 'op"en']
    out = home_assistant.configs("homeassistant", "site/edgesight", "dev.1", [Entity("door", None, labels),
                                                                              Entity("bay", None, labels)],
                                 {"name": "door", "version": "2.0.0"})
    kinds = [check_schema(t, c) for t, c in out]
    assert sorted(kinds) == ["binary_sensor", "binary_sensor", "sensor", "sensor"]
    assert len({c["unique_id"] for _, c in out}) == 4
    sensor = dict(out)["homeassistant/sensor/edgesight_dev_1/door/config"]
    assert sensor["state_topic"] == "site/edgesight/dev.1/door/state"
    assert sensor["device"]["model"] == "door 2.0.0" and sensor["device"]["sw_version"].startswith("edgesight ")
    state = {"device": "dev.1", "camera": "door", "label": 'op"en', "score": 0.93, "ts": "2026-12-04T10:00:00Z"}
    assert render(sensor["value_template"], state) == 'op"en'
    assert json.loads(render(sensor["json_attributes_template"], state)) == {"score": 0.93,
                                                                            "ts": "2026-12-04T10:00:00Z"}
    binary = dict(out)["homeassistant/binary_sensor/edgesight_dev_1/door/config"]
    assert render(binary["value_template"], state) == "ON"  # a quote in a label does not break the template
    assert render(binary["value_template"], dict(state, label="closed")) == "OFF"
    avail = sensor["availability"][0]
    assert avail["topic"] == "site/edgesight/dev.1/status"
    for status, want in (("online", "online"), ("offline", "offline"), ("stopped", "offline")):
        assert render(avail["value_template"], {"state": status}) == want
    # ten classes: a sensor only
    ten = home_assistant.configs("ha", "edgesight", "d", [Entity("c", None, [str(i) for i in range(10)])], {})
    assert [check_schema(t, c, "ha") for t, c in ten] == ["sensor"]


def test_each_region_of_interest_is_an_entity_of_its_own_on_its_state_topic():
    """Two regions of one camera, one with a two-class model of its own: two sensors, one binary_sensor, each
    reading its region's retained state topic, none sharing an id with the other or with a whole camera."""
    out = dict(home_assistant.configs("homeassistant", "edgesight", "dev1", [
        Entity("yard", "gate", ["closed", "open"]), Entity("yard", "bench", ["saw", "drill", "none"]),
        Entity("hall", None, ["empty", "occupied"])], {"name": "m", "version": "1"}))
    for topic, cfg in out.items():
        check_schema(topic, cfg)
    gate = out["homeassistant/sensor/edgesight_dev1/yard__gate/config"]
    assert gate["state_topic"] == "edgesight/dev1/yard/gate/state" and gate["name"] == "yard gate"
    bench = out["homeassistant/sensor/edgesight_dev1/yard__bench/config"]
    assert bench["state_topic"] == "edgesight/dev1/yard/bench/state"
    on = out["homeassistant/binary_sensor/edgesight_dev1/yard__gate/config"]
    state = {"device": "dev1", "camera": "yard", "region": "gate", "label": "open", "score": 0.9,
             "ts": "2026-12-04T10:00:00Z"}
    assert render(on["value_template"], state) == "ON" and render(gate["value_template"], state) == "open"
    assert "homeassistant/binary_sensor/edgesight_dev1/yard__bench/config" not in out  # three classes
    assert len({c["unique_id"] for c in out.values()}) == len(out) == 5


def home_assistant_python():
    """A Python with Home Assistant installed: .ci/home-assistant.sh makes one and .ci/run exports it."""
    path = os.environ.get("EDGESIGHT_HA_PYTHON")
    if path:
        return path
    if os.environ.get("EDGESIGHT_CI"):
        pytest.fail("CI checks discovery with Home Assistant's own code: .ci/home-assistant.sh sets "
                    "EDGESIGHT_HA_PYTHON")
    pytest.skip("Home Assistant's own schemas need a Python with homeassistant: bash .ci/home-assistant.sh, then "
                "EDGESIGHT_HA_PYTHON=.venv-ha/bin/python")


def test_configs_pass_home_assistants_own_discovery_schemas_and_template_engine(tmp_path):
    """The configs of a whole camera, two regions (one with a two-class model of its own) and a label with a quote,
    through Home Assistant's TOPIC_MATCHER, its sensor and binary_sensor DISCOVERY_SCHEMA (nothing dropped) and its
    template engine on real state and status payloads."""
    python = home_assistant_python()
    labels = ["closed", 'op"en']
    configs = home_assistant.configs("homeassistant", "site/edgesight", "dev.1", [
        Entity("door", None, labels), Entity("yard", "gate", ["shut", "ajar"]),
        Entity("yard", "bench", [str(i) for i in range(10)])], {"name": "door", "version": "2.0.0"})
    states = [{"v": 1, "id": "0" * 8, "device": "dev.1", "camera": "door", "label": 'op"en', "score": 0.93,
               "ts": "2026-12-04T10:00:00.000Z"},
              {"v": 1, "id": "1" * 8, "device": "dev.1", "camera": "yard", "region": "gate", "label": "ajar",
               "score": 0.5, "ts": "2026-12-04T10:00:01.000Z"}]
    statuses = [{"state": s} for s in ("online", "offline", "stopped")]
    path = tmp_path / "in.json"
    path.write_text(json.dumps({"prefix": "homeassistant", "configs": configs, "states": states,
                                "statuses": statuses}))
    proc = subprocess.run([python, os.path.join(os.path.dirname(support.__file__), "ha_check.py"), str(path)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "error" not in got, got
    assert set(got) == {t for t, _ in configs} and len(got) == 5  # two sensors and a binary_sensor each, one sensor
    for topic, r in got.items():
        assert r["dropped"] == [], (topic, r["dropped"])  # every key we send is one Home Assistant reads
        assert r["attributes"] == [{"score": 0.93, "ts": "2026-12-04T10:00:00.000Z"},
                                   {"score": 0.5, "ts": "2026-12-04T10:00:01.000Z"}]
        assert r["available"] == ["online", "offline", "offline"]
    base = "homeassistant/%s/edgesight_dev_1/%s/config"
    assert got[base % ("sensor", "door")]["values"] == ['op"en', "ajar"]
    assert got[base % ("binary_sensor", "door")]["values"] == ["ON", "OFF"]
    assert got[base % ("binary_sensor", "yard__gate")]["values"] == ["OFF", "ON"]
    assert got[base % ("sensor", "yard__bench")]["component"] == "sensor"


def retained_configs(port, seconds=3.0):
    return retained(port, "homeassistant/#", seconds)


def test_agent_announces_retained_configs_bound_to_its_will_and_removes_a_dropped_camera(broker, tmp_path):
    ha = {"enabled": True}
    cfg = agent_config(tmp_path, broker.port, home_assistant=ha, cameras=folder_camera(fps=20, name="front"))
    col = Collector(broker.port)
    agent = start_agent(cfg)
    try:
        assert col.wait_for(lambda c: c.of("front/state"), 30)
        configs = retained_configs(broker.port)
        assert list(configs) == ["homeassistant/sensor/edgesight_dev1/front/config"], configs
        sensor = configs["homeassistant/sensor/edgesight_dev1/front/config"]
        check_schema("homeassistant/sensor/edgesight_dev1/front/config", sensor)
        _, state, _ = col.of("front/state")[-1]
        assert render(sensor["value_template"], state) == state["label"]
        assert sensor["device"]["model"] == "digits-cnn 1.0.0"
        status_topic = sensor["availability"][0]["topic"]
        agent.send_signal(signal.SIGKILL)  # vanished: the broker sends the Last Will
        agent.wait(10)
        assert col.wait_for(lambda c: any(p["state"] == "offline" for t, p, _ in c.of("status")
                                          if t == status_topic), 30)
        offline = [p for t, p, _ in col.of("status") if t == status_topic][-1]
        assert render(sensor["availability"][0]["value_template"], offline) == "offline"
    finally:
        if agent.poll() is None:
            agent.kill()
        col.close()
    # the camera is renamed: the old entity goes, the new one comes
    cfg = agent_config(tmp_path, broker.port, home_assistant=ha, cameras=folder_camera(fps=20, name="back"))
    agent = start_agent(cfg)
    try:
        col = Collector(broker.port)
        assert col.wait_for(lambda c: c.of("back/state"), 30)
        col.close()
        assert list(retained_configs(broker.port)) == ["homeassistant/sensor/edgesight_dev1/back/config"]
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=30)
    # turned off: everything it announced is removed
    cfg = agent_config(tmp_path, broker.port, cameras=folder_camera(fps=20, name="back"))
    agent = start_agent(cfg)
    try:
        col = Collector(broker.port)
        assert col.wait_for(lambda c: c.of("back/state") or c.of("result"), 30)
        col.close()
        time.sleep(1.0)
        assert retained_configs(broker.port) == {}
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=30)
