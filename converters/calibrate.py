"""Confidence for a package's artifacts: the last step of ``edgesight convert`` and all of ``edgesight calibrate PKG
--val DIR``. Each artifact that runs here goes over the labelled validation images (to fit a temperature and, for a
goal, thresholds: :mod:`converters.confidence`) and, when given, over held-out test images (to report ECE,
precision of accepted results, coverage and the risk-coverage curve; never to fit). What is fitted goes into the
manifest as each artifact's ``calibration``; the measures go into the report's ``confidence`` section.
"""
import logging
import os
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from ..calibration.dataset import ImageFolder, LoadedSet, label_indices
from ..errors import ConfigError
from ..runtimes.manifest import Artifact, Calibration, Manifest, Thresholds
from ..runtimes.package import ModelPackage
from ..runtimes.package_write import with_artifacts, write_manifest
from ..runtimes.registry import is_installed
from . import confidence, report
from .validate import run_artifact

log = logging.getLogger(__name__)


class Goal(NamedTuple):
    """What the thresholds are fitted to; neither target: only the temperature is fitted."""

    target_precision: Optional[float] = None
    target_coverage: Optional[float] = None
    confidence: float = 0.9

    def check(self) -> "Goal":
        if self.target_precision is not None and self.target_coverage is not None:
            raise ConfigError("give --target-precision or --target-coverage, not both", field="--target-precision")
        for flag, v in (("--target-precision", self.target_precision), ("--confidence", self.confidence)):
            if v is not None and not 0.0 < v < 1.0:
                raise ConfigError("must lie strictly between 0 and 1, got %r" % v, field=flag)
        if self.target_coverage is not None and not 0.0 < self.target_coverage <= 1.0:
            raise ConfigError("must lie in (0, 1], got %r" % self.target_coverage, field="--target-coverage")
        return self


def labelled(folder: LoadedSet, labels: Sequence[str], flag: str) -> np.ndarray:
    truth = label_indices(folder.samples, labels)
    if truth is None:
        raise ConfigError("confidence is fitted on labelled images: one sub-folder per class, named as the labels "
                          "(%s)" % ", ".join(list(labels)[:12]), field=flag)
    return truth


def fit_artifacts(outputs: Dict[str, np.ndarray], truth: np.ndarray, labels: Sequence[str], kind: str, goal: Goal,
                  default_threshold: float) -> Dict[str, Dict[str, Any]]:
    """Per artifact file: everything :func:`confidence.calibrate` fits on its validation outputs."""
    return {f: confidence.calibrate(out, truth, labels, kind, goal.target_precision, goal.target_coverage,
                                    goal.confidence, default_threshold) for f, out in outputs.items()}


def calibration_of(fit: Dict[str, Any], folder: str) -> Calibration:
    th = fit.get("thresholds")
    return Calibration(temperature=round(fit["temperature"], 6), goal=fit.get("goal"),
                       thresholds=Thresholds(**th) if th else None,
                       fitted_on={"folder": _tail(folder), "images": fit["images"],
                                  "ece_before": round(fit["ece_before"], 6), "ece_after": round(fit["ece_after"], 6),
                                  "unmet": list(fit.get("unmet") or [])})


def _tail(folder: str) -> str:
    """The last two parts of a folder's path (``field/val``): names the set without the host's layout."""
    parts = os.path.normpath(folder).replace(os.sep, "/").split("/")
    return "/".join(p for p in parts[-2:] if p)[:200]


def measure_on_test(outputs: Dict[str, np.ndarray], truth: np.ndarray, manifest: Manifest,
                   calibrations: Dict[str, Calibration]) -> Dict[str, Dict[str, Any]]:
    """Per artifact file: the measures on the test split with the temperature and thresholds a device would use."""
    out = {}
    for f, o in outputs.items():
        cal = calibrations.get(f)
        default, per_class = manifest.thresholds_for(cal)
        out[f] = confidence.report_split(o, truth, manifest.labels, manifest.output,
                                         cal.temperature if cal else 1.0, default, per_class)
    return out


def section(fits: Dict[str, Dict[str, Any]], tests: Dict[str, Dict[str, Any]], goal: Goal, val: str,
            test: Optional[str]) -> Dict[str, Any]:
    """The report's ``confidence`` section."""
    return {"goal": fits and next(iter(fits.values())).get("goal"), "confidence": goal.confidence,
            "validation_set": val, "test_set": test,
            "artifacts": {f: dict(fit=fits[f], test=tests.get(f)) for f in fits}}


def runnable(pkg: ModelPackage) -> List[Artifact]:
    """The artifacts this machine can run (a TensorRT engine needs its Jetson: it keeps its ONNX's calibration)."""
    return [a for a in pkg.manifest.artifacts if a.runtime != "tensorrt" and is_installed(a.runtime)]


def run_all(pkg: ModelPackage, arts: Sequence[Artifact], data: LoadedSet) -> Dict[str, np.ndarray]:
    layout = pkg.preprocess.layout
    return {a.file: run_artifact(pkg.path(a), a.runtime, a.layout, data.tensors, layout, 0).outputs for a in arts}


def with_calibrations(manifest: Manifest, calibrations: Dict[str, Calibration]) -> List[Artifact]:
    """The manifest's artifacts with ``calibration`` set where fitted (an engine takes its source ONNX's)."""
    arts = [a.model_copy(update={"calibration": calibrations[a.file]}) if a.file in calibrations else a
            for a in manifest.artifacts]
    source = [a.calibration for a in arts if a.builds_tensorrt_engine and a.calibration is not None]
    return [a.model_copy(update={"calibration": source[0]}) if a.runtime == "tensorrt" and source else a
            for a in arts]


def calibrate_package(path: str, val: str, test: Optional[str], goal: Goal,
                      step: Callable[[str], None] = lambda s: None) -> Dict[str, Any]:
    """``edgesight calibrate``: fit every runnable artifact of the package at ``path`` on ``val``, report on
    ``test``, rewrite its manifest, and write ``calibration.json`` / ``calibration.html`` beside it."""
    goal.check()
    pkg = ModelPackage.load(path)
    arts = runnable(pkg)
    if not arts:
        raise ConfigError("no artifact of this package runs here (install edgesight[onnx] or edgesight[tflite])",
                          file=path, field="artifacts")
    m = pkg.manifest
    step("validation images: %s" % val)
    val_set = ImageFolder(val).load(m.preprocess)
    truth = labelled(val_set, m.labels, "--val")
    step("fitting %d artifact(s) on %d images" % (len(arts), len(truth)))
    fits = fit_artifacts(run_all(pkg, arts, val_set), truth, m.labels, m.output, goal, m.thresholds.default)
    cals = {f: calibration_of(fit, val) for f, fit in fits.items()}
    tests: Dict[str, Dict[str, Any]] = {}
    if test:
        step("test images (reported only): %s" % test)
        test_set = ImageFolder(test).load(m.preprocess)
        tests = measure_on_test(run_all(pkg, arts, test_set), labelled(test_set, m.labels, "--test"), m, cals)
    write_manifest(pkg.root, with_artifacts(m, with_calibrations(m, cals)))
    rep = {"package": {"name": m.name, "version": m.version}, "labels": list(m.labels),
           "confidence": section(fits, tests, goal, val, test)}
    report.write_json(rep, os.path.join(pkg.root, "calibration.json"))
    report.write_confidence_html(rep, os.path.join(pkg.root, "calibration.html"))
    return rep
