"""onnx2tf's TensorFlow-free backend (2.4+, ``-tb flatbuffer_direct``, Python >= 3.12) against today's INT8 TFLite path
(onnx2tf 1.29 with TensorFlow's converter, the tflite toolchain), on the packages bench/coverage.py converted.

    python bench/tflite_backends.py --onnx2tf2 /path/to/py312-venv/bin/onnx2tf [--work /tmp/edgesight-coverage]

The 2.x venv: `python3.12 -m venv V && V/bin/pip install 'onnx2tf>=2.4'` (no TensorFlow). Two ways through it:
- ``direct-qop``: one calibration for every target: ONNX Runtime quantizes (its calibration, the same images) in
  the QOperator format (QLinearConv/QLinearMatMul), which the direct backend lowers to INT8 TFLite ops;
- ``direct-oiqt``: the direct backend's own full-integer quantization with our calibration tensors (-cind).
Per model: loads in LiteRT, Select-TF ops, logit cosine vs FP32 (ONNX Runtime) on the validation images, LiteRT
latency against today's INT8 TFLite in the same process (interleaved), file size and convert seconds.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from convert import latencies_ms  # noqa: E402

from edgesight.calibration.dataset import ImageFolder, OrtCalibrationReader, save_npy  # noqa: E402
from edgesight.converters import onnx_quant  # noqa: E402
from edgesight.converters.metrics import cosine_rows  # noqa: E402
from edgesight.converters.tflite import custom_ops  # noqa: E402
from edgesight.runtimes.registry import create_runtime  # noqa: E402

from coverage import MODELS, SPEC  # noqa: E402


def qoperator(src: str, dst: str, calib: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    prepared = dst + ".pre.onnx"
    onnx_quant.pre_process(src, prepared)
    quantize_static(prepared, dst, OrtCalibrationReader("input", calib), quant_format=QuantFormat.QOperator,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


def direct(onnx2tf: str, src: str, work: str, calib_npy: str = "") -> str:
    out = os.path.join(work, "out")
    cmd = [onnx2tf, "-i", src, "-o", out, "-tb", "flatbuffer_direct", "-ois", "input:1,3,224,224"]
    if calib_npy:
        cmd += ["-oiqt", "-qt", "per-channel", "-cind", "input", calib_npy, "[[[[0.0,0.0,0.0]]]]",
                "[[[[1.0,1.0,1.0]]]]"]
    subprocess.run(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=3600)
    stem = os.path.splitext(os.path.basename(src))[0]
    return os.path.join(out, stem + ("_integer_quant.tflite" if calib_npy else "_float32.tflite"))


def outputs(path: str, runtime: str, layout: str, tensors: np.ndarray) -> np.ndarray:
    from edgesight.calibration.preprocess import to_layout

    with create_runtime(runtime, path, input_layout="native", layout=layout) as rt:
        x = to_layout(tensors, "nchw", rt.input_layout)
        return np.concatenate([next(iter(rt.infer(x[i:i + 1]).values())) for i in range(len(x))])


def one(name: str, work: str, onnx2tf: str, calib: np.ndarray, val: np.ndarray) -> dict:
    pkg = os.path.join(work, name + "-package")
    fp32 = os.path.join(pkg, "model.fp32.onnx")
    ref = outputs(fp32, "onnxruntime", "nchw", val)
    row = {"model": name, "variants": {}}
    tmp = tempfile.mkdtemp(dir=work)
    made = {"today": os.path.join(pkg, "model.int8.tflite")}
    try:
        t0 = time.perf_counter()
        qoperator(fp32, os.path.join(tmp, "qop.onnx"), calib)
        made["direct-qop"] = direct(onnx2tf, os.path.join(tmp, "qop.onnx"), tmp)
        row["direct-qop_s"] = round(time.perf_counter() - t0, 1)
    except (subprocess.CalledProcessError, Exception) as exc:  # a failure of the candidate is a result here
        row["direct-qop_error"] = "%s: %s" % (type(exc).__name__, str(exc)[:200])
    try:
        t0 = time.perf_counter()
        work2 = tempfile.mkdtemp(dir=work)
        npy = save_npy(calib, os.path.join(work2, "calib.npy"), "nchw", "nhwc")
        shutil.copyfile(fp32, os.path.join(work2, "model.onnx"))
        made["direct-oiqt"] = direct(onnx2tf, os.path.join(work2, "model.onnx"), work2, npy)
        row["direct-oiqt_s"] = round(time.perf_counter() - t0, 1)
    except (subprocess.CalledProcessError, Exception) as exc:
        row["direct-oiqt_error"] = "%s: %s" % (type(exc).__name__, str(exc)[:200])
    runnable = {}
    for variant, path in made.items():
        if not os.path.isfile(path):
            row["variants"][variant] = {"error": "no file"}
            continue
        flex = [c for c in custom_ops(path) if c.startswith("Flex")]
        try:
            out = outputs(path, "tflite", "nhwc", val)
        except Exception as exc:  # does not load or run: recorded
            row["variants"][variant] = {"error": "%s: %s" % (type(exc).__name__, str(exc)[:200]), "flex": flex}
            continue
        runnable[variant] = path
        row["variants"][variant] = {"cosine": round(float(cosine_rows(out, ref).mean()), 4), "flex": flex,
                                    "size_kib": round(os.path.getsize(path) / 1024.0, 1)}
    lats = latencies_ms([(v, p, "tflite", "nhwc") for v, p in runnable.items()] +
                        [("fp32", fp32, "onnxruntime", "nchw")], val[:1], 2, 40)
    for variant in runnable:
        row["variants"][variant]["latency_x_today"] = round(lats[variant] / lats["today"], 2)
        row["variants"][variant]["latency_x_fp32"] = round(lats[variant] / lats["fp32"], 2)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx2tf2", required=True, help="onnx2tf >= 2.4 (its own Python >= 3.12 venv)")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "edgesight-coverage"))
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()
    calib = ImageFolder(os.path.join(args.work, "calib")).load(SPEC, 200).tensors
    val = ImageFolder(os.path.join(args.work, "val")).load(SPEC, 32).tensors
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        row = one(name, args.work, args.onnx2tf2, calib, val)
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(os.path.join(args.work, "tflite_backends.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
