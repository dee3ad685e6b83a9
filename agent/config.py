"""The agent's YAML config, validated at start-up (docs/agent-config.md documents every key).

Errors name the field and its line and say what is allowed; unknown keys are errors (typos must not pass
silently); secrets come from a file or the environment and are never logged or echoed.
"""
import json
import os
import socket
from typing import Any, Dict, List, Optional, Tuple, Union

from typing_extensions import Annotated, Literal, get_args  # pydantic's dependency; typing has them from 3.9

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .. import credentials
from ..errors import ConfigError, validation_problems, yaml_problem
from ..runtimes.registry import RUNTIME_NAMES


def _repeated(names: List[str]) -> List[str]:
    """The names that occur more than once, sorted."""
    return sorted({n for n in names if names.count(n) > 1})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    """Where frames come from. ``type`` selects the kind; only that kind's keys apply."""

    type: str = Field(description="folder | video | v4l2 | url | gstreamer | jetson_csi | pi_libcamera")
    path: Optional[str] = None  # folder, video
    device: Optional[Union[int, str]] = None  # v4l2: index or /dev/videoN
    url: Optional[str] = None  # rtsp:// http://
    pipeline: Optional[str] = None  # gstreamer, ending in appsink
    sensor_id: int = 0  # jetson_csi
    width: Optional[int] = Field(None, ge=16)
    height: Optional[int] = Field(None, ge=16)
    fps: float = Field(10.0, gt=0, description="frames per second to process at most")
    loop: bool = True  # folder, video: start again at the end
    reconnect_min: float = Field(0.5, gt=0)
    reconnect_max: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _required_for_type(self) -> "SourceConfig":
        need = {"folder": "path", "video": "path", "v4l2": "device", "url": "url", "gstreamer": "pipeline",
                "jetson_csi": None, "pi_libcamera": None}
        if self.type not in need:
            raise ValueError("type must be one of %s, got %r" % (" | ".join(need), self.type))
        key = need[self.type]
        if key and getattr(self, key) in (None, ""):
            raise ValueError("type %s needs '%s'" % (self.type, key))
        if self.type == "url" and not str(self.url).lower().startswith(("rtsp://", "rtsps://", "http://",
                                                                         "https://", "rtmp://", "udp://")):
            raise ValueError("url must start with rtsp://, rtsps://, http://, https://, rtmp:// or udp://, got %r"
                             % self.url)
        if self.reconnect_max < self.reconnect_min:
            raise ValueError("reconnect_max must be >= reconnect_min")
        return self


class CameraConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$", description="used in MQTT topics")
    source: SourceConfig
    # polygons blacked out in every sample before it leaves the device (never changed over MQTT)
    privacy_masks: List[List[Tuple[float, float]]] = Field(default_factory=list)
    mask_units: Literal["pixels", "relative"] = "pixels"

    @model_validator(mode="after")
    def _polygons(self) -> "CameraConfig":
        for i, poly in enumerate(self.privacy_masks):
            if len(poly) < 3:
                raise ValueError("privacy_masks[%d] needs at least 3 points [x, y], got %d" % (i, len(poly)))
            if self.mask_units == "relative" and not all(0 <= c <= 1 for pt in poly for c in pt):
                raise ValueError("privacy_masks[%d]: relative coordinates lie in [0, 1]" % i)
            if self.mask_units == "pixels" and not all(c >= 0 for pt in poly for c in pt):
                raise ValueError("privacy_masks[%d]: pixel coordinates are >= 0" % i)
        return self


class ThresholdsConfig(_Strict):
    default: Optional[float] = Field(None, ge=0.0, le=1.0, description="override the package's default")
    per_class: Dict[str, float] = Field(default_factory=dict)
    hysteresis: int = Field(1, ge=1, description="consecutive agreeing accepted frames before state changes")


class TlsConfig(_Strict):
    ca_file: Optional[str] = None  # None: the system CA store
    cert_file: Optional[str] = None  # mutual TLS
    key_file: Optional[str] = None

    @model_validator(mode="after")
    def _pair(self) -> "TlsConfig":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        return self


