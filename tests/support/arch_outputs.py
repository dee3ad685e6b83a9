"""Outputs of every artifact of a package on validation images, to compare one architecture with another
(.ci/arm64.sh runs it on x86 and under emulated arm64 cores, then compares).

    python arch_outputs.py write PACKAGE IMAGES OUT.npz
    python arch_outputs.py compare A.npz B.npz [--int8-atol 1e-4] [--fp32-atol 1e-3]

``compare`` exits non-zero unless every artifact has the same top-1 on every image in both files and its outputs
agree within the tolerance (INT8 artifacts: the integer kernels should give the same numbers on both), and prints
one line per artifact with the agreement and the largest difference.
"""
import argparse
import sys

import numpy as np


def write(package: str, images: str, out: str) -> int:
    from edgesight.calibration.dataset import ImageFolder
    from edgesight.calibration.preprocess import to_layout
    from edgesight.runtimes import load_package
    from edgesight.runtimes.registry import is_installed

    pkg = load_package(package)
    val = ImageFolder(images).load(pkg.preprocess, 100)
    outputs = {}
    for i, art in enumerate(pkg.manifest.artifacts):
        if not is_installed(art.runtime) or art.runtime == "tensorrt":
            continue
        with pkg.open_runtime(artifact_index=i, input_layout="native") as rt:
            x = to_layout(val.tensors, pkg.preprocess.layout, rt.input_layout)
            outputs["%s|%s" % (art.file, art.precision)] = np.concatenate(
                [next(iter(rt.infer(x[j:j + 25]).values())) for j in range(0, len(x), 25)])
    np.savez(out, **outputs)
    print("%d artifact(s), %d images -> %s" % (len(outputs), len(val.tensors), out))
    return 0


def compare(a_path: str, b_path: str, int8_atol: float, fp32_atol: float) -> int:
    a, b = np.load(a_path), np.load(b_path)
    bad = 0
    if set(a.files) != set(b.files):
        print("different artifacts: %s vs %s" % (sorted(a.files), sorted(b.files)))
        return 1
    for key in sorted(a.files):
        x, y = a[key], b[key]
        agree = float((x.argmax(1) == y.argmax(1)).mean())
        diff = float(np.abs(x - y).max())
        atol = int8_atol if key.endswith("|int8") else fp32_atol
        ok = agree == 1.0 and diff <= atol
        bad += not ok
        print("%-32s top-1 agreement %.4f, max |diff| %.3g (tolerance %.0e), identical: %s  %s"
              % (key, agree, diff, atol, bool((x == y).all()), "ok" if ok else "MISMATCH"))
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("package")
    w.add_argument("images")
    w.add_argument("out")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--int8-atol", type=float, default=1e-4)
    c.add_argument("--fp32-atol", type=float, default=1e-3)
    args = ap.parse_args()
    if args.cmd == "write":
        return write(args.package, args.images, args.out)
    return compare(args.a, args.b, args.int8_atol, args.fp32_atol)


if __name__ == "__main__":
    sys.exit(main())
