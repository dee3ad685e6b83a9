"""Engines cached per device: key (ONNX sha256, TensorRT version, GPU name, compute capability).

An engine only loads on the GPU and TensorRT version it was built for. ``engine_for`` returns an engine that
deserializes here: the package's shipped engine when its ``built_for`` matches this device, else a cached one,
else a fresh build from the TensorRT-safe Q/DQ ONNX (telling systemd to extend the start timeout meanwhile). A
shipped or cached engine that does not deserialize is rebuilt, with TensorRT's message in the log.
"""
import logging
import os
import re
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

from ..errors import ModelFileError
from .cuda_device import gpu_identity

log = logging.getLogger(__name__)


class EngineKey(NamedTuple):
    onnx_sha256: str
    tensorrt: str
    device: str
    compute: str

    @property
    def filename(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.device).strip("-").lower() or "gpu"
        return "%s-trt%s-%s-sm%s.engine" % (self.onnx_sha256[:16], self.tensorrt, slug, self.compute.replace(".", ""))


def this_device(trt) -> Dict[str, str]:
    ident = gpu_identity()
    return {"tensorrt": str(trt.__version__), "device": ident.name if ident else "unknown",
            "compute": ident.compute if ident else "unknown"}


def matches(built_for: Optional[Dict[str, str]], here: Dict[str, str]) -> bool:
    return bool(built_for) and all(str(built_for.get(k)) == str(here[k]) for k in ("tensorrt", "device", "compute"))


def engine_for(onnx_path: str, onnx_sha256: str, cache_dir: str, sample_shape: Tuple[int, ...],
               shipped: Optional[Tuple[str, Optional[Dict[str, str]]]] = None,
               extend_timeout: Optional[Callable[[float], Any]] = None, trt: Any = None,
               builder: Optional[Callable[..., Dict[str, str]]] = None,
               here: Optional[Dict[str, str]] = None) -> str:
    """Path of an engine that deserializes on this device (see the module docstring)."""
    from .tensorrt_backend import deserialize, import_tensorrt, make_logger
    from .tensorrt_build import ExtendTimeout, build_engine

    trt = trt or import_tensorrt()
    builder = builder or build_engine
    here = here or this_device(trt)

    def loads(path: str) -> bool:
        try:
            deserialize(trt, path, make_logger(trt))
            return True
        except ModelFileError as exc:
            log.warning("%s", exc)
            return False

    if shipped is not None:
        path, built_for = shipped
        if matches(built_for, here) and os.path.isfile(path) and loads(path):
            log.info("using the package's engine %s (built for %s)", path, built_for)
            return path
        log.info("the package's engine was built for %s, this device is %s: using the cache", built_for, here)
    key = EngineKey(onnx_sha256, here["tensorrt"], here["device"], here["compute"])
    os.makedirs(cache_dir, exist_ok=True)
    cached = os.path.join(cache_dir, key.filename)
    if os.path.isfile(cached):
        if loads(cached):
            return cached
        log.warning("cached engine %s does not deserialize: rebuilding", cached)
        os.unlink(cached)
    timing = os.path.join(cache_dir, "timing-trt%s-sm%s.cache" % (key.tensorrt, key.compute.replace(".", "")))
    log.info("building a TensorRT %s engine from %s (this takes minutes on a Jetson)", key.tensorrt, onnx_path)
    with ExtendTimeout(extend_timeout):
        builder(onnx_path, cached, sample_shape, timing_cache=timing, trt=trt)
    return cached
