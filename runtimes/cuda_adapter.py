"""CUDA memory and streams for the TensorRT backend through one small adapter: cuda-python (``cuda.bindings``, what
NVIDIA's own samples use now; older ``cuda.cudart``) or pycuda, whichever is installed. Both come from JetPack or
NVIDIA's wheels; nothing here is imported until a TensorRT runtime loads. Not run on hardware yet (docs/jetson.md).
"""
import ctypes
import logging
from typing import Any, Optional, Tuple

import numpy as np

from ..errors import InferenceError, MissingDependencyError

log = logging.getLogger(__name__)


class CudaAdapter(object):
    """What the TensorRT runner needs: device buffers, pinned host buffers, async copies, one stream."""

    name = "base"

    def malloc(self, nbytes: int) -> int:
        raise NotImplementedError

    def free(self, ptr: int) -> None:
        raise NotImplementedError

    def pinned(self, shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
        raise NotImplementedError

    def free_pinned(self, arr: np.ndarray) -> None:
        raise NotImplementedError

    def htod(self, dst: int, src: np.ndarray, stream: Any) -> None:
        raise NotImplementedError

    def dtoh(self, dst: np.ndarray, src: int, stream: Any) -> None:
        raise NotImplementedError

    def stream(self) -> Any:
        raise NotImplementedError

    def stream_handle(self, stream: Any) -> int:
        raise NotImplementedError

    def synchronize(self, stream: Any) -> None:
        raise NotImplementedError

    def destroy_stream(self, stream: Any) -> None:
        raise NotImplementedError


class CudaPythonAdapter(CudaAdapter):
    name = "cuda-python"

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6
        self.rt = cudart
        self._host = {}  # id(array) -> host pointer

    def _check(self, result: Any) -> Any:
        err = result[0] if isinstance(result, tuple) else result
        if int(err) != 0:
            raise InferenceError("CUDA call failed: %s" % (err,))
        return result[1] if isinstance(result, tuple) and len(result) > 1 else None

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(nbytes)))

    def free(self, ptr: int) -> None:
        self._check(self.rt.cudaFree(ptr))

    def pinned(self, shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        ptr = int(self._check(self.rt.cudaMallocHost(nbytes)))
        buf = (ctypes.c_byte * nbytes).from_address(ptr)
        arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
        self._host[id(arr)] = ptr
        return arr

    def free_pinned(self, arr: np.ndarray) -> None:
        ptr = self._host.pop(id(arr), None)
        if ptr is not None:
            self._check(self.rt.cudaFreeHost(ptr))

    def htod(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self._check(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))

    def dtoh(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self._check(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))

    def stream(self) -> Any:
        return self._check(self.rt.cudaStreamCreate())

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def synchronize(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream))

    def destroy_stream(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamDestroy(stream))


class PyCudaAdapter(CudaAdapter):
    name = "pycuda"

    def __init__(self) -> None:
        import pycuda.driver as drv

        drv.init()
        self.drv = drv
        self.ctx = drv.Device(0).retain_primary_context()
        self.ctx.push()
        self._dev = {}  # ptr -> DeviceAllocation (keeps it alive)

    def malloc(self, nbytes: int) -> int:
        alloc = self.drv.mem_alloc(nbytes)
        self._dev[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        alloc = self._dev.pop(ptr, None)
        if alloc is not None:
            alloc.free()

    def pinned(self, shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
        return self.drv.pagelocked_empty(shape, dtype)

    def free_pinned(self, arr: np.ndarray) -> None:
        base = getattr(arr, "base", None)
        if base is not None and hasattr(base, "free"):
            base.free()

    def htod(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self.drv.memcpy_htod_async(dst, src, stream)

    def dtoh(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self.drv.memcpy_dtoh_async(dst, src, stream)

    def stream(self) -> Any:
        return self.drv.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def destroy_stream(self, stream: Any) -> None:
        pass


def cuda_adapter(prefer: Optional[str] = None) -> CudaAdapter:
    """cuda-python if importable, else pycuda (or the one named by ``prefer``)."""
    order = [CudaPythonAdapter, PyCudaAdapter]
    if prefer == "pycuda":
        order.reverse()
    errors = []
    for cls in order:
        try:
            return cls()
        except ImportError as exc:
            errors.append("%s: %s" % (cls.name, exc))
    raise MissingDependencyError("The tensorrt backend", "tensorrt", module="cuda-python or pycuda",
                                 detail="; ".join(errors) + "; both come with JetPack/NVIDIA's packages")