class MqttConfig(_Strict):
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    protocol: str = "5"
    topic_prefix: str = "edgesight"
    client_id: Optional[str] = None
    username: Optional[str] = None
    password_file: Optional[str] = None
    password_env: Optional[str] = None
    tls: Optional[TlsConfig] = None
    keepalive: int = Field(30, ge=5, le=3600)
    reconnect_min: float = Field(1.0, gt=0)
    reconnect_max: float = Field(60.0, gt=0)
    publish_mode: str = "every_frame"
    min_interval: float = Field(0.0, ge=0)
    top_k: int = Field(3, ge=1, le=20)
    inflight: int = Field(20, ge=1, le=1000, description="unacknowledged QoS 1 messages at most")

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, v: Any) -> str:
        v = str(v)
        if v not in ("5", "3.1.1"):
            raise ValueError("protocol must be 5 or 3.1.1, got %r" % v)
        return v

    @field_validator("publish_mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if v not in ("every_frame", "on_change"):
            raise ValueError("publish_mode must be every_frame or on_change, got %r" % v)
        return v

    @model_validator(mode="after")
    def _secrets(self) -> "MqttConfig":
        if self.password_file and self.password_env:
            raise ValueError("give password_file or password_env, not both")
        if (self.password_file or self.password_env) and not self.username:
            raise ValueError("a password needs a username")
        return self


class OutboxConfig(_Strict):
    path: str = "/var/lib/edgesight/outbox.db"
    max_bytes: int = Field(64 << 20, ge=1 << 16)
    max_attempts: int = Field(5, ge=1, description="broker refusals before a message is dead-lettered")


class _Strategy(_Strict):
    name: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9_-]{1,32}$",
                                description="the sample's reason (default: the type); needed for two of a type")
    per_minute: Optional[int] = Field(None, ge=0)
    per_hour: Optional[int] = Field(None, ge=0)
    per_day: Optional[int] = Field(None, ge=0)

    @property
    def reason(self) -> str:
        """What a sample this strategy takes reports as its ``reason``."""
        return self.name or self.type  # type: ignore[attr-defined]  # every subclass has a ``type`` tag


class LowConfidence(_Strategy):
    type: Literal["low_confidence"]


class NearThreshold(_Strategy):
    type: Literal["near_threshold"]
    band: float = Field(0.05, gt=0, le=1)


class Margin(_Strategy):
    type: Literal["margin"]
    max_margin: float = Field(0.1, gt=0, le=1)


class RandomBaseline(_Strategy):
    type: Literal["random"]
    rate: float = Field(0.01, ge=0, le=1, description="fraction of accepted frames")


class ClassTarget(_Strategy):
    type: Literal["class_target"]
    classes: List[str] = Field(default_factory=list)
    min_per_day: Optional[int] = Field(None, ge=1, description="favour classes with fewer samples in 24 h")

    @model_validator(mode="after")
    def _needs_a_target(self) -> "ClassTarget":
        if not self.classes and self.min_per_day is None:
            raise ValueError("class_target needs 'classes' or 'min_per_day'")
        return self


_STRATEGIES = (LowConfidence, NearThreshold, Margin, RandomBaseline, ClassTarget)
Strategy = Annotated[Union[_STRATEGIES], Field(discriminator="type")]


class DedupConfig(_Strict):
    enabled: bool = True
    max_distance: int = Field(4, ge=0, le=32, description="pHash bits that may differ for a near-duplicate")
    window: int = Field(32, ge=1, le=4096, description="recent samples per camera compared with")
    ttl: float = Field(3600.0, gt=0, description="seconds a sample's hash is remembered")


class SamplingPolicy(_Strict):
    """What becomes a sample. The ``samples`` section of the YAML, or a retained JSON message on
    ``<prefix>/<device>/config/sampling`` that replaces it at run time (docs/sampling.md)."""

    enabled: bool = True
    strategies: List[Strategy] = Field(default_factory=lambda: [LowConfidence(type="low_confidence")],
                                       min_length=1)
    max_per_minute: Optional[int] = Field(6, ge=0, description="device-wide cap")
    max_per_hour: Optional[int] = Field(None, ge=0)
    max_per_day: Optional[int] = Field(None, ge=0)
    min_gap: float = Field(5.0, ge=0, description="seconds between two samples")
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    max_bytes: int = Field(128 * 1024, ge=4096, le=256 * 1024, description="whole MQTT payload, JPEG included")
    jpeg_quality: int = Field(85, ge=10, le=100)

    @field_validator("strategies")
    @classmethod
    def _unique_reasons(cls, v: List[Any]) -> List[Any]:
        dup = _repeated([s.reason for s in v])
        if dup:
            raise ValueError("two strategies report the same reason %s: give one a 'name'" % ", ".join(dup))
        return v


SamplesConfig = SamplingPolicy


class StatsConfig(_Strict):
    interval: float = Field(30.0, gt=0)


class MetricsConfig(_Strict):
    enabled: bool = False
    host: str = "127.0.0.1"  # loopback unless you mean it
    port: int = Field(9464, ge=0, le=65535)


