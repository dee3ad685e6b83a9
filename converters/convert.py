"""``edgesight convert``: FP32 ONNX + real calibration images -> a validated model package with INT8 artifacts.

Steps: read the model's interface -> labels and preprocessing -> FP32 package -> calibration set (stratified,
seeded) -> each target (:mod:`converters.targets`; a failed target is recorded, the others are still produced) ->
validation of FP32 and every artifact on the validation set (:mod:`converters.validate`) -> gate ->
``edgesight.yaml`` + ``report.json`` + ``report.html``.
"""
import logging
import os
import sys
import tempfile
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from .. import __version__
from ..calibration.dataset import ImageFolder, LoadedSet, label_indices
from ..calibration.preprocess import PreprocessSpec, chw
from ..errors import ConfigError, EdgesightError
from ..runtimes.manifest import Artifact
from ..runtimes.package import ModelPackage
from ..runtimes.package_write import with_artifacts, with_calibrations, write_manifest
from . import calibrate, onnx_quant, report, targets, validate
from .onnx_model import OnnxInterface, read_interface
from .package_builder import create_fp32_package

log = logging.getLogger(__name__)

TARGETS = targets.TARGETS
DEFAULT_TARGETS = targets.DEFAULT
FILES = targets.FILES
EXIT_TARGET_FAILED = 7
EXIT_GATE_FAILED = 8
PREPROCESS_FLAGS = ("size", "resize", "color", "scale", "mean", "std", "layout")


class ConvertOptions(NamedTuple):
    model: str
    calib: str
    out: str
    val: Optional[str] = None
    labels: Optional[List[str]] = None
    preprocess: Optional[PreprocessSpec] = None
    targets: Sequence[str] = DEFAULT_TARGETS
    max_accuracy_drop: float = 1.0
    min_agreement: float = 0.98
    min_cosine: float = 0.99
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
    test: Optional[str] = None  # labelled held-out images: confidence is reported there, never fitted
    goal: calibrate.Goal = calibrate.Goal()


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
    c, h, w = chw(dims, layout)
    if h is None or w is None:
        raise ConfigError("input %r has dynamic spatial dimensions %s; give the size with --preprocess FILE or "
                          "--size H W" % (iface.input_name, list(iface.input_shape)), field="preprocess.size")
    return PreprocessSpec(size=(h, w), color="gray" if c == 1 else "rgb", layout=layout)


def merge_preprocess(model: str, spec: Optional[PreprocessSpec], flags: Dict[str, Any]) -> Optional[PreprocessSpec]:
    """``spec`` (from --preprocess) with the fields given as flags (--size, --mean, ...) replaced; without a spec the
    flags complete the one inferred from the model's input."""
    from pydantic import ValidationError

    from ..errors import validation_problems

    given = {k: v for k, v in flags.items() if v is not None}
    if not given:
        return spec
    base = spec.model_dump() if spec else {}
    if "size" not in base and "size" not in given:
        base = default_spec(read_interface(model)).model_dump()
    try:
        return PreprocessSpec(**dict(base, **given))
    except ValidationError as exc:
        problems, field = validation_problems(exc.errors())
        named = [k for k in given if k in problems]  # a rule across fields (mean/std vs color) names the flag
        raise ConfigError("invalid preprocessing flags: %s" % problems,
                          field="--" + (field or (named[0] if named else "preprocess")))


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


class _Inputs(NamedTuple):
    pkg: ModelPackage
    iface: OnnxInterface
    labels: List[str]
    spec: PreprocessSpec
    calib: LoadedSet
    val: LoadedSet
    val_name: str


def _check_options(opts: ConvertOptions) -> None:
    unknown = [t for t in opts.targets if t not in TARGETS]
    if unknown:
        raise ConfigError("unknown target(s) %s; choose from %s" % (", ".join(unknown), ",".join(TARGETS)),
                          field="targets")
    if opts.calib_count < 1:
        raise ConfigError("must be at least 1 (calibration images to sample), got %d" % opts.calib_count,
                          field="--calib-count")
    opts.goal.check()
    if opts.test and not opts.val:
        raise ConfigError("a test split is reported against what --val fitted: give --val too", field="--test")


