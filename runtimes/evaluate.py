"""Running a model over a set of preprocessed images: the one loop behind ``edgesight classify`` and the converter's
validation (outputs in batches, wall time, median single-image latency), plus the top-1 measures both report."""
import time
from typing import Any, Dict, NamedTuple, Optional

import numpy as np

from .base import Runtime


class Evaluation(NamedTuple):
    outputs: np.ndarray  # the first output of every image, in order
    seconds: float  # wall time of the batched pass
    latency_ms: Optional[float]  # median single-image latency (None without latency runs)
    io: Dict[str, Dict[str, Any]]  # input and output dtype (and quantization) as the runtime reports them


def io_types(rt: Runtime) -> Dict[str, Dict[str, Any]]:
    out = {}
    for kind, t in (("input", rt.inputs[0]), ("output", rt.outputs[0])):
        out[kind] = ({"dtype": t.dtype, "scale": t.quant.scale, "zero_point": t.quant.zero_point} if t.quant else
                     {"dtype": t.dtype})
    return out


def evaluate(rt: Runtime, tensors: np.ndarray, batch: int = 32, latency_runs: int = 0,
             warmup: int = 3) -> Evaluation:
    """``tensors`` (N first, in ``rt.input_layout``) through ``rt`` in batches of ``batch``; then, with
    ``latency_runs``, that many single-image runs after ``warmup`` ones, whose median is the latency."""
    t0 = time.perf_counter()
    outs = [next(iter(rt.infer(tensors[i:i + batch]).values())) for i in range(0, len(tensors), batch)]
    seconds = time.perf_counter() - t0
    latency = None
    if latency_runs > 0 and len(tensors):
        times = []
        for i in range(min(latency_runs, len(tensors)) + warmup):
            x = tensors[i % len(tensors):i % len(tensors) + 1]
            t = time.perf_counter()
            rt.infer(x)
            times.append(1000.0 * (time.perf_counter() - t))
        latency = float(np.median(times[warmup:] or times))
    return Evaluation(np.concatenate(outs) if outs else np.zeros((0, 0), np.float32), seconds, latency, io_types(rt))


def accuracy(pred: np.ndarray, truth: np.ndarray) -> Optional[float]:
    """Share of ``pred == truth`` (None for no images)."""
    return float((np.asarray(pred) == np.asarray(truth)).mean()) if len(pred) else None


def agreement(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Share of images whose top-1 class is the same in both."""
    return float((np.asarray(outputs).argmax(axis=1) == np.asarray(reference).argmax(axis=1)).mean())
