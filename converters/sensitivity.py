"""Which layers of an INT8 ONNX stay in float: the numerically sensitive op types by default, then, until the
model's logits reach a fidelity target, the groups of layers whose quantization hurts most.

The default: Softmax, LayerNormalization, GELU (Erf/Gelu and the elementwise ops around Erf) and the attention
MatMuls (both inputs activations) run in float. INT8 there costs transformers most of their fidelity (ViT-tiny:
logit cosine 0.82 in the issue, 0.84 measured here) and buys CNNs nothing (ConvNeXt-atto on ONNX Runtime's CPU:
0.57x FP32 with the GELU subgraph in float, 0.83x with only its Erf, 0.92x with none).

Where the model misses the target with the calibrated activation ranges, the ranges that minimise each tensor's
quantization error (:mod:`converters.ranges`) are tried first: they cost no speed. Then a sensitivity step, as
onnxruntime's ``qdq_loss_debug`` and Polygraphy's layerwise comparison do: the quantized
and the float model run on calibration images with every intermediate tensor saved, each quantized activation's
signal-to-quantization-noise ratio (SQNR) is measured, and the glue layers (everything but the Conv/Gemm/MatMul
that carry the weights) are grouped by op type and role (a residual Add of two activations, a bias Add with a
constant, ...), plus the classifier head after a CNN's global pooling. Each round the three groups holding the worst
tensors (and the head) are tried in float, and the one that lifts
the logit cosine most stays in float, until the cosine on those images reaches ``min_cosine`` (its lower confidence
bound) or no group lifts it by ``MIN_GAIN``. (ViT-tiny: 0.88 ->
0.95 with the residual Adds -> 0.999 with the bias Adds; its weight MatMuls all stay INT8.)
"""
import itertools
import logging
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np

from .metrics import cosine_rows, lower_bound

log = logging.getLogger(__name__)

FLOAT_OPS = ("Softmax", "LayerNormalization", "Erf", "Gelu")
MAX_ROUNDS = 4


class Tuned(NamedTuple):
    excluded: List[str]  # node names kept in float
    cosine: float  # mean logit cosine vs float on the tuning images
    rounds: int
    history: List[float]  # the cosine after each round
    bound: float  # the lower confidence bound of ``cosine``, which is what meets the target or not
    ranges: str = "calibrated"  # the activation-range rule of the chosen model
    by_rule: Dict[str, float] = {}  # the first round's mean cosine under each rule tried


WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the INT8 payload: never a candidate for float
TRIES_PER_ROUND = 3
MIN_GAIN = 0.001  # a group stays in float only if it lifts the cosine's lower bound this much: each costs speed


def _constants(model) -> Set[str]:
    out = {i.name for i in model.graph.initializer}
    return out | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}


