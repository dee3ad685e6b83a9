"""Conversion benchmark: per artifact size ratio, fidelity, latency ratio (2 threads) and conversion seconds.

    python bench/convert.py                 # the example digits model and a MobileNetV2-class 224x224 model
    python bench/convert.py --only digits   # or --only mobilenetv2
    python bench/convert.py --methods       # also compare calibration methods on the example model

Fidelity: top-1 drop in points on the labelled example; logit cosine vs FP32 on MobileNetV2 (random weights).
"By hand" runs the same tools directly (quantize_static x2, onnx2tf) on the same preprocessed calibration tensors,
to measure what edgesight's own work (image loading included) costs on top. Targets (issue 3): accuracy drop
<= 0.5 pt on the example for every INT8 artifact; INT8 TFLite size <= 0.3x and latency <= 0.55x FP32 on
MobileNetV2; convert time <= 1.2x the tools by hand.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
EXAMPLE = os.path.join(HERE, "..", "examples", "digits")

from edgesight.calibration.dataset import ImageFolder, OrtCalibrationReader  # noqa: E402
from edgesight.calibration.preprocess import PreprocessSpec, to_layout  # noqa: E402
from edgesight.converters import onnx_quant, tflite, toolchain  # noqa: E402
from edgesight.converters.convert import ConvertOptions, convert  # noqa: E402
from edgesight.calibration.preprocess import read_preprocess  # noqa: E402
from edgesight.files import read_labels  # noqa: E402
from edgesight.runtimes import create_runtime  # noqa: E402

TARGETS = ("onnx-int8-trt", "onnx-int8-cpu", "tflite-int8")


def latencies_ms(models, x: np.ndarray, threads: int, runs: int):
    """Median single-image latency per (name, path, runtime, layout). Measured in 4 rounds of blocks (each model runs
    runs/4 times in a row, then the next): load changes on a shared machine hit every model alike, and one runtime's
    spinning worker threads never compete with another's (as they would if single calls alternated). Each model is
    fed an NCHW batch transposed beforehand to its own layout, as the agent preprocesses straight into it."""
    rts = {name: create_runtime(runtime, path, input_layout="native", layout=layout, config={"threads": threads}).load()
           for name, path, runtime, layout in models}
    feeds = {name: to_layout(x, "nchw", rt.input_layout) for name, rt in rts.items()}
    try:
        for name, rt in rts.items():
            for _ in range(5):
                rt.infer(feeds[name])
        times = {name: [] for name in rts}
        for _ in range(4):
            for name, rt in rts.items():
                feed = feeds[name]
                rt.infer(feed)
                for _ in range(max(1, runs // 4)):
                    t = time.perf_counter()
                    rt.infer(feed)
                    times[name].append(1000 * (time.perf_counter() - t))
    finally:
        for rt in rts.values():
            rt.close()
    return {name: statistics.median(v) for name, v in times.items()}


BY_HAND = r"""
import os, shutil, subprocess, sys, time
import numpy as np
t0 = time.perf_counter()
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
model, npy, work, onnx2tf, shape = sys.argv[1:6]
input_name = sys.argv[6] if len(sys.argv) > 6 else "image"  # the model's input
extra = sys.argv[7].split(",") if len(sys.argv) > 7 and sys.argv[7] else []  # onnx2tf -rtpo ops
x = np.load(npy)  # preprocessed NCHW calibration tensors
class Reader(CalibrationDataReader):
    def __init__(self):
        self.i = 0
    def get_next(self):
        self.i += 1
        return {input_name: x[self.i - 1:self.i]} if self.i <= len(x) else None
