"""One Runtime interface, several backends (onnxruntime, tflite; tensorrt reserved), and model package loading.

Heavy packages are imported inside the backend that needs them. Device-side code: keep it Python 3.8-compatible.
"""
from .base import QuantParams, Runtime, TensorSpec
from .package import MANIFEST, SCHEMA, Artifact, Manifest, ModelPackage, load_package, sha256_file
from .registry import RUNTIME_NAMES, create_runtime, installed_runtimes, is_installed

__all__ = ["Artifact", "MANIFEST", "Manifest", "ModelPackage", "QuantParams", "RUNTIME_NAMES", "Runtime", "SCHEMA",
           "TensorSpec", "create_runtime", "installed_runtimes", "is_installed", "load_package", "sha256_file"]
