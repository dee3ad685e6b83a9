"""MQTT topics and payloads: the public contract, documented in docs/mqtt.md. Every payload carries ``v`` (the
schema version) and a unique ``id`` so consumers can drop duplicates (delivery is at-least-once)."""
import base64
import json
import time
import uuid
from typing import Any, Dict, List, Optional

SCHEMA_VERSION = 1


def topic(prefix: str, device_id: str, *parts: str) -> str:
    return "/".join([prefix.rstrip("/"), device_id] + list(parts))


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + ".%03dZ" % int((ts % 1) * 1000)


def encode(payload: Dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=False).encode("utf-8")


def stats(device_id: str, body: Dict[str, Any]) -> Dict[str, Any]:
    out = {"v": SCHEMA_VERSION, "id": str(uuid.uuid4()), "device": device_id, "ts": _iso(time.time())}
    out.update(body)
    return out


def status(state: str, device_id: str, **extra: Any) -> Dict[str, Any]:
    out = {"v": SCHEMA_VERSION, "id": str(uuid.uuid4()), "state": state, "device": device_id, "ts": _iso(time.time())}
    out.update(extra)
    return out


def result(device_id: str, camera: str, model: Dict[str, str], label: str, score: float, accepted: bool,
           threshold: float, top_k: List[Dict[str, Any]], captured: float, inference_ms: float,
           pipeline_ms: float, frame_seq: int) -> Dict[str, Any]:
    return {"v": SCHEMA_VERSION, "id": str(uuid.uuid4()), "device": device_id, "camera": camera,
            "ts": _iso(captured), "frame": frame_seq, "model": model, "label": label, "score": round(score, 6),
            "accepted": accepted, "threshold": threshold, "top_k": top_k,
            "latency_ms": {"inference": round(inference_ms, 3), "capture_to_commit": round(pipeline_ms, 3)}}


def state(device_id: str, camera: str, label: str, score: float, captured: float) -> Dict[str, Any]:
    return {"v": SCHEMA_VERSION, "id": str(uuid.uuid4()), "device": device_id, "camera": camera, "label": label,
            "score": round(score, 6), "ts": _iso(captured)}


def sample(device_id: str, camera: str, model: Dict[str, str], reason: str, label: str, score: float,
           threshold: float, top_k: List[Dict[str, Any]], captured: float, jpeg: bytes, width: int,
           height: int, result_id: Optional[str] = None) -> Dict[str, Any]:
    return {"v": SCHEMA_VERSION, "id": str(uuid.uuid4()), "device": device_id, "camera": camera,
            "ts": _iso(captured), "model": model, "reason": reason, "label": label, "score": round(score, 6),
            "threshold": threshold, "top_k": top_k, "result_id": result_id,
            "image": {"format": "jpeg", "width": width, "height": height,
                      "data": base64.b64encode(jpeg).decode("ascii")}}


def policy_status(device_id: str, state: str, source: str, policy: Dict[str, Any],
                  error: Optional[str] = None) -> Dict[str, Any]:
    """Retained on ``config/sampling/status``: the sampling policy in force (and the last rejection, if any)."""
    return {"v": SCHEMA_VERSION, "id": str(uuid.uuid4()), "device": device_id, "ts": _iso(time.time()),
            "state": state, "source": source, "error": error, "policy": policy}