quant_pre_process(model, os.path.join(work, "pre.onnx"))
TRT_OPS = ["Conv", "ConvTranspose", "Gemm", "MatMul", "Add"]  # the tensorrt profile's placement
for name, act, sym, bias in (("trt", QuantType.QInt8, True, False), ("cpu", QuantType.QUInt8, False, True)):
    placed = {"op_types_to_quantize": TRT_OPS} if name == "trt" else {}
    outputs = {"OpTypesToExcludeOutputQuantization": TRT_OPS} if name == "trt" else {}
    quantize_static(os.path.join(work, "pre.onnx"), os.path.join(work, name + ".onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, activation_type=act, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options=dict(outputs, ActivationSymmetric=sym, WeightSymmetric=True, QuantizeBias=bias),
                    **placed)
np.save(os.path.join(work, "calib_nhwc.npy"), x.transpose(0, 2, 3, 1))
np.save(os.path.join(work, "calibration_image_sample_data_20x128x128x3_float32.npy"), np.zeros((20, 128, 128, 3), np.float32))
shutil.copyfile(model, os.path.join(work, "hand.onnx"))
c = int(shape.split(",")[1])
subprocess.run([onnx2tf, "-i", "hand.onnx", "-o", "hand_out", "-ois", input_name + ":" + shape, "-oiqt", "-qt", "per-channel",
                "-cind", input_name, "calib_nhwc.npy", "[[[[%s]]]]" % ",".join(["0.0"] * c),
                "[[[[%s]]]]" % ",".join(["1.0"] * c), "-iqd", "int8", "-oqd", "int8"] + (["-rtpo"] + extra if extra else []),
               cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
print(time.perf_counter() - t0)
"""


def by_hand(model: str, spec: PreprocessSpec, calib_dir: str, count: int, work: str, input_name: str = "image",
            rtpo: str = ""):
    """The same three conversions with the tools called directly, in a fresh interpreter (cold imports, as for the
    CLI). Images are decoded and preprocessed beforehand and not counted. Returns (seconds, FP32 TFLite path)."""
    npy = os.path.join(work, "calib_nchw.npy")
    np.save(npy, ImageFolder(calib_dir).load(spec, count).tensors)
    shape = "1,%d,%d,%d" % (spec.channels, spec.height, spec.width)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", BY_HAND, model, npy, work, toolchain.require("tflite"), shape, input_name,
                    rtpo],
                   env=toolchain.tool_env("tflite"), stdout=subprocess.PIPE, check=True, timeout=3600)
    return time.perf_counter() - t0, os.path.join(work, "hand_out", "hand_float32.tflite")


def bench_model(title, model, spec, labels, calib, val, count, threads, runs, work, method="minmax"):
    out = os.path.join(work, title)
    hand, fp32_tflite = by_hand(model, spec, calib, count, tempfile.mkdtemp(dir=work))
    spec_file = os.path.join(work, title + ".preprocess.json")
    labels_file = os.path.join(work, title + ".labels.txt")
    with open(spec_file, "w") as f:
        f.write(spec.model_dump_json())  # JSON is YAML
    with open(labels_file, "w") as f:
        f.write("\n".join(labels) + "\n")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgesight", "convert", model, "--calib", calib, "--val", val,
                           "--out", out, "--labels", labels_file, "--preprocess", spec_file, "--targets",
                           ",".join(TARGETS), "--calib-count", str(count), "--method", method, "--force", "--json",
                           "--max-accuracy-drop", "100", "--min-agreement", "0", "-q"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=3600)
    total = time.perf_counter() - t0
    import json

    rep = json.loads(proc.stdout)
    x = ImageFolder(val).load(spec, 8).tensors[:1]
    fp32_path = os.path.join(out, "model.fp32.onnx")
    models = [("fp32", fp32_path, "onnxruntime", "nchw")] + [
        (a["target"], os.path.join(out, a["file"]), a["runtime"], a["layout"]) for a in rep["artifacts"]]
    if os.path.isfile(fp32_tflite):
        models.append(("tflite-fp32", fp32_tflite, "tflite", "nhwc"))
    lats = latencies_ms(models, x, threads, runs)
    fp32_lat = lats["fp32"]
    fp32_size = os.path.getsize(fp32_path)
    print("\n== %s (%s, %d calibration images, method %s, %d threads)" % (title, os.path.basename(model),
                                                                       rep["calibration"]["images"], method, threads))
    print("%-14s %10s %7s %12s %9s %11s %7s %9s" % ("artifact", "size KiB", "x fp32", "top-1 drop", "cosine",
                                                    "latency ms", "x fp32", "convert s"))
    print("%-14s %10.1f %7.2f %12s %9s %11.3f %7.2f %9s" % ("fp32", fp32_size / 1024, 1.0, "-", "-", fp32_lat, 1.0,
                                                            "-"))
    for a in rep["artifacts"]:
        lat = lats[a["target"]]
        drop = a["gate"].get("accuracy_drop_pt")
        print("%-14s %10.1f %7.2f %12s %9.5f %11.3f %7.2f %9.1f" % (
            a["target"], a["size_bytes"] / 1024, a["size_bytes"] / float(fp32_size),
            "-" if drop is None else "%.2f pt" % drop, a["metrics"]["cosine_mean"], lat, lat / fp32_lat,
            a["seconds"]))
    if "tflite-fp32" in lats:
        lat = lats["tflite-fp32"]
        print("%-14s %10.1f %7.2f %12s %9s %11.3f %7.2f %9s   (onnx2tf's FP32 TFLite, for reference)" % (
            "tflite-fp32", os.path.getsize(fp32_tflite) / 1024, os.path.getsize(fp32_tflite) / float(fp32_size), "-",
            "-", lat, lat / fp32_lat, "-"))
        if "tflite-int8" in lats:
            print("tflite-int8 vs tflite-fp32 (same runtime): latency %.2fx" % (lats["tflite-int8"] / lat))
    tm = rep["timings"]
    conv = tm["targets"]
    print("edgesight convert (CLI, cold start): %.1f s wall = %.1f s images + %.1f s conversions + %.1f s "
          "validation/report + start-up" % (total, tm["load_images"], tm["targets"], tm["validation"]))
    print("same tools by hand (fresh interpreter, images not counted): %.1f s; edgesight conversions / by hand = "
          "%.2fx; with image loading %.2fx" % (hand, conv / hand, (conv + tm["load_images"]) / hand))
    for f in rep["failed"]:
        print("FAILED %s: %s" % (f["target"], f["error"]))


def compare_methods(work: str) -> None:
    labels = read_labels(os.path.join(EXAMPLE, "labels.txt"))
    spec = read_preprocess(os.path.join(EXAMPLE, "preprocess.yaml"))
    print("\n== calibration methods on the example model (top-1 on 300 validation images; FP32 = 100%)")
    print("%-11s %-14s %8s %10s" % ("method", "artifact", "top-1", "cosine"))
    for method in onnx_quant.CALIBRATION_METHODS:
        res = convert(ConvertOptions(model=os.path.join(EXAMPLE, "package", "model.fp32.onnx"),
                                     calib=os.path.join(EXAMPLE, "images", "calib"),
                                     val=os.path.join(EXAMPLE, "images", "val"), out=os.path.join(work, method),
                                     labels=labels, preprocess=spec, targets=("onnx-int8-trt", "onnx-int8-cpu"),
                                     method=method, force=True, max_accuracy_drop=100.0, min_agreement=0.0))
        for a in res.report["artifacts"]:
            print("%-11s %-14s %7.2f%% %10.6f" % (method, a["target"], 100 * a["metrics"]["top1"],
                                                  a["metrics"]["cosine_mean"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("digits", "mobilenetv2"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--methods", action="store_true")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    work = tempfile.mkdtemp(prefix="edgesight-bench-")
    try:
        calib, val = os.path.join(EXAMPLE, "images", "calib"), os.path.join(EXAMPLE, "images", "val")
        if args.only in (None, "digits"):
            bench_model("digits", os.path.join(EXAMPLE, "package", "model.fp32.onnx"),
                        read_preprocess(os.path.join(EXAMPLE, "preprocess.yaml")),
                        read_labels(os.path.join(EXAMPLE, "labels.txt")), calib, val, 300, args.threads, args.runs,
                        work)
        if args.only in (None, "mobilenetv2"):
            import mobilenetv2

            model = mobilenetv2.build(os.path.join(work, "mobilenetv2.fp32.onnx"))
            spec = PreprocessSpec(size=(224, 224), resize="letterbox", color="rgb", mean=(0.485, 0.456, 0.406),
                                  std=(0.229, 0.224, 0.225), layout="nchw")
            bench_model("mobilenetv2", model, spec, ["class_%d" % i for i in range(1000)], calib, val, 100,
                        args.threads, args.runs, work)
        if args.methods:
            compare_methods(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
