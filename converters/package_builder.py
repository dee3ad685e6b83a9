"""Create a model package from a plain FP32 ONNX + labels + preprocessing spec (the converter adds INT8 later).
Reading the labels and spec files is :func:`files.read_labels` and :func:`calibration.preprocess.read_preprocess`;
writing the manifest is :mod:`runtimes.package_write`."""
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

from ..calibration.preprocess import PreprocessSpec, chw
from ..errors import ConfigError, PackageError
from ..files import atomic_copy
from ..runtimes.manifest import MANIFEST, SCHEMA, Manifest, sha256_file
from ..runtimes.package import ModelPackage
from ..runtimes.package_write import write_manifest
from ..runtimes.tflite_backend import check_flatbuffer
from .onnx_model import read_interface

log = logging.getLogger(__name__)

FP32_ONNX = "model.fp32.onnx"
FP32_TFLITE = "model.fp32.tflite"


def _check_onnx_matches(onnx_path: str, labels: Sequence[str], spec: PreprocessSpec) -> None:
    iface = read_interface(onnx_path)
    c, h, w = chw(iface.input_shape, spec.layout)
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
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError("is an existing file; the package is a directory: give a new or existing folder",
                          file=out_dir, field="--out")
    if os.path.exists(os.path.join(out_dir, MANIFEST)) and not overwrite:
        raise PackageError("a package already exists here; pass --force to replace it", file=out_dir)
    os.makedirs(out_dir, exist_ok=True)

    files = {FP32_ONNX: onnx_path}
    if tflite_path is not None:
        files[FP32_TFLITE] = tflite_path
    for dest, src in files.items():
        target = os.path.join(out_dir, dest)
        if os.path.abspath(src) != os.path.abspath(target):
            atomic_copy(src, target)

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
