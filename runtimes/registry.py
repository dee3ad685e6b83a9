"""Backends by name (the ``runtime:`` key of the package and of the agent config), imported only when used."""
import importlib
import importlib.util
from typing import Any, Dict, List, Optional, Tuple, Type

from ..errors import ConfigError
from .base import Runtime

# name -> (module, runner class, config class, python module whose presence makes the backend usable)
_BACKENDS: Dict[str, Tuple[str, str, str, Tuple[str, ...]]] = {
    "onnxruntime": ("edgesight.runtimes.ort_backend", "OnnxRuntimeRunner", "OnnxRuntimeConfig", ("onnxruntime",)),
    "tflite": ("edgesight.runtimes.tflite_backend", "TfliteRunner", "TfliteConfig",
               ("ai_edge_litert", "tflite_runtime", "tensorflow")),
    "tensorrt": ("edgesight.runtimes.tensorrt_backend", "TensorRTRunner", "TensorRTConfig", ("tensorrt",)),
}

RUNTIME_NAMES: Tuple[str, ...] = tuple(_BACKENDS)


def _entry(name: str) -> Tuple[str, str, str, Tuple[str, ...]]:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ConfigError("unknown runtime %r; choose one of %s" % (name, ", ".join(RUNTIME_NAMES)), field="runtime")


def runtime_class(name: str) -> Type[Runtime]:
    module, cls, _, _ = _entry(name)
    return getattr(importlib.import_module(module), cls)


def config_class(name: str) -> Any:
    module, _, cfg, _ = _entry(name)
    return getattr(importlib.import_module(module), cfg)


def is_installed(name: str) -> bool:
    """Whether the backend's engine package can be found (cheap: nothing is imported)."""
    return any(_find(m) for m in _entry(name)[3])


def _find(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def runs_dynamic_range_tflite() -> bool:
    """Can this device's TFLite interpreter run a dynamic-range file (int8 weights, float activations: newer
    FULLY_CONNECTED/CONV op versions)? LiteRT can; tflite-runtime 2.14, the last for Python 3.8, cannot ("Didn't
    find op for builtin opcode 'FULLY_CONNECTED' version '12'") and is what the backend imports without LiteRT."""
    return _find("ai_edge_litert") or not _find("tflite_runtime")


def installed_runtimes() -> List[str]:
    return [n for n in RUNTIME_NAMES if is_installed(n)]


def create_runtime(name: str, model_path: str, input_layout: str = "nchw", layout: Optional[str] = None,
                   config: Optional[Any] = None) -> Runtime:
    """A new, not yet loaded runtime; ``config`` is the backend's config object or a dict of its fields."""
    cfg_cls = config_class(name)
    if isinstance(config, dict):
        config = cfg_cls(**config)
    return runtime_class(name)(model_path, input_layout=input_layout, layout=layout, config=config)


def tensorrt_major() -> Optional[int]:
    """The installed TensorRT's major version (from its metadata, else its module), or None."""
    if not is_installed("tensorrt"):
        return None
    try:
        from importlib.metadata import version

        return int(version("tensorrt").split(".")[0])
    except Exception:  # JetPack's system tensorrt may have no metadata: ask the module
        pass
    try:
        import tensorrt

        return int(str(tensorrt.__version__).split(".")[0])
    except Exception:  # a broken install: TensorRT is treated as absent for the choice of profile
        return None
