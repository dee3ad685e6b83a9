"""The topic tree: ``<prefix>/<device>/...`` (docs/mqtt.md). Every level a device or a user names is checked here,
before anything is committed to the outbox: a level with ``+``, ``#`` or NUL is a topic no broker accepts for a
publish, and an empty level or a leading ``$`` is one that subscribers would never match."""
from typing import List, Optional, Tuple

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


def target(camera: str, region: Optional[str] = None) -> Tuple[str, ...]:
    """The topic levels of one classified target: ``<camera>`` or, for a region of interest, ``<camera>/<region>``."""
    return (camera,) if region is None else (camera, region)


def sample_subscriptions(prefix: str) -> List[str]:
    """What a collector subscribes to: every device's samples, of whole frames and of regions of interest."""
    return ["%s/+/+/%s" % (prefix, SAMPLE), "%s/+/+/+/%s" % (prefix, SAMPLE)]


def is_sample_topic_of(topic_name: str, device: str, camera: str, region: Optional[str] = None,
                       prefix: Optional[str] = None) -> bool:
    """Is ``topic_name`` the sample topic of that device, camera and region (under ``prefix``; without one, under
    any prefix)?"""
    tail = "/".join((device,) + target(camera, region) + (SAMPLE,))
    if prefix is not None:
        return topic_name == "%s/%s" % (prefix, tail)
    return topic_name.endswith("/" + tail)
