"""Which artifact a device runs (ModelPackage.artifact_for), by platform and installed runtimes."""
import pytest

from edgesight.errors import PackageError
from edgesight.runtimes import load_package

from support import EXAMPLE_PACKAGE


# -- artifact choice -------------------------------------------------------------------------------------------
def choose_artifact(pkg, runtime="auto", machine=None):
    return pkg.artifact_for(runtime, machine=machine)


def test_choose_artifact_by_platform():
    pkg = load_package(EXAMPLE_PACKAGE)
    assert choose_artifact(pkg, "auto", machine="x86_64")[1].runtime == "onnxruntime"
    assert choose_artifact(pkg, "auto", machine="aarch64")[1].runtime == "tflite"
    assert choose_artifact(pkg, "tflite", machine="x86_64")[1].file == "model.fp32.tflite"
    with pytest.raises(PackageError, match="no usable artifact"):
        choose_artifact(pkg, "tensorrt")


def test_auto_prefers_tensorrt_with_a_qdq_artifact_where_tensorrt_is_installed(monkeypatch, tmp_path):
    from edgesight.runtimes import package as package_module
    from edgesight.runtimes.package import Artifact

    pkg = load_package(EXAMPLE_PACKAGE)
    qdq = Artifact(runtime="onnxruntime", file="model.fp32.onnx", precision="int8", sha256="0" * 64, layout="nchw",
                   profile="tensorrt-qdq")
    manifest = pkg.manifest.model_copy(update={"artifacts": list(pkg.manifest.artifacts) + [qdq]})
    pkg = type(pkg)(pkg.root, manifest)
    assert choose_artifact(pkg, "auto", machine="aarch64")[1].runtime == "tflite"  # no tensorrt here
    monkeypatch.setattr(package_module, "is_installed", lambda name: True)
    idx, art = choose_artifact(pkg, "auto", machine="aarch64")[:2]
    assert idx == 2 and art.profile == "tensorrt-qdq"
    # an explicit onnxruntime choice on a CPU never takes the slow tensorrt-qdq profile first
    assert choose_artifact(pkg, "onnxruntime", machine="x86_64")[1].precision == "fp32"
