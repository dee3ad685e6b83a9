"""``edgesight.yaml``: the model package schema (docs/package.md) and how it is read.

Also the rules other parts reuse so that they are written once: thresholds are probabilities and ``per_class``
names labels of the package (the agent's ``thresholds`` section uses the same types), and which artifact TensorRT
builds its engine from (the ``tensorrt-qdq`` INT8 ONNX, see :attr:`Artifact.builds_tensorrt_engine`).
"""
import hashlib
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from typing_extensions import Annotated

from .. import configfile
from ..calibration.preprocess import PreprocessSpec
from ..errors import PackageError
from .registry import RUNTIME_NAMES

SCHEMA = "edgesight.package/2"  # 2: artifacts may carry ``calibration`` (temperature, fitted thresholds)
SCHEMAS_READ = ("edgesight.package/1", SCHEMA)  # a /1 package is a /2 package without calibration
MANIFEST = "edgesight.yaml"
PRECISIONS = ("fp32", "fp16", "int8")
TENSORRT_QDQ = "tensorrt-qdq"  # the profile of the INT8 ONNX a device builds its TensorRT engine from
TENSORRT_QDQ_FP16 = "tensorrt-qdq-fp16"  # the same with float16 outside Q/DQ: for TensorRT 10/11 (strongly typed)
DYNAMIC_RANGE = "dynamic-range"  # an INT8 TFLite with int8 weights and float activations (needs LiteRT)
MAX_MANIFEST_BYTES = 4 << 20

Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
PerClassThresholds = Dict[Annotated[str, Field(min_length=1, max_length=200)], Probability]


def unknown_labels(per_class: Mapping[str, float], labels: Sequence[str]) -> List[str]:
    """The ``per_class`` keys that are not labels of the package, sorted."""
    known = set(labels)
    return sorted(k for k in per_class if k not in known)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_SHA256 = r"^[0-9a-f]{64}$"


def _inside_package(v: str) -> str:
    if not v or os.path.isabs(v) or os.path.normpath(v).startswith("..") or "\x00" in v:
        raise ValueError("must be a path inside the package directory, got %r" % v)
    return v


class FileRef(_Strict):
    file: str
    sha256: str = Field(pattern=_SHA256)

    _file_inside = field_validator("file")(_inside_package)


class Thresholds(_Strict):
    default: Probability = 0.8
    per_class: PerClassThresholds = Field(default_factory=dict)


class Calibration(_Strict):
    """What ``edgesight convert`` / ``edgesight calibrate`` fitted for one artifact on labelled validation images
    (its INT8 logits differ from FP32's, so each artifact has its own): scores are ``softmax(logits / temperature)``
    (for a model that outputs probabilities: ``softmax(log(p) / temperature)``), and the fitted thresholds replace
    the package's for this artifact."""

    temperature: float = Field(gt=0.0, le=1000.0, allow_inf_nan=False)
    thresholds: Optional[Thresholds] = None
    goal: Optional[str] = Field(None, max_length=200)  # e.g. "precision >= 0.98 at confidence 0.9"
    fitted_on: Optional[Dict[str, Any]] = None  # images, ECE before/after, classes that could not meet the goal


