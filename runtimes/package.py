"""Model packages: a directory with ``edgesight.yaml`` and the model files it names (schema in docs/package.md).

Loading checks the schema version, every field, that each file exists inside the package, and its sha256; a bad
package is refused with a :class:`PackageError` naming the file and the field. Opening a runtime also checks that
the model's output size matches the label count.
"""
import hashlib
import logging
import os
from typing import Any, Dict, List, Optional, Tuple, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..calibration.preprocess import PreprocessSpec
from ..errors import MissingDependencyError, PackageError, validation_problems, yaml_problem
from .base import Runtime
from .registry import RUNTIME_NAMES, create_runtime, installed_runtimes, is_installed

log = logging.getLogger(__name__)

SCHEMA = "edgesight.package/1"
MANIFEST = "edgesight.yaml"
PRECISIONS = ("fp32", "fp16", "int8")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_SHA256 = r"^[0-9a-f]{64}$"


def _inside_package(v: str) -> str:
    if os.path.isabs(v) or os.path.normpath(v).startswith(".."):
        raise ValueError("must be a path inside the package directory, got %r" % v)
    return v


class FileRef(_Strict):
    file: str
    sha256: str = Field(pattern=_SHA256)

    _file_inside = field_validator("file")(_inside_package)


class Thresholds(_Strict):
    default: float = Field(0.8, ge=0.0, le=1.0)
    per_class: Dict[str, float] = Field(default_factory=dict)

    @field_validator("per_class")
    @classmethod
    def _in_range(cls, v: Dict[str, float]) -> Dict[str, float]:
        bad = [k for k, t in v.items() if not 0.0 <= t <= 1.0]
        if bad:
            raise ValueError("thresholds must be between 0 and 1 (%s)" % ", ".join(bad))
        return v


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


