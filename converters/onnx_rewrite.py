"""Exact graph rewrites applied to the FP32 model before quantization, where the INT8 kernels want another spelling.

- A spatial mean ``ReduceMean(x, axes=[2, 3], keepdims=1)`` on an NCHW tensor is ``GlobalAveragePool(x)``. timm and
  torchvision export the squeeze-excitation pooling of MobileNetV3, EfficientNet, GhostNet and RegNetY as the former.
  ONNX Runtime has no quantized ReduceMean, so in a Q/DQ model each one runs in float between a DequantizeLinear and
  a QuantizeLinear; GlobalAveragePool becomes QLinearGlobalAveragePool. MobileNetV3-large's CPU profile, 2 threads:
  1.08x-1.14x FP32 with ReduceMean, 0.88x-1.00x with GlobalAveragePool (docs/benchmarks.md). Same numbers in float.
"""
import logging
from typing import List, Optional

log = logging.getLogger(__name__)


def _attr(node, name: str):
    for a in node.attribute:
        if a.name == name:
            return a
    return None


def _constant_ints(model, name: str) -> Optional[List[int]]:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return [int(v) for v in numpy_helper.to_array(init).reshape(-1)]
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            value = _attr(n, "value")
            return None if value is None else [int(v) for v in numpy_helper.to_array(value.t).reshape(-1)]
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
