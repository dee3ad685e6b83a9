"""The ``tensorrt-qdq-fp16`` profile: the TensorRT-safe Q/DQ ONNX with every layer outside Q/DQ in float16.

TensorRT 10 and 11 build strongly typed networks from explicit Q/DQ: a layer that is not quantized runs in the
precision its tensors have in the graph, so the plain ``tensorrt-qdq`` file (float32 outside Q/DQ) runs those
layers in FP32 there, where TensorRT 8.x would have chosen FP16 by itself (the FP16 builder flag). As NVIDIA's
ModelOpt does for its INT8 models, this profile converts the graph to float16 (opset 19, where QuantizeLinear and
DequantizeLinear take float16 scales), keeping the model's input and output float32 with a Cast at each end.
Checked by :func:`converters.qdq_verify.check_tensorrt_qdq` (``fp16=True``) and for fidelity on ONNX Runtime.
"""
import logging

from ..errors import ConversionError, require_module
from .onnx_model import import_onnx

log = logging.getLogger(__name__)

OPSET = 19


def to_fp16(src: str, dst: str) -> str:
    onnx = import_onnx()
    from onnx import version_converter

    float16 = require_module("onnxconverter_common.float16", "The tensorrt-qdq-fp16 profile", "convert",
                             package="onnxconverter-common")
    model = onnx.load(src)
    current = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    try:
        if current < OPSET:
            model = version_converter.convert_version(model, OPSET)
        model = float16.convert_float_to_float16(model, keep_io_types=True)
    except Exception as exc:  # the converters raise their own types for ops they cannot handle
        raise ConversionError("cannot make the float16 Q/DQ model (%s: %s)" % (type(exc).__name__,
                                                                              str(exc).splitlines()[0][:300]),
                              file=src)
    onnx.save(model, dst)
    return dst
