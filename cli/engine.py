"""``edgesight engine build``: pre-build the TensorRT engine on one device and add it to the package (a uniform
fleet ships it). A device command: it imports nothing from converters/. Python 3.8-compatible."""
import argparse
from typing import Any

from .common import out, positive, usage


def register(sub: Any) -> None:
    p = sub.add_parser("engine", help="TensorRT engines (on a device with TensorRT)")
    esub = p.add_subparsers(dest="engine_command", metavar="ACTION")
    e = esub.add_parser("build", help="build the engine from the package's Q/DQ ONNX and add it to the package")
    e.add_argument("package")
    e.add_argument("--max-batch", type=positive, default=8)
    e.add_argument("--workspace-mb", type=positive, default=1024)
    e.add_argument("--legacy-calib", metavar="DIR", help="TensorRT <= 10 only: implicit INT8 from the FP32 source "
                   "with an entropy calibrator fed by these images (default: explicit Q/DQ)")
    e.add_argument("--calib-count", type=positive, default=300)
    e.add_argument("--calib-batch", type=positive, default=8)
    e.set_defaults(func=run_build)
    p.set_defaults(func=lambda a: usage(p))


def run_build(args: argparse.Namespace) -> int:
    from ..runtimes.engine_prebuild import prebuild
    from ..runtimes.package import ModelPackage

    done = prebuild(ModelPackage.load(args.package), max_batch=args.max_batch, workspace_mb=args.workspace_mb,
                    legacy_calib=args.legacy_calib, calib_count=args.calib_count, calib_batch=args.calib_batch)
    out("wrote %s (built for %s); devices whose TensorRT/GPU differ rebuild their own" % (done.engine,
                                                                                        done.built_for))
    return 0
