"""TFLite backend: LiteRT (ai-edge-litert) first, then tflite-runtime, then tensorflow.lite.

Handles inside the backend what callers must never see: NHWC models fed from NCHW preprocessing, int8/uint8 input
quantization and output dequantization, dynamic-batch models resized to the batch given
(a fixed batch is sliced by ``Runtime.infer``), XNNPACK threads.
"""
import logging
from typing import ClassVar, Dict, List, Optional, Tuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InferenceError, MissingDependencyError, ModelFileError
from . import tflite_file
from .base import QuantParams, Runtime, TensorSpec, dequantize, quantize

log = logging.getLogger(__name__)

_INTERPRETERS = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow.lite", "tensorflow"),
)


class TfliteConfig(BaseModel):
    """``runtime: tflite`` options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threads: Optional[int] = Field(None, ge=1, description="XNNPACK / interpreter threads; default: all cores")


def import_interpreter():
    """The first TFLite ``Interpreter`` class that imports, and the name of the package it came from."""
    import importlib

    errors = []
    for module, package in _INTERPRETERS:
        try:
            return importlib.import_module(module).Interpreter, package
        except ImportError as exc:
            errors.append("%s: %s" % (package, exc))
    raise MissingDependencyError("The tflite backend", "tflite", module="ai-edge-litert (or tflite-runtime)",
                                 detail="; ".join(errors))


def check_flatbuffer(path: str) -> None:
    """A .tflite file is a well-formed flatbuffer with identifier ``TFL3`` (runtimes/tflite_file.py): tflite-runtime
    2.14 reads a truncated file past its end and the process dies of SIGSEGV."""
    tflite_file.check(path)


class TfliteRunner(Runtime):
    name: ClassVar[str] = "tflite"
    default_layout: ClassVar[str] = "nhwc"

    def __init__(self, model_path: str, input_layout: str = "nchw", layout: Optional[str] = None,
                 config: Optional[TfliteConfig] = None) -> None:
        super().__init__(model_path, input_layout, layout)
        self.config = config or TfliteConfig()
        self._interp = None
        self._in = None  # interpreter input detail dict
        self._outs = []  # type: List[dict]
        self.interpreter_package = None  # type: Optional[str]

    def _load(self) -> Tuple[List[TensorSpec], List[TensorSpec]]:
        Interpreter, self.interpreter_package = import_interpreter()
        check_flatbuffer(self.model_path)
        try:
            self._interp = Interpreter(model_path=self.model_path, num_threads=self.config.threads)
            self._interp.allocate_tensors()
        except Exception as exc:
            raise ModelFileError("the TFLite interpreter (%s) cannot load this model: %s"
                                 % (self.interpreter_package, str(exc).strip().splitlines()[0] if str(exc) else
                                    type(exc).__name__), file=self.model_path)
        ins, self._outs = self._interp.get_input_details(), self._interp.get_output_details()
        if ins:
            self._in = ins[0]
        return [self._spec(d) for d in ins], [self._spec(d) for d in self._outs]

    def _spec(self, d: dict) -> TensorSpec:
        sig = d.get("shape_signature", d["shape"])
        shape = tuple(None if int(s) < 0 else int(s) for s in sig)
        dtype = np.dtype(d["dtype"]).name
        scale, zp = d.get("quantization", (0.0, 0))
        quant = QuantParams(float(scale), int(zp)) if dtype in ("int8", "uint8", "int16") and scale else None
        return TensorSpec(d["name"], shape, dtype, self.layout if len(shape) == 4 else None, quant)

    def _infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        n = batch.shape[0]
        current = int(self._interp.get_input_details()[0]["shape"][0])
        if n != current:  # a dynamic batch (a fixed one is sliced by Runtime.infer): resize to this batch
            self._interp.resize_tensor_input(self._in["index"], [n] + list(batch.shape[1:]), strict=True)
            self._interp.allocate_tensors()
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        spec = self._inputs[0]
        if spec.quant is not None:
            feed = quantize(batch, spec.quant, np.dtype(spec.dtype))
        else:
            feed = batch.astype(spec.dtype, copy=False)
        try:
            self._interp.set_tensor(self._in["index"], feed)
            self._interp.invoke()
            result = {}
            for det, out in zip(self._outs, self._outputs):
                value = self._interp.get_tensor(det["index"])
                result[out.name] = dequantize(value, out.quant) if out.quant is not None else value.copy()
            return result
        except Exception as exc:
            raise InferenceError("TFLite inference failed on %s: %s" % (self.model_path, exc))

    def _close(self) -> None:
        self._interp = None
