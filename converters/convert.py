"""``edgesight convert``: FP32 ONNX + real calibration images -> a validated model package with INT8 artifacts.

Steps: read the model's interface -> labels and preprocessing -> FP32 package -> calibration set (stratified,
seeded) -> each target (a failed target is recorded, the others are still produced) -> validation of FP32 and every
artifact on the validation set -> gate -> ``edgesight.yaml`` + ``report.json`` + ``report.html``.
"""
import logging
import os
import sys
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from .. import __version__
from ..calibration.dataset import ImageFolder, LoadedSet, OrtCalibrationReader, label_indices
from ..calibration.preprocess import PreprocessSpec, to_layout
from ..errors import ConfigError, EdgesightError
from ..runtimes.package import Artifact, Manifest, ModelPackage, sha256_file
from ..runtimes.postprocess import to_probabilities
from ..runtimes.registry import create_runtime, is_installed
from . import metrics, onnx_quant, qdq_verify, report, tflite
from .onnx_model import OnnxInterface, read_interface
from .package_builder import create_fp32_package, write_manifest

log = logging.getLogger(__name__)

TARGETS = ("onnx-int8-trt", "onnx-int8-cpu", "tflite-int8", "tensorrt")
FILES = {"onnx-int8-trt": "model.int8.onnx", "onnx-int8-cpu": "model.int8.cpu.onnx",
         "tflite-int8": "model.int8.tflite", "tensorrt": "model.int8.engine"}
EXIT_TARGET_FAILED = 7
EXIT_GATE_FAILED = 8


class ConvertOptions(NamedTuple):
    model: str
    calib: str
    out: str
    val: Optional[str] = None
    labels: Optional[List[str]] = None
    preprocess: Optional[PreprocessSpec] = None
    targets: Sequence[str] = TARGETS
    max_accuracy_drop: float = 1.0
    min_agreement: float = 0.98
    calib_count: int = 300
    seed: int = 0
    method: str = onnx_quant.DEFAULT_METHOD
    tflite_io: str = "float"
    name: Optional[str] = None
    version: str = "1.0.0"
    threshold: float = 0.8
    output: str = "logits"
    force: bool = False
    latency_runs: int = 50


class ConvertResult(NamedTuple):
    package: ModelPackage
    report: Dict[str, Any]
    exit_code: int