def _prepare(opts: ConvertOptions, progress: Progress) -> _Inputs:
    iface = read_interface(opts.model)
    calib_folder = ImageFolder(opts.calib)
    val_folder = ImageFolder(opts.val) if opts.val else None
    labels = resolve_labels(iface, opts.labels, [f for f in (val_folder, calib_folder) if f])
    spec = opts.preprocess or default_spec(iface)
    name = opts.name or os.path.splitext(os.path.basename(opts.model))[0].replace(".fp32", "")
    progress.step("FP32 package %s (%d labels, input %s)" % (opts.out, len(labels), list(iface.input_shape)))
    pkg = create_fp32_package(opts.model, labels, spec, opts.out, name=name, version=opts.version,
                              output=opts.output, threshold=opts.threshold, overwrite=opts.force)
    progress.step("calibration images: %s (up to %d, seed %d)" % (opts.calib, opts.calib_count, opts.seed))
    calib = calib_folder.load(spec, opts.calib_count, opts.seed,
                              on_progress=lambda i, n: progress.count("calibration images", i, n))
    if val_folder is None:
        log.warning("no --val folder: validating on the calibration images (agreement only is meaningful)")
        return _Inputs(pkg, iface, labels, spec, calib, calib, opts.calib + " (calibration images: no --val given)")
    progress.step("validation images: %s" % opts.val)
    val = val_folder.load(spec, on_progress=lambda i, n: progress.count("validation images", i, n))
    return _Inputs(pkg, iface, labels, spec, calib, val, opts.val)


def _build_targets(opts: ConvertOptions, inp: _Inputs, progress: Progress, notes: List[str]):
    """Every target in turn; a failed one is recorded (its file removed) and the others still run."""
    with tempfile.TemporaryDirectory(prefix="edgesight-convert-") as work:
        job = targets.Job(inp.pkg.path(inp.pkg.manifest.source), opts.out, inp.iface, inp.calib, inp.spec,
                          opts.method, opts.tflite_io, progress.step, notes, opts.min_cosine, work)
        return _each_target(opts, job)


def _each_target(opts: ConvertOptions, job: targets.Job):
    built: List[Dict[str, Any]] = []
    failed: List[Dict[str, str]] = []
    for target in opts.targets:
        t0 = time.perf_counter()
        try:
            entries = targets.build(job, target, built)
        except EdgesightError as exc:
            log.error("%s failed: %s", target, exc)
            failed.append({"target": target, "step": "convert", "error": str(exc)})
            dst = os.path.join(opts.out, FILES[target])
            if os.path.exists(dst):
                os.unlink(dst)
            continue
        for e in entries:
            if e["target"] == target:
                e["seconds"] = round(time.perf_counter() - t0, 2)
        built.extend(entries)
    return built, failed


