"""Validation of the FP32 source and every artifact on the validation set, and the gate each artifact must pass.

Every artifact is fed in its own layout, as the agent feeds it, through the same loop as ``edgesight classify``
(:func:`runtimes.evaluate.evaluate`)."""
import os
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from ..calibration.preprocess import to_layout
from ..errors import EdgesightError
from ..runtimes.evaluate import Evaluation, evaluate
from ..runtimes.manifest import sha256_file
from ..runtimes.postprocess import to_probabilities
from ..runtimes.registry import create_runtime, is_installed
from . import metrics


class Validation(NamedTuple):
    fp32: Dict[str, Any]  # the report's fp32 entry
    gate_failed: bool
    failed: List[Dict[str, str]]  # artifacts that could not be validated: target, step, error
    outputs: Dict[str, np.ndarray]  # the validation outputs per file (the FP32 source's too), for fitting


def run_artifact(path: str, runtime: str, layout: Optional[str], tensors: np.ndarray, spec_layout: str,
                 latency_runs: int) -> Evaluation:
    with create_runtime(runtime, path, input_layout="native", layout=layout) as rt:
        return evaluate(rt, to_layout(tensors, spec_layout, rt.input_layout), 32, latency_runs)


def validate(out_dir: str, source: str, artifacts: List[Dict[str, Any]], tensors: np.ndarray, spec_layout: str,
             labels: Sequence[str], truth: Optional[np.ndarray], output: str, max_accuracy_drop: float,
             min_agreement: float, latency_runs: int, min_cosine: Optional[float] = None) -> Validation:
    """Fill each artifact entry with size, sha256, latency, metrics and gate; return the FP32 entry. An artifact
    that cannot be run (a TFLite that does not load, a runtime error) is taken out of ``artifacts`` and returned
    in ``failed`` with the step and the reason, so that the others are still validated and written."""
    ref = run_artifact(source, "onnxruntime", spec_layout, tensors, spec_layout, latency_runs)
    ref_probs = to_probabilities(ref.outputs, output)
    fp32_metrics = metrics.compare(ref.outputs, ref_probs, labels, truth)
    fp32 = {"file": os.path.basename(source), "size_bytes": os.path.getsize(source), "latency_ms": ref.latency_ms,
            "metrics": fp32_metrics}
    gate_failed = False
    failed: List[Dict[str, str]] = []
    outputs = {os.path.basename(source): ref.outputs}
    for a in list(artifacts):
        path = os.path.join(out_dir, a["file"])
        a["size_bytes"] = os.path.getsize(path)
        a["sha256"] = sha256_file(path)
        if not is_installed(a["runtime"]):
            a["gate"] = {"passed": False, "reasons": ["%s runtime not installed here: not validated" % a["runtime"]]}
            gate_failed = True
            continue
        try:
            ev = run_artifact(path, a["runtime"], a["layout"], tensors, spec_layout, latency_runs)
        except EdgesightError as exc:  # a file that does not load or run is a failed target, not a crash
            artifacts.remove(a)
            failed.append({"target": a["target"], "step": "validate", "error": str(exc)})
            os.unlink(path)
            continue
        a["latency_ms"], a["io"] = ev.latency_ms, ev.io
        outputs[a["file"]] = ev.outputs
        a["metrics"] = metrics.compare(ev.outputs, to_probabilities(ev.outputs, output), labels, truth,
                                       ref_outputs=ref.outputs, ref_probs=ref_probs)
        a["gate"] = metrics.gate(a["metrics"], fp32_metrics, max_accuracy_drop, min_agreement, min_cosine)
        gate_failed = gate_failed or not a["gate"]["passed"]
    return Validation(fp32, gate_failed, failed, outputs)


def summary(a: Dict[str, Any]) -> Dict[str, Any]:
    """What the manifest keeps of an artifact's validation (report.json has everything)."""
    m = a.get("metrics", {})
    g = a.get("gate", {})
    keep = {k: m[k] for k in ("top1", "agreement", "agreement_decisive", "cosine_mean", "cosine_centred_mean")
            if k in m}
    if a.get("float_nodes"):
        keep["float_layers"] = len(a["float_nodes"])
    keep.update(passed=bool(g.get("passed")), size_bytes=a["size_bytes"])
    if a.get("latency_ms") is not None:
        keep["latency_ms"] = round(a["latency_ms"], 4)
    if g.get("accuracy_drop_pt") is not None:
        keep["accuracy_drop_pt"] = round(g["accuracy_drop_pt"], 4)
    if g.get("reasons"):
        keep["reasons"] = g["reasons"]
    return keep
