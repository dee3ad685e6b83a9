"""INT8 ONNX with explicit Q/DQ through ``onnxruntime.quantization.quantize_static``: two named profiles.

- ``tensorrt``: what TensorRT 8.5-11 builds from (explicit quantization): symmetric int8 activations and weights
  (every zero point 0), per-channel weights, float bias (no INT32 bias DequantizeLinear), opset <= 17, standard
  domain only, and NVIDIA's placement: Q/DQ at the inputs of the weighted layers and residual Adds only.
  :mod:`converters.qdq_verify` proves each rule on the output.
- ``cpu``: fastest on ONNX Runtime's CPU kernels: uint8 (asymmetric) activations with int8 per-channel weights.
  Measured on x86 (docs/benchmarks.md): symmetric int8 activations ran slower than FP32, U8S8 faster.
"""
import contextlib
import json
import logging
import os
import tempfile
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConversionError, MissingDependencyError, require_module
from . import onnx_rewrite, ranges, sensitivity
from .onnx_model import constant_names

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "entropy", "percentile", "mse")
DEFAULT_METHOD = "minmax"  # chosen by measured accuracy on the example model: see docs/converting.md
MSE = "mse"  # min-max calibration, then each tensor's range narrowed to its least quantization error (ranges.py)


class QuantProfile(NamedTuple):
    name: str
    activation: str  # int8 | uint8
    weight: str  # int8
    activation_symmetric: bool
    per_channel: bool
    quantize_bias: bool
    max_opset: int  # keep the model's opset at or below this
    # the op types whose inputs get Q/DQ (their outputs never do); None: every op type ONNX Runtime quantizes
    op_types: Optional[Tuple[str, ...]] = None


# NVIDIA's placement for explicit quantization: Q/DQ at the inputs of the weighted layers and of residual Adds, not
# at their outputs (which feed activations that want full resolution). MobileNetV3 with MSE ranges: logit cosine
# 0.9916 with 64 Q/DQ against 0.9880 with ONNX Runtime's 162 (docs/converting.md).
TENSORRT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add")

PROFILES: Dict[str, QuantProfile] = {
    "tensorrt": QuantProfile("tensorrt", "int8", "int8", True, True, False, 17, TENSORRT_OPS),
    "cpu": QuantProfile("cpu", "uint8", "int8", False, True, True, 21),
}


def _import_quantization():
    return require_module("onnxruntime.quantization", "INT8 ONNX conversion", "convert", package="onnxruntime")


class Tuning(NamedTuple):
    """Keep layers in float until the logits on ``tensors`` reach ``min_cosine`` (converters/sensitivity.py)."""

    input_name: str
    tensors: np.ndarray
    min_cosine: float = 0.99


class Quantized(NamedTuple):
    path: str
    steps: Dict[str, str]  # what ran: pre_process, opset, quantize_static
    float_nodes: List[str]  # the layers that stayed in float
    cosine: Optional[float]  # logit cosine vs FP32 on the tuning images (None without tuning)