def convert(opts: ConvertOptions, progress: Optional[Progress] = None) -> ConvertResult:
    progress = progress or Progress(False)
    _check_options(opts)
    t_start = time.perf_counter()
    inp = _prepare(opts, progress)
    t_loaded = time.perf_counter()
    notes: List[str] = []
    artifacts, failed = _build_targets(opts, inp, progress, notes)
    t_targets = time.perf_counter()
    progress.step("validating FP32 and %d artifact(s) on %d images" % (len(artifacts), len(inp.val.samples)))
    truth = label_indices(inp.val.samples, inp.labels)
    checked = validate.validate(opts.out, inp.pkg.path(inp.pkg.manifest.source), artifacts, inp.val.tensors,
                                inp.spec.layout, inp.labels, truth, opts.output, opts.max_accuracy_drop,
                                opts.min_agreement, opts.latency_runs, opts.min_cosine)
    failed += checked.failed
    conf, cals = _confidence(opts, inp, artifacts, checked, truth, progress)
    rep = {
        "edgesight": __version__, "package": {"name": inp.pkg.manifest.name, "version": opts.version},
        "labels": inp.labels, "source": opts.model, "validation_set": inp.val_name,
        "calibration": {"folder": opts.calib, "images": len(inp.calib.samples), "requested": opts.calib_count,
                        "seed": opts.seed, "method": opts.method,
                        "skipped": [{"file": p, "reason": r} for p, r in inp.calib.skipped]},
        "validation_skipped": [{"file": p, "reason": r} for p, r in inp.val.skipped] if inp.val is not inp.calib
        else [],
        "gate": {"max_accuracy_drop": opts.max_accuracy_drop, "min_agreement": opts.min_agreement,
                 "min_cosine": opts.min_cosine},
        "versions": tool_versions(),
        "fp32": checked.fp32, "artifacts": [dict(a, name=a["target"]) for a in artifacts], "failed": failed,
        "confidence": conf, "notes": notes, "seconds": round(time.perf_counter() - t_start, 2),
        "timings": {"load_images": round(t_loaded - t_start, 3), "targets": round(t_targets - t_loaded, 3),
                    "validation": round(time.perf_counter() - t_targets, 3)},
    }
    _write(opts.out, inp.pkg, artifacts, rep, passed=not checked.gate_failed and not failed, truth=truth,
           calibrations=cals)
    code = EXIT_TARGET_FAILED if failed else (EXIT_GATE_FAILED if checked.gate_failed else 0)
    return ConvertResult(ModelPackage.load(opts.out), rep, code)


def _confidence(opts: ConvertOptions, inp: _Inputs, artifacts: List[Dict[str, Any]], checked: validate.Validation,
                truth: Any, progress: Progress) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Fit each artifact's temperature (and thresholds for a goal) on the labelled validation outputs; report on
    --test. Without labelled --val images nothing is fitted and the section says why."""
    if not opts.val or truth is None:
        why = "no --val images" if not opts.val else "the --val images are not labelled by class folders"
        if opts.goal.target_precision is not None or opts.goal.target_coverage is not None:
            raise ConfigError("fitting thresholds needs labelled validation images (%s)" % why, field="--val")
        return {"skipped": "not calibrated: %s" % why}, {}
    progress.step("confidence: fitting %d artifact(s) on %d labelled images" % (len(checked.outputs), len(truth)))
    m = inp.pkg.manifest
    runs = [(m.source.file, inp.pkg.path(m.source), "onnxruntime", inp.spec.layout)] + [
        (a["file"], os.path.join(opts.out, a["file"]), a["runtime"], a["layout"]) for a in artifacts
        if a["file"] in checked.outputs]
    return calibrate.fit_and_report(checked.outputs, truth, m, opts.goal, opts.val, opts.test, runs,
                                    lambda s: progress.step("confidence: " + s))


def tool_versions() -> Dict[str, Optional[str]]:
    """The versions that decide the output's quality, recorded in every report."""
    from .tflite import tool_version

    out: Dict[str, Optional[str]] = {}
    for name, module in (("onnxruntime", "onnxruntime"), ("onnx", "onnx"), ("numpy", "numpy")):
        try:
            out[name] = str(__import__(module).__version__)
        except ImportError:
            out[name] = None
    out["onnx2tf"] = tool_version()
    return out


def _write(out: str, pkg: ModelPackage, artifacts: List[Dict[str, Any]], rep: Dict[str, Any], passed: bool,
           truth: Any, calibrations: Dict[str, Any]) -> None:
    arts = with_calibrations(list(pkg.manifest.artifacts) + [Artifact(
        runtime=a["runtime"], file=a["file"], precision=a["precision"], sha256=a["sha256"], layout=a["layout"],
        profile=a.get("profile"), built_for=a.get("built_for"), io=a.get("io"), validation=validate.summary(a))
        for a in artifacts], calibrations)
    write_manifest(out, with_artifacts(pkg.manifest, arts, validation={
        "report": "report.json", "images": rep["fp32"]["metrics"]["images"], "labelled": truth is not None,
        "fp32_top1": rep["fp32"]["metrics"].get("top1"), "passed": passed,
        "failed_targets": [f["target"] for f in rep["failed"]]}))
    report.write_json(rep, os.path.join(out, "report.json"))
    report.write_html(rep, os.path.join(out, "report.html"))
