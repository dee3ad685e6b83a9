"""Confidence for a package's artifacts: the last step of ``edgesight convert`` and all of ``edgesight calibrate PKG
--val DIR``. Each artifact that runs here goes over the labelled validation images (to fit a temperature and, for a
goal, thresholds: :mod:`converters.confidence`) and, when given, over held-out test images (to report ECE,
precision of accepted results, coverage and the risk-coverage curve; never to fit). What is fitted goes into the
manifest as each artifact's ``calibration``; the measures go into the report's ``confidence`` section.
"""
import logging
import os
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..calibration.dataset import ImageFolder, LoadedSet, label_indices
from ..calibration.preprocess import PreprocessSpec
from ..errors import ConfigError
from ..runtimes.manifest import Calibration, Manifest, Thresholds
from ..runtimes.package import ModelPackage
from ..runtimes.package_write import with_artifacts, with_calibrations, write_manifest
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


def load_labelled(folder: str, spec: PreprocessSpec, labels: Sequence[str], flag: str) -> Tuple[LoadedSet, np.ndarray]:
    """The images of ``folder`` and their class indices; refused (naming ``flag``) when not labelled by class."""
    data = ImageFolder(folder).load(spec)
    return data, labelled(data, labels, flag)


def labelled(folder: LoadedSet, labels: Sequence[str], flag: str) -> np.ndarray:
    truth = label_indices(folder.samples, labels)
    if truth is None:
        raise ConfigError("confidence is fitted on labelled images: one sub-folder per class, named as the labels "
                          "(%s)" % ", ".join(list(labels)[:12]), field=flag)
    return truth


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


Run = Tuple[str, str, str, Optional[str]]  # artifact file, its path, runtime, layout


def outputs_of(runs: Sequence[Run], data: LoadedSet, spec_layout: str) -> Dict[str, np.ndarray]:
    """Each artifact's outputs on ``data`` (fed in its own layout, as the device feeds it)."""
    return {f: run_artifact(path, rt, layout, data.tensors, spec_layout, 0).outputs for f, path, rt, layout in runs}


def fit_and_report(outputs: Dict[str, np.ndarray], truth: np.ndarray, manifest: Manifest, goal: Goal, val: str,
                   test: Optional[str], runs: Sequence[Run], step: Callable[[str], None]
                   ) -> Tuple[Dict[str, Any], Dict[str, Calibration]]:
    """Fit every artifact on its validation ``outputs``; with ``test``, run ``runs`` over those images and measure
    there. The report's ``confidence`` section and the calibration per artifact file."""
    fits = {f: confidence.calibrate(out, truth, manifest.labels, manifest.output, goal.target_precision,
                                    goal.target_coverage, goal.confidence) for f, out in outputs.items()}
    cals = {f: calibration_of(fit, val) for f, fit in fits.items()}
    tests: Dict[str, Dict[str, Any]] = {}
    if test:
        step("test images (reported only): %s" % test)
        data, test_truth = load_labelled(test, manifest.preprocess, manifest.labels, "--test")
        tests = measure_on_test(outputs_of(runs, data, manifest.preprocess.layout), test_truth, manifest, cals)
    section = {"goal": next(iter(fits.values())).get("goal") if fits else None, "confidence": goal.confidence,
               "validation_set": val, "test_set": test,
               "artifacts": {f: dict(fit=fits[f], test=tests.get(f)) for f in fits}}
    return section, cals


def calibrate_package(path: str, val: str, test: Optional[str], goal: Goal,
                      step: Callable[[str], None] = lambda s: None) -> Dict[str, Any]:
    """``edgesight calibrate``: fit every artifact of the package at ``path`` that runs here on ``val``, report on
    ``test``, rewrite its manifest, and write ``calibration.json`` / ``calibration.html`` beside it. (A TensorRT
    engine needs its Jetson: it keeps the calibration of the ONNX it is built from.)"""
    goal.check()
    pkg = ModelPackage.load(path)
    m = pkg.manifest
    runs = [(a.file, pkg.path(a), a.runtime, a.layout) for a in m.artifacts
            if a.runtime != "tensorrt" and is_installed(a.runtime)]
    if not runs:
        raise ConfigError("no artifact of this package runs here (install edgesight[onnx] or edgesight[tflite])",
                          file=path, field="artifacts")
    step("validation images: %s" % val)
    val_set, truth = load_labelled(val, m.preprocess, m.labels, "--val")
    step("fitting %d artifact(s) on %d images" % (len(runs), len(truth)))
    section, cals = fit_and_report(outputs_of(runs, val_set, m.preprocess.layout), truth, m, goal, val, test, runs,
                                   step)
    write_manifest(pkg.root, with_artifacts(m, with_calibrations(m.artifacts, cals)))
    rep = {"package": {"name": m.name, "version": m.version}, "labels": list(m.labels), "confidence": section}
    report.write_json(rep, os.path.join(pkg.root, "calibration.json"))
    report.write_confidence_html(rep, os.path.join(pkg.root, "calibration.html"))
    return rep