def quantize_onnx(src: str, dst: str, reader, profile: str = "tensorrt", method: str = DEFAULT_METHOD,
                  tuning: Optional[Tuning] = None, shared: Optional[str] = None) -> Quantized:
    """Calibrate with ``reader`` (an onnxruntime CalibrationDataReader that can ``rewind``) and write the Q/DQ model
    to ``dst``. Every step runs or the conversion fails: a skipped pre-processing (ONNX Runtime 1.32 needs sympy
    for it) once made the INT8 CPU profile 3x slower than FP32 with no error. With ``tuning``, the sensitive op
    types and then the most sensitive layers stay in float until the fidelity target is met. ``shared``: a
    directory the caller keeps for the profiles of one conversion (the same ``src`` and images): the pre-processed
    model and the activation ranges are made there once and reused by the next profile."""
    if profile not in PROFILES:
        raise ValueError("unknown profile %r; choose %s" % (profile, ", ".join(PROFILES)))
    if method not in CALIBRATION_METHODS:
        raise ValueError("unknown calibration method %r; choose %s" % (method, ", ".join(CALIBRATION_METHODS)))
    q = _import_quantization()
    p = PROFILES[profile]
    qtype = {"int8": q.QuantType.QInt8, "uint8": q.QuantType.QUInt8}
    calibrated = "minmax" if method == MSE else method
    calib, extra, placement = _ort_options(q, p, calibrated)
    with _work_dir(shared) as work, OrtLogs() as logs:
        prepared, steps = _prepared(src, work)
        prepared = _limit_opset(prepared, p.max_opset, work)
        steps["opset"] = "<= %d" % p.max_opset
        not_placed = _bias_adds(prepared) if p.op_types is not None and "Add" in p.op_types else []
        if p.op_types is not None:
            steps["placement"] = "Q/DQ at the inputs of %s (residual Adds only), none at their outputs" % (
                ", ".join(p.op_types))

        # the activation ranges depend on the model and the images, not on which nodes stay in float nor on the
        # profile (symmetry and types are applied to them afterwards): calibrated once, then every try of the
        # sensitivity step and the other profile only place Q/DQ (ONNX Runtime >= 1.32 takes a cache)
        cache = {"calibration_cache_path": "%s.%s.ranges.json" % (prepared, calibrated)} if _takes_cache(q) else {}
        if cache:  # every float tensor, whichever op types this profile places Q/DQ on: the next profile reuses it
            _calibrate(prepared, reader, calib, extra, cache["calibration_cache_path"])
        requantized = [0]
        narrowed: Dict[str, Any] = {}  # the MSE ranges, read once for every try

        def quantize(exclude: Sequence[str], path: str, rule: str = method) -> None:
            options = dict(extra)
            if rule == MSE:
                if not narrowed:
                    narrowed.update(_mse_ranges(prepared, reader, tuning)[
                        "symmetric" if p.activation_symmetric else "asymmetric"])
                options["TensorQuantOverrides"] = ranges.as_overrides(narrowed)  # fresh: ONNX Runtime may edit it
            if hasattr(reader, "rewind"):
                reader.rewind()
            try:
                with contextlib.redirect_stdout(_LogWriter()):  # the entropy/percentile calibrators print
                    q.quantize_static(prepared, path, reader, quant_format=q.QuantFormat.QDQ,
                                      activation_type=qtype[p.activation], weight_type=qtype[p.weight],
                                      per_channel=p.per_channel, calibrate_method=calib, extra_options=options,
                                      nodes_to_exclude=list(exclude) + not_placed, **placement, **cache)
            except Exception as exc:
                raise ConversionError("onnxruntime quantize_static failed for the %s profile: %s: %s"
                                      % (profile, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""),
                                      file=src)
            if profile == "cpu":  # TensorRT wants zero points of 0 and fuses HardSigmoid itself
                requantized[:] = [_rewrite_file(path, onnx_rewrite.hardsigmoid_as_requantize)]

        if tuning is None:
            import onnx

            kept, cosine, rule = sensitivity.default_float_nodes(onnx.load(prepared)), None, method
            quantize(kept, dst)
        else:
            rules = (method, MSE) if method == "minmax" else (method,)  # MSE narrows min-max ranges, not the others
            tuned = sensitivity.tune(prepared, dst, quantize, tuning.input_name, tuning.tensors, tuning.min_cosine,
                                     ranges=rules)
            kept, cosine, rule = tuned.excluded, tuned.cosine, tuned.ranges
            steps["sensitivity"] = "%s%d round(s), logit cosine %s on %d images, lower bound %.4f (target %.3f)" % (
                _ranges_tried(tuned.by_rule), tuned.rounds, " -> ".join("%.4f" % c for c in tuned.history),
                len(tuning.tensors), tuned.bound, tuning.min_cosine)
        logs.raise_if_degraded(src, profile)
        if requantized[0]:
            steps["requantize"] = "%d HardSigmoid -> one requantizing QLinearAdd (no float kernel)" % requantized[0]
        steps["quantize_static"] = "%s, %s calibration%s, %d node(s) kept in float" % (
            profile, calibrated, ", ranges narrowed to the least squared error (mse)" if rule == MSE else "",
            len(kept))
    strip_unused_opsets(dst)
    return Quantized(dst, steps, kept, cosine)


