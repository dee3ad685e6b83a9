"""The one Runtime interface every backend implements (Polygraphy's runner idea, kept small).

Public methods check state and inputs; backends fill in ``_load`` / ``_infer`` / ``_close`` and handle their own
quirks (quantized I/O, NHWC, providers, CUDA buffers) so callers never see them. Callers always pass the float32
batch produced by ``calibration.preprocess`` in ``input_layout``: the package's layout, or ``"native"`` for the model
file's own layout, which spares a transpose per call (the agent preprocesses straight into it).
"""
import logging
import os
from collections import OrderedDict
from typing import ClassVar, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from ..calibration.preprocess import LAYOUTS, layout_shape, to_layout
from ..errors import ModelFileError, RuntimeStateError

log = logging.getLogger(__name__)


class QuantParams(NamedTuple):
    """Per-tensor affine quantization: ``real = (q - zero_point) * scale``."""

    scale: float
    zero_point: int


class TensorSpec(NamedTuple):
    name: str
    shape: Tuple[Optional[int], ...]  # None where the dimension is dynamic
    dtype: str  # numpy dtype name: float32, int8, uint8, float16, ...
    layout: Optional[str] = None  # nchw / nhwc for 4-D image inputs
    quant: Optional[QuantParams] = None

    def describe(self) -> str:
        dims = "x".join("?" if d is None else str(d) for d in self.shape)
        extra = " %s" % self.layout if self.layout else ""
        if self.quant is not None:
            extra += " q(scale=%.6g, zp=%d)" % (self.quant.scale, self.quant.zero_point)
        return "%s [%s] %s%s" % (self.name, dims, self.dtype, extra)


