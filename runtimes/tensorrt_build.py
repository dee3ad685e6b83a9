"""Building TensorRT engines on the device, from the package's TensorRT-safe Q/DQ ONNX (explicit quantization).

TensorRT >= 10 with ``STRONGLY_TYPED``: the Q/DQ nodes decide the precisions (no precision flags). Older TensorRT:
explicit batch, the INT8 flag (honours Q/DQ) and FP16 for the remaining layers where the GPU has fast FP16. A
timing cache next to the engine makes rebuilds fast. Legacy path for TensorRT <= 10 only: implicit INT8 from an FP32
ONNX with an entropy calibrator (the calibrator classes were deprecated in 10.1 and removed in 11.0); its class is
defined inside :func:`make_entropy_calibrator` so importing this module never needs tensorrt.
Written against the real API, checked with a fake ``tensorrt`` in tests; not run on hardware yet.
"""
import logging
import os
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

import numpy as np

from ..errors import EdgesightError, InferenceError
from ..files import atomic_write
from .cuda_device import gpu_identity

log = logging.getLogger(__name__)


class EngineBuildError(InferenceError):
    """TensorRT could not parse or build."""


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def build_engine(onnx_path: str, engine_path: str, sample_shape: Tuple[int, ...], max_batch: int = 8,
                 workspace_mb: int = 1024, fp16_fallback: bool = True, timing_cache: Optional[str] = None,
                 calibrator: Any = None, trt: Any = None) -> Dict[str, str]:
    """Parse, build and serialize; ``sample_shape`` is one input without N (e.g. (3, 224, 224)), used for the
    dynamic-batch optimization profile (1 to ``max_batch``). ``calibrator`` selects the legacy implicit-INT8 path
    (TensorRT <= 10). Returns ``built_for`` {tensorrt, device, compute}."""
    if trt is None:
        from .tensorrt_backend import import_tensorrt

        trt = import_tensorrt()
    from .tensorrt_backend import make_logger

    major = trt_major(trt)
    if calibrator is not None and major >= 11:
        raise EdgesightError("TensorRT %s has no INT8 calibrators (removed in 11.0): build from the Q/DQ ONNX"
                             % trt.__version__)
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = calibrator is None and major >= 10 and hasattr(trt.NetworkDefinitionCreationFlag,
                                                                     "STRONGLY_TYPED")
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if major < 10:  # explicit batch is the only mode from TensorRT 10 on (the flag is deprecated there)
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as f:
        ok = parser.parse(f.read())
    if not ok:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError("TensorRT %s cannot parse the ONNX: %s" % (trt.__version__, "; ".join(errors) or
                                                                         "no parser message"), file=onnx_path)
    config = builder.create_builder_config()
    workspace = int(workspace_mb) << 20
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    else:  # TensorRT < 8.4
        config.max_workspace_size = workspace
    if not strongly_typed:
        config.set_flag(trt.BuilderFlag.INT8)  # Q/DQ: explicit quantization; with a calibrator: implicit INT8
        if fp16_fallback and getattr(builder, "platform_has_fast_fp16", False):
            config.set_flag(trt.BuilderFlag.FP16)  # layers without Q/DQ may run in FP16 instead of FP32
    if calibrator is not None:
        config.int8_calibrator = calibrator
    cache_bytes = b""
    if timing_cache and os.path.isfile(timing_cache):
        with open(timing_cache, "rb") as f:
            cache_bytes = f.read()
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    inp = network.get_input(0)
    if any(int(d) < 0 for d in tuple(inp.shape)):
        profile = builder.create_optimization_profile()
        one = (1,) + tuple(sample_shape)
        profile.set_shape(inp.name, one, one, (max_batch,) + tuple(sample_shape))
        config.add_optimization_profile(profile)
        if calibrator is not None and hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        said = "; ".join(logger.messages[-3:]) or "no message"
        raise EngineBuildError("TensorRT %s failed to build an engine (TensorRT says: %s)" % (trt.__version__, said),
                               file=onnx_path)
    atomic_write(engine_path, bytes(serialized))
    if timing_cache:
        atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    ident = gpu_identity()
    return {"tensorrt": str(trt.__version__), "device": ident.name if ident else "unknown",
            "compute": ident.compute if ident else "unknown"}


def make_entropy_calibrator(trt, cuda, batches: Iterable[np.ndarray], cache_path: str, batch_size: int):
    """An ``IInt8EntropyCalibrator2`` (TensorRT <= 10) fed with preprocessed batches, caching its table."""
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise EdgesightError("TensorRT %s has no IInt8EntropyCalibrator2 (removed in 11.0): use the Q/DQ ONNX"
                             % trt.__version__)

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches: Iterator[np.ndarray] = iter(batches)
            self._device: Optional[int] = None
            self._nbytes = 0
            self.fed = 0

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names, p_str=None):
            try:
                batch = np.ascontiguousarray(next(self._batches), dtype=np.float32)
            except StopIteration:
                return None  # calibration done
            if self._device is None or batch.nbytes > self._nbytes:
                if self._device is not None:
                    cuda.free(self._device)
                self._device, self._nbytes = cuda.malloc(batch.nbytes), batch.nbytes
            stream = cuda.stream()
            cuda.htod(self._device, batch, stream)
            cuda.synchronize(stream)
            cuda.destroy_stream(stream)
            self.fed += 1
            return [self._device]

        def read_calibration_cache(self):
            if os.path.isfile(cache_path):
                with open(cache_path, "rb") as f:
                    return f.read()
            return None

        def write_calibration_cache(self, cache) -> None:
            atomic_write(cache_path, bytes(cache))

    return EntropyCalibrator()


class ExtendTimeout(object):
    """While a build runs, tell systemd every ``every`` s that start-up needs ``extend`` s more
    (``EXTEND_TIMEOUT_USEC``), so a long TensorRT build on a Jetson is not killed as a hung start."""

    def __init__(self, notify: Optional[Callable[[float], Any]], every: float = 20.0, extend: float = 60.0) -> None:
        import threading

        self.notify, self.every, self.extend = notify, every, extend
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="extend-timeout", daemon=True)

    def _run(self) -> None:
        while True:
            if self.notify is not None:
                self.notify(self.extend)
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> "ExtendTimeout":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
