"""The agent's YAML config, validated at start-up (docs/agent-config.md documents every key).

Read with the one loader (:mod:`edgesight.configfile`: bounded, UTF-8, no duplicate keys, no aliases); errors name
the field and its line and say what is allowed; unknown keys are errors (typos must not pass silently). Relative
paths are relative to the config file's folder (systemd starts the agent in ``/``). Thresholds use the package's
own rules and ``per_class`` must name labels of the package; ``runtime_options`` are the backends' own config
classes; the topic prefix and every name that becomes a topic level are checked here, before anything is committed.
Secrets come from a file or the environment and are never logged or echoed.
"""
import os
import socket
from typing import Any, Dict, List, Optional, Tuple

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .. import configfile
from ..contract import client
from ..contract.policy import SamplingPolicy, repeated, strip_union_tags
from ..contract.topics import check_prefix
from ..errors import ConfigError
from ..runtimes.manifest import MANIFEST, PerClassThresholds, Probability, read_manifest, unknown_labels
from ..runtimes.ort_backend import OnnxRuntimeConfig
from ..runtimes.registry import RUNTIME_NAMES, config_class
from ..runtimes.tensorrt_backend import TensorRTConfig
from ..runtimes.tflite_backend import TfliteConfig
from .cameras import CameraConfig
from .home_assistant import HomeAssistantConfig, object_id

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ThresholdsConfig(_Strict):
    """The package's thresholds with the package's rules: probabilities, ``per_class`` keys are its labels."""

    default: Optional[Probability] = Field(None, description="override the package's default")
    per_class: PerClassThresholds = Field(default_factory=dict)
    hysteresis: int = Field(1, ge=1, le=10000, description="consecutive agreeing accepted frames before state "
                                                           "changes")


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
    host: str = Field("localhost", min_length=1, max_length=253)
    port: int = Field(1883, ge=1, le=65535)
    protocol: str = "5"
    topic_prefix: str = Field("edgesight", max_length=200)
    client_id: Optional[str] = Field(None, min_length=1, max_length=128)
    username: Optional[str] = Field(None, max_length=256)
    password_file: Optional[str] = None
    password_env: Optional[str] = Field(None, max_length=256)
    tls: Optional[TlsConfig] = None
    keepalive: int = Field(30, ge=5, le=3600)
    reconnect_min: float = Field(1.0, gt=0, le=3600)
    reconnect_max: float = Field(60.0, gt=0, le=3600)
    publish_mode: str = "every_frame"
    min_interval: float = Field(0.0, ge=0, le=86400)
    top_k: int = Field(3, ge=1, le=20)
    inflight: int = Field(20, ge=1, le=1000, description="unacknowledged QoS 1 messages at most")

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, v: Any) -> str:
        v = str(v)
        if v not in ("5", "3.1.1"):
            raise ValueError("protocol must be 5 or 3.1.1, got %r" % v[:20])
        return v

    @field_validator("publish_mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if v not in ("every_frame", "on_change"):
            raise ValueError("publish_mode must be every_frame or on_change, got %r" % v)
        return v

    _prefix = field_validator("topic_prefix")(check_prefix)

    @model_validator(mode="after")
    def _secrets(self) -> "MqttConfig":
        if self.password_file and self.password_env:
            raise ValueError("give password_file or password_env, not both")
        if (self.password_file or self.password_env) and not self.username:
            raise ValueError("a password needs a username")
        return self

    def settings(self, device_id: str, password: Optional[str]) -> client.ClientSettings:
        """The paho set-up these options describe (shared with ``edgesight doctor``)."""
        tls = self.tls
        return client.ClientSettings(
            host=self.host, port=self.port, client_id=self.client_id or "edgesight-%s" % device_id,
            protocol=self.protocol, username=self.username, password=password, tls=tls is not None,
            ca_file=tls.ca_file if tls else None, cert_file=tls.cert_file if tls else None,
            key_file=tls.key_file if tls else None, keepalive=self.keepalive, reconnect_min=self.reconnect_min,
            reconnect_max=self.reconnect_max)


class OutboxConfig(_Strict):
    path: str = "/var/lib/edgesight/outbox.db"
    max_bytes: int = Field(64 << 20, ge=256 << 10, le=1 << 40, description="the outbox's files on disk at most")
    max_attempts: int = Field(5, ge=1, le=1000, description="broker refusals before a message is dead-lettered")


SamplesConfig = SamplingPolicy


class StatsConfig(_Strict):
    interval: float = Field(30.0, gt=0, le=86400)


class MetricsConfig(_Strict):
    enabled: bool = False
    host: str = "127.0.0.1"  # loopback unless you mean it
    port: int = Field(9464, ge=0, le=65535)


class ModelsConfig(_Strict):
    """Model rollouts over MQTT (docs/rollout.md): where versions live and whose signatures the device trusts."""

    dir: Optional[str] = Field(None, max_length=4096, description="versions, the active pointer, downloads; "
                                                                   "default: models/ beside the outbox")
    trusted_keys: List[str] = Field(default_factory=list, max_length=16, description="Ed25519 public key files")
    allow_unsigned: bool = False
    keep: int = Field(3, ge=1, le=100, description="versions kept on disk (the active one included)")
    max_package_bytes: int = Field(2 << 30, ge=1 << 10, le=16 << 30, description="a larger package is refused")
    download_timeout: float = Field(30.0, gt=0, le=3600, description="seconds a read may stall")
    download_attempts: int = Field(5, ge=1, le=100, description="tries of a download (resumed with Range)")
    backoff_max: float = Field(30.0, gt=0, le=3600, description="longest wait between tries, seconds")
    shadow_share: float = Field(0.1, gt=0, le=1.0, description="share of the main loop's time the shadow model may "
                                                               "use (1.0: every frame)")
    crash_starts: int = Field(3, ge=1, le=100, description="starts within a health window before the next comes up "
                                                          "on the previous model")
    min_fps_ratio: float = Field(0.5, ge=0, le=1.0, description="after a swap, a frame rate below this share of the "
                                                               "one before rolls back")
    max_uncertain_increase: float = Field(0.3, ge=0, le=1.0, description="after a swap, an uncertain share this "
                                                                        "much above the one before rolls back")


class RuntimeOptions(_Strict):
    """Options per backend, each validated by the backend's own config class (beside its code). In YAML either
    ``runtime_options: {onnxruntime: {threads: 2}, tflite: {threads: 4}}`` or, for the one runtime named by
    ``runtime`` (with ``auto``: every runtime that has all the keys given), ``runtime_options: {threads: 2}``."""

    onnxruntime: Optional[OnnxRuntimeConfig] = None
    tflite: Optional[TfliteConfig] = None
    tensorrt: Optional[TensorRTConfig] = None

    def for_runtime(self, name: str) -> Optional[BaseModel]:
        """The options the agent opens ``name`` with. ONNX Runtime's worker threads do not spin-wait between runs
        here unless ``spinning: true`` is given: the agent's own threads need the cores, and with a paced camera
        spinning workers burnt 3x the CPU (45.7 against 14.6 ms a frame at 30 fps, 2 threads; at the maximum rate
        19.4-20.4 against 16.3 ms and fewer frames a second; docs/benchmarks.md)."""
        cfg = getattr(self, name, None)
        if name == "onnxruntime" and (cfg is None or "spinning" not in cfg.model_fields_set):
            cfg = (cfg or OnnxRuntimeConfig()).model_copy(update={"spinning": False})
        return cfg


def _option_names(name: str) -> List[str]:
    return sorted(config_class(name).model_fields)


class AgentConfig(_Strict):
    device_id: str = Field(default_factory=lambda: socket.gethostname().split(".")[0][:64] or "edgesight",
                           pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    package: str = Field(min_length=1, max_length=4096)
    runtime: str = "auto"
    runtime_options: RuntimeOptions = Field(default_factory=RuntimeOptions)
    engine_cache: str = Field("/var/cache/edgesight/engines", description="TensorRT engines built on this device")
    cameras: List[CameraConfig] = Field(min_length=1, max_length=64)
    thresholds: ThresholdsConfig = Field(default_factory=ThresholdsConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    samples: SamplesConfig = Field(default_factory=SamplesConfig)
    stats: StatsConfig = Field(default_factory=StatsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    home_assistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
    log_level: str = "info"

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, v: str) -> str:
        allowed = ("auto",) + RUNTIME_NAMES
        if v not in allowed:
            raise ValueError("runtime must be one of %s, got %r" % (" | ".join(allowed), v))
        return v

    @field_validator("runtime_options", mode="before")
    @classmethod
    def _options_per_runtime(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None:
            return {}
        if not isinstance(v, dict) or not v or set(v) <= set(RUNTIME_NAMES):
            return v  # already per runtime (or wrong: pydantic says so)
        runtime = info.data.get("runtime", "auto")
        if runtime != "auto":
            return {runtime: v}
        takers = [n for n in RUNTIME_NAMES if set(v) <= set(_option_names(n))]
        if not takers:
            raise ValueError("no runtime has the option(s) %s (%s)" % (", ".join(sorted(map(str, v))), "; ".join(
                "%s: %s" % (n, ", ".join(_option_names(n))) for n in RUNTIME_NAMES)))
        return {n: v for n in takers}

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("log_level must be debug | info | warning | error")
        return v.lower()

    @field_validator("cameras")
    @classmethod
    def _unique_names(cls, v: List[CameraConfig]) -> List[CameraConfig]:
        dup = repeated([c.name for c in v])
        if dup:
            raise ValueError("camera names must be unique; repeated: %s" % ", ".join(dup))
        dup = repeated([object_id(c.name, r and r.name) for c in v for r in c.targets()])
        if dup:
            raise ValueError("a camera and a region of another camera would be one Home Assistant entity (%s): "
                             "rename one" % ", ".join(dup))
        return v


# -- loading ---------------------------------------------------------------------------------------------------
PATH_FIELDS = (("package",), ("engine_cache",), ("outbox", "path"), ("mqtt", "password_file"),
               ("mqtt", "tls", "ca_file"), ("mqtt", "tls", "cert_file"), ("mqtt", "tls", "key_file"),
               ("models", "dir"))


def resolve_paths(data: Dict[str, Any], base: str) -> Dict[str, Any]:
    """A copy of the raw config with every relative path made relative to ``base`` (the config's folder)."""
    import copy

    out = copy.deepcopy(data)

    def fix(holder: Any, key: str) -> None:
        if isinstance(holder, dict) and isinstance(holder.get(key), str) and holder[key] and \
                not os.path.isabs(holder[key]):
            holder[key] = os.path.normpath(os.path.join(base, holder[key]))

    for loc in PATH_FIELDS:
        holder: Any = out
        for part in loc[:-1]:
            holder = holder.get(part) if isinstance(holder, dict) else None
        fix(holder, loc[-1])
    models = out.get("models")
    keys = models.get("trusted_keys") if isinstance(models, dict) else None
    for i in range(len(keys) if isinstance(keys, list) else 0):
        fix(keys, i)  # type: ignore[arg-type]
    cameras = out.get("cameras")
    for cam in cameras if isinstance(cameras, list) else []:
        src = cam.get("source") if isinstance(cam, dict) else None
        if isinstance(src, dict) and src.get("type") in ("folder", "video"):
            fix(src, "path")
        regions = cam.get("regions") if isinstance(cam, dict) else None
        for region in regions if isinstance(regions, list) else []:
            fix(region, "model")
    return out


def _yaml_locs(doc: configfile.Document):
    """Error locations as the YAML spells them: no union tags, no runtime key pydantic added to flat options."""
    opts = doc.data.get("runtime_options") if isinstance(doc.data, dict) else None

    def fix(errors: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        out = []
        for e in strip_union_tags(errors):
            loc = tuple(e["loc"])
            if loc[:1] == ("runtime_options",) and len(loc) > 2 and loc[1] in RUNTIME_NAMES and \
                    isinstance(opts, dict) and loc[1] not in opts:
                loc = loc[:1] + loc[2:]
            out.append(dict(e, loc=loc))
        return out

    return fix


def load_config(path: str) -> AgentConfig:
    """The validated config at ``path``; ConfigError (exit 2) naming the field and line, PackageError (exit 3)
    when the package it names exists but is broken."""
    doc = configfile.load(path, "agent config", ConfigError, expect="settings (package, cameras, mqtt, ...)")
    data = resolve_paths(doc.data, os.path.dirname(os.path.abspath(path)))
    cfg = configfile.validate(AgentConfig, doc, ConfigError, what="config", hint="Every key: docs/agent-config.md",
                              fix_locs=_yaml_locs(doc), data=data)
    check_files(cfg, doc)
    check_package(cfg, doc)
    return cfg


def check_files(cfg: AgentConfig, doc: Optional[configfile.Document] = None) -> None:
    """Files the config names must be usable now, not at the first TLS handshake."""
    tls = cfg.mqtt.tls
    for loc, p in ((("mqtt", "tls", "ca_file"), tls and tls.ca_file), (("mqtt", "tls", "cert_file"),
                   tls and tls.cert_file), (("mqtt", "tls", "key_file"), tls and tls.key_file),
                   (("mqtt", "password_file"), cfg.mqtt.password_file)):
        if p and not os.access(p, os.R_OK):
            _raise(doc, loc, "cannot read %s (%s)" % (p, "no such file" if not os.path.exists(p) else
                                                       "permission denied"))
    try:
        from .outbox_db import check_path

        check_path(cfg.outbox.path)
        if tls is not None:
            client.check_tls(tls.ca_file, tls.cert_file, tls.key_file)
        client.read_password(cfg.mqtt.password_file, None)  # the environment is the service's, not this shell's
    except ConfigError as exc:
        named = exc.file and exc.file not in exc.message
        _raise(doc, tuple(str(exc.field).split(".")), "%s: %s" % (exc.file, exc.message) if named else exc.message)
    if cfg.models.trusted_keys:  # a key file that is not an Ed25519 public key is a config error now
        from ..contract.signing import trusted

        trusted(cfg.models.trusted_keys)


def models_dir(cfg: AgentConfig) -> str:
    """``models.dir``, else ``models/`` beside the outbox (the state directory)."""
    return cfg.models.dir or os.path.join(os.path.dirname(os.path.abspath(cfg.outbox.path)), "models")


def _raise(doc: Optional[configfile.Document], loc: Tuple[Any, ...], message: str) -> None:
    if doc is None:
        from ..errors import field_path

        raise ConfigError(message, field=field_path(loc))
    raise configfile.problem_at(doc, loc, message)


def check_package(cfg: AgentConfig, doc: Optional[configfile.Document] = None) -> None:
    """Every region's own package must be there; ``thresholds.per_class`` must name labels of the agent's package
    or of a region's (when the packages are there to ask)."""
    labels: List[str] = []
    for i, cam in enumerate(cfg.cameras):
        for j, r in enumerate(cam.regions):
            if r.model is None:
                continue
            path = os.path.join(r.model, MANIFEST)
            if not os.path.isfile(path):
                _raise(doc, ("cameras", i, "regions", j, "model"), "%s is not a model package (no %s there)"
                       % (r.model, MANIFEST))
            labels += [x for x in read_manifest(path).labels if x not in labels]
    manifest_path = os.path.join(cfg.package, MANIFEST)
    if not cfg.thresholds.per_class or not os.path.isfile(manifest_path):
        return
    packages = [cfg.package] + sorted({r.model for c in cfg.cameras for r in c.regions if r.model})
    labels = list(read_manifest(manifest_path).labels) + labels
    unknown = unknown_labels(cfg.thresholds.per_class, labels)
    if unknown:
        _raise(doc, ("thresholds", "per_class", unknown[0]), "names %s, which %s not among the labels of %s "
               "(%s)" % (", ".join(repr(u) for u in unknown[:5]), "is" if len(unknown) == 1 else "are",
                         " or ".join(packages), ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")))


def read_password(cfg: MqttConfig) -> Optional[str]:
    """The MQTT password from its file or environment variable (never logged)."""
    return client.read_password(cfg.password_file, cfg.password_env)