class Runtime(object):
    """Construct cheaply, ``load()``, read ``inputs``/``outputs``, ``infer(batch)``, ``close()``; a context manager.

    ``infer`` takes one float32 batch (N first) in ``input_layout`` and returns an ordered dict of float32 outputs
    (dequantized where the model is quantized), keyed by output name, in model order.
    """

    name: ClassVar[str] = "base"
    default_layout: ClassVar[str] = "nchw"

    def __init__(self, model_path: str, input_layout: str = "nchw", layout: Optional[str] = None) -> None:
        if input_layout not in LAYOUTS + ("native",) or (layout is not None and layout not in LAYOUTS):
            raise ValueError("input_layout must be one of %s or 'native', layout one of %s" % (LAYOUTS, LAYOUTS))
        self.model_path = str(model_path)
        self.layout = layout or self.default_layout  # the model file's own input layout
        self.input_layout = self.layout if input_layout == "native" else input_layout
        self._inputs: List[TensorSpec] = []
        self._outputs: List[TensorSpec] = []
        self._loaded = False
        self._closed = False

    # -- public, state-checked -------------------------------------------------------------------------------
    @property
    def is_loaded(self) -> bool:
        return self._loaded and not self._closed

    def load(self) -> "Runtime":
        if self._closed:
            raise RuntimeStateError("%s runtime for %s was closed; create a new one" % (self.name, self.model_path))
        if self._loaded:
            return self
        if not os.path.isfile(self.model_path):
            raise ModelFileError("model file does not exist", file=self.model_path)
        self._inputs, self._outputs = self._load()
        if len(self._inputs) != 1:
            self._close()
            raise ModelFileError("edgesight runs image classifiers with exactly one input; this model has %d (%s)"
                                 % (len(self._inputs), ", ".join(t.name for t in self._inputs)), file=self.model_path)
        self._loaded = True
        log.info("%s loaded %s: in %s; out %s", self.name, self.model_path,
                 self._inputs[0].describe(), ", ".join(t.describe() for t in self._outputs))
        return self

    @property
    def inputs(self) -> List[TensorSpec]:
        self._require_loaded()
        return list(self._inputs)

    @property
    def outputs(self) -> List[TensorSpec]:
        self._require_loaded()
        return list(self._outputs)

    def infer(self, batch: np.ndarray) -> "OrderedDict[str, np.ndarray]":
        """Outputs for every image of ``batch``. A model with a fixed batch size B is run on slices of B images
        (a frame's regions of interest are one batch wherever the model takes one: :attr:`max_batch`)."""
        self._require_loaded()
        batch = to_layout(self._check_batch(batch), self.input_layout, self.layout)
        fixed = self._inputs[0].shape[0]
        if fixed is None or batch.shape[0] == fixed:
            outs = self._infer(batch)
        else:
            if batch.shape[0] % fixed:
                raise RuntimeStateError("%s has a fixed batch of %d; pass a multiple of %d images, not %d"
                                        % (self.model_path, fixed, fixed, batch.shape[0]))
            parts = [self._infer(batch[i:i + fixed]) for i in range(0, batch.shape[0], fixed)]
            outs = OrderedDict((k, np.concatenate([p[k] for p in parts], axis=0)) for k in parts[0])
        return OrderedDict((k, np.asarray(v, dtype=np.float32)) for k, v in outs.items())

    @property
    def max_batch(self) -> Optional[int]:
        """The most images one run of the model takes (None: any number); larger batches are run in slices."""
        self._require_loaded()
        return self._inputs[0].shape[0]

    def close(self) -> None:
        if self._loaded and not self._closed:
            self._close()
        self._closed = True

    def __enter__(self) -> "Runtime":
        return self.load()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("loaded" if self._loaded else "new")
        return "<%s %s (%s)>" % (type(self).__name__, self.model_path, state)

    # -- helpers ---------------------------------------------------------------------------------------------
    def _require_loaded(self) -> None:
        if self._closed:
            raise RuntimeStateError("%s runtime for %s is closed" % (self.name, self.model_path))
        if not self._loaded:
            raise RuntimeStateError("%s runtime for %s is not loaded; call load() first"
                                    % (self.name, self.model_path))

    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        if not isinstance(batch, np.ndarray):
            raise RuntimeStateError("infer() takes a numpy array, got %s" % type(batch).__name__)
        if batch.dtype != np.float32:
            if not np.issubdtype(batch.dtype, np.floating):
                raise RuntimeStateError("infer() takes the float32 output of preprocessing, got dtype %s"
                                        % batch.dtype)
            batch = batch.astype(np.float32)
        spec = self._inputs[0]
        expected = layout_shape(spec.shape, self.layout, self.input_layout)
        if batch.ndim != len(expected) or batch.shape[0] == 0 or any(
                e is not None and e != g for e, g in zip(expected[1:], batch.shape[1:])):
            raise RuntimeStateError(
                "input batch has shape %s but %s expects %s in %s layout (N first; ? = any)"
                % (batch.shape, self.model_path, _fmt(expected), self.input_layout))
        return np.ascontiguousarray(batch)

    # -- for backends ----------------------------------------------------------------------------------------
    def _load(self) -> Tuple[List[TensorSpec], List[TensorSpec]]:
        raise NotImplementedError

    def _infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """``batch`` is float32 in the model's own layout; return float32 outputs by name."""
        raise NotImplementedError

    def _close(self) -> None:
        pass


def _fmt(shape: Tuple[Optional[int], ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def quantize(x: np.ndarray, q: QuantParams, dtype: np.dtype) -> np.ndarray:
    """Float -> int8/uint8 as TFLite's Quantize op does: ``round(x / scale) + zero_point`` with rounding half away
    from zero, then saturation to the integer range."""
    info = np.iinfo(dtype)
    v = np.asarray(x, dtype=np.float32) / np.float32(q.scale)
    rounded = np.sign(v) * np.floor(np.abs(v) + 0.5)
    return np.clip(rounded + q.zero_point, info.min, info.max).astype(dtype)


def dequantize(x: np.ndarray, q: QuantParams) -> np.ndarray:
    return ((x.astype(np.float32) - np.float32(q.zero_point)) * np.float32(q.scale)).astype(np.float32)
