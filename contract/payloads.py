"""One pydantic model per MQTT payload (schema version 1). The agent builds its messages with these models and the
collector checks what it receives with the same ones, so the two cannot drift apart; docs/mqtt.md's payload tables
are generated from them (``python -m edgesight.contract.doc``) and a test fails when they differ.

Every payload carries ``v`` (the schema version) and a unique ``id`` (consumers drop duplicates by it: delivery is
at-least-once). Every string and list is bounded and every number finite, so a payload can be stored, logged and
turned into a file name without surprises. Unknown fields are ignored (a newer agent may add some).
"""
import json
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import Annotated, Literal

SCHEMA_VERSION = 1
NAME = r"^[A-Za-z0-9_.-]{1,64}$"  # device ids and camera names: one topic level, a safe file-name part
ID = r"^[A-Za-z0-9-]{8,64}$"
TS = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$"
MAX_LABEL = 200
MAX_TOP_K = 20
MAX_IMAGE_CHARS = 4 << 20

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Label = Annotated[str, Field(min_length=1, max_length=MAX_LABEL)]
Count = Annotated[int, Field(ge=0)]
Pixel = Annotated[int, Field(ge=0, le=100000)]


def new_id() -> str:
    return str(uuid.uuid4())


def iso(ts: float) -> str:
    """``2026-11-22T08:34:54.223Z``: ISO 8601 UTC with milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + ".%03dZ" % int((ts % 1) * 1000)


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True, allow_inf_nan=False)


class _Payload(_Part):
    v: int = Field(description="schema version (1)")
    id: str = Field(pattern=ID, description="unique message id (UUID4): drop duplicates by it")


class ModelInfo(_Part):
    name: str = Field(min_length=1, max_length=200, description="package name")
    version: str = Field(min_length=1, max_length=100, description="package version")
    sha256: Optional[str] = Field(None, max_length=64, description="first 12 hex digits of the running artifact")
    artifact: Optional[str] = Field(None, max_length=200, description="file of the running artifact")
    runtime: Optional[str] = Field(None, max_length=32, description="onnxruntime | tflite | tensorrt")


class Score(_Part):
    label: Label = Field(description="class name")
    score: Probability = Field(description="its probability")


class Latency(_Part):
    inference: float = Field(ge=0, description="ms in the runtime")
    capture_to_commit: float = Field(description="ms from capture to the result handed to the outbox (sent at "
                                     "once; committed within 50 ms unless the broker acknowledged it first)")


class Result(_Payload):
    """``<camera>/result``, QoS 1: one classification."""

    device: str = Field(pattern=NAME, description="device id")
    camera: str = Field(pattern=NAME, description="camera name")
    region: Optional[str] = Field(None, pattern=NAME, description="the region of interest classified (topic "
                                                                  "<camera>/<region>/result); absent: the whole frame")
    ts: str = Field(pattern=TS, description="capture time")
    frame: int = Field(ge=0, description="the camera's capture sequence number (gaps: frames dropped as stale)")
    model: ModelInfo = Field(description="the model that classified the frame")
    label: Label = Field(description="top-1 class")
    score: Probability = Field(description="top-1 probability")
    accepted: bool = Field(description="score >= threshold (a threshold of 1.0 accepts nothing)")
    threshold: Probability = Field(description="the threshold of the top-1 class")
    calibrated: bool = Field(False, description="scores are temperature-calibrated and the thresholds fitted "
                                                "for this artifact (edgesight calibrate)")
    top_k: List[Score] = Field(max_length=MAX_TOP_K, description="best classes, highest first")
    latency_ms: Latency = Field(description="inference and capture-to-commit latency")


class State(_Payload):
    """``<camera>/state``, QoS 1, retained: the latest accepted label, published when it changes."""

    device: str = Field(pattern=NAME, description="device id")
    camera: str = Field(pattern=NAME, description="camera name")
    region: Optional[str] = Field(None, pattern=NAME, description="the region of interest; absent: the whole frame")
    label: Label = Field(description="the accepted label now")
    score: Probability = Field(description="its probability on the frame that changed the state")
    ts: str = Field(pattern=TS, description="capture time of that frame")


class Image(_Part):
    format: Literal["jpeg"] = Field(description="always jpeg")
    width: int = Field(ge=1, le=16384, description="pixels")
    height: int = Field(ge=1, le=16384, description="pixels")
    data: str = Field(min_length=4, max_length=MAX_IMAGE_CHARS, description="the JPEG, base64")


class Sample(_Payload):
    """``<camera>/sample``, QoS 1: a frame worth labelling, with its JPEG (whole message <= samples.max_bytes)."""

    device: str = Field(pattern=NAME, description="device id")
    camera: str = Field(pattern=NAME, description="camera name")
    region: Optional[str] = Field(None, pattern=NAME, description="the region of interest; ``image`` is its crop")
    box: Optional[List[Pixel]] = Field(None, min_length=4, max_length=4, description="the region's [x, y, width, "
                                                                                     "height] in the frame's pixels")
    ts: str = Field(pattern=TS, description="capture time")
    model: ModelInfo = Field(description="the model that classified the frame")
    reason: str = Field(min_length=1, max_length=64, description="the sampling strategy that took the frame")
    label: Label = Field(description="top-1 class")
    score: Probability = Field(description="top-1 probability")
    threshold: Optional[Probability] = Field(None, description="the threshold of the top-1 class")
    top_k: List[Score] = Field(default_factory=list, max_length=MAX_TOP_K, description="best classes")
    result_id: Optional[str] = Field(None, pattern=ID, description="id of the result message of this frame")
    image: Image = Field(description="the frame (a region: its crop), privacy masks applied")
    context: Optional[Image] = Field(None, description="a region's whole frame, reduced, privacy masks applied "
                                                       "(cameras[].region_sample_frame)")


class Status(_Payload):
    """``status``, QoS 1, retained: ``offline`` is the Last Will."""

    state: Literal["online", "offline", "stopped"] = Field(description="online after every (re)connect, offline "
                                                                       "when the agent vanished, stopped on exit")
    device: str = Field(pattern=NAME, description="device id")
    ts: str = Field(pattern=TS, description="when the state was set")


class PolicyStatus(_Payload):
    """``config/sampling/status``, QoS 1, retained: the sampling policy in force, and why the last one was refused."""

    device: str = Field(pattern=NAME, description="device id")
    ts: str = Field(pattern=TS, description="when the policy was applied or refused")
    state: Literal["applied", "rejected"] = Field(description="what happened to the last policy")
    source: Literal["config", "fleet"] = Field(description="where the policy in force comes from")
    error: Optional[str] = Field(None, max_length=4000, description="why the last policy was rejected")
    policy: Dict[str, Any] = Field(description="the policy in force (the samples section's keys)")


class Percentiles(_Part):
    p50: Optional[float] = Field(None, description="median, ms")
    p95: Optional[float] = Field(None, description="95th percentile, ms")


class CameraStats(_Part):
    state: str = Field(max_length=32, description="starting | online | reconnecting | ended | stopped | failed")
    captured: Count = Field(description="frames read from the source")
    dropped: Count = Field(description="frames replaced in the latest-frame slot before they were processed")
    reconnects: Count = Field(description="reopen attempts")
    last_error: Optional[str] = Field(None, max_length=4000, description="why the source was last lost")


class OutboxStats(_Part):
    depth: Count = Field(description="messages waiting")
    bytes: Count = Field(description="their size")
    inflight: Optional[Count] = Field(None, description="sent, not yet acknowledged")
    counters: Dict[str, int] = Field(description="sent_*, evicted_*, dropped_*, dead_* per kind, since the "
                                                 "outbox was created")


class SampleStats(_Part):
    sent: Count = Field(description="samples committed since start")
    skipped: Count = Field(description="frames a strategy wanted but did not get")
    evicted: Optional[Count] = Field(None, description="samples evicted or dropped by the full outbox")
    by_reason: Dict[str, int] = Field(description="samples by strategy")
    skipped_by: Dict[str, int] = Field(description="quota | cap | min_gap | duplicate | too_large | outbox_full")
    policy: Literal["config", "fleet"] = Field(description="where the policy in force comes from")


class ClassDrift(_Part):
    count: Count = Field(description="top-1 predictions of this class since the last report")
    hist: List[int] = Field(max_length=100, description="their top-1 scores in 10 bins of 0.1 from 0 to 1")


class MqttStats(_Part):
    connected: bool = Field(description="connected to the broker now")
    connects: Count = Field(description="successful connections since start")
    last_error: Optional[str] = Field(None, max_length=4000, description="the last connection error")


class Stats(_Payload):
    """``stats``, QoS 0: every ``stats.interval`` seconds."""

    device: str = Field(pattern=NAME, description="device id")
    ts: str = Field(pattern=TS, description="when the report was made")
    frames: Count = Field(description="frames processed since start")
    fps: float = Field(ge=0, description="frames per second since the last report")
    inference_ms: Percentiles = Field(description="inference latency")
    capture_to_publish_ms: Percentiles = Field(description="capture to handed to the MQTT connection")
    capture_to_ack_ms: Percentiles = Field(description="capture to the broker's PUBACK")
    stages_ms: Dict[str, Percentiles] = Field(
        default_factory=dict, max_length=16, description="where a frame's time goes: decode, preprocess, inference, "
                                                         "postprocess, commit (the hand-over to the outbox, and "
                                                         "the group commit where one was due after this frame), "
                                                         "publish (committed, or staged, to handed to the MQTT "
                                                         "connection)")
    dropped_frames: Count = Field(description="frames dropped as stale, all cameras")
    cameras: Dict[str, CameraStats] = Field(description="per camera")
    regions: Dict[str, Optional[Annotated[str, Field(max_length=500)]]] = Field(
        default_factory=dict, max_length=1024, description="per region of interest (camera/region): why it is "
                                                          "skipped (its box does not fit the frame), null while it "
                                                          "is classified")
    outbox: OutboxStats = Field(description="the durable outbox")
    samples: SampleStats = Field(description="sampling counters since start")
    counts: Dict[str, int] = Field(default_factory=dict, description="results per label since the last report "
                                                                     "(_uncertain for uncertain frames)")
    classes: Dict[str, ClassDrift] = Field(default_factory=dict, description="drift: per top-1 label")
    uncertain_share: Dict[Label, Probability] = Field(
        default_factory=dict, description="per top-1 label, the share of its results that were uncertain since "
                                          "start (a drift signal when the scores are calibrated)")
    calibrated: bool = Field(False, description="the running model's scores are calibrated")
    rss_bytes: Optional[Count] = Field(None, description="resident memory")
    uptime_s: float = Field(ge=0, description="seconds since start")
    mqtt: Optional[MqttStats] = Field(None, description="the MQTT link")


PAYLOADS = (Status, Result, State, Sample, Stats, PolicyStatus)
AnyPayload = Union[Status, Result, State, Sample, Stats, PolicyStatus]


def build(kind: Any, **fields: Any) -> Any:
    """A payload of class ``kind`` with a fresh ``id`` and the schema version: what the producer sends. Unknown
    field names are a bug in the producer, so they raise instead of being dropped."""
    unknown = set(fields) - set(kind.model_fields)
    if unknown:
        raise TypeError("%s has no field(s) %s" % (kind.__name__, ", ".join(sorted(unknown))))
    return kind(v=SCHEMA_VERSION, id=new_id(), **fields)


REGION_ONLY = ("region", "box", "context")  # left out when absent: a whole frame's payloads are as they were


def encode(payload: Union[BaseModel, Dict[str, Any]]) -> bytes:
    """Compact UTF-8 JSON; NaN and infinities are refused (they are not JSON)."""
    if isinstance(payload, BaseModel):
        absent = {f for f in REGION_ONLY if f in type(payload).model_fields and getattr(payload, f) is None}
        return payload.model_dump_json(exclude=absent or None).encode("utf-8")
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")


# -- what the agent sends, built with the models above ------------------------------------------------------------
def status(state: str, device_id: str) -> Status:
    return build(Status, state=state, device=device_id, ts=iso(time.time()))


def result(device_id: str, camera: str, model: Dict[str, Any], label: str, score: float, accepted: bool,
           threshold: float, top_k: List[Dict[str, Any]], captured: float, inference_ms: float,
           pipeline_ms: float, frame_seq: int, calibrated: bool = False, region: Optional[str] = None) -> Result:
    return build(Result, device=device_id, camera=camera, region=region, ts=iso(captured), frame=frame_seq,
                 model=model,
                 label=label, score=round(score, 6), accepted=accepted, threshold=threshold, top_k=top_k,
                 calibrated=calibrated,
                 latency_ms={"inference": round(inference_ms, 3), "capture_to_commit": round(pipeline_ms, 3)})


def state(device_id: str, camera: str, label: str, score: float, captured: float,
          region: Optional[str] = None) -> State:
    return build(State, device=device_id, camera=camera, region=region, label=label, score=round(score, 6),
                 ts=iso(captured))


def jpeg_image(jpeg: bytes, width: int, height: int) -> Dict[str, Any]:
    import base64

    return {"format": "jpeg", "width": width, "height": height, "data": base64.b64encode(jpeg).decode("ascii")}


def sample(device_id: str, camera: str, model: Dict[str, Any], reason: str, label: str, score: float,
           threshold: Optional[float], top_k: List[Dict[str, Any]], captured: float, jpeg: bytes, width: int,
           height: int, result_id: Optional[str] = None, region: Optional[str] = None,
           box: Optional[Tuple[int, int, int, int]] = None,
           context: Optional[Tuple[bytes, int, int]] = None) -> Sample:
    """``context``: (JPEG, width, height) of a region's whole frame."""
    return build(Sample, device=device_id, camera=camera, region=region, box=None if box is None else list(box),
                 ts=iso(captured), model=model,
                 reason=reason, label=label, score=round(score, 6), threshold=threshold, top_k=top_k,
                 result_id=result_id, image=jpeg_image(jpeg, width, height),
                 context=None if context is None else jpeg_image(*context))


def stats(device_id: str, body: Dict[str, Any]) -> Stats:
    return build(Stats, device=device_id, ts=iso(time.time()), **body)


def policy_status(device_id: str, state: str, source: str, policy: Dict[str, Any],
                  error: Optional[str] = None) -> PolicyStatus:
    return build(PolicyStatus, device=device_id, ts=iso(time.time()), state=state, source=source,
                 error=None if error is None else error[:4000], policy=policy)
