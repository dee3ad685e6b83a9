"""Exact graph rewrites applied to the FP32 model before quantization, where the INT8 kernels want another spelling.

- A spatial mean ``ReduceMean(x, axes=[2, 3], keepdims=1)`` on an NCHW tensor is ``GlobalAveragePool(x)``. timm and
  torchvision export the squeeze-excitation pooling of MobileNetV3, EfficientNet, GhostNet and RegNetY as the former.
  ONNX Runtime has no quantized ReduceMean, so in a Q/DQ model each one runs in float between a DequantizeLinear and
  a QuantizeLinear; GlobalAveragePool becomes QLinearGlobalAveragePool. MobileNetV3-large's CPU profile, 2 threads:
  1.08x-1.14x FP32 with ReduceMean, 0.88x-1.00x with GlobalAveragePool (docs/benchmarks.md). Same numbers in float.
- After quantizing for the ``cpu`` profile, a ``DequantizeLinear -> HardSigmoid -> QuantizeLinear`` (hard-swish and
  the squeeze-excitation gates) becomes one requantization (:func:`hardsigmoid_as_requantize`), within half a
  quantization step of what it replaces.
"""
import logging
from typing import List, Optional

log = logging.getLogger(__name__)


def _attr(node, name: str):
    for a in node.attribute:
        if a.name == name:
            return a
    return None


def _initializer(model, name: str):
    """The initializer ``name`` as a numpy array, or None."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    return None


def _constant_ints(model, name: str) -> Optional[List[int]]:
    from onnx import numpy_helper

    value = _initializer(model, name)
    if value is not None:
        return [int(v) for v in value.reshape(-1)]
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            attr = _attr(n, "value")
            return None if attr is None else [int(v) for v in numpy_helper.to_array(attr.t).reshape(-1)]
    return None


def _rank(model, name: str) -> Optional[int]:
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def _spatial_mean(model, node) -> bool:
    """Is ``node`` a ReduceMean over the last two axes of a 4-D tensor, keeping them (NCHW global pooling)?"""
    if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx"):
        return False
    keep = _attr(node, "keepdims")
    if keep is not None and keep.i != 1:
        return False
    attr = _attr(node, "axes")  # opset <= 17: attribute; 18+: second input
    if attr is not None:
        axes: Optional[List[int]] = list(attr.ints)
    elif len(node.input) > 1 and node.input[1]:
        axes = _constant_ints(model, node.input[1])
    else:
        return False  # all axes (or none with noop_with_empty_axes)
    if axes is None or _rank(model, node.input[0]) != 4:
        return False
    return sorted(a % 4 for a in axes) == [2, 3]


def mean_as_global_pool(model) -> int:
    """Rewrite each spatial ReduceMean of ``model`` (in place) as GlobalAveragePool; returns how many. Needs the
    shapes inferred (ONNX Runtime's quantization pre-processing does it): a mean whose rank is unknown is kept."""
    done = 0
    for node in model.graph.node:
        if _spatial_mean(model, node):
            node.op_type = "GlobalAveragePool"
            node.domain = ""
            del node.attribute[:]
            del node.input[1:]
            done += 1
    if done:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        unused = [i for i in model.graph.initializer if i.name not in used]  # opset 18's axes inputs
        for init in unused:
            model.graph.initializer.remove(init)
        log.debug("%d spatial ReduceMean node(s) rewritten as GlobalAveragePool", done)
    return done


def _scalar(model, name: str):
    value = _initializer(model, name)
    return value if value is not None and value.size == 1 else None


def _requantize(model, base: str, source: List[str], dtype, scale: float, zero: int, output: str):
    """A node requantizing an 8-bit tensor (``source``: the inputs of its DequantizeLinear, with a zero point of
    ``dtype``) to ``scale`` and ``zero`` as ``output``:
    ONNX Runtime's ``com.microsoft.QLinearAdd`` of a zero. ``DequantizeLinear -> QuantizeLinear`` says the same in
    two float passes over the tensor; the add is one vectorized 8-bit pass in about 0.6 of the time
    (docs/converting.md), and gives the same codes but in a rare rounding tie."""
    import numpy as np
    from onnx import helper, numpy_helper

    model.graph.initializer.extend([
        numpy_helper.from_array(np.array(scale, dtype=np.float32), base + "_requant_scale"),
        numpy_helper.from_array(np.array(zero, dtype=dtype), base + "_requant_zp"),
        numpy_helper.from_array(np.array(0, dtype=dtype), base + "_zero"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), base + "_zero_scale")])
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return helper.make_node("QLinearAdd", list(source[:3]) + [base + "_zero", base + "_zero_scale", base + "_zero",
                                                              base + "_requant_scale", base + "_requant_zp"],
                            [output], name=base + "_requant", domain="com.microsoft")