class Manifest(_Strict):
    """The content of ``edgesight.yaml``."""

    schema_: str = Field(alias="schema")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    version: str = Field(min_length=1)
    labels: List[str] = Field(min_length=1)
    source: FileRef
    preprocess: PreprocessSpec
    output: str = "logits"
    thresholds: Thresholds = Field(default_factory=Thresholds)
    artifacts: List[Artifact] = Field(min_length=1)
    validation: Optional[Dict[str, Any]] = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

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
        unknown = [k for k in self.thresholds.per_class if k not in self.labels]
        if unknown:
            raise ValueError("thresholds.per_class names classes that are not in labels: %s" % ", ".join(unknown))
        return self

    def to_yaml_dict(self) -> Dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class ModelPackage(object):
    """A validated package on disk. Use :meth:`load`."""

    def __init__(self, root: str, manifest: Manifest) -> None:
        self.root = root
        self.manifest = manifest

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.root, MANIFEST)

    @property
    def labels(self) -> List[str]:
        return list(self.manifest.labels)

    @property
    def preprocess(self) -> PreprocessSpec:
        return self.manifest.preprocess

    def preprocess_for(self, rt: Runtime) -> PreprocessSpec:
        """The package's preprocessing, producing the layout ``rt`` takes (its ``input_layout``)."""
        spec = self.manifest.preprocess
        return spec if spec.layout == rt.input_layout else spec.model_copy(update={"layout": rt.input_layout})

    def path(self, ref: Union[FileRef, Artifact]) -> str:
        return os.path.join(self.root, ref.file)

    # -- loading ---------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str, verify_hashes: bool = True) -> "ModelPackage":
        """Load and validate ``path`` (the package directory, or its ``edgesight.yaml``)."""
        path = str(path)
        if os.path.isfile(path) and os.path.basename(path) == MANIFEST:
            path = os.path.dirname(path) or "."
        if not os.path.exists(path):
            raise PackageError("no such package directory. Give the folder that holds edgesight.yaml.", file=path)
        if not os.path.isdir(path):
            raise PackageError("a model package is a directory holding edgesight.yaml, not a single file. Create "
                               "one with `edgesight package create` (or `edgesight convert`).", file=path)
        manifest_path = os.path.join(path, MANIFEST)
        if not os.path.isfile(manifest_path):
            raise PackageError("this directory has no %s, so it is not a model package. Create one with "
                               "`edgesight package create`." % MANIFEST, file=path)
        manifest = cls._parse(manifest_path)
        pkg = cls(path, manifest)
        pkg._check_files(verify_hashes)
        return pkg

    @staticmethod
    def _parse(manifest_path: str) -> Manifest:
        try:
            with open(manifest_path, "rb") as f:
                data = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise PackageError("%s. Fix the file or re-create the package." % yaml_problem(exc), file=manifest_path)
        if not isinstance(data, dict):
            raise PackageError("expected a YAML mapping of fields (schema, name, labels, ...), got %s"
                               % type(data).__name__, file=manifest_path)
        schema = data.get("schema")
        if schema is None:
            raise PackageError("missing; this edgesight reads '%s'" % SCHEMA, file=manifest_path, field="schema")
        if schema != SCHEMA:
            raise PackageError("unsupported schema %r; this edgesight reads '%s'. Re-create the package with this "
                               "edgesight version or upgrade edgesight." % (schema, SCHEMA),
                               file=manifest_path, field="schema")
        try:
            return Manifest(**data)
        except ValidationError as exc:
            problems, field = validation_problems(exc.errors())
            raise PackageError("invalid package manifest: %s. See docs/package.md for the schema." % problems,
                               file=manifest_path, field=field)

    def _check_files(self, verify_hashes: bool) -> None:
        refs = [("source", self.manifest.source)] + [
            ("artifacts[%d]" % i, a) for i, a in enumerate(self.manifest.artifacts)]
        for field, ref in refs:
            full = self.path(ref)
            if not os.path.isfile(full):
                raise PackageError("names file %r, which does not exist in the package (%s). Copy the whole "
                                   "package directory." % (ref.file, full), file=self.manifest_path,
                                   field=field + ".file")
            if verify_hashes:
                actual = sha256_file(full)
                if actual != ref.sha256:
                    raise PackageError("sha256 of %s is %s but the manifest says %s: the file was changed or "
                                       "corrupted. Re-copy the package or re-create it."
                                       % (ref.file, actual[:16] + "...", ref.sha256[:16] + "..."),
                                       file=self.manifest_path, field=field + ".sha256")

    # -- runtimes --------------------------------------------------------------------------------------------
    def artifact_for(self, runtime: Optional[str] = None) -> Tuple[int, Artifact]:
        """The artifact to run: the first for ``runtime``, or with ``None``/``auto`` the first whose runtime is
        installed here (the agent issue adds device-aware choice)."""
        arts = list(enumerate(self.manifest.artifacts))
        if runtime and runtime != "auto":
            for i, a in arts:
                if a.runtime == runtime:
                    return i, a
            raise PackageError("has no artifact for runtime %r (it has: %s)"
                               % (runtime, ", ".join(sorted({a.runtime for _, a in arts}))),
                               file=self.manifest_path, field="artifacts")
        for i, a in arts:
            if is_installed(a.runtime):
                return i, a
        raise MissingDependencyError("Running this package", "onnx", module="a runtime for one of its artifacts",
                                     detail="artifacts: %s; installed runtimes: %s"
                                     % (", ".join(a.runtime for _, a in arts), ", ".join(installed_runtimes()) or
                                        "none"))

    def open_runtime(self, runtime: Optional[str] = None, config: Optional[Any] = None,
                     artifact_index: Optional[int] = None, input_layout: Optional[str] = None) -> Runtime:
        """Create and load the runtime for an artifact and check its output size against the labels.

        The runtime takes batches in ``input_layout``: by default the package's preprocessing layout; ``"native"``
        takes the artifact's own layout (preprocess with :meth:`preprocess_for`), which spares a transpose per call.
        """
        if artifact_index is None:
            artifact_index, art = self.artifact_for(runtime)
        else:
            art = self.manifest.artifacts[artifact_index]
        rt = create_runtime(art.runtime, self.path(art), input_layout=input_layout or self.preprocess.layout,
                            layout=art.layout, config=config)
        rt.load()
        try:
            self.check_runtime(rt, artifact_index)
        except Exception:
            rt.close()
            raise
        return rt

    def check_runtime(self, rt: Runtime, artifact_index: int) -> None:
        """The model's input matches the preprocessing and its output has one value per label."""
        art = self.manifest.artifacts[artifact_index]
        field = "artifacts[%d]" % artifact_index
        outs = rt.outputs
        size = outs[0].shape[-1] if outs and outs[0].shape else None
        if size is not None and size != len(self.labels):
            raise PackageError("%s gives %d scores per image but the package has %d labels; fix 'labels' (one per "
                               "model output, in output order)." % (art.file, size, len(self.labels)),
                               file=self.manifest_path, field="labels")
        spec_in = rt.inputs[0]
        want = self.preprocess.input_shape()
        got = spec_in.shape
        if len(got) == 4:
            got_nchw = got if rt.layout == "nchw" else (got[0], got[3], got[1], got[2])
            want_nchw = want if self.preprocess.layout == "nchw" else (want[0], want[3], want[1], want[2])
            if any(g is not None and g != w for g, w in zip(got_nchw[1:], want_nchw[1:])):
                raise PackageError("%s takes input %s (%s) but preprocess produces %s (%s); fix 'preprocess' "
                                   "(size, color) or the artifact's 'layout'."
                                   % (art.file, list(got), rt.layout, list(want), self.preprocess.layout),
                                   file=self.manifest_path, field=field)

    def summary(self) -> Dict[str, Any]:
        m = self.manifest
        return {
            "path": os.path.abspath(self.root),
            "manifest": m.to_yaml_dict(),
            "artifacts": [dict(a.model_dump(mode="json", exclude_none=True),
                               size_bytes=os.path.getsize(self.path(a))) for a in m.artifacts],
        }


def load_package(path: str, verify_hashes: bool = True) -> ModelPackage:
    return ModelPackage.load(path, verify_hashes=verify_hashes)
