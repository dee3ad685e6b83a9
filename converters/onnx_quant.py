"""INT8 ONNX with explicit Q/DQ through ``onnxruntime.quantization.quantize_static``: two named profiles.

- ``tensorrt``: what TensorRT 8.5-11 builds from (explicit quantization): symmetric int8 activations and weights
  (every zero point 0), per-channel weights, float bias (no INT32 bias DequantizeLinear), opset <= 17, standard
  domain only. :mod:`converters.qdq_verify` proves each rule on the output.
- ``cpu``: fastest on ONNX Runtime's CPU kernels: uint8 (asymmetric) activations with int8 per-channel weights.
  Measured on x86 (docs/benchmarks.md): symmetric int8 activations ran slower than FP32, U8S8 faster.
"""
import contextlib
import logging
import os
import tempfile
from typing import Dict, NamedTuple

from ..errors import ConversionError, require_module

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_METHOD = "minmax"  # chosen by measured accuracy on the example model: see docs/converting.md


class QuantProfile(NamedTuple):
    name: str
    activation: str  # int8 | uint8
    weight: str  # int8
    activation_symmetric: bool
    per_channel: bool
    quantize_bias: bool
    max_opset: int  # keep the model's opset at or below this


PROFILES: Dict[str, QuantProfile] = {
    "tensorrt": QuantProfile("tensorrt", "int8", "int8", True, True, False, 17),
    "cpu": QuantProfile("cpu", "uint8", "int8", False, True, True, 21),
}


def _import_quantization():
    return require_module("onnxruntime.quantization", "INT8 ONNX conversion", "convert", package="onnxruntime")


def quantize_onnx(src: str, dst: str, reader, profile: str = "tensorrt", method: str = DEFAULT_METHOD) -> str:
    """Calibrate with ``reader`` (an onnxruntime CalibrationDataReader) and write the Q/DQ model to ``dst``."""
    if profile not in PROFILES:
        raise ValueError("unknown profile %r; choose %s" % (profile, ", ".join(PROFILES)))
    if method not in CALIBRATION_METHODS:
        raise ValueError("unknown calibration method %r; choose %s" % (method, ", ".join(CALIBRATION_METHODS)))
    q = _import_quantization()
    p = PROFILES[profile]
    qtype = {"int8": q.QuantType.QInt8, "uint8": q.QuantType.QUInt8}
    calib = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
             "percentile": q.CalibrationMethod.Percentile}[method]
    extra = {"ActivationSymmetric": p.activation_symmetric, "WeightSymmetric": True,
             "QuantizeBias": p.quantize_bias}
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    with tempfile.TemporaryDirectory(prefix="edgesight-quant-") as work:
        prepared = os.path.join(work, "prepared.onnx")
        try:
            # shape inference + ONNX Runtime's basic (standard-op) optimizations, as its docs recommend
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(src, prepared, skip_symbolic_shape=False)
        except Exception as exc:  # pre-processing is an optimization; quantize the original if it fails
            log.warning("quantization pre-processing skipped (%s)", exc)
            prepared = src
        prepared = _limit_opset(prepared, p.max_opset, work)
        _silence_root_warnings()
        try:
            with contextlib.redirect_stdout(_LogWriter()):  # the entropy/percentile calibrators print progress
                q.quantize_static(prepared, dst, reader, quant_format=q.QuantFormat.QDQ,
                                  activation_type=qtype[p.activation], weight_type=qtype[p.weight],
                                  per_channel=p.per_channel, calibrate_method=calib, extra_options=extra)
        except Exception as exc:
            raise ConversionError("onnxruntime quantize_static failed for the %s profile: %s: %s"
                                  % (profile, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""),
                                  file=src)
    strip_unused_opsets(dst)
    return dst


def _limit_opset(path: str, max_opset: int, work: str) -> str:
    """Convert a model above ``max_opset`` down to it (TensorRT 8.5/8.6 parse opset <= 17)."""
    import onnx
    from onnx import version_converter

    model = onnx.load(path)
    current = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if current <= max_opset:
        return path
    try:
        converted = version_converter.convert_version(model, max_opset)
    except Exception as exc:
        raise ConversionError("the model uses opset %d and cannot be converted down to %d (%s); export it with "
                              "opset_version=%d" % (current, max_opset, str(exc).splitlines()[0], max_opset),
                              file=path)
    out = os.path.join(work, "opset%d.onnx" % max_opset)
    onnx.save(converted, out)
    log.info("converted opset %d -> %d", current, max_opset)
    return out


def strip_unused_opsets(path: str) -> None:
    """Drop opset imports of domains no node uses (pre-processing adds ai.onnx.ml, com.microsoft, ... )."""
    import onnx

    model = onnx.load(path)
    used = {n.domain for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if o.domain in used or (o.domain == "ai.onnx" and "" in used)]
    if len(keep) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(keep)
        onnx.save(model, path)


class _LogWriter(object):
    def write(self, text: str) -> int:
        if text.strip():
            log.debug("onnxruntime.quantization: %s", text.strip())
        return len(text)

    def flush(self) -> None:
        pass


def _silence_root_warnings() -> None:
    """onnxruntime.quantization logs 'consider pre-processing' through the root logger even after we did it."""
    root = logging.getLogger()
    if not any(isinstance(f, _DropPreprocessHint) for f in root.filters):
        root.addFilter(_DropPreprocessHint())


class _DropPreprocessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()
