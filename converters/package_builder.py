"""Create a model package from a plain FP32 ONNX + labels + preprocessing spec (the converter adds INT8 later)."""
import logging
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Sequence

import yaml

from ..calibration.preprocess import PreprocessSpec
from ..errors import ConfigError, PackageError, validation_problems, yaml_problem
from ..runtimes.package import MANIFEST, SCHEMA, Manifest, ModelPackage, sha256_file
from ..runtimes.tflite_backend import check_flatbuffer
from .onnx_model import read_interface

log = logging.getLogger(__name__)

FP32_ONNX = "model.fp32.onnx"
FP32_TFLITE = "model.fp32.tflite"


def read_labels(path: str) -> List[str]:
    """One label per line; blank lines and lines starting with # are ignored."""
    try:
        with open(path, encoding="utf-8") as f:
            labels = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    except OSError as exc:
        raise ConfigError("cannot read labels file (%s)" % exc.strerror, file=path)
    if not labels:
        raise ConfigError("labels file is empty; write one class name per line, in model output order", file=path)
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError("labels must be unique; repeated: %s" % ", ".join(dup), file=path)
    return labels


def read_preprocess(path: str) -> PreprocessSpec:
    from pydantic import ValidationError

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError("cannot read preprocessing spec (%s)" % exc.strerror, file=path)
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_problem(exc), file=path)
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping with size, resize, color, scale, mean, std, layout", file=path)
    try:
        return PreprocessSpec(**data)
    except ValidationError as exc:
        problems, field = validation_problems(exc.errors())
        raise ConfigError("invalid preprocessing spec: %s" % problems, file=path, field=field)


def _check_onnx_matches(onnx_path: str, labels: Sequence[str], spec: PreprocessSpec) -> None:
    iface = read_interface(onnx_path)
    n, *dims = iface.input_shape
    c, h, w = dims if spec.layout == "nchw" else (dims[2], dims[0], dims[1])
    problems = []
    if c is not None and c != spec.channels:
        problems.append("the model takes %d channel(s) but color '%s' gives %d" % (c, spec.color, spec.channels))
    if (h is not None and h != spec.height) or (w is not None and w != spec.width):
        problems.append("the model takes %sx%s (HxW) but size is %dx%d" % (h, w, spec.height, spec.width))
    if problems:
        raise ConfigError("preprocessing does not fit input %r %s: %s"
                          % (iface.input_name, list(iface.input_shape), "; ".join(problems)), file=onnx_path,
                          field="preprocess")
    classes = iface.output_shape[-1] if iface.output_shape else None
    if classes is not None and classes != len(labels):
        raise ConfigError("the model outputs %d scores but %d labels were given; give one label per output"
                          % (classes, len(labels)), file=onnx_path, field="labels")


def create_fp32_package(onnx_path: str, labels: Sequence[str], spec: PreprocessSpec, out_dir: str,
                        name: str, version: str = "1.0.0", tflite_path: Optional[str] = None,
                        output: str = "logits", threshold: float = 0.8, overwrite: bool = False) -> ModelPackage:
    """Write ``out_dir`` with the FP32 ONNX (and optionally an FP32 TFLite of the same model) and its manifest."""
    _check_onnx_matches(onnx_path, labels, spec)
    if tflite_path is not None:
        check_flatbuffer(tflite_path)
    if os.path.exists(os.path.join(out_dir, MANIFEST)) and not overwrite:
        raise PackageError("a package already exists here; pass --force to replace it", file=out_dir)
    os.makedirs(out_dir, exist_ok=True)

    files = {FP32_ONNX: onnx_path}
    if tflite_path is not None:
        files[FP32_TFLITE] = tflite_path
    for dest, src in files.items():
        target = os.path.join(out_dir, dest)
        if os.path.abspath(src) != os.path.abspath(target):
            shutil.copyfile(src, target + ".tmp")
            os.replace(target + ".tmp", target)

    digest = {dest: sha256_file(os.path.join(out_dir, dest)) for dest in files}
    artifacts: List[Dict[str, Any]] = [
        {"runtime": "onnxruntime", "file": FP32_ONNX, "precision": "fp32", "layout": spec.layout,
         "sha256": digest[FP32_ONNX]}]
    if tflite_path is not None:
        artifacts.append({"runtime": "tflite", "file": FP32_TFLITE, "precision": "fp32", "layout": "nhwc",
                          "sha256": digest[FP32_TFLITE]})
    manifest = Manifest(**{
        "schema": SCHEMA, "name": name, "version": version, "labels": list(labels),
        "source": {"file": FP32_ONNX, "sha256": digest[FP32_ONNX]},
        "preprocess": spec, "output": output, "thresholds": {"default": threshold, "per_class": {}},
        "artifacts": artifacts,
    })
    write_manifest(out_dir, manifest)
    log.info("wrote package %s (%d artifact(s))", out_dir, len(artifacts))
    return ModelPackage.load(out_dir)


def write_manifest(out_dir: str, manifest: Manifest) -> str:
    """Atomically write ``edgesight.yaml`` (temp file, fsync, rename)."""
    path = os.path.join(out_dir, MANIFEST)
    fd, tmp = tempfile.mkstemp(prefix=".edgesight.", suffix=".yaml", dir=out_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yaml.safe_dump(manifest.to_yaml_dict(), f, sort_keys=False, default_flow_style=None, width=120)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