def _ort_options(q, p: QuantProfile, calibrated: str) -> Tuple[Any, Dict[str, Any], Dict[str, Any]]:
    """ONNX Runtime's calibration method, ``extra_options`` and placement arguments for profile ``p``."""
    calib = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
             "percentile": q.CalibrationMethod.Percentile}[calibrated]
    extra: Dict[str, Any] = {"ActivationSymmetric": p.activation_symmetric, "WeightSymmetric": True,
                             "QuantizeBias": p.quantize_bias}
    placement: Dict[str, Any] = {}
    if p.op_types is not None:
        placement["op_types_to_quantize"] = list(p.op_types)
        extra["OpTypesToExcludeOutputQuantization"] = list(p.op_types)
    if calibrated == "percentile":
        extra["CalibPercentile"] = 99.999
    return calib, extra, placement


def _bias_adds(path: str) -> List[str]:
    """The Adds with a constant input (a bias after a MatMul): quantizing their input would quantize the MatMul's
    output, which the placement leaves at full resolution (ViT-tiny kept them in float to reach 0.999)."""
    import onnx

    model = onnx.load(path)
    constants = constant_names(model)
    return [n.name for n in model.graph.node if n.op_type == "Add" and any(i in constants for i in n.input)]


def _ranges_tried(by_rule: Dict[str, float]) -> str:
    if len(by_rule) < 2:
        return ""
    return "activation ranges %s; " % ", ".join("%s %.4f" % kv for kv in by_rule.items())


def _mse_ranges(prepared: str, reader, tuning: Optional[Tuning]) -> Dict[str, Dict[str, Any]]:
    """The MSE ranges of ``prepared`` (both kinds), measured once per conversion and kept beside it."""
    saved = prepared + ".mse-ranges.json"
    if os.path.isfile(saved):
        with open(saved) as f:
            return json.load(f)
    if tuning is not None:
        input_name, tensors = tuning.input_name, tuning.tensors
    else:
        input_name, tensors = _first_images(reader, MSE_IMAGES)
    found = ranges.mse_ranges(prepared, input_name, tensors)
    with open(saved, "w") as f:
        json.dump(found, f)
    return found


MSE_IMAGES = 64


def _first_images(reader, limit: int) -> Tuple[str, np.ndarray]:
    """The input name and the first ``limit`` images of an onnxruntime CalibrationDataReader."""
    if hasattr(reader, "rewind"):
        reader.rewind()
    name, batches, count = "", [], 0
    while count < limit:
        item = reader.get_next()
        if not item:
            break
        (name, batch), = item.items()
        batches.append(np.asarray(batch))
        count += len(batches[-1])
    if not batches:
        raise ConversionError("the calibration reader gave no images for the MSE ranges")
    return name, np.concatenate(batches)[:limit]


@contextlib.contextmanager
def _work_dir(shared: Optional[str]) -> Iterator[str]:
    if shared is not None:
        yield shared
        return
    with tempfile.TemporaryDirectory(prefix="edgesight-quant-") as work:
        yield work


def _prepared(src: str, work: str) -> Tuple[str, Dict[str, str]]:
    """ONNX Runtime's pre-processing of ``src`` and the exact rewrites that must precede calibration, written to
    ``work`` once (the steps that ran are saved beside it, for the report of every profile that uses it)."""
    prepared, told = os.path.join(work, "prepared.onnx"), os.path.join(work, "prepared.steps.json")
    if os.path.isfile(told):
        with open(told) as f:
            return prepared, json.load(f)
    pre_process(src, prepared)
    steps = {"pre_process": "ran (symbolic shape inference, ONNX shape inference, basic optimizations)"}
    pooled = _rewrite_file(prepared, onnx_rewrite.mean_as_global_pool)  # exact, before calibrating
    if pooled:
        steps["rewrite"] = "%d spatial ReduceMean -> GlobalAveragePool (quantized kernel)" % pooled
    with open(told, "w") as f:
        json.dump(steps, f)
    return prepared, steps


