"""Model packages on disk: a directory with ``edgesight.yaml`` (schema: :mod:`runtimes.manifest`) and the model files
it names.

Loading checks the schema, every field, that each file exists inside the package (symlinks resolved: a link out of
the package is refused like a ``../`` path) and its sha256; a bad package is a :class:`PackageError` naming the file
and the field. :meth:`ModelPackage.artifact_for` is the one rule for which artifact a device runs, and
:meth:`ModelPackage.open_runtime` opens it (building or reusing a TensorRT engine where that is the choice) and
checks the model's input and output against the preprocessing and the labels.
"""
import logging
import os
import platform
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Union

from ..calibration.preprocess import PreprocessSpec, chw
from ..errors import MissingDependencyError, PackageError
from ..files import cache_dir
from .base import Runtime
from .manifest import (DYNAMIC_RANGE, MANIFEST, SCHEMA, TENSORRT_QDQ_FP16, Artifact, FileRef, Manifest,
                       read_manifest, sha256_file)
from .registry import create_runtime, installed_runtimes, is_installed, runs_dynamic_range_tflite, tensorrt_major

log = logging.getLogger(__name__)

__all__ = ["MANIFEST", "SCHEMA", "Artifact", "Choice", "FileRef", "Manifest", "ModelPackage", "load_package",
           "sha256_file"]


class Choice(NamedTuple):
    """An artifact to run and the runtime that runs it (``tensorrt`` for the Q/DQ ONNX a device builds from)."""

    index: int
    artifact: Artifact
    runtime: str


