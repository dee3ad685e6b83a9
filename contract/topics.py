"""The topic tree: ``<prefix>/<device>/...`` (docs/mqtt.md). Every level a device or a user names is checked here,
before anything is committed to the outbox: a level with ``+``, ``#`` or NUL is a topic no broker accepts for a
publish, and an empty level or a leading ``$`` is one that subscribers would never match."""
from typing import Tuple

STATUS, STATS = "status", "stats"
RESULT, STATE, SAMPLE = "result", "state", "sample"
POLICY = ("config", "sampling")
POLICY_STATUS = POLICY + ("status",)
MODEL_DESIRED, MODEL_STATE = ("model", "desired"), ("model", "state")
MAX_TOPIC_BYTES = 1024


def check_level(level: str, what: str = "a topic level") -> str:
    """``level`` when it is one valid MQTT topic level, else ValueError saying why (for pydantic validators)."""
    if not isinstance(level, str) or not level:
        raise ValueError("%s must not be empty" % what)
    bad = [c for c in ("+", "#", "/", "\x00") if c in level]
    if bad:
        raise ValueError("%s must not contain %s (MQTT wildcards and separators); got %r"
                         % (what, " or ".join(repr(c) for c in bad), level))
    if len(level.encode("utf-8")) > 256:
        raise ValueError("%s is longer than 256 bytes" % what)
    return level


def check_prefix(prefix: str) -> str:
    """A topic prefix: one or more valid levels separated by ``/`` (``edgesight``, ``site-3/edgesight``), not
    starting with ``$`` (reserved for the broker: ``$SYS``, ``$share``)."""
    if not isinstance(prefix, str) or not prefix:
        raise ValueError("topic_prefix must not be empty")
    if prefix.startswith("$"):
        raise ValueError("topic_prefix must not start with '$' (reserved for the broker); got %r" % prefix)
    for level in prefix.split("/"):
        if not level:
            raise ValueError("topic_prefix has an empty level (leading, trailing or doubled '/'); got %r" % prefix)
        check_level(level, "each level of topic_prefix")
    return prefix


def topic(prefix: str, device_id: str, *parts: str) -> str:
    return "/".join((prefix, device_id) + parts)


def sample_subscription(prefix: str) -> str:
    """What a collector subscribes to: every device's and camera's samples."""
    return "%s/+/+/%s" % (prefix, SAMPLE)


def device_and_camera(topic_name: str) -> Tuple[str, str]:
    """(device, camera) of a ``<prefix>/<device>/<camera>/sample`` topic; ValueError for any other topic."""
    parts = topic_name.split("/")
    if len(parts) < 4 or parts[-1] != SAMPLE:
        raise ValueError("not a sample topic: %s" % topic_name[:200])
    return parts[-3], parts[-2]
