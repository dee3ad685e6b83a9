"""The MQTT contract between devices and the fleet (docs/mqtt.md, the public API): topics, one pydantic model per
payload, the sampling policy the fleet may send, and the paho client set-up. ``agent/`` and ``fleet/`` both import
it; it imports neither. Device-side: Python 3.8-compatible."""
from .payloads import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION"]
