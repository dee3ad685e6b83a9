"""INT8 TFLite through onnx2tf (run from its managed toolchain), calibrated with our own preprocessed images.

Facts this code works around (measured with onnx2tf 1.29.24):
- onnx2tf overwrites its input with the onnxsim-simplified model, so it gets a copy;
- it calls ``onnxsim`` by name, so the toolchain's bin/ must be on PATH;
- for 4-D 3-channel inputs it downloads ``calibration_image_sample_data_20x128x128x3_float32.npy`` from the internet
  even when calibration data is given: a stand-in of that name in its working directory keeps it offline;
- ``-cind`` data must be NHWC float32 and is normalised by onnx2tf with the mean/std given next to it, so we pass
  the fully preprocessed tensors with mean 0 and std 1: the TFLite model is calibrated on exactly what it will see;
- ``*_full_integer_quant.tflite`` has int8 input/output, ``*_integer_quant.tflite`` float input/output; the
  int16-activation variants are ~150x slower and never used; the dynamic-range file (int8 weights, float
  activations) is shipped only where the full-integer one misses the fidelity target and it meets it (transformers:
  ViT-tiny 0.83 full-integer, 0.9997 dynamic-range, at 0.67x FP32 in LiteRT on x86 against 3.4x); tflite-runtime 2.14
  cannot load it (FULLY_CONNECTED version 12), so a device with only that interpreter skips it
  (``ModelPackage.artifact_for``).
"""
import logging
import os
import re
import shutil
import subprocess
import tempfile
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from ..calibration.dataset import save_npy
from ..calibration.preprocess import PreprocessSpec
from ..errors import ConversionError
from ..runtimes import tflite_file
from ..runtimes.manifest import DYNAMIC_RANGE
from . import toolchain
from .onnx_model import import_onnx, read_interface

log = logging.getLogger(__name__)

STAND_IN = "calibration_image_sample_data_20x128x128x3_float32.npy"
IO_TYPES = ("int8", "float")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


REPLACEABLE = ("Erf", "Gelu")  # ONNX ops onnx2tf would turn into Select-TF (Flex) ops; it has pseudo ops for them
_PSEUDO = {"Erf": "Erf", "Gelu": "GeLU"}


class TfliteResult(NamedTuple):
    path: str
    io: str
    seconds: float
    steps: Dict[str, str]
    profile: Optional[str] = None  # DYNAMIC_RANGE when that file was shipped, else None (full-integer)


class Fidelity(NamedTuple):
    """What the INT8 TFLite should reach: a logit cosine of ``min_cosine`` against the FP32 ``reference`` logits
    on ``tensors`` (the preprocessing's layout)."""

    tensors: np.ndarray
    reference: np.ndarray
    min_cosine: float


