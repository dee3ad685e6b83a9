"""``edgesight convert``: FP32 ONNX + calibration images -> a validated INT8 model package (host side)."""
import argparse
import json
import os
import sys
from typing import Any, Dict

from .calibrate import add_goal_flags, goal_of, print_confidence
from .common import human, non_negative, out, positive, probability


def register(sub: Any) -> None:
    p = sub.add_parser("convert", help="FP32 ONNX + calibration images -> validated INT8 model package")
    p.add_argument("model", help="FP32 ONNX image classifier (one 4-D image input)")
    p.add_argument("--calib", required=True, help="calibration images: flat folder or one sub-folder per class")
    p.add_argument("--val", help="validation images; sub-folders named after labels give accuracy, and each "
                   "artifact's temperature (and thresholds, with a target) is fitted on them")
    p.add_argument("--labels", help="text file, one class per line in output order (default: --val sub-folders)")
    p.add_argument("--preprocess", help="YAML preprocessing spec; the flags below override its fields")
    p.add_argument("--size", type=positive, nargs=2, metavar=("H", "W"))
    p.add_argument("--resize", choices=("letterbox", "center_crop", "stretch"))
    p.add_argument("--color", choices=("rgb", "bgr", "gray"))
    p.add_argument("--scale", type=float)
    p.add_argument("--mean", type=float, nargs="+")
    p.add_argument("--std", type=float, nargs="+")
    p.add_argument("--layout", choices=("nchw", "nhwc"))
    p.add_argument("--targets", help="comma-separated from onnx-int8-trt, onnx-int8-trt-fp16 (TensorRT 10/11), "
                   "onnx-int8-cpu, tflite-int8, tensorrt (default: all but onnx-int8-trt-fp16)")
    p.add_argument("--out", help="package directory (default: MODEL-package)")
    p.add_argument("--max-accuracy-drop", type=non_negative, default=1.0,
                   help="gate: top-1 drop in points (default 1.0)")
    p.add_argument("--min-agreement", type=non_negative, default=0.98, help="gate: top-1 agreement with FP32 (0.98)")
    p.add_argument("--min-cosine", type=probability, default=0.99, help="fidelity: INT8 ONNX keeps its most "
                   "sensitive layers in float until its logits reach this cosine with FP32, and the gate asks it "
                   "of every artifact (default 0.99)")
    p.add_argument("--calib-count", type=positive, default=300, help="calibration images to sample (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", choices=("minmax", "entropy", "percentile", "mse"), default="minmax",
                   help="ONNX calibration method (default minmax, MSE ranges where min-max misses --min-cosine; "
                        "see docs/converting.md)")
    p.add_argument("--tflite-io", choices=("int8", "float"), default="float",
                   help="TFLite input/output type around the int8 body (default float: faster from Python)")
    p.add_argument("--name", help="package name (default: model file name)")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--threshold", type=probability, default=0.8)
    p.add_argument("--output", choices=("logits", "probabilities"), default="logits")
    add_goal_flags(p)
    p.add_argument("--force", action="store_true", help="replace an existing package")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..calibration.preprocess import read_preprocess
    from ..converters.convert import DEFAULT_TARGETS, EXIT_TARGET_FAILED, PREPROCESS_FLAGS, ConvertOptions, \
        Progress, convert, merge_preprocess
    from ..files import read_labels

    spec = read_preprocess(args.preprocess) if args.preprocess else None
    spec = merge_preprocess(args.model, spec, {k: getattr(args, k) for k in PREPROCESS_FLAGS})
    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else list(DEFAULT_TARGETS)
    stem = os.path.splitext(os.path.basename(args.model))[0].replace(".fp32", "")
    opts = ConvertOptions(
        model=args.model, calib=args.calib, val=args.val, out=args.out or stem + "-package",
        labels=read_labels(args.labels, field="--labels") if args.labels else None, preprocess=spec,
        targets=targets, max_accuracy_drop=args.max_accuracy_drop, min_agreement=args.min_agreement,
        min_cosine=args.min_cosine,
        calib_count=args.calib_count, seed=args.seed, method=args.method, tflite_io=args.tflite_io, name=args.name,
        version=args.version, threshold=args.threshold, output=args.output, force=args.force, test=args.test,
        goal=goal_of(args))
    result = convert(opts, Progress(enabled=not args.quiet))
    if args.json:
        out(json.dumps(dict(result.report, exit_code=result.exit_code, package_dir=os.path.abspath(opts.out)),
                       indent=2))
        return result.exit_code
    print_report(result.report, opts.out)
    if result.exit_code:
        sys.stderr.write("edgesight: error: %s\n" % ("a target failed (see above); the other artifacts were written"
                                                     if result.exit_code == EXIT_TARGET_FAILED else
                                                     "the validation gate failed for at least one artifact; it is "
                                                     "marked failed in edgesight.yaml"))
    return result.exit_code


def _cells(a: Dict[str, Any], fp32: Dict[str, Any]) -> tuple:
    m = a.get("metrics", {})
    g = a.get("gate")
    return (a["target"], a["file"], human(a["size_bytes"]), "%.2f" % (a["size_bytes"] / float(fp32["size_bytes"])),
            "-" if m.get("top1") is None else "%.2f%%" % (100 * m["top1"]),
            "-" if m.get("agreement") is None else "%.2f%%" % (100 * m["agreement"]),
            "-" if m.get("cosine_mean") is None else "%.4f" % m["cosine_mean"],
            "-" if a.get("latency_ms") is None else "%.3f ms" % a["latency_ms"],
            "-" if a.get("latency_ms") is None else "%.2f" % (a["latency_ms"] / fp32["latency_ms"]),
            "-" if g is None else ("passed" if g["passed"] else "FAILED: " + "; ".join(g["reasons"])))


def print_report(rep: Dict[str, Any], package_dir: str) -> None:
    row = "%-18s %-22s %9s %8s %8s %9s %8s %9s %6s  %s"
    out(row % ("target", "file", "size", "x fp32", "top-1", "agreement", "cosine", "latency", "x fp32", "gate"))
    fp32 = rep["fp32"]
    for a in [dict(fp32, target="fp32 (source)", gate=None)] + rep["artifacts"]:
        out(row % _cells(a, fp32))
    for a in rep["artifacts"]:
        if a.get("float_nodes"):
            out("%-18s %d layer(s) kept in float: %s" % (a["target"], len(a["float_nodes"]), ", ".join(
                a["float_nodes"][:6]) + (", ..." if len(a["float_nodes"]) > 6 else "")))
    for f in rep["failed"]:
        out("%-18s FAILED at %s: %s" % (f["target"], f.get("step", "convert"), f["error"]))
    print_confidence(rep.get("confidence"))
    for note in rep["notes"]:
        out(note)
    if rep["calibration"]["skipped"]:
        out("skipped %d unreadable calibration image(s): %s" % (len(rep["calibration"]["skipped"]), ", ".join(
            os.path.basename(s["file"]) for s in rep["calibration"]["skipped"][:10])))
    out("package %s (report.html, report.json) in %.1f s" % (package_dir, rep["seconds"]))
