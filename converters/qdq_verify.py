"""Structural check that a Q/DQ ONNX is one TensorRT 8.5-11 can build with explicit quantization.

We cannot run TensorRT here, so this check is how we know the device can build from the file. Rules:

1. opset of the default domain <= 17 (TensorRT 8.5/8.6 on JetPack 5/6.0) and no other domain used or imported;
2. every QuantizeLinear/DequantizeLinear uses int8 with zero point 0 (symmetric; TensorRT supports nothing else);
3. the weights of every Conv/ConvTranspose/Gemm/MatMul that are quantized are per-channel (a scale vector with the
   output-channel axis) and come from an int8 initializer;
4. biases stay float: no DequantizeLinear of an INT32 tensor feeds a bias input;
5. at least one Q/DQ pair exists (an unquantized model is not an INT8 artifact).

The ``fp16`` variant (profile ``tensorrt-qdq-fp16``, for TensorRT 10/11 strongly typed networks, where layers
outside Q/DQ run in the graph's own precision) instead needs opset >= 19 (float16 Q/DQ scales), float16 scales,
and every compute node on float16: float32 may only enter and leave through the Casts at the graph's input and
output.
"""
from typing import List, NamedTuple, Optional

from ..errors import ConversionError
from .onnx_model import import_onnx

MAX_OPSET = 17
FP16_MIN_OPSET = 19
_WEIGHTED = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}  # op -> index of its weight input
_BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}


class Violation(NamedTuple):
    rule: str
    node: str
    detail: str

    def __str__(self) -> str:
        return "[%s] %s: %s" % (self.rule, self.node or "(model)", self.detail)


def check_tensorrt_qdq(path: str, fp16: bool = False) -> List[Violation]:
    """Every rule broken by the model at ``path`` (empty list: the model is TensorRT-safe)."""
    onnx = import_onnx()
    from onnx import numpy_helper

    model = onnx.load(path)
    graph = model.graph
    out: List[Violation] = []
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            if imp.version > MAX_OPSET and not fp16:
                out.append(Violation("opset", "", "default-domain opset %d > %d (TensorRT 8.5/8.6 parse <= 17)"
                                     % (imp.version, MAX_OPSET)))
            if imp.version < FP16_MIN_OPSET and fp16:
                out.append(Violation("opset", "", "default-domain opset %d < %d: float16 Q/DQ scales need 19"
                                     % (imp.version, FP16_MIN_OPSET)))
        else:
            out.append(Violation("domain", "", "imports domain %r; TensorRT parses the standard domain only"
                                 % imp.domain))
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            out.append(Violation("domain", node.name, "%s is in domain %r" % (node.op_type, node.domain)))

    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}

    def const(name: str) -> Optional[object]:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        node = producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        out.append(Violation("quantized", "", "no QuantizeLinear/DequantizeLinear nodes: not an explicit-INT8 model"))
    int8 = onnx.TensorProto.INT8
    for n in qdq:
        zp = const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if n.op_type == "QuantizeLinear" and zp is None:
            out.append(Violation("int8", n.name, "no zero point: QuantizeLinear would produce uint8"))
        if zp is not None:
            if zp.dtype.name != "int8":
                out.append(Violation("int8", n.name, "zero point is %s; TensorRT needs int8" % zp.dtype.name))
            if zp.size and (zp != 0).any():
                out.append(Violation("symmetric", n.name, "zero point(s) %s != 0 (asymmetric)"
                                     % sorted(set(zp.ravel().tolist()))[:4]))
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type not in (int8,):
            out.append(Violation("int8", n.name, "dequantizes a %s initializer"
                                 % onnx.TensorProto.DataType.Name(inits[n.input[0]].data_type)))

    for node in graph.node:
        if node.op_type in _BIAS_INPUT and len(node.input) > _BIAS_INPUT[node.op_type]:
            src = producer.get(node.input[_BIAS_INPUT[node.op_type]])
            if src is not None and src.op_type == "DequantizeLinear":
                out.append(Violation("float-bias", node.name, "bias comes from %s (INT32 bias DequantizeLinear); "
                                     "keep bias float (QuantizeBias=False)" % src.name))
        if node.op_type in _WEIGHTED:
            w = producer.get(node.input[_WEIGHTED[node.op_type]])
            if w is None or w.op_type != "DequantizeLinear" or w.input[0] not in inits:
                continue  # activation x activation (MatMul) or an unquantized weight
            scale = const(w.input[1])
            if scale is None or scale.ndim != 1 or scale.size <= 1:
                out.append(Violation("per-channel", node.name, "weight %s is quantized per-tensor"
                                     % w.input[0]))
    if fp16:
        out += _fp16_violations(onnx, model, const)
    return out


def _fp16_violations(onnx, model, const) -> List[Violation]:
    """Q/DQ scales are float16 and no compute node takes a float32 tensor but the boundary Casts."""
    from onnx import shape_inference

    graph = shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.value_info) + list(graph.input) +
             list(graph.output)}
    types.update({i.name: i.data_type for i in graph.initializer})
    f32, out = onnx.TensorProto.FLOAT, []
    inputs = {i.name for i in graph.input}
    for n in graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            scale = const(n.input[1])
            if scale is not None and scale.dtype.name != "float16":
                out.append(Violation("fp16", n.name, "scale is %s, not float16" % scale.dtype.name))
        elif n.op_type == "Cast":
            continue  # the boundary casts (and any the conversion inserted) are where types change on purpose
        elif n.op_type != "Constant":
            bad = [i for i in n.input if i and types.get(i) == f32 and i not in inputs]
            if bad:
                out.append(Violation("fp16", n.name, "%s computes on float32 input %s" % (n.op_type, bad[0])))
    return out


def verify_tensorrt_qdq(path: str, fp16: bool = False) -> None:
    """Raise :class:`ConversionError` listing every broken rule."""
    violations = check_tensorrt_qdq(path, fp16)
    if violations:
        shown = "; ".join(str(v) for v in violations[:8])
        more = " (and %d more)" % (len(violations) - 8) if len(violations) > 8 else ""
        raise ConversionError("not TensorRT-safe Q/DQ (%d rule(s) broken): %s%s. The device could not build an "
                              "engine from it." % (len(violations), shown, more), file=path)
