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
tensors (and the head) are tried in float, and the one that lifts the logit cosine most stays in float, until the
cosine on those images reaches ``min_cosine`` (its lower confidence bound), no group lifts it by ``MIN_GAIN``, or the
rounds left could not reach the target at the last round's gain. (ViT-tiny: 0.88 -> 0.95 with the residual Adds ->
0.999 with the bias Adds; its weight MatMuls all stay INT8.)
"""
import itertools
import logging
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np

from .metrics import cosine_rows, lower_bound
from .onnx_model import constant_names

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
# ops that only move, reshape or describe data: no rounding of their own, so never a candidate either (ViT-tiny: ranked
# by the SQNR of their inputs, Squeeze, Transpose and Shape took the three tries of a round and the bias Adds, which
# lift it from 0.958 to 0.999, were never tried)
DATA_MOVEMENT = ("Shape", "Size", "Squeeze", "Unsqueeze", "Reshape", "Transpose", "Flatten", "Gather", "Slice",
                 "Split", "Expand", "Tile", "Identity", "Cast", "ConstantOfShape", "Range")
TRIES_PER_ROUND = 3
MIN_GAIN = 0.001  # a group stays in float only if it lifts the cosine's lower bound this much: each costs speed


def default_float_nodes(model) -> List[str]:
    """Nodes of the sensitive op types, the elementwise ops of GELU around each Erf, and MatMuls whose two inputs
    are both activations (attention)."""
    constants = constant_names(model)
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
    constants = constant_names(model)
    out: Dict[str, List[Any]] = {}
    for n in model.graph.node:
        if not n.name or n.name in excluded or n.op_type in WEIGHTED + DATA_MOVEMENT or n.op_type == "Constant":
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
    on the rest. ``ranges``: the activation-range rules ``quantize`` knows, in order of preference. Where the first
    misses the target, the others are measured too, and the rounds run with the best one first; where its rounds
    end below the target, the next rule's rounds run, and the best result is kept: a rule that starts higher need not
    end higher (clipped outliers are lost to every float group). Every try is written to its own file and the chosen
    one is moved to ``dst``: nothing is quantized twice."""
    import onnx

    model = onnx.load(prepared)
    with tempfile.TemporaryDirectory(prefix="edgesight-tries-") as work:
        tries = _Tries(work, quantize, input_name, tensors, run(prepared, input_name, tensors))
        defaults = default_float_nodes(model)
        first = {ranges[0]: tries.measure(defaults, ranges[0])}
        if first[ranges[0]][0] < min_cosine:
            first.update((other, tries.measure(defaults, other)) for other in ranges[1:])
        best: Optional[Tuned] = None
        for rule in sorted(first, key=lambda r: -first[r][0]):
            got = _rounds(tries, model, prepared, rule, defaults, first[rule], min_cosine, max_rounds)
            loser, best = (best, got) if best is None or got.bound > best.bound else (got, best)
            tries.drop(lambda key: loser is not None and key == _key(loser.ranges, loser.excluded))
            if best.bound >= min_cosine:
                break
        assert best is not None
        shutil.move(tries.files[_key(best.ranges, best.excluded)], dst)
    return best._replace(by_rule={r: c for r, (b, c) in first.items()})


def _key(rule: str, excluded: Sequence[str]) -> Tuple[str, ...]:
    return (rule,) + tuple(excluded)


class _Tries(object):
    """The quantized models tried, each in its own file under ``work``, by (rule, *excluded nodes)."""

    def __init__(self, work: str, quantize: Callable[[Sequence[str], str, str], None], input_name: str,
                 tensors: np.ndarray, reference: np.ndarray) -> None:
        self.work, self.quantize, self.input_name, self.tensors = work, quantize, input_name, tensors
        self.reference = reference
        self.files: Dict[Tuple[str, ...], str] = {}
        self.float_acts: Dict[str, Any] = {}  # the float model's activations, collected once for every round
        self._count = itertools.count()

    def measure(self, exclude: List[str], rule: str) -> Tuple[float, float]:
        """The lower bound and the mean of the logit cosine of this try."""
        path = os.path.join(self.work, "try%d.onnx" % next(self._count))
        self.quantize(exclude, path, rule)
        self.files[_key(rule, exclude)] = path
        rows = cosine_rows(run(path, self.input_name, self.tensors), self.reference)
        return lower_bound(rows), float(rows.mean())

    def drop(self, unwanted: Callable[[Tuple[str, ...]], bool]) -> None:
        for key in [k for k in self.files if unwanted(k)]:
            os.unlink(self.files.pop(key))


def _rounds(tries: _Tries, model, prepared: str, rule: str, excluded: List[str], first: Tuple[float, float],
            min_cosine: float, max_rounds: int) -> Tuned:
    """The rounds of the sensitivity step under one range rule, from the defaults' try (``first``)."""
    (bound, cosine), history = first, [round(first[1], 5)]
    while bound < min_cosine and len(history) < max_rounds:
        sqnr = tensor_sqnr(prepared, tries.files[_key(rule, excluded)], tries.input_name, tries.tensors[:8],
                           tries.float_acts)
        cands = groups(model, set(excluded))
        ranked = sorted(cands, key=lambda g: min([sqnr.get(i, 1e9) for n in cands[g] for i in n.input] or [1e9]))
        ranked = ranked[:TRIES_PER_ROUND] + ([HEAD] if HEAD in ranked[TRIES_PER_ROUND:] else [])  # always tried
        tried = [(tries.measure(excluded + [n.name for n in cands[g]], rule), g) for g in ranked]
        log.debug("round %d (%s ranges): %s", len(history), rule, ", ".join(
            "%s %.4f" % (g, b) for (b, _), g in tried))
        gain = max(tried)[0][0] - bound if tried else 0.0
        gained = bool(tried) and gain >= MIN_GAIN
        if gained:
            (bound, cosine), best = max(tried)
            log.info("logit cosine %.4f (lower bound %.4f) with the %d %s node(s) in float (%s ranges)", cosine,
                     bound, len(cands[best]), best, rule)
            excluded = excluded + [n.name for n in cands[best]]
            history.append(round(cosine, 5))
        chosen = _key(rule, excluded)
        tries.drop(lambda key: key[0] == rule and key != chosen)  # only this rule's chosen try is kept
        if not gained:
            break  # MobileNetV3 (random weights), CPU profile: +0.0007, +0.0005, +0.0001 for 3, 9 and 8 layers
        if out_of_reach(bound, gain, max_rounds - len(history), min_cosine):
            log.info("the target is out of reach at +%.4f a round: no more rounds", gain)
            break  # MobileNetV3's TensorRT profile: +0.001 a round from 0.976, three rounds for 20 float layers
    return Tuned(excluded, cosine, len(history), history, bound, rule)


def out_of_reach(bound: float, gain: float, rounds_left: int, target: float) -> bool:
    """Could ``rounds_left`` more rounds at this round's ``gain`` not lift ``bound`` to ``target``?"""
    return bound < target and bound + gain * rounds_left < target


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
