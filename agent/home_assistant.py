"""Home Assistant MQTT discovery (opt-in): retained config messages that make each camera, or each of its regions of
interest, a sensor (its accepted label, with score and time as attributes) and, for a two-class model, a
binary_sensor; available while the agent's retained ``status`` says online (the Last Will says offline).

The entities read the retained ``<camera>[/<region>]/state`` topic, which changes only when the accepted label does,
not the per-frame ``result`` topic, so Home Assistant's recorder is not flooded at the camera's frame rate. The
config topics announced are remembered in the state directory; at the next start those no longer in the config are
removed with an empty retained message, as Home Assistant's discovery documents.
"""
import json
import logging
import os
import re
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from pydantic import BaseModel, ConfigDict, field_validator

from .. import __version__
from ..contract import topics
from ..files import atomic_write

log = logging.getLogger(__name__)


class HomeAssistantConfig(BaseModel):
    """``home_assistant``: opt-in discovery."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = False
    discovery_prefix: str = "homeassistant"

    @field_validator("discovery_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return topics.check_prefix(v)


AVAILABLE = "{{ 'online' if value_json.state == 'online' else 'offline' }}"  # ``stopped`` is unavailable too


def _id(text: str) -> str:
    """A discovery topic level / unique id part: Home Assistant allows [a-zA-Z0-9_-] there."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def object_id(camera: str, region: Optional[str] = None) -> str:
    """The entity's object id: the camera's name, or ``<camera>__<region>`` for a region of interest."""
    return _id(camera) if region is None else "%s__%s" % (_id(camera), _id(region))


class Entity(NamedTuple):
    """One classified target: a whole camera (``region`` None) or one of its regions, with its model's labels."""

    camera: str
    region: Optional[str]
    labels: Sequence[str]


def configs(discovery_prefix: str, prefix: str, device_id: str, targets: Sequence[Entity],
            model: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    """(config topic, payload) for every entity of this device: pure, so it is tested without a broker."""
    node = "edgesight_" + _id(device_id)
    device = {"identifiers": [node], "name": device_id, "manufacturer": "edgesight",
              "model": "%s %s" % (model.get("name", "?"), model.get("version", "?")),
              "sw_version": "edgesight %s" % __version__}
    availability = [{"topic": topics.topic(prefix, device_id, topics.STATUS), "value_template": AVAILABLE,
                     "payload_available": "online", "payload_not_available": "offline"}]
    out: List[Tuple[str, Dict[str, Any]]] = []
    for t in targets:
        oid = object_id(t.camera, t.region)
        levels = (t.camera,) if t.region is None else (t.camera, t.region)
        name = " ".join(levels)
        state = topics.topic(prefix, device_id, *(levels + (topics.STATE,)))
        common = {"state_topic": state, "availability": availability, "device": device,
                  "json_attributes_topic": state,
                  "json_attributes_template": "{{ {'score': value_json.score, 'ts': value_json.ts} | tojson }}"}
        out.append(("%s/sensor/%s/%s/config" % (discovery_prefix, node, oid),
                    dict(common, name=name, unique_id="%s_%s" % (node, oid), icon="mdi:cctv",
                         value_template="{{ value_json.label }}")))
        if len(t.labels) == 2:  # on = the second class (e.g. [closed, open], [empty, occupied])
            out.append(("%s/binary_sensor/%s/%s/config" % (discovery_prefix, node, oid),
                        dict(common, name="%s %s" % (name, t.labels[1]), unique_id="%s_%s_on" % (node, oid),
                             value_template="{{ 'ON' if value_json.label == %s else 'OFF' }}" % json.dumps(
                                 t.labels[1]), payload_on="ON", payload_off="OFF")))
    return out


def announce(outbox: Any, memory: str, enabled: bool, entities: List[Tuple[str, Dict[str, Any]]]) -> List[str]:
    """Commit the retained configs (none when disabled) and an empty retained message for every config topic
    announced before and not now; remember what is announced. Returns the topics removed."""
    try:
        with open(memory) as f:
            before = [t for t in json.load(f) if isinstance(t, str)][:10000]
    except (OSError, ValueError, TypeError):  # none yet, or unreadable: nothing to remove
        before = []
    now = [t for t, _ in entities] if enabled else []
    gone = [t for t in before if t not in now]
    for t in gone:
        outbox.put("state", t, b"", qos=1, retain=True)
    for t, payload in (entities if enabled else []):
        outbox.put("state", t, json.dumps(payload, sort_keys=True).encode("utf-8"), qos=1, retain=True)
    if now or before:
        atomic_write(memory, json.dumps(now))
    if gone:
        log.info("home assistant: removed %d entities no longer configured", len(gone))
    return gone


def memory_path(outbox_path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(outbox_path)), "home_assistant.json")