def default_float_nodes(model) -> List[str]:
    """Nodes of the sensitive op types, the elementwise ops of GELU around each Erf, and MatMuls whose two inputs
    are both activations (attention)."""
    constants = _constants(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: Dict[str, List[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out: List[str] = []
    for n in model.graph.node:
        if n.op_type in FLOAT_OPS or (n.op_type == "MatMul" and not any(i in constants for i in n.input)):
            out.append(n.name)
        if n.op_type == "Erf":  # GELU: x * 0.5 * (1 + erf(x / sqrt(2))): its Div/Mul before, Add/Mul after
            before = producer.get(n.input[0])
            if before is not None and before.op_type in ("Div", "Mul"):
                out.append(before.name)
            frontier = list(n.output)
            for _ in range(3):
                nxt = []
                for t in frontier:
                    for c in consumers.get(t, []):
                        if c.op_type in ("Add", "Mul") and c.name not in out:
                            out.append(c.name)
                            nxt.extend(c.output)
                frontier = nxt
    return [n for n in out if n]


def groups(model, excluded: Set[str]) -> Dict[str, List[Any]]:
    """The glue layers not in float yet, by op type and role (``Add of activations``, ``Mul with a constant``)."""
    constants = _constants(model)
    out: Dict[str, List[Any]] = {}
    for n in model.graph.node:
        if not n.name or n.name in excluded or n.op_type in WEIGHTED or n.op_type == "Constant":
            continue
        role = ""
        if n.op_type in ("Add", "Sub", "Mul", "Div"):
            role = " with a constant" if any(i in constants for i in n.input) else " of activations"
        out.setdefault(n.op_type + role, []).append(n)
    head = classifier_head(model, excluded)
    if head:
        out[HEAD] = head
    return out


HEAD = "classifier head"


def classifier_head(model, excluded: Set[str]) -> List[Any]:
    """The layers after the last global pooling, weighted ones included: on a 1x1 map they cost a CNN almost nothing
    in float, and quantizing them costs fidelity most on some (MobileNetV3: logit cosine 0.94 -> 0.97)."""
    nodes = list(model.graph.node)
    pools = [i for i, n in enumerate(nodes) if n.op_type == "GlobalAveragePool"]
    if not pools or len(nodes) - pools[-1] > max(12, len(nodes) // 10):
        return []
    return [n for n in nodes[pools[-1] + 1:] if n.name and n.name not in excluded and n.op_type != "Constant"]


def run(model_path: str, input_name: str, tensors: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model_path, sess_options=opts, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {input_name: tensors[i:i + 8]})[0] for i in range(0, len(tensors), 8)])


def tune(prepared: str, dst: str, quantize: Callable[[Sequence[str], str, str], None], input_name: str,
         tensors: np.ndarray, min_cosine: float, max_rounds: int = MAX_ROUNDS,
         ranges: Sequence[str] = ("calibrated",)) -> Tuned:
    """Write to ``dst`` the quantization of ``prepared`` that ``quantize(exclude, path, rule)`` makes with the
    defaults in float, and more groups in float while the logit cosine on ``tensors`` is below ``min_cosine``: its
    lower confidence bound (:func:`metrics.lower_bound`), so that a few lucky images do not pass a model that misses
    on the rest. ``ranges``: the activation-range rules ``quantize`` knows, in order of preference; where the first
    misses the target the others are tried before any layer goes to float (they cost no speed), and the best one is
    kept for the rounds. Every try is written to its own file and the chosen one is moved to ``dst``: nothing is
    quantized twice."""
    import onnx

    model = onnx.load(prepared)
    reference = run(prepared, input_name, tensors)
    with tempfile.TemporaryDirectory(prefix="edgesight-tries-") as work:
        files: Dict[Tuple[str, ...], str] = {}  # the tries whose file is kept, by (rule, *excluded)
        count = itertools.count()
        rule = ranges[0]

        def cosine_with(exclude: List[str], rule: str) -> Tuple[float, float]:
            path = os.path.join(work, "try%d.onnx" % next(count))
            quantize(exclude, path, rule)
            files[(rule,) + tuple(exclude)] = path
            rows = cosine_rows(run(path, input_name, tensors), reference)
            return lower_bound(rows), float(rows.mean())

        excluded = default_float_nodes(model)
        float_acts: Dict[str, Any] = {}  # the float model's activations, collected in the first round
        bound, cosine = cosine_with(excluded, rule)
        by_rule = {rule: cosine}
        for other in ranges[1:]:
            if bound >= min_cosine:
                break
            (b, c) = cosine_with(excluded, other)
            by_rule[other] = c
            if b > bound:
                os.unlink(files.pop((rule,) + tuple(excluded)))
                bound, cosine, rule = b, c, other
            else:
                os.unlink(files.pop((other,) + tuple(excluded)))
        history = [round(cosine, 5)]
        while bound < min_cosine and len(history) < max_rounds:
            sqnr = tensor_sqnr(prepared, files[(rule,) + tuple(excluded)], input_name, tensors[:8], float_acts)
            cands = groups(model, set(excluded))
            ranked = sorted(cands, key=lambda g: min([sqnr.get(i, 1e9) for n in cands[g] for i in n.input] or [1e9]))
            ranked = ranked[:TRIES_PER_ROUND] + ([HEAD] if HEAD in ranked[TRIES_PER_ROUND:] else [])  # always tried
            tried = [(cosine_with(excluded + [n.name for n in cands[g]], rule), g) for g in ranked]
            gained = bool(tried) and max(tried)[0][0] >= bound + MIN_GAIN
            if gained:
                (bound, cosine), best = max(tried)
                log.info("logit cosine %.4f (lower bound %.4f) with the %d %s node(s) in float", cosine, bound,
                         len(cands[best]), best)
                excluded = excluded + [n.name for n in cands[best]]
                history.append(round(cosine, 5))
            for key in [k for k in files if k != (rule,) + tuple(excluded)]:  # only the chosen try's file is kept
                os.unlink(files.pop(key))
            if not gained:
                break  # MobileNetV3 (random weights), CPU profile: +0.0007, +0.0005, +0.0001 for 3, 9 and 8 layers
        shutil.move(files[(rule,) + tuple(excluded)], dst)
    return Tuned(excluded, cosine, len(history), history, bound, rule, by_rule)


def tensor_sqnr(prepared: str, qdq: str, input_name: str, tensors: np.ndarray,
                reference: Optional[Dict[str, Any]] = None) -> Dict[str, float]:
    """Per quantized activation: its SQNR in dB (float model vs the Q/DQ model), lower is worse. ``reference``: a
    dict that keeps the float model's activations between calls (they do not change from one round to the next)."""
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations, compute_activation_error,
                                                         create_activation_matching,
                                                         modify_model_output_intermediate_tensors)

    from ..calibration.dataset import OrtCalibrationReader

    reference = {} if reference is None else reference
    with tempfile.TemporaryDirectory(prefix="edgesight-sens-") as work:
        acts = {}
        for name, path in (("float", prepared), ("qdq", qdq)):
            if name == "float" and "float" in reference:
                acts[name] = reference["float"]
                continue
            augmented = os.path.join(work, name + ".onnx")
            modify_model_output_intermediate_tensors(path, augmented)
            acts[name] = collect_activations(augmented, OrtCalibrationReader(input_name, tensors, batch_size=4))
        reference["float"] = acts["float"]
    errors = compute_activation_error(create_activation_matching(acts["qdq"], acts["float"]))
    return {t: float(e.get("xmodel_err", e.get("qdq_err", 1e9))) for t, e in errors.items()}
