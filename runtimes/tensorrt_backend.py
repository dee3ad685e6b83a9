"""TensorRT backend: runs a serialized engine.

TensorRT 10/11 tensor API (``num_io_tensors``, ``get_tensor_name/shape/dtype/mode``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``) with a fallback to the 8.x bindings API (``execute_async_v2``). CUDA
memory and the stream go through :mod:`runtimes.cuda_adapter`; device and pinned host buffers are allocated once
and reused (grown when a larger batch arrives). Engines are specific to the GPU and TensorRT version: a file that
does not deserialize raises :class:`ModelFileError` with TensorRT's own message; :mod:`runtimes.engine_cache` then
rebuilds it. Written against the real API and checked with a fake ``tensorrt`` in tests; not run on hardware yet.
"""
import logging
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import numpy as np
from pydantic import BaseModel, ConfigDict

from ..errors import ModelFileError, require_module
from .base import Runtime, TensorSpec

log = logging.getLogger(__name__)


class TensorRTConfig(BaseModel):
    """``runtime: tensorrt`` options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cuda: Optional[str] = None  # "cuda-python" | "pycuda": force one adapter (default: whichever imports)


def import_tensorrt():
    return require_module("tensorrt", "The tensorrt backend", "tensorrt", package="TensorRT",
                          hint="TensorRT comes from JetPack: create the venv with --system-site-packages")


def make_logger(trt):
    """A TensorRT logger that keeps what TensorRT says (to explain a failed deserialize or build)."""

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: List[str] = []

        def log(self, severity, msg) -> None:
            self.messages.append(str(msg))
            bad = (getattr(trt.ILogger.Severity, "INTERNAL_ERROR", None), trt.ILogger.Severity.ERROR)
            level = logging.ERROR if severity in bad else logging.DEBUG
            log.log(level, "TensorRT: %s", msg)

    return CollectingLogger()


def deserialize(trt, path: str, logger=None):
    """The engine in ``path`` or a ModelFileError quoting TensorRT."""
    logger = logger or make_logger(trt)
    runtime = trt.Runtime(logger)
    with open(path, "rb") as f:
        engine = runtime.deserialize_cuda_engine(f.read())
    if engine is None:
        said = "; ".join(getattr(logger, "messages", [])[-3:]) or "no message"
        raise ModelFileError("TensorRT %s cannot deserialize this engine (TensorRT says: %s). Engines only load on "
                             "the GPU and TensorRT version they were built for; rebuild it from the Q/DQ ONNX."
                             % (trt.__version__, said), file=path)
    return runtime, engine


class _Binding(object):
    __slots__ = ("name", "index", "is_input", "dtype", "device", "host", "capacity")

    def __init__(self, name: str, index: int, is_input: bool, dtype: np.dtype) -> None:
        self.name, self.index, self.is_input, self.dtype = name, index, is_input, dtype
        self.device: Optional[int] = None
        self.host: Optional[np.ndarray] = None
        self.capacity = 0  # elements


class TensorRTRunner(Runtime):
    name: ClassVar[str] = "tensorrt"
    default_layout: ClassVar[str] = "nchw"

    def __init__(self, model_path: str, input_layout: str = "nchw", layout: Optional[str] = None,
                 config: Optional[TensorRTConfig] = None, cuda: Any = None) -> None:
        super().__init__(model_path, input_layout, layout)
        self.config = config or TensorRTConfig()
        self._cuda = cuda  # a CudaAdapter; tests pass a fake
        self._trt: Any = None  # the tensorrt module, imported at load()
        self._engine = self._context = self._runtime = self._stream = None
        self._bindings: List[_Binding] = []
        self.api: Optional[str] = None  # "tensor" (TensorRT >= 8.5 tensor API) or "bindings" (older)

    def _load(self) -> Tuple[List[TensorSpec], List[TensorSpec]]:
        trt = import_tensorrt()
        if self._cuda is None:
            from .cuda_adapter import cuda_adapter

            self._cuda = cuda_adapter(self.config.cuda)
        self._trt = trt
        self._runtime, self._engine = deserialize(trt, self.model_path)
        self._context = self._engine.create_execution_context()
        self.api = "tensor" if hasattr(self._engine, "num_io_tensors") else "bindings"
        specs: List[Tuple[bool, TensorSpec]] = []
        if self.api == "tensor":
            for i in range(self._engine.num_io_tensors):
                name = self._engine.get_tensor_name(i)
                is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                shape = tuple(self._engine.get_tensor_shape(name))
                dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
                self._bindings.append(_Binding(name, i, is_input, dtype))
                specs.append((is_input, self._spec(name, shape, dtype)))
        else:
            for i in range(self._engine.num_bindings):
                name = self._engine.get_binding_name(i)
                is_input = bool(self._engine.binding_is_input(i))
                shape = tuple(self._engine.get_binding_shape(i))
                dtype = np.dtype(trt.nptype(self._engine.get_binding_dtype(i)))
                self._bindings.append(_Binding(name, i, is_input, dtype))
                specs.append((is_input, self._spec(name, shape, dtype)))
        self._stream = self._cuda.stream()
        return [s for inp, s in specs if inp], [s for inp, s in specs if not inp]

    def _spec(self, name: str, shape: Tuple[int, ...], dtype: np.dtype) -> TensorSpec:
        dims = tuple(None if int(d) < 0 else int(d) for d in shape)
        return TensorSpec(name, dims, dtype.name, self.layout if len(dims) == 4 else None)

    def _max_batch(self, name: str) -> Optional[int]:
        engine = self._engine
        try:
            if hasattr(engine, "get_tensor_profile_shape"):
                return int(engine.get_tensor_profile_shape(name, 0)[2][0])
            return int(engine.get_profile_shape(0, name)[2][0])
        except Exception:  # a static engine has no profile
            return None

    def _infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        inp = [b for b in self._bindings if b.is_input][0]
        # a dynamic batch up to the optimisation profile's maximum (a static one is sliced by Runtime.infer)
        limit = self._max_batch(inp.name) if self._inputs[0].shape[0] is None else None
        if limit and batch.shape[0] > limit:
            parts = [self._run(batch[i:i + limit]) for i in range(0, batch.shape[0], limit)]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        ctx, cuda = self._context, self._cuda
        inp = [b for b in self._bindings if b.is_input][0]
        if self._inputs[0].shape[0] is None or any(d is None for d in self._inputs[0].shape):
            if self.api == "tensor":
                ctx.set_input_shape(inp.name, tuple(batch.shape))
            else:
                ctx.set_binding_shape(inp.index, tuple(batch.shape))
        shapes = {}
        for b in self._bindings:
            if b.is_input:
                shapes[b.name] = tuple(batch.shape)
            elif self.api == "tensor":
                shapes[b.name] = tuple(ctx.get_tensor_shape(b.name))
            else:
                shapes[b.name] = tuple(ctx.get_binding_shape(b.index))
            self._ensure(b, int(np.prod(shapes[b.name])))
        np.copyto(inp.host[:batch.size].reshape(batch.shape), batch.astype(inp.dtype, copy=False))
        cuda.htod(inp.device, inp.host[:batch.size], self._stream)
        handle = cuda.stream_handle(self._stream)
        if self.api == "tensor":
            for b in self._bindings:
                ctx.set_tensor_address(b.name, b.device)
            ok = ctx.execute_async_v3(handle)
        else:
            ok = ctx.execute_async_v2([b.device for b in self._bindings], handle)
        if not ok:
            from ..errors import InferenceError

            raise InferenceError("TensorRT execution failed on %s" % self.model_path)
        outs = {}
        for b in self._bindings:
            if not b.is_input:
                n = int(np.prod(shapes[b.name]))
                cuda.dtoh(b.host[:n], b.device, self._stream)
        cuda.synchronize(self._stream)
        for b in self._bindings:
            if not b.is_input:
                n = int(np.prod(shapes[b.name]))
                outs[b.name] = b.host[:n].reshape(shapes[b.name]).astype(np.float32)
        return outs

    def _ensure(self, b: _Binding, elements: int) -> None:
        """Device + pinned host buffers, reused across calls, grown only when a larger batch needs it."""
        if b.capacity >= elements:
            return
        if b.device is not None:
            self._cuda.free(b.device)
            self._cuda.free_pinned(b.host)
        b.device = self._cuda.malloc(elements * b.dtype.itemsize)
        b.host = self._cuda.pinned((elements,), b.dtype)
        b.capacity = elements

    def _close(self) -> None:
        for b in self._bindings:
            if b.device is not None:
                self._cuda.free(b.device)
                self._cuda.free_pinned(b.host)
                b.device, b.host, b.capacity = None, None, 0
        if self._stream is not None:
            self._cuda.destroy_stream(self._stream)
        self._context = self._engine = self._runtime = self._stream = None
