"""Build a TensorRT engine from the TensorRT-profile Q/DQ ONNX, where TensorRT is installed (explicit quantization).

Engines are specific to the GPU and TensorRT version, so the converter only builds one when it runs on a machine
with TensorRT and the target GPU; otherwise the device builds its own from ``model.int8.onnx`` (TensorRT issue).
Written against TensorRT 8.5-10 Python API; checked here with a fake ``tensorrt`` module (tests/fake_tensorrt.py).
"""
import logging
import os
from typing import Dict, Optional, Tuple

from ..errors import ConversionError
from ..runtimes.cuda_device import gpu_identity

log = logging.getLogger(__name__)


def tensorrt_version() -> Optional[str]:
    """The importable TensorRT's version, or None."""
    try:
        import tensorrt as trt
    except Exception:
        return None
    return str(getattr(trt, "__version__", "unknown"))


def build_engine(onnx_path: str, engine_path: str, sample_shape: Tuple[int, ...], max_batch: int = 8,
                 workspace_mb: int = 1024, fp16_fallback: bool = True) -> Dict[str, str]:
    """Parse, build and serialize; ``sample_shape`` is one input without N (e.g. (3, 224, 224)), used for the
    dynamic-batch optimization profile (1 to ``max_batch``). Returns ``built_for`` {tensorrt, device, compute}."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(str(trt.__version__).split(".")[0])
    flags = 0
    if major < 10:  # explicit batch is the only mode from TensorRT 10 on (the flag is deprecated there)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as f:
        ok = parser.parse(f.read())
    if not ok:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ConversionError("TensorRT %s cannot parse the Q/DQ ONNX: %s" % (trt.__version__, "; ".join(errors)
                                                                           or "no parser message"), file=onnx_path)
    config = builder.create_builder_config()
    workspace = int(workspace_mb) << 20
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    else:  # TensorRT < 8.4
        config.max_workspace_size = workspace
    config.set_flag(trt.BuilderFlag.INT8)  # honour the Q/DQ nodes (explicit quantization)
    if fp16_fallback and getattr(builder, "platform_has_fast_fp16", False):
        config.set_flag(trt.BuilderFlag.FP16)  # layers without Q/DQ may run in FP16 instead of FP32
    inp = network.get_input(0)
    shape = tuple(inp.shape)
    if any(int(d) < 0 for d in shape):
        profile = builder.create_optimization_profile()
        one = (1,) + tuple(sample_shape)
        profile.set_shape(inp.name, one, one, (max_batch,) + tuple(sample_shape))
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ConversionError("TensorRT %s failed to build an engine (see its log above)" % trt.__version__,
                              file=onnx_path)
    tmp = engine_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(bytes(serialized))
    os.replace(tmp, engine_path)
    ident = gpu_identity()
    return {"tensorrt": str(trt.__version__), "device": ident.name if ident else "unknown",
            "compute": ident.compute if ident else "unknown"}