class Artifact(_Strict):
    runtime: str
    file: str
    precision: str
    sha256: str = Field(pattern=_SHA256)
    layout: Optional[str] = None  # the artifact's own input layout; default per runtime
    profile: Optional[str] = None  # e.g. tensorrt-qdq / cpu for INT8 ONNX
    built_for: Optional[Dict[str, str]] = None  # TensorRT engines: tensorrt version, device, compute capability
    io: Optional[Dict[str, Any]] = None  # input/output dtype and quantization (scale, zero_point) as recorded
    validation: Optional[Dict[str, Any]] = None
    calibration: Optional[Calibration] = None

    _file_inside = field_validator("file")(_inside_package)

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, v: str) -> str:
        if v not in RUNTIME_NAMES:
            raise ValueError("must be one of %s, got %r" % (" | ".join(RUNTIME_NAMES), v))
        return v

    @field_validator("precision")
    @classmethod
    def _known_precision(cls, v: str) -> str:
        if v not in PRECISIONS:
            raise ValueError("must be one of %s, got %r" % (" | ".join(PRECISIONS), v))
        return v

    @field_validator("layout")
    @classmethod
    def _known_layout(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and v not in ("nchw", "nhwc"):
            raise ValueError("must be nchw or nhwc, got %r" % v)
        return v

    @property
    def builds_tensorrt_engine(self) -> bool:
        """The TensorRT rule: a device's TensorRT runs an engine it builds from this (TensorRT-safe Q/DQ) ONNX."""
        return self.runtime == "onnxruntime" and self.profile in (TENSORRT_QDQ, TENSORRT_QDQ_FP16)

    @property
    def passed_validation(self) -> bool:
        """Not marked failed by ``edgesight convert`` (artifacts without a validation record count as passed)."""
        return self.validation is None or bool(self.validation.get("passed", True))


class Manifest(_Strict):
    """The content of ``edgesight.yaml``."""

    schema_: str = Field(alias="schema")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    version: str = Field(min_length=1, max_length=100)
    labels: List[Annotated[str, Field(max_length=200)]] = Field(min_length=1, max_length=100000)
    source: FileRef
    preprocess: PreprocessSpec
    output: str = "logits"
    thresholds: Thresholds = Field(default_factory=Thresholds)
    artifacts: List[Artifact] = Field(min_length=1, max_length=64)
    validation: Optional[Dict[str, Any]] = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)

    @field_validator("output")
    @classmethod
    def _known_output(cls, v: str) -> str:
        if v not in ("logits", "probabilities"):
            raise ValueError("must be 'logits' or 'probabilities', got %r" % v)
        return v

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, v: List[str]) -> List[str]:
        seen, dup = set(), []
        for label in v:
            if not str(label).strip():
                raise ValueError("labels must not be empty strings")
            if label in seen:
                dup.append(label)
            seen.add(label)
        if dup:
            raise ValueError("labels must be unique; repeated: %s" % ", ".join(dup))
        return v

    @model_validator(mode="after")
    def _thresholds_name_labels(self) -> "Manifest":
        named = [("thresholds", self.thresholds)] + [
            ("artifacts[%d].calibration.thresholds" % i, a.calibration.thresholds) for i, a in enumerate(self.artifacts)
            if a.calibration is not None and a.calibration.thresholds is not None]
        for where, t in named:  # the package's thresholds and every artifact's fitted ones
            unknown = unknown_labels(t.per_class, self.labels)
            if unknown:
                raise ValueError("%s.per_class names classes that are not in labels: %s" % (where, ", ".join(unknown)))
        return self

    def thresholds_for(self, calibration: Optional[Calibration]) -> Tuple[float, Dict[str, float]]:
        """The thresholds an artifact runs with: the ones fitted for it where it has them, else the package's.
        (The agent's own ``thresholds`` go on top: its ``per_class`` always, its ``default`` for the rest.)"""
        t = calibration.thresholds if calibration is not None and calibration.thresholds is not None else \
            self.thresholds
        return t.default, dict(t.per_class)

    def to_yaml_dict(self) -> Dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(manifest_path: str) -> Manifest:
    """Parse and validate ``edgesight.yaml`` (the one loader: bounded, UTF-8, no duplicate keys, no aliases)."""
    doc = configfile.load(manifest_path, "package manifest", PackageError, max_bytes=MAX_MANIFEST_BYTES,
                          expect="fields (schema, name, labels, ...)")
    schema = doc.data.get("schema")
    if schema is None:
        raise PackageError("missing; this edgesight reads '%s'" % SCHEMA, file=manifest_path, field="schema")
    if schema not in SCHEMAS_READ:
        raise PackageError("unsupported schema %r; this edgesight reads %s. Re-create the package with this "
                           "edgesight version or upgrade edgesight." % (str(schema)[:100], " and ".join(
                               "'%s'" % v for v in SCHEMAS_READ)),
                           file=manifest_path, field="schema")
    return configfile.validate(Manifest, doc, PackageError, what="package manifest",
                               hint="See docs/package.md for the schema.")