def default_engine_cache() -> str:
    """Where ``open_runtime`` keeps TensorRT engines when not told (the agent's is ``engine_cache``)."""
    return cache_dir("engines", "EDGESIGHT_ENGINE_CACHE")


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
        pkg = cls(path, read_manifest(manifest_path))
        pkg._check_files(verify_hashes)
        return pkg

    def _check_files(self, verify_hashes: bool) -> None:
        root = os.path.realpath(self.root)
        refs = [("source", self.manifest.source)] + [
            ("artifacts[%d]" % i, a) for i, a in enumerate(self.manifest.artifacts)]
        for field, ref in refs:
            full = self.path(ref)
            if not os.path.isfile(full):
                raise PackageError("names file %r, which does not exist in the package (%s). Copy the whole "
                                   "package directory." % (ref.file, full), file=self.manifest_path,
                                   field=field + ".file")
            real = os.path.realpath(full)
            if os.path.commonpath([root, real]) != root:
                raise PackageError("%r resolves to %s, outside the package directory (a symbolic link out of the "
                                   "package); copy the file into the package" % (ref.file, real),
                                   file=self.manifest_path, field=field + ".file")
            if verify_hashes:
                actual = sha256_file(full)
                if actual != ref.sha256:
                    raise PackageError("sha256 of %s is %s but the manifest says %s: the file was changed or "
                                       "corrupted. Re-copy the package or re-create it."
                                       % (ref.file, actual[:16] + "...", ref.sha256[:16] + "..."),
                                       file=self.manifest_path, field=field + ".sha256")

    # -- which artifact runs here ----------------------------------------------------------------------------
    def artifact_for(self, runtime: Optional[str] = "auto", machine: Optional[str] = None) -> Choice:
        """The artifact this device runs for ``runtime`` (``auto``/None: the installed runtimes decide).

        ``auto`` tries TensorRT first (the Q/DQ ONNX, built into an engine on the device), then TFLite on ARM and
        ONNX Runtime elsewhere (the other after it). Within a runtime, INT8 before FP32, and for ONNX Runtime the
        ``cpu`` profile before ``tensorrt-qdq`` (slow on CPUs). Artifacts that failed validation are never chosen,
        nor a dynamic-range TFLite where the interpreter cannot run it (tflite-runtime 2.14 on Python 3.8).
        """
        runtime = runtime or "auto"
        machine = (machine or platform.machine()).lower()
        arm = machine.startswith(("arm", "aarch64"))
        order = [runtime] if runtime != "auto" else (
            ["tensorrt"] + (["tflite", "onnxruntime"] if arm else ["onnxruntime", "tflite"]))
        cannot = [a for a in self.manifest.artifacts if a.runtime == "tflite" and a.profile == DYNAMIC_RANGE and
                  not runs_dynamic_range_tflite()]
        usable = [(i, a) for i, a in enumerate(self.manifest.artifacts) if a.passed_validation and a not in cannot]
        for rt in order:
            if runtime == "auto" and not is_installed(rt):
                continue
            if rt == "tensorrt":
                cands = self._tensorrt_sources(usable)
            else:
                cands = sorted(((i, a) for i, a in usable if a.runtime == rt),
                               key=lambda ia: (2 if ia[1].builds_tensorrt_engine else
                                               0 if ia[1].precision == "int8" else 1, ia[0]))
            if cands:
                return Choice(cands[0][0], cands[0][1], rt)
        if runtime == "auto" and not installed_runtimes():
            raise MissingDependencyError("Running this package", "onnx", module="a runtime for one of its artifacts",
                                         detail="artifacts: %s; no runtime is installed here" % ", ".join(
                                             a.runtime for a in self.manifest.artifacts))
        raise PackageError("has no usable artifact on this device (%s): no artifact for runtime %r that passed "
                           "validation (it has: %s; the installed runtimes decide 'auto')%s" % (
                               machine, runtime, ", ".join(sorted({a.runtime for a in self.manifest.artifacts})),
                               "; its dynamic-range TFLite needs LiteRT (pip install ai-edge-litert): tflite-runtime "
                               "2.14 cannot run it" if cannot else ""), file=self.manifest_path, field="artifacts")

    def _tensorrt_sources(self, usable: List[Tuple[int, Artifact]]) -> List[Tuple[int, Artifact]]:
        """The Q/DQ ONNX files TensorRT can build from, the one this TensorRT wants first: from TensorRT 10 on
        (strongly typed builds) the float16 profile, before it the float32 one (TensorRT picks FP16 itself)."""
        fp16_first = (tensorrt_major() or 0) >= 10
        cands = [(i, a) for i, a in usable if a.builds_tensorrt_engine]
        return sorted(cands, key=lambda ia: ((ia[1].profile == TENSORRT_QDQ_FP16) != fp16_first, ia[0]))

    def tensorrt_source(self) -> Optional[Tuple[int, Artifact]]:
        """The artifact ``engine build`` and the agent build this device's engine from, or None."""
        cands = self._tensorrt_sources([(i, a) for i, a in enumerate(self.manifest.artifacts)
                                        if a.passed_validation])
        return cands[0] if cands else None

    # -- opening a runtime -----------------------------------------------------------------------------------
    def open_runtime(self, runtime: Optional[str] = None, config: Optional[Any] = None,
                     artifact_index: Optional[int] = None, input_layout: Optional[str] = None,
                     choice: Optional[Choice] = None, engine_cache: Optional[str] = None,
                     extend_timeout: Optional[Callable[[float], Any]] = None) -> Runtime:
        """Create and load the runtime for an artifact (``choice``, ``artifact_index``, or :meth:`artifact_for`
        ``runtime``) and check it against the labels and the preprocessing.

        The runtime takes batches in ``input_layout``: by default the package's preprocessing layout; ``"native"``
        takes the artifact's own layout (preprocess with :meth:`preprocess_for`), which spares a transpose per call.
        A ``tensorrt`` choice runs an engine for this device: shipped in the package, cached in ``engine_cache``,
        or built now from the Q/DQ ONNX (``extend_timeout`` tells systemd to wait).
        """
        if choice is None:
            if artifact_index is None:
                choice = self.artifact_for(runtime)
            else:
                art = self.manifest.artifacts[artifact_index]
                choice = Choice(artifact_index, art, art.runtime)
        model = self.path(choice.artifact)
        if choice.runtime == "tensorrt" and choice.artifact.builds_tensorrt_engine:
            model = self._engine(choice.artifact, engine_cache or default_engine_cache(), extend_timeout)
        rt = create_runtime(choice.runtime, model, input_layout=input_layout or self.preprocess.layout,
                            layout=choice.artifact.layout, config=config)
        rt.load()
        try:
            self.check_runtime(rt, choice.index)
        except Exception:
            rt.close()
            raise
        return rt

    def _engine(self, qdq: Artifact, cache_dir: str, extend_timeout: Optional[Callable[[float], Any]]) -> str:
        from .engine_cache import engine_for

        shipped = [(self.path(a), a.built_for) for a in self.manifest.artifacts if a.runtime == "tensorrt"]
        return engine_for(self.path(qdq), qdq.sha256, cache_dir, self.preprocess.input_shape()[1:],
                          shipped=shipped[0] if shipped else None, extend_timeout=extend_timeout)

    def check_runtime(self, rt: Runtime, artifact_index: int) -> None:
        """The model's input matches the preprocessing and its output has one value per label."""
        art = self.manifest.artifacts[artifact_index]
        outs = rt.outputs
        size = outs[0].shape[-1] if outs and outs[0].shape else None
        if size is not None and size != len(self.labels):
            raise PackageError("%s gives %d scores per image but the package has %d labels; fix 'labels' (one per "
                               "model output, in output order)." % (art.file, size, len(self.labels)),
                               file=self.manifest_path, field="labels")
        got, want = rt.inputs[0].shape, self.preprocess.input_shape()
        if len(got) == 4 and any(g is not None and g != w for g, w in zip(chw(got, rt.layout),
                                                                          chw(want, self.preprocess.layout))):
            raise PackageError("%s takes input %s (%s) but preprocess produces %s (%s); fix 'preprocess' "
                               "(size, color) or the artifact's 'layout'."
                               % (art.file, list(got), rt.layout, list(want), self.preprocess.layout),
                               file=self.manifest_path, field="artifacts[%d]" % artifact_index)

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
