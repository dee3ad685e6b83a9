"""ONNX Runtime backend: CPU everywhere, CUDA / TensorRT execution providers where the installed build has them."""
import logging
from typing import ClassVar, Dict, List, Optional, Tuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InferenceError, MissingDependencyError, ModelFileError, require_module
from .base import Runtime, TensorSpec

log = logging.getLogger(__name__)

# Preferred order for providers="auto". The TensorRT EP is left out of auto on purpose: it builds an engine on the
# first run (minutes on a Jetson); ask for it explicitly, or use the tensorrt runtime.
AUTO_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(int64)": "int64"}


class OnnxRuntimeConfig(BaseModel):
    """``runtime: onnxruntime`` options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threads: Optional[int] = Field(None, ge=1, description="intra-op threads; default: ONNX Runtime's choice")
    providers: Optional[List[str]] = Field(None, description="execution providers in order; default: auto")
    spinning: bool = Field(True, description="worker threads spin-wait between runs (fastest alone; turn off "
                                            "when other threads, e.g. the agent's, need the cores)")


def import_onnxruntime():
    return require_module("onnxruntime", "The onnxruntime backend", "onnx")


class OnnxRuntimeRunner(Runtime):
    name: ClassVar[str] = "onnxruntime"
    default_layout: ClassVar[str] = "nchw"

    def __init__(self, model_path: str, input_layout: str = "nchw", layout: Optional[str] = None,
                 config: Optional[OnnxRuntimeConfig] = None) -> None:
        super().__init__(model_path, input_layout, layout)
        self.config = config or OnnxRuntimeConfig()
        self._session = None

    def _providers(self, ort) -> List[str]:
        available = ort.get_available_providers()
        if self.config.providers:
            missing = [p for p in self.config.providers if p not in available]
            if missing:
                raise MissingDependencyError(
                    "Execution provider(s) %s" % ", ".join(missing), "onnx", module="an onnxruntime build with them",
                    detail="this build has %s" % ", ".join(available))
            return list(self.config.providers)
        return [p for p in AUTO_PROVIDERS if p in available] or list(available)

    def _load(self) -> Tuple[List[TensorSpec], List[TensorSpec]]:
        ort = import_onnxruntime()
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if self.config.threads:
            opts.intra_op_num_threads = self.config.threads
            opts.inter_op_num_threads = 1
        if not self.config.spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = self._providers(ort)
        try:
            self._session = ort.InferenceSession(self.model_path, sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
            raise ModelFileError("onnxruntime cannot load this model (%s). Is it a complete ONNX file? Re-export or "
                                 "re-copy it." % _first_line(exc), file=self.model_path)
        log.debug("onnxruntime providers: %s", self._session.get_providers())
        return ([self._spec(t) for t in self._session.get_inputs()],
                [self._spec(t) for t in self._session.get_outputs()])

    def _spec(self, t) -> TensorSpec:
        shape = tuple(d if isinstance(d, int) and d > 0 else None for d in (t.shape or ()))
        layout = self.layout if len(shape) == 4 else None
        return TensorSpec(t.name, shape, _ORT_TYPES.get(t.type, t.type), layout)

    @property
    def providers(self) -> List[str]:
        self._require_loaded()
        return list(self._session.get_providers())

    def _infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        spec = self._inputs[0]
        feed = batch.astype(spec.dtype) if spec.dtype in ("float16", "float64") else batch
        try:
            values = self._session.run(None, {spec.name: feed})
        except Exception as exc:
            raise InferenceError("onnxruntime failed on %s: %s" % (self.model_path, _first_line(exc)))
        return {t.name: v for t, v in zip(self._outputs, values)}

    def _close(self) -> None:
        self._session = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
