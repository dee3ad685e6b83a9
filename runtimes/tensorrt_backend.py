"""TensorRT backend: the place reserved for it.

The TensorRT issue fills this in: deserialize an engine (or build it on the device from the package's TensorRT-safe
Q/DQ ONNX), TensorRT 10/11 tensor API with the 8.x bindings fallback, CUDA memory through cuda-python or pycuda.
Until then this backend reports clearly that it is not available, so ``auto`` selection and ``edgesight info`` skip it.
TensorRT comes from JetPack as a system package; see docs/jetson.md.
"""
from typing import ClassVar, Dict, List, Optional, Tuple

import numpy as np
from pydantic import BaseModel, ConfigDict

from ..errors import EdgesightError, MissingDependencyError
from .base import Runtime, TensorSpec


class TensorRTConfig(BaseModel):
    """``runtime: tensorrt`` options (filled in by the TensorRT issue)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorRTRunner(Runtime):
    name: ClassVar[str] = "tensorrt"
    default_layout: ClassVar[str] = "nchw"

    def __init__(self, model_path: str, input_layout: str = "nchw", layout: Optional[str] = None,
                 config: Optional[TensorRTConfig] = None) -> None:
        super().__init__(model_path, input_layout, layout)
        self.config = config or TensorRTConfig()

    def _load(self) -> Tuple[List[TensorSpec], List[TensorSpec]]:
        try:
            import tensorrt  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError(
                "The tensorrt backend", "tensorrt", module="TensorRT",
                detail="%s; TensorRT comes from JetPack: create the venv with --system-site-packages" % exc)
        raise EdgesightError("The tensorrt backend is not implemented in this edgesight version; use the onnxruntime "
                             "or tflite artifact of the package (runtime: onnxruntime / tflite).")

    def _infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:  # pragma: no cover - never loaded yet
        raise NotImplementedError