class AgentConfig(_Strict):
    device_id: str = Field(default_factory=lambda: socket.gethostname().split(".")[0],
                           pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    package: str
    runtime: str = "auto"
    runtime_options: Dict[str, Any] = Field(default_factory=dict)
    engine_cache: str = Field("/var/cache/edgesight/engines", description="TensorRT engines built on this device")
    cameras: List[CameraConfig] = Field(min_length=1)
    thresholds: ThresholdsConfig = Field(default_factory=ThresholdsConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    samples: SamplesConfig = Field(default_factory=SamplesConfig)
    stats: StatsConfig = Field(default_factory=StatsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    log_level: str = "info"

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, v: str) -> str:
        allowed = ("auto",) + RUNTIME_NAMES
        if v not in allowed:
            raise ValueError("runtime must be one of %s, got %r" % (" | ".join(allowed), v))
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("log_level must be debug | info | warning | error")
        return v.lower()

    @field_validator("cameras")
    @classmethod
    def _unique_names(cls, v: List[CameraConfig]) -> List[CameraConfig]:
        dup = _repeated([c.name for c in v])
        if dup:
            raise ValueError("camera names must be unique; repeated: %s" % ", ".join(dup))
        return v


_STRATEGY_TYPES = tuple(get_args(cls.model_fields["type"].annotation)[0] for cls in _STRATEGIES)


def _yaml_locs(errors: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """pydantic puts the tag of a tagged union into the location (strategies.0.margin.band); YAML has no such key."""
    out = []
    for e in errors:
        loc = list(e["loc"])
        for i in range(len(loc) - 1, 1, -1):
            if loc[i - 2] == "strategies" and isinstance(loc[i - 1], int) and loc[i] in _STRATEGY_TYPES:
                del loc[i]
        out.append(dict(e, loc=tuple(loc)))
    return out


def _line_of(root: Optional[yaml.Node], loc: Tuple[Any, ...]) -> Optional[int]:
    """1-based line of the YAML node at ``loc`` (or of its deepest existing parent)."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for part in loc:
        nxt = None
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for k, v in node.value:
                if getattr(k, "value", None) == part:
                    nxt, line = v, k.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            nxt = node.value[part]
            line = nxt.start_mark.line + 1
        if nxt is None:
            break
        node = nxt
    return line


def load_config(path: str) -> AgentConfig:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError("cannot read config file (%s)" % exc.strerror, file=path)
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_problem(exc), file=path)
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping of settings (package, cameras, mqtt, ...)", file=path)
    try:
        cfg = AgentConfig(**data)
    except ValidationError as exc:
        problems, field = validation_problems(_yaml_locs(exc.errors()), lambda loc: _line_of(root, loc))
        raise ConfigError("invalid config: %s. Every key: docs/agent-config.md" % problems, file=path, field=field)
    try:
        check_files(cfg)
    except ConfigError as exc:
        raise ConfigError(exc.message, file=path, field=exc.field)
    return cfg


def check_files(cfg: AgentConfig) -> None:
    """Files the config names must be readable now, not at the first TLS handshake."""
    tls = cfg.mqtt.tls
    for field, path in (("mqtt.tls.ca_file", tls and tls.ca_file), ("mqtt.tls.cert_file", tls and tls.cert_file),
                        ("mqtt.tls.key_file", tls and tls.key_file), ("mqtt.password_file", cfg.mqtt.password_file)):
        if path and not os.access(path, os.R_OK):
            raise ConfigError("cannot read %s (%s)" % (path, "no such file" if not os.path.exists(path) else
                                                       "permission denied"), field=field)


def read_password(cfg: MqttConfig) -> Optional[str]:
    """The MQTT password from its file or environment variable (never logged)."""
    return credentials.read_password(cfg.password_file, cfg.password_env, "mqtt.password_file", "mqtt.password_env")


MAX_POLICY_BYTES = 64 * 1024


def parse_policy(payload: bytes) -> SamplingPolicy:
    """A sampling policy from the fleet: a JSON object with the keys of the ``samples`` section (and optionally
    ``"v": 1``). Keys left out take their defaults. Raises ConfigError naming the field."""
    where = "config/sampling payload"
    if len(payload) > MAX_POLICY_BYTES:
        raise ConfigError("is %d bytes; at most %d" % (len(payload), MAX_POLICY_BYTES), file=where)
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError("is not JSON (%s)" % exc, file=where)
    if not isinstance(data, dict):
        raise ConfigError("must be a JSON object with the keys of the samples section", file=where)
    version = data.pop("v", 1)
    if version != 1:
        raise ConfigError("has schema version %r; this agent understands 1" % (version,), file=where, field="v")
    try:
        return SamplingPolicy(**data)
    except ValidationError as exc:
        problems, field = validation_problems(_yaml_locs(exc.errors()), lambda loc: None)
        raise ConfigError("invalid sampling policy: %s" % problems, file=where, field=field)
