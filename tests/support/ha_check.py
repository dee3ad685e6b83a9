"""Run by a Python that has Home Assistant installed (.ci/home-assistant.sh), not by edgesight's own: checks MQTT
discovery configs with Home Assistant's own code, as its MQTT integration does on receipt.

    python ha_check.py IN.json      IN: {"prefix", "configs": [[topic, payload], ...], "states": [...],
                                         "statuses": [...]}

For each config: the topic against ``homeassistant.components.mqtt.discovery.TOPIC_MATCHER`` (after the prefix),
the payload through ``homeassistant.components.mqtt.<component>.DISCOVERY_SCHEMA`` (inside a HomeAssistant
instance, so templates are compiled by its template engine), the keys the schema would drop (it removes unknown
keys silently: a misspelled key shows up here), and the value, attributes and availability templates rendered by
``Template.async_render_with_possible_json_value`` on each state / status payload, as the integration renders them.
Prints one JSON object: {topic: {"component", "dropped", "values", "attributes", "available"}} or {"error": ...}.
"""
import asyncio
import importlib
import json
import sys
import tempfile


async def check(data):
    from homeassistant.components.mqtt.discovery import TOPIC_MATCHER
    from homeassistant.core import HomeAssistant

    hass = HomeAssistant(tempfile.mkdtemp())
    out = {}
    try:
        for topic, payload in data["configs"]:
            rest = topic[len(data["prefix"]) + 1:] if topic.startswith(data["prefix"] + "/") else None
            match = TOPIC_MATCHER.match(rest or "")
            if not match:
                return {"error": "Home Assistant's TOPIC_MATCHER refuses %s" % topic}
            component = match.group("component")
            schema = importlib.import_module("homeassistant.components.mqtt." + component).DISCOVERY_SCHEMA
            cfg = schema(dict(payload))
            states = [json.dumps(s) for s in data["states"]]
            out[topic] = {
                "component": component, "dropped": sorted(set(payload) - set(cfg)),
                "values": [cfg["value_template"].async_render_with_possible_json_value(s, "ERROR") for s in states],
                "attributes": [json.loads(cfg["json_attributes_template"].async_render_with_possible_json_value(
                    s, "null")) for s in states],
                "available": [a["value_template"].async_render_with_possible_json_value(json.dumps(st), "ERROR")
                              for a in cfg["availability"] for st in data["statuses"]]}
    finally:
        await hass.async_stop(force=True)
    return out


def main():
    with open(sys.argv[1]) as f:
        data = json.load(f)
    try:
        result = asyncio.run(check(data))
    except Exception as exc:  # a schema's vol.Invalid, a template error: the test shows it
        result = {"error": "%s: %s" % (type(exc).__name__, exc)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