def convert_int8(onnx_path: str, calib: np.ndarray, spec: PreprocessSpec, dst: str, io: str = "float",
                 timeout: int = 1800, fidelity: Optional[Fidelity] = None) -> TfliteResult:
    """Full-integer per-channel INT8 TFLite (NHWC) from ``onnx_path`` calibrated on ``calib`` (spec layout).

    With ``fidelity`` (float I/O only): when the full-integer file misses ``min_cosine`` and onnx2tf's dynamic-range
    file (int8 weights, activations quantized on the fly: what transformers need, ViT-tiny 0.83 -> 0.9997) reaches
    it, that one is shipped instead (profile ``dynamic-range``; LiteRT runs it, tflite-runtime 2.14 cannot)."""
    import time

    if io not in IO_TYPES:
        raise ValueError("io must be one of %s" % (IO_TYPES,))
    onnx2tf = toolchain.require("tflite")
    iface = read_interface(onnx_path)
    start = time.perf_counter()
    work = tempfile.mkdtemp(prefix="edgesight-onnx2tf-")
    try:
        model = os.path.join(work, "model.onnx")
        shutil.copyfile(onnx_path, model)
        np.save(os.path.join(work, STAND_IN), np.zeros((20, 128, 128, 3), dtype=np.float32))
        npy = save_npy(calib, os.path.join(work, "calib.npy"), spec.layout, "nhwc")
        c = spec.channels
        zeros = "[[[[%s]]]]" % ",".join(["0.0"] * c)
        ones = "[[[[%s]]]]" % ",".join(["1.0"] * c)
        shape = (1,) + tuple(d if d else s for d, s in zip(iface.input_shape[1:], spec.input_shape()[1:]))
        cmd = [onnx2tf, "-i", model, "-o", os.path.join(work, "out"),
               "-ois", "%s:%s" % (iface.input_name, ",".join(str(d) for d in shape)),
               "-oiqt", "-qt", "per-channel", "-cind", iface.input_name, npy, zeros, ones,
               "-iqd", "int8", "-oqd", "int8"]
        if spec.layout == "nhwc":
            cmd += ["-kt", iface.input_name]  # already NHWC: keep it
        present = sorted(op for op in REPLACEABLE if _nodes_of_type(onnx_path, op))
        if present:  # e.g. GELU's Erf in ConvNeXt and ViT: onnx2tf would emit FlexErf, which LiteRT cannot run
            cmd += ["-rtpo"] + [_PSEUDO[op] for op in present]
        log.info("running onnx2tf (INT8, per-channel, %d calibration images)", len(calib))
        try:
            proc = subprocess.run(cmd, cwd=work, env=toolchain.tool_env("tflite"), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ConversionError("onnx2tf did not finish within %d s" % timeout, file=onnx_path)
        output = _ANSI.sub("", proc.stdout.decode("utf-8", "replace"))
        suffix = "_full_integer_quant.tflite" if io == "int8" else "_integer_quant.tflite"
        produced = os.path.join(work, "out", "model" + suffix)
        if proc.returncode != 0 or not os.path.isfile(produced):
            raise ConversionError(explain_failure(output, onnx_path), file=onnx_path)
        check_no_flex(produced, onnx_path)
        recipe = "full-integer per-channel INT8, %s I/O" % io
        profile, checked = None, None
        if fidelity is not None and io == "float":
            produced, profile, checked = _fidelity(produced, os.path.join(work, "out", "model_dynamic_range_quant"
                                                   ".tflite"), fidelity, spec, onnx_path)
            if profile == DYNAMIC_RANGE:
                recipe = "dynamic-range INT8 (int8 weights, float activations quantized per run), float I/O"
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        shutil.copyfile(produced, dst)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    steps = {"onnx2tf": recipe + (", pseudo ops for %s" % ", ".join(present) if present else ""),
             "flex_check": "no Select-TF (Flex) ops"}
    if checked:
        steps["fidelity"] = checked
    return TfliteResult(dst, io, time.perf_counter() - start, steps, profile)


def _fidelity(full: str, dynamic: str, fidelity: Fidelity, spec: PreprocessSpec,
              onnx_path: str) -> Tuple[str, Optional[str], str]:
    """(the file to ship, its profile, what was measured): the full-integer file unless it misses the target and
    the dynamic-range one meets it. Met means the lower confidence bound of the mean cosine on the tuning images
    (:func:`metrics.lower_bound`), not only the mean."""
    from .metrics import lower_bound

    rows = logit_cosines(full, fidelity, spec)
    bound = lower_bound(rows)
    said = "full-integer: logit cosine %.6f, lower bound %.6f on %d images (target %g)" % (
        rows.mean(), bound, len(rows), fidelity.min_cosine)
    if bound >= fidelity.min_cosine or not os.path.isfile(dynamic):
        return full, None, said
    check_no_flex(dynamic, onnx_path)
    dyn = logit_cosines(dynamic, fidelity, spec)
    dyn_bound = lower_bound(dyn)
    said += "; dynamic-range: %.6f, lower bound %.6f" % (dyn.mean(), dyn_bound)
    if dyn_bound >= fidelity.min_cosine:
        log.info("full-integer INT8 TFLite reaches cosine %.4f (bound %.4f) < %.3f; shipping the dynamic-range file "
                 "(%.4f)", rows.mean(), bound, fidelity.min_cosine, dyn.mean())
        return dynamic, DYNAMIC_RANGE, said + ", shipped"
    return full, None, said


def logit_cosines(path: str, fidelity: Fidelity, spec: PreprocessSpec) -> np.ndarray:
    """Per image, the logit cosine of the TFLite at ``path`` against the FP32 reference, run by this machine's
    LiteRT."""
    from ..runtimes.registry import create_runtime
    from .metrics import cosine_rows

    with create_runtime("tflite", path, input_layout=spec.layout, layout="nhwc") as rt:
        out = np.concatenate([next(iter(rt.infer(fidelity.tensors[i:i + 8]).values()))
                              for i in range(0, len(fidelity.tensors), 8)])
    return cosine_rows(out, fidelity.reference)


def custom_ops(path: str) -> List[str]:
    """The custom operator codes of a .tflite (Select-TF ops appear as ``Flex<TF op>``; LiteRT cannot run those
    without the Flex delegate)."""
    return tflite_file.check(path)


def check_no_flex(tflite_path: str, onnx_path: str) -> None:
    """Never ship a TFLite with Select-TF ops: name them and the ONNX nodes they came from."""
    flex = sorted({c for c in custom_ops(tflite_path) if c.startswith("Flex")})
    if not flex:
        return
    nodes = []
    for op in flex:
        nodes += ["%s (%s)" % (n, op[4:]) for n in _nodes_of_type(onnx_path, op[4:])[:3]]
    raise ConversionError("onnx2tf produced Select-TF (Flex) op(s) %s, which LiteRT and tflite-runtime cannot run; "
                          "they come from ONNX node(s) %s. Replace those ops in the model (or drop the "
                          "tflite-int8 target); the other targets are still produced."
                          % (", ".join(flex), ", ".join(nodes) or "of the same op types"), file=onnx_path)


def explain_failure(output: str, onnx_path: str) -> str:
    """One paragraph naming the op and node onnx2tf failed on, from its log."""
    missing = re.search(r"(\w+) OP is not yet implemented", output)
    if missing:
        op = missing.group(1)
        nodes = _nodes_of_type(onnx_path, op)
        return ("onnx2tf cannot convert op %s (node %s): it has no TFLite implementation. Replace that op in the "
                "model, or drop the tflite-int8 target; the other targets are still produced."
                % (op, ", ".join(repr(n) for n in nodes[:5]) or "?"))
    last = re.findall(r"onnx_op_type:\s*(\S+)\s+onnx_op_name:\s*(\S+)", output)
    errors = [ln.strip() for ln in output.splitlines() if re.search(r"\bERROR\b|Error:", ln)]
    detail = errors[-1] if errors else (output.strip().splitlines()[-1] if output.strip() else "no output")
    if last:
        op, node = last[-1]
        return "onnx2tf failed at op %s (node %r): %s" % (op, node, detail[:400])
    return "onnx2tf failed: %s" % detail[:400]


def _nodes_of_type(onnx_path: str, op: str) -> List[str]:
    onnx = import_onnx()
    try:
        return [n.name or "(unnamed)" for n in onnx.load(onnx_path).graph.node if n.op_type == op]
    except Exception:  # only enriches the error being raised about ``op``; that error still names the op
        return []


def tool_version() -> Optional[str]:
    return toolchain.versions("tflite").get("onnx2tf")