def hardsigmoid_as_requantize(model) -> int:
    """In a Q/DQ model (ONNX Runtime's ``cpu`` profile), rewrite each ``DequantizeLinear -> HardSigmoid ->
    QuantizeLinear`` as one requantization of the DequantizeLinear's 8-bit input; returns how many (in place).

    HardSigmoid is ``clip(alpha * x + beta, 0, 1)`` and ONNX Runtime has no quantized kernel for it, so it ran in float.
    Quantized with scale ``s`` and zero point ``z``, ``q = round((alpha * x + beta) / s) + z`` is
    ``round(x / (s / alpha)) + z + beta / s``: the same quantization of ``x`` with scale ``s / alpha`` and zero point
    ``z + round(beta / s)``, and the clip at 0 and 1 is the saturation of the quantized type when ``z`` is its lowest
    value and the calibrated range ends at or below 1. The zero point is rounded, so the result moves by at most half
    a quantization step where the gate does not saturate. The requantization is :func:`_requantize`'s QLinearAdd.
    MobileNetV3 (hard-swish and squeeze-excitation gates) and EfficientViT run faster on the CPU, logit cosine
    unchanged (docs/converting.md has the numbers)."""
    import numpy as np

    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}
    done = []
    for hs in [n for n in g.node if n.op_type == "HardSigmoid" and n.domain in ("", "ai.onnx")]:
        dq, qs = producer.get(hs.input[0]), consumers.get(hs.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(qs) != 1 or qs[0].op_type != "QuantizeLinear":
            continue
        q = qs[0]
        if len(q.input) < 3 or len(dq.input) < 3 or hs.output[0] in outputs:
            continue
        scale, zero = _scalar(model, q.input[1]), _scalar(model, q.input[2])
        src_zero, src_scale = _scalar(model, dq.input[2]), _scalar(model, dq.input[1])
        if scale is None or zero is None or zero.dtype not in (np.uint8, np.int8):
            continue
        if src_zero is None or src_scale is None or src_zero.dtype != zero.dtype:
            continue
        info = np.iinfo(zero.dtype)
        alpha = next((a.f for a in hs.attribute if a.name == "alpha"), 0.2)
        beta = next((a.f for a in hs.attribute if a.name == "beta"), 0.5)
        s, z = float(scale), int(zero)
        shift = int(round(beta / s)) if s > 0 else -1
        if alpha <= 0 or s <= 0 or z != info.min or (info.max - z) * s > 1.0 + s / 2 or not 0 <= shift <= info.max - z:
            continue
        node = _requantize(model, hs.name or hs.output[0], list(dq.input), zero.dtype, s / alpha, z + shift,
                           q.output[0])
        g.node.insert(list(g.node).index(q), node)
        done.append((hs, q, dq))
    for hs, q, _ in done:
        g.node.remove(hs)
        g.node.remove(q)
    read = {i for n in g.node for i in n.input} | outputs
    for dq in {id(dq): dq for _, _, dq in done}.values():
        if dq.output[0] not in read:  # its HardSigmoids were its only readers (a hard-swish's Mul keeps it)
            g.node.remove(dq)
    if done:
        log.debug("%d HardSigmoid node(s) between DequantizeLinear and QuantizeLinear rewritten as a requantization",
                  len(done))
    return len(done)