class Progress(object):
    """Step lines on stderr (a live counter when stderr is a terminal)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()

    def step(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write("[convert] %s\n" % text)
            sys.stderr.flush()

    def count(self, text: str, i: int, n: int) -> None:
        if self.tty:
            sys.stderr.write("\r[convert] %s %d/%d" % (text, i, n) + ("\n" if i == n else ""))
            sys.stderr.flush()


def default_spec(iface: OnnxInterface) -> PreprocessSpec:
    """Preprocessing inferred from the input shape, when no --preprocess is given: RGB, /255, no mean/std."""
    dims = iface.input_shape[1:]
    layout = "nhwc" if dims[-1] in (1, 3) and dims[0] not in (1, 3) else "nchw"
    c, h, w = dims if layout == "nchw" else (dims[2], dims[0], dims[1])
    if h is None or w is None:
        raise ConfigError("input %r has dynamic spatial dimensions %s; give the size with --preprocess FILE or "
                          "--size H W" % (iface.input_name, list(iface.input_shape)), field="preprocess.size")
    return PreprocessSpec(size=(h, w), color="gray" if c == 1 else "rgb", layout=layout)


def resolve_labels(iface: OnnxInterface, given: Optional[List[str]], folders: Sequence[ImageFolder]) -> List[str]:
    classes = iface.output_shape[-1] if iface.output_shape else None
    if given is not None:
        return given
    for folder in folders:
        if folder.labelled and (classes is None or len(folder.classes) == classes):
            log.warning("no --labels: using the sub-folder names of %s in sorted order", folder.root)
            return folder.classes
    if classes is None:
        raise ConfigError("the model's output size is dynamic and no --labels file was given", field="labels")
    return ["class_%d" % i for i in range(classes)]


def convert(opts: ConvertOptions, progress: Optional[Progress] = None) -> ConvertResult:
    progress = progress or Progress(False)
    unknown = [t for t in opts.targets if t not in TARGETS]
    if unknown:
        raise ConfigError("unknown target(s) %s; choose from %s" % (", ".join(unknown), ",".join(TARGETS)),
                          field="targets")
    t_start = time.perf_counter()
    iface = read_interface(opts.model)
    calib_folder = ImageFolder(opts.calib)
    val_folder = ImageFolder(opts.val) if opts.val else None
    labels = resolve_labels(iface, opts.labels, [f for f in (val_folder, calib_folder) if f])
    spec = opts.preprocess or default_spec(iface)
    name = opts.name or os.path.splitext(os.path.basename(opts.model))[0].replace(".fp32", "")
    progress.step("FP32 package %s (%d labels, input %s)" % (opts.out, len(labels), list(iface.input_shape)))
    pkg = create_fp32_package(opts.model, labels, spec, opts.out, name=name, version=opts.version,
                              output=opts.output, threshold=opts.threshold, overwrite=opts.force)
    source = pkg.path(pkg.manifest.source)

    progress.step("calibration images: %s (up to %d, seed %d)" % (opts.calib, opts.calib_count, opts.seed))
    calib = calib_folder.load(spec, opts.calib_count, opts.seed,
                              on_progress=lambda i, n: progress.count("calibration images", i, n))
    if val_folder is not None:
        progress.step("validation images: %s" % opts.val)
        val = val_folder.load(spec, on_progress=lambda i, n: progress.count("validation images", i, n))
        val_name = opts.val
    else:
        log.warning("no --val folder: validating on the calibration images (agreement only is meaningful)")
        val, val_name = calib, opts.calib + " (calibration images: no --val given)"
    truth = label_indices(val.samples, labels)
    t_loaded = time.perf_counter()

    artifacts: List[Dict[str, Any]] = []  # built here, validated below
    failed: List[Dict[str, str]] = []
    notes: List[str] = []
    trt_onnx: Optional[str] = None
    for target in opts.targets:
        dst = os.path.join(opts.out, FILES[target])
        t0 = time.perf_counter()
        try:
            if target in ("onnx-int8-trt", "onnx-int8-cpu"):
                profile = "tensorrt" if target == "onnx-int8-trt" else "cpu"
                progress.step("%s: quantize_static QDQ, profile %s, %s calibration" % (target, profile, opts.method))
                onnx_quant.quantize_onnx(source, dst, OrtCalibrationReader(iface.input_name, calib.tensors),
                                         profile, opts.method)
                if profile == "tensorrt":
                    qdq_verify.verify_tensorrt_qdq(dst)
                    trt_onnx = dst
                artifacts.append({"target": target, "runtime": "onnxruntime", "file": FILES[target],
                                  "precision": "int8", "layout": spec.layout,
                                  "profile": "tensorrt-qdq" if profile == "tensorrt" else "cpu"})
            elif target == "tflite-int8":
                progress.step("%s: onnx2tf full-integer per-channel (%s I/O)" % (target, opts.tflite_io))
                tflite.convert_int8(source, calib.tensors, spec, dst, io=opts.tflite_io)
                artifacts.append({"target": target, "runtime": "tflite", "file": FILES[target], "precision": "int8",
                                  "layout": "nhwc"})
            elif target == "tensorrt":
                built = _tensorrt_target(source, dst, iface, calib, spec, opts, trt_onnx, progress, notes)
                if built is not None and not any(a["target"] == "onnx-int8-trt" for a in artifacts):
                    # the Q/DQ ONNX was made for the engine: list it too, the device rebuilds from it
                    artifacts.append({"target": "onnx-int8-trt", "runtime": "onnxruntime",
                                      "file": FILES["onnx-int8-trt"], "precision": "int8", "layout": spec.layout,
                                      "profile": "tensorrt-qdq"})
                if built is not None:
                    artifacts.append({"target": target, "runtime": "tensorrt", "file": FILES[target],
                                      "precision": "int8", "layout": spec.layout, "built_for": built})
        except EdgesightError as exc:
            log.error("%s failed: %s", target, exc)
            failed.append({"target": target, "error": str(exc)})
            if os.path.exists(dst):
                os.unlink(dst)
            continue
        if artifacts and artifacts[-1]["target"] == target:
            artifacts[-1]["seconds"] = round(time.perf_counter() - t0, 2)

    t_targets = time.perf_counter()
    progress.step("validating FP32 and %d artifact(s) on %d images" % (len(artifacts), len(val.samples)))
    fp32_out, fp32_latency, _ = _run(pkg, source, "onnxruntime", spec.layout, val.tensors, opts.latency_runs)
    fp32_probs = to_probabilities(fp32_out, opts.output)
    fp32_metrics = metrics.compare(fp32_out, fp32_probs, labels, truth)
    fp32_entry = {"file": pkg.manifest.source.file, "size_bytes": os.path.getsize(source), "latency_ms": fp32_latency,
                  "metrics": fp32_metrics}
    gate_failed = False
    for a in artifacts:
        path = os.path.join(opts.out, a["file"])
        a["size_bytes"] = os.path.getsize(path)
        a["sha256"] = sha256_file(path)
        if not is_installed(a["runtime"]):
            a["gate"] = {"passed": False, "reasons": ["%s runtime not installed here: not validated" % a["runtime"]]}
            gate_failed = True
            continue
        out, latency, a["io"] = _run(pkg, path, a["runtime"], a["layout"], val.tensors, opts.latency_runs)
        a["latency_ms"] = latency
        a["metrics"] = metrics.compare(out, to_probabilities(out, opts.output), labels, truth, ref_outputs=fp32_out)
        a["gate"] = metrics.gate(a["metrics"], fp32_metrics, opts.max_accuracy_drop, opts.min_agreement)
        gate_failed = gate_failed or not a["gate"]["passed"]

    manifest_artifacts = list(pkg.manifest.artifacts)
    for a in artifacts:
        manifest_artifacts.append(Artifact(
            runtime=a["runtime"], file=a["file"], precision=a["precision"], sha256=a["sha256"], layout=a["layout"],
            profile=a.get("profile"), built_for=a.get("built_for"), io=a.get("io"), validation=_summary(a)))
    rep = {
        "edgesight": __version__, "package": {"name": name, "version": opts.version}, "labels": labels,
        "source": opts.model, "validation_set": val_name,
        "calibration": {"folder": opts.calib, "images": len(calib.samples), "requested": opts.calib_count,
                        "seed": opts.seed, "method": opts.method,
                        "skipped": [{"file": p, "reason": r} for p, r in calib.skipped]},
        "validation_skipped": [{"file": p, "reason": r} for p, r in val.skipped] if val is not calib else [],
        "gate": {"max_accuracy_drop": opts.max_accuracy_drop, "min_agreement": opts.min_agreement},
        "fp32": fp32_entry, "artifacts": [dict(a, name=a["target"]) for a in artifacts], "failed": failed,
        "notes": notes, "seconds": round(time.perf_counter() - t_start, 2),
        "timings": {"load_images": round(t_loaded - t_start, 3), "targets": round(t_targets - t_loaded, 3),
                    "validation": round(time.perf_counter() - t_targets, 3)},
    }
    manifest = Manifest(**dict(pkg.manifest.to_yaml_dict(), artifacts=[
        m.model_dump(mode="json", exclude_none=True) for m in manifest_artifacts],
        validation={"report": "report.json", "images": len(val.samples), "labelled": truth is not None,
                    "fp32_top1": fp32_metrics.get("top1"), "passed": not gate_failed and not failed,
                    "failed_targets": [f["target"] for f in failed]}))
    write_manifest(opts.out, manifest)
    report.write_json(rep, os.path.join(opts.out, "report.json"))
    report.write_html(rep, os.path.join(opts.out, "report.html"))
    code = EXIT_TARGET_FAILED if failed else (EXIT_GATE_FAILED if gate_failed else 0)
    return ConvertResult(ModelPackage.load(opts.out), rep, code)


def _summary(a: Dict[str, Any]) -> Dict[str, Any]:
    m = a.get("metrics", {})
    g = a.get("gate", {})
    keep = {k: m[k] for k in ("top1", "agreement", "cosine_mean") if k in m}
    keep.update(passed=bool(g.get("passed")), size_bytes=a["size_bytes"])
    if a.get("latency_ms") is not None:
        keep["latency_ms"] = round(a["latency_ms"], 4)
    if g.get("accuracy_drop_pt") is not None:
        keep["accuracy_drop_pt"] = round(g["accuracy_drop_pt"], 4)
    if g.get("reasons"):
        keep["reasons"] = g["reasons"]
    return keep


def _run(pkg: ModelPackage, path: str, runtime: str, layout: str, tensors: np.ndarray, latency_runs: int):
    """All outputs (batches of 32), the median single-image latency in ms, and the I/O types and quant params.

    Each artifact is fed in its own layout, as the agent feeds it (``tensors`` are transposed once here)."""
    rt = create_runtime(runtime, path, input_layout="native", layout=layout)
    with rt:
        io = {kind: {"dtype": t.dtype, "scale": t.quant.scale, "zero_point": t.quant.zero_point} if t.quant else
              {"dtype": t.dtype} for kind, t in (("input", rt.inputs[0]), ("output", rt.outputs[0]))}
        tensors = to_layout(tensors, pkg.preprocess.layout, rt.input_layout)
        outs = [next(iter(rt.infer(tensors[i:i + 32]).values())) for i in range(0, len(tensors), 32)]
        times = []
        for i in range(min(latency_runs, len(tensors)) + 3):
            x = tensors[i % len(tensors):i % len(tensors) + 1]
            t = time.perf_counter()
            rt.infer(x)
            times.append(1000.0 * (time.perf_counter() - t))
    return np.concatenate(outs), float(np.median(times[3:] or times)), io


def _tensorrt_target(source: str, dst: str, iface: OnnxInterface, calib: LoadedSet, spec: PreprocessSpec,
                     opts: ConvertOptions, trt_onnx: Optional[str], progress: Progress,
                     notes: List[str]) -> Optional[Dict[str, str]]:
    from .tensorrt_engine import build_engine, tensorrt_version

    version = tensorrt_version()
    if version is None:
        msg = ("tensorrt: TensorRT is not installed here, so no engine is built. The device builds its own engine "
               "from the TensorRT-safe Q/DQ ONNX (%s) with its TensorRT and caches it." % FILES["onnx-int8-trt"])
        progress.step(msg)
        notes.append(msg)
        return None
    if trt_onnx is None:  # the engine is built from the verified Q/DQ ONNX; make it if it was not a target
        trt_onnx = os.path.join(opts.out, FILES["onnx-int8-trt"])
        onnx_quant.quantize_onnx(source, trt_onnx, OrtCalibrationReader(iface.input_name, calib.tensors),
                                 "tensorrt", opts.method)
        qdq_verify.verify_tensorrt_qdq(trt_onnx)
    progress.step("tensorrt %s: building the engine from %s" % (version, os.path.basename(trt_onnx)))
    return build_engine(trt_onnx, dst, spec.input_shape()[1:])
