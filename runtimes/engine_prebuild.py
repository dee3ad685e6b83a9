"""``edgesight engine build``: build the TensorRT engine on one device and add it to the package, for a uniform
fleet (devices whose TensorRT and GPU match use it; the others build and cache their own from the Q/DQ ONNX).

Explicit quantization from the package's TensorRT-safe Q/DQ ONNX by default; ``legacy_calib`` (TensorRT <= 10 only)
builds implicit INT8 from the FP32 source with an entropy calibrator fed by images preprocessed with the package's
own spec, and a calibration cache beside the engine. Device-side: nothing here comes from converters/.
"""
import os
from typing import Dict, NamedTuple, Optional

from ..errors import PackageError
from .manifest import TENSORRT_QDQ
from .package import ModelPackage
from .package_write import ENGINE_FILE, add_engine


class Prebuilt(NamedTuple):
    package: ModelPackage
    engine: str
    built_for: Dict[str, str]


def prebuild(pkg: ModelPackage, max_batch: int = 8, workspace_mb: int = 1024, legacy_calib: Optional[str] = None,
             calib_count: int = 300, calib_batch: int = 8) -> Prebuilt:
    from .tensorrt_build import build_engine

    dst = os.path.join(pkg.root, ENGINE_FILE)
    sample_shape = pkg.preprocess.input_shape()[1:]
    if legacy_calib:
        built_for = _legacy(pkg, dst, legacy_calib, calib_count, calib_batch, max_batch, workspace_mb)
        layout = pkg.preprocess.layout
    else:
        source = pkg.tensorrt_source()
        if source is None:
            raise PackageError("the package has no TensorRT-safe Q/DQ ONNX (profile %s or %s-fp16); convert it "
                               "with `edgesight convert --targets onnx-int8-trt`" % (TENSORRT_QDQ, TENSORRT_QDQ),
                               file=pkg.manifest_path)
        qdq = source[1]
        built_for = build_engine(pkg.path(qdq), dst, sample_shape, max_batch=max_batch, workspace_mb=workspace_mb)
        layout = qdq.layout or pkg.preprocess.layout
    return Prebuilt(add_engine(pkg, dst, built_for, layout), dst, built_for)


def _legacy(pkg: ModelPackage, dst: str, images: str, count: int, batch: int, max_batch: int,
            workspace_mb: int) -> Dict[str, str]:
    from ..calibration.dataset import ImageFolder
    from .cuda_adapter import cuda_adapter
    from .tensorrt_backend import import_tensorrt
    from .tensorrt_build import build_engine, make_entropy_calibrator

    trt = import_tensorrt()
    data = ImageFolder(images).load(pkg.preprocess, count)
    batches = (data.tensors[i:i + batch] for i in range(0, len(data.tensors) - batch + 1, batch))
    calibrator = make_entropy_calibrator(trt, cuda_adapter(), batches, dst + ".calib-cache", batch)
    return build_engine(pkg.path(pkg.manifest.source), dst, pkg.preprocess.input_shape()[1:], max_batch=max_batch,
                        workspace_mb=workspace_mb, calibrator=calibrator, trt=trt)
