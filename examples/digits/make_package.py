"""Build the example package: FP32 ONNX (from train.py) + an FP32 TFLite of the same model, made with onnx2tf.

onnx2tf pins its own TensorFlow/numpy/onnx, so it runs from its own virtual environment as a subprocess:

    python -m venv ~/.cache/edgesight/toolchains/tflite
    ~/.cache/edgesight/toolchains/tflite/bin/pip install onnx2tf      # resolved to onnx2tf 1.29.24 + TF 2.19 here
    python examples/digits/make_package.py [--onnx2tf PATH]

Without the toolchain it still writes the package, with the ONNX artifact only.
"""
import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ONNX2TF = os.path.expanduser("~/.cache/edgesight/toolchains/tflite/bin/onnx2tf")
log = logging.getLogger("make_package")


def onnx_to_fp32_tflite(onnx2tf: str, onnx_path: str, work: str) -> str:
    """Run onnx2tf (batch fixed to 1 while converting; the result keeps a dynamic batch signature)."""
    from edgesight.converters.onnx_model import read_interface

    iface = read_interface(onnx_path)
    shape = ",".join(str(d or 1) for d in iface.input_shape)
    out = os.path.join(work, "tf")
    cmd = [onnx2tf, "-i", onnx_path, "-o", out, "-ois", "%s:%s" % (iface.input_name, shape), "-n"]
    log.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
    stem = os.path.splitext(os.path.basename(onnx_path))[0]
    result = os.path.join(out, stem + "_float32.tflite")
    if proc.returncode != 0 or not os.path.isfile(result):
        tail = proc.stdout.decode("utf-8", "replace")[-3000:]
        raise SystemExit("onnx2tf failed (exit %d):\n%s" % (proc.returncode, tail))
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx2tf", default=os.environ.get("EDGESIGHT_ONNX2TF", DEFAULT_ONNX2TF))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from edgesight.calibration.preprocess import read_preprocess
    from edgesight.converters.package_builder import create_fp32_package
    from edgesight.files import read_labels

    pkg_dir = os.path.join(HERE, "package")
    onnx_path = os.path.join(pkg_dir, "model.fp32.onnx")
    work = tempfile.mkdtemp(prefix="edgesight-tflite-")
    try:
        tflite = None
        if os.path.isfile(args.onnx2tf):
            tflite = onnx_to_fp32_tflite(args.onnx2tf, onnx_path, work)
        else:
            log.warning("no onnx2tf at %s: writing the package without the TFLite artifact", args.onnx2tf)
        pkg = create_fp32_package(onnx_path, read_labels(os.path.join(HERE, "labels.txt")),
                                  read_preprocess(os.path.join(HERE, "preprocess.yaml")), pkg_dir,
                                  name="digits-cnn", version="1.0.0", tflite_path=tflite, overwrite=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("package %s: %s", pkg_dir, ", ".join(a.file for a in pkg.manifest.artifacts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
