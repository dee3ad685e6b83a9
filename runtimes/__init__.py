"""One Runtime interface, several backends (onnxruntime, tflite, tensorrt), and everything about the
model package: schema, loading and verification, which artifact a device runs, opening it, writing manifests.

Heavy packages are imported inside the backend that needs them. Device-side code: keep it Python 3.8-compatible.
"""
from .base import QuantParams, Runtime, TensorSpec
from .manifest import MANIFEST, SCHEMA, Artifact, Manifest, sha256_file
from .package import Choice, ModelPackage, load_package
from .registry import RUNTIME_NAMES, create_runtime, installed_runtimes, is_installed

__all__ = ["Artifact", "Choice", "MANIFEST", "Manifest", "ModelPackage", "QuantParams", "RUNTIME_NAMES", "Runtime",
           "SCHEMA", "TensorSpec", "create_runtime", "installed_runtimes", "is_installed", "load_package", "sha256_file"]
