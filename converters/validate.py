"""Validation of the FP32 source and every artifact on the validation set, and the gate each artifact must pass.

Every artifact is fed in its own layout, as the agent feeds it, through the same loop as ``edgesight classify``
(:func:`runtimes.evaluate.evaluate`)."""
import os
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from ..calibration.preprocess import to_layout
from ..runtimes.evaluate import Evaluation, evaluate
from ..runtimes.manifest import sha256_file
from ..runtimes.postprocess import to_probabilities
from ..runtimes.registry import create_runtime, is_installed
from . import metrics


class Validation(NamedTuple):
    fp32: Dict[str, Any]  # the report's fp32 entry
    gate_failed: bool


def run_artifact(path: str, runtime: str, layout: Optional[str], tensors: np.ndarray, spec_layout: str,
                 latency_runs: int) -> Evaluation:
    with create_runtime(runtime, path, input_layout="native", layout=layout) as rt:
        return evaluate(rt, to_layout(tensors, spec_layout, rt.input_layout), 32, latency_runs)


def validate(out_dir: str, source: str, artifacts: List[Dict[str, Any]], tensors: np.ndarray, spec_layout: str,
             labels: Sequence[str], truth: Optional[np.ndarray], output: str, max_accuracy_drop: float,
             min_agreement: float, latency_runs: int) -> Validation:
    """Fill each artifact entry with size, sha256, latency, metrics and gate; return the FP32 entry."""
    ref = run_artifact(source, "onnxruntime", spec_layout, tensors, spec_layout, latency_runs)
    fp32_metrics = metrics.compare(ref.outputs, to_probabilities(ref.outputs, output), labels, truth)
    fp32 = {"file": os.path.basename(source), "size_bytes": os.path.getsize(source), "latency_ms": ref.latency_ms,
            "metrics": fp32_metrics}
    gate_failed = False
    for a in artifacts:
        path = os.path.join(out_dir, a["file"])
        a["size_bytes"] = os.path.getsize(path)
        a["sha256"] = sha256_file(path)
        if not is_installed(a["runtime"]):
            a["gate"] = {"passed": False, "reasons": ["%s runtime not installed here: not validated" % a["runtime"]]}
            gate_failed = True
            continue
        ev = run_artifact(path, a["runtime"], a["layout"], tensors, spec_layout, latency_runs)
        a["latency_ms"], a["io"] = ev.latency_ms, ev.io
        a["metrics"] = metrics.compare(ev.outputs, to_probabilities(ev.outputs, output), labels, truth,
                                       ref_outputs=ref.outputs)
        a["gate"] = metrics.gate(a["metrics"], fp32_metrics, max_accuracy_drop, min_agreement)
        gate_failed = gate_failed or not a["gate"]["passed"]
    return Validation(fp32, gate_failed)


def summary(a: Dict[str, Any]) -> Dict[str, Any]:
    """What the manifest keeps of an artifact's validation (report.json has everything)."""
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