def _rewrite_file(path: str, rewrite: Callable[[Any], int]) -> int:
    """One of :mod:`converters.onnx_rewrite`'s rewrites on the model at ``path``, in place; how many nodes."""
    import onnx

    model = onnx.load(path)
    done = rewrite(model)
    if done:
        onnx.save(model, path)
    return done


def _calibrate(prepared: str, reader, calib, extra: Dict[str, Any], cache: str) -> None:
    """ONNX Runtime's calibration of every float tensor of ``prepared`` into its calibration cache file, as
    ``quantize_static`` runs it (same calibrator and options) but not limited to one profile's op types."""
    if os.path.isfile(cache):
        return
    from pathlib import Path

    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    options = {"percentile": extra["CalibPercentile"]} if "CalibPercentile" in extra else {}
    if hasattr(reader, "rewind"):
        reader.rewind()
    with tempfile.TemporaryDirectory(prefix="edgesight-calib-") as work, \
            contextlib.redirect_stdout(_LogWriter()):
        calibrator = create_calibrator(Path(prepared), None, augmented_model_path=os.path.join(work, "augmented.onnx"),
                                       calibrate_method=calib, extra_options=options)
        calibrator.collect_data(reader)
        save_tensors_data(calibrator.compute_data(), cache)


def _takes_cache(q) -> bool:
    """Does this ONNX Runtime's quantize_static reuse activation ranges from a calibration cache file (1.32+)?"""
    import inspect

    return "calibration_cache_path" in inspect.signature(q.quantize_static).parameters


def pre_process(src: str, dst: str) -> None:
    """ONNX Runtime's quantization pre-processing (symbolic and ONNX shape inference, basic optimizations that
    fold biases and constants), as its docs require before quantize_static. A failure is a ConversionError."""
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise MissingDependencyError("INT8 ONNX conversion", "convert", module="onnxruntime's quantization tools",
                                     detail=str(exc))
    try:
        quant_pre_process(src, dst, skip_symbolic_shape=False)
    except ImportError as exc:  # ONNX Runtime 1.32 moved sympy to an optional extra
        raise MissingDependencyError("Quantization pre-processing (symbolic shape inference)", "convert",
                                     module="sympy", detail=str(exc).splitlines()[0])
    except Exception as exc:
        raise ConversionError("ONNX Runtime's quantization pre-processing failed (%s: %s); without it biases are "
                              "not folded and the INT8 model runs slower than FP32, so nothing was written"
                              % (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""), file=src)


def _limit_opset(path: str, max_opset: int, work: str) -> str:
    """Convert a model above ``max_opset`` down to it (TensorRT 8.5/8.6 parse opset <= 17)."""
    import onnx
    from onnx import version_converter

    out = os.path.join(work, "opset%d.onnx" % max_opset)
    if os.path.isfile(out):  # converted for an earlier profile of this conversion
        return out
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


# warnings of onnxruntime.quantization that mean the INT8 model is worse than it should be
DEGRADED = (("Expected bias", "a bias is not a constant: it stays float and its Conv/Gemm runs slower"),
            ("pre-process", "the model was quantized without pre-processing"))


class OrtLogs(logging.Filter):
    """While quantizing: onnxruntime.quantization's warnings (dozens per model, through the root logger) go to this
    module's debug log, except those that mean a degraded output, which are kept and raised afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.degraded: List[str] = []

    def __enter__(self) -> "OrtLogs":
        logging.getLogger().addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if "onnxruntime" not in (record.pathname or "") or record.levelno >= logging.ERROR:
            return True
        text = record.getMessage()
        if "consider pre-processing" in text or "Please consider to run pre-processing" in text:
            log.debug("onnxruntime: %s", text)  # it says so even after pre-processing ran
            return False
        for needle, meaning in DEGRADED:
            if needle in text:
                self.degraded.append("%s (%s)" % (meaning, text[:200]))
        log.debug("onnxruntime: %s", text)
        return False

    def raise_if_degraded(self, src: str, profile: str) -> None:
        if self.degraded:
            raise ConversionError("the %s profile came out degraded: %s%s" % (
                profile, self.degraded[0], " (and %d more)" % (len(self.degraded) - 1) if len(self.degraded) > 1
                else ""), file=src)
