"""The converter's targets: each turns the FP32 source plus the calibration set into one artifact file.

A target returns the artifact entries it produced (a dict per file: runtime, file, precision, layout, profile,
built_for) or raises an :class:`EdgesightError`; the converter records a failed target and goes on with the others.
"""
import logging
import os
from typing import Any, Callable, Dict, List, NamedTuple, Optional

from ..calibration.dataset import LoadedSet, OrtCalibrationReader
from ..calibration.preprocess import PreprocessSpec
from ..runtimes.manifest import TENSORRT_QDQ, TENSORRT_QDQ_FP16
from . import onnx_quant, qdq_verify, sensitivity, tflite
from .onnx_model import OnnxInterface

log = logging.getLogger(__name__)

TARGETS = ("onnx-int8-trt", "onnx-int8-trt-fp16", "onnx-int8-cpu", "tflite-int8", "tensorrt")
DEFAULT = ("onnx-int8-trt", "onnx-int8-cpu", "tflite-int8", "tensorrt")  # the float16 profile is asked for
FILES = {"onnx-int8-trt": "model.int8.onnx", "onnx-int8-trt-fp16": "model.int8.fp16.onnx",
         "onnx-int8-cpu": "model.int8.cpu.onnx", "tflite-int8": "model.int8.tflite", "tensorrt": "model.int8.engine"}


class Job(NamedTuple):
    """What every target needs."""

    source: str  # the FP32 ONNX inside the package
    out: str  # the package directory
    iface: OnnxInterface
    calib: LoadedSet
    spec: PreprocessSpec
    method: str
    tflite_io: str
    step: Callable[[str], None]  # progress line
    notes: List[str]  # what the report should say about a target that was not built
    min_cosine: float = 0.99  # INT8: layers stay in float (ONNX), or the TFLite goes dynamic-range, to reach this
    work: Optional[str] = None  # a directory for this conversion: the INT8 ONNX profiles pre-process and calibrate once


def _entry(target: str, runtime: str, layout: str, **extra: Any) -> Dict[str, Any]:
    out = {"target": target, "runtime": runtime, "file": FILES[target], "precision": "int8", "layout": layout}
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def _reader(job: Job) -> OrtCalibrationReader:
    return OrtCalibrationReader(job.iface.input_name, job.calib.tensors)


TUNING_IMAGES = 64  # the fidelity steps measure on these calibration images (a lower bound of the mean)


def onnx_int8(job: Job, target: str) -> List[Dict[str, Any]]:
    profile = "tensorrt" if target == "onnx-int8-trt" else "cpu"
    job.step("%s: quantize_static QDQ, profile %s, %s calibration" % (target, profile, job.method))
    dst = os.path.join(job.out, FILES[target])
    tuning = onnx_quant.Tuning(job.iface.input_name, job.calib.tensors[:TUNING_IMAGES], job.min_cosine)
    q = onnx_quant.quantize_onnx(job.source, dst, _reader(job), profile, job.method, tuning=tuning, shared=job.work)
    if profile == "tensorrt":
        qdq_verify.verify_tensorrt_qdq(dst)
        q.steps["verify"] = "TensorRT-safe Q/DQ rules hold"
    return [_entry(target, "onnxruntime", job.spec.layout, profile=TENSORRT_QDQ if profile == "tensorrt" else "cpu",
                   steps=q.steps, float_nodes=q.float_nodes)]


def onnx_int8_fp16(job: Job, target: str, built: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The TensorRT Q/DQ model with float16 outside Q/DQ (TensorRT 10/11 strongly typed builds)."""
    from .onnx_fp16 import to_fp16

    out: List[Dict[str, Any]] = []
    if not any(a["target"] == "onnx-int8-trt" for a in built):  # made from the verified float32 Q/DQ model
        out += onnx_int8(job, "onnx-int8-trt")
    job.step("%s: float16 outside Q/DQ (opset 19) from %s" % (target, FILES["onnx-int8-trt"]))
    dst = os.path.join(job.out, FILES[target])
    to_fp16(os.path.join(job.out, FILES["onnx-int8-trt"]), dst)
    qdq_verify.verify_tensorrt_qdq(dst, fp16=True)
    return out + [_entry(target, "onnxruntime", job.spec.layout, profile=TENSORRT_QDQ_FP16, steps={
        "fp16": "opset 19, float16 compute and Q/DQ scales, float32 input/output", "verify":
        "TensorRT-safe Q/DQ rules (float16 variant) hold"})]


def tflite_int8(job: Job, target: str) -> List[Dict[str, Any]]:
    job.step("%s: onnx2tf full-integer per-channel (%s I/O)" % (target, job.tflite_io))
    tensors = job.calib.tensors[:TUNING_IMAGES]
    fidelity = tflite.Fidelity(tensors, sensitivity.run(job.source, job.iface.input_name, tensors), job.min_cosine)
    done = tflite.convert_int8(job.source, job.calib.tensors, job.spec, os.path.join(job.out, FILES[target]),
                               io=job.tflite_io, fidelity=fidelity)
    return [_entry(target, "tflite", "nhwc", steps=done.steps, profile=done.profile)]


def tensorrt_engine(job: Job, target: str, built: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """An engine for this machine's GPU, where TensorRT is installed; else a note (the device builds its own)."""
    from .tensorrt_engine import build_engine, tensorrt_version

    version = tensorrt_version()
    if version is None:
        msg = ("tensorrt: TensorRT is not installed here, so no engine is built. The device builds its own engine "
               "from the TensorRT-safe Q/DQ ONNX (%s) with its TensorRT and caches it." % FILES["onnx-int8-trt"])
        job.step(msg)
        job.notes.append(msg)
        return []
    out: List[Dict[str, Any]] = []
    if not any(a["target"] == "onnx-int8-trt" for a in built):  # the engine is built from the verified Q/DQ ONNX
        out += onnx_int8(job, "onnx-int8-trt")
    qdq = os.path.join(job.out, FILES["onnx-int8-trt"])
    job.step("tensorrt %s: building the engine from %s" % (version, os.path.basename(qdq)))
    built_for = build_engine(qdq, os.path.join(job.out, FILES[target]), job.spec.input_shape()[1:])
    return out + [_entry(target, "tensorrt", job.spec.layout, built_for=built_for)]


def build(job: Job, target: str, built: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The entries ``target`` produced (``built``: those of the targets before it)."""
    if target in ("onnx-int8-trt", "onnx-int8-cpu"):
        return onnx_int8(job, target)
    if target == "onnx-int8-trt-fp16":
        return onnx_int8_fp16(job, target, built)
    if target == "tflite-int8":
        return tflite_int8(job, target)
    if target == "tensorrt":
        return tensorrt_engine(job, target, built)
    raise ValueError("unknown target %r" % target)

