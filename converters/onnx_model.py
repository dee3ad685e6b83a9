"""Reading an FP32 ONNX classifier's interface (host side; needs the ``onnx`` package)."""
from typing import List, NamedTuple, Optional, Set, Tuple

from ..errors import ModelFileError, require_module


class OnnxInterface(NamedTuple):
    input_name: str
    input_shape: Tuple[Optional[int], ...]  # None = dynamic
    output_name: str
    output_shape: Tuple[Optional[int], ...]
    opset: int


def import_onnx():
    return require_module("onnx", "Reading ONNX models", "convert")


def constant_names(model) -> Set[str]:
    """The tensors of ``model`` that are constants: its initializers and the outputs of its Constant nodes."""
    out = {i.name for i in model.graph.initializer}
    return out | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}


def _dims(value_info) -> Tuple[Optional[int], ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims)


def read_interface(path: str) -> OnnxInterface:
    """The single image input and the first output of an ONNX model; a clear error for anything else."""
    onnx = import_onnx()
    try:
        model = onnx.load(path)
    except FileNotFoundError:
        raise ModelFileError("no such ONNX file", file=path)
    except Exception as exc:
        raise ModelFileError("not a readable ONNX model (%s: %s). Export it again (opset 17) or re-copy it."
                             % (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""), file=path)
    if not model.graph.node:
        raise ModelFileError("the ONNX graph is empty; is this really an exported model?", file=path)
    initializers = {i.name for i in model.graph.initializer}
    inputs: List = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelFileError("an image classifier has exactly one input; this model has %d (%s)"
                             % (len(inputs), ", ".join(i.name for i in inputs)), file=path)
    inp = inputs[0]
    elem = inp.type.tensor_type.elem_type
    shape = _dims(inp)
    if elem != onnx.TensorProto.FLOAT or len(shape) != 4:
        raise ModelFileError("input %r must be a 4-D float32 image tensor (N,C,H,W or N,H,W,C); it is %s with %d "
                             "dims" % (inp.name, onnx.TensorProto.DataType.Name(elem), len(shape)), file=path)
    if not model.graph.output:
        raise ModelFileError("the model has no outputs", file=path)
    out = model.graph.output[0]
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return OnnxInterface(inp.name, shape, out.name, _dims(out), opset)
