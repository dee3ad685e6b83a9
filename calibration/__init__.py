"""Images in, model-ready tensors out.

``calibration.preprocess`` is THE preprocessing implementation: calibration, validation and the agent all call it
with the spec stored in the model package, so a model never runs with preprocessing other than the one it was
calibrated and validated with. Device-side code: keep it Python 3.8-compatible.
"""
from .preprocess import PreprocessSpec, preprocess, preprocess_batch, resize_bilinear

__all__ = ["PreprocessSpec", "preprocess", "preprocess_batch", "resize_bilinear"]
