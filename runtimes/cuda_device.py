"""Which GPU is this? Name and compute capability through cuda-python or pycuda, whichever is installed.

Used to key TensorRT engines (an engine only loads on the GPU and TensorRT version it was built for). Imports
happen inside the functions, so this module never needs CUDA.
"""
import logging
from typing import NamedTuple, Optional

log = logging.getLogger(__name__)


class GpuIdentity(NamedTuple):
    name: str
    compute: str  # "8.7"


def gpu_identity(device: int = 0) -> Optional[GpuIdentity]:
    """The GPU's name and compute capability, or None when neither cuda-python nor pycuda can tell."""
    for probe in (_cuda_python, _pycuda):
        try:
            ident = probe(device)
        except Exception as exc:  # a missing or broken binding: try the next one
            log.debug("%s: %s", probe.__name__, exc)
            continue
        if ident is not None:
            return ident
    return None


def _cuda_python(device: int) -> Optional[GpuIdentity]:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    err, prop = cudart.cudaGetDeviceProperties(device)
    if int(err) != 0:
        return None
    name = prop.name.decode("utf-8", "replace") if isinstance(prop.name, bytes) else str(prop.name)
    return GpuIdentity(name.strip("\x00 "), "%d.%d" % (prop.major, prop.minor))


def _pycuda(device: int) -> Optional[GpuIdentity]:
    import pycuda.driver as drv

    drv.init()
    dev = drv.Device(device)
    major, minor = dev.compute_capability()
    return GpuIdentity(dev.name(), "%d.%d" % (major, minor))
