"""The sampling policy: the ``samples`` section of agent.yaml, and the retained JSON message on
``<prefix>/<device>/config/sampling`` with which the fleet replaces it at run time (docs/sampling.md).

Both are validated by the same model. A policy from the network is hostile input: it is bounded in bytes and depth,
must be finite and versioned, and any problem is a :class:`ConfigError` naming the field (the agent reports it on
``config/sampling/status`` and keeps the policy in force).
"""
import json
import math
from typing import Any, Dict, List, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from typing_extensions import Annotated, Literal, get_args

from ..errors import ConfigError, validation_problems

MAX_POLICY_BYTES = 64 * 1024
MAX_POLICY_DEPTH = 16
_NAME = r"^[A-Za-z0-9_-]{1,32}$"


def repeated(names: List[str]) -> List[str]:
    """The names that occur more than once, sorted."""
    return sorted({n for n in names if names.count(n) > 1})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _Strategy(_Strict):
    name: Optional[str] = Field(None, pattern=_NAME,
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
    classes: List[Annotated[str, Field(min_length=1, max_length=200)]] = Field(default_factory=list,
                                                                               max_length=1000)
    min_per_day: Optional[int] = Field(None, ge=1, description="favour classes with fewer samples in 24 h")

    @model_validator(mode="after")
    def _needs_a_target(self) -> "ClassTarget":
        if not self.classes and self.min_per_day is None:
            raise ValueError("class_target needs 'classes' or 'min_per_day'")
        return self


STRATEGIES = (LowConfidence, NearThreshold, Margin, RandomBaseline, ClassTarget)
Strategy = Annotated[Union[STRATEGIES], Field(discriminator="type")]
STRATEGY_TYPES = tuple(get_args(cls.model_fields["type"].annotation)[0] for cls in STRATEGIES)


class DedupConfig(_Strict):
    enabled: bool = True
    max_distance: int = Field(4, ge=0, le=32, description="pHash bits that may differ for a near-duplicate")
    window: int = Field(32, ge=1, le=4096, description="recent samples per camera compared with")
    ttl: float = Field(3600.0, gt=0, le=30 * 86400, description="seconds a sample's hash is remembered")


class SamplingPolicy(_Strict):
    """What becomes a sample."""

    enabled: bool = True
    strategies: List[Strategy] = Field(default_factory=lambda: [LowConfidence(type="low_confidence")],
                                       min_length=1, max_length=32)
    max_per_minute: Optional[int] = Field(6, ge=0, description="device-wide cap")
    max_per_hour: Optional[int] = Field(None, ge=0)
    max_per_day: Optional[int] = Field(None, ge=0)
    min_gap: float = Field(5.0, ge=0, le=86400, description="seconds between two samples")
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    max_bytes: int = Field(128 * 1024, ge=4096, le=256 * 1024, description="whole MQTT payload, JPEG included")
    jpeg_quality: int = Field(85, ge=10, le=100)

    @field_validator("strategies")
    @classmethod
    def _unique_reasons(cls, v: List[Any]) -> List[Any]:
        dup = repeated([s.reason for s in v])
        if dup:
            raise ValueError("two strategies report the same reason %s: give one a 'name'" % ", ".join(dup))
        return v


def strip_union_tags(errors: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """pydantic puts the tag of a tagged union into the location (strategies.0.margin.band); YAML and JSON have no
    such key, so it is taken out."""
    out = []
    for e in errors:
        loc = list(e["loc"])
        for i in range(len(loc) - 1, 1, -1):
            if loc[i - 2] == "strategies" and isinstance(loc[i - 1], int) and loc[i] in STRATEGY_TYPES:
                del loc[i]
        out.append(dict(e, loc=tuple(loc)))
    return out


def _no_constant(name: str) -> Any:
    raise ValueError("%s is not a number JSON allows" % name)


def _depth(value: Any, limit: int, level: int = 0) -> int:
    if level > limit:
        return level
    if isinstance(value, dict):
        return max([_depth(v, limit, level + 1) for v in value.values()] or [level])
    if isinstance(value, list):
        return max([_depth(v, limit, level + 1) for v in value] or [level])
    return level


def parse_policy(payload: bytes) -> SamplingPolicy:
    """A sampling policy from the fleet: a JSON object with the keys of the ``samples`` section and optionally
    ``"v": 1``. Keys left out take their defaults. Raises ConfigError naming the field, whatever the bytes."""
    where = "config/sampling payload"
    if len(payload) > MAX_POLICY_BYTES:
        raise ConfigError("is %d bytes; at most %d" % (len(payload), MAX_POLICY_BYTES), file=where)
    try:
        data = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    except RecursionError:
        raise ConfigError("is not JSON this agent reads: nested too deeply", file=where)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError("is not JSON (%s)" % exc, file=where)
    if not isinstance(data, dict):
        raise ConfigError("must be a JSON object with the keys of the samples section", file=where)
    if _depth(data, MAX_POLICY_DEPTH) > MAX_POLICY_DEPTH:
        raise ConfigError("is nested deeper than %d levels" % MAX_POLICY_DEPTH, file=where)
    version = data.pop("v", 1)
    if type(version) is not int or version != 1:
        raise ConfigError("has schema version %r; this agent understands 1" % (version,), file=where, field="v")
    bad = [k for k, v in data.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ConfigError("%s must be a finite number" % bad[0], file=where, field=bad[0])
    try:
        return SamplingPolicy(**data)
    except ValidationError as exc:
        problems, field = validation_problems(strip_union_tags(exc.errors()))
        raise ConfigError("invalid sampling policy: %s" % problems, file=where, field=field)
