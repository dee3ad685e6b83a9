"""The converter's TensorRT target: the device-side builder (runtimes/tensorrt_build.py), used where the converter
itself runs on a machine with TensorRT and the target GPU."""
from typing import Optional

from ..runtimes.tensorrt_build import build_engine  # noqa: F401  (re-exported for the converter)


def tensorrt_version() -> Optional[str]:
    """The importable TensorRT's version, or None."""
    try:
        import tensorrt as trt
    except Exception:  # absent, or a broken system install: either way no engine can be built here
        return None
    return str(getattr(trt, "__version__", "unknown"))
