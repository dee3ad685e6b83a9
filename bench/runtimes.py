"""Latency of each installed runtime on a package (default: the example digits model). Prints numbers; not a test.

    python bench/runtimes.py [PACKAGE] [--threads 2] [--iterations 300] [--batch 1]
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

from edgesight.calibration.images import list_images, load_image
from edgesight.calibration.preprocess import preprocess_batch
from edgesight.runtimes import load_package
from edgesight.runtimes.registry import is_installed

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "examples", "digits")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package", nargs="?", default=os.path.join(EXAMPLE, "package"))
    ap.add_argument("--images", default=os.path.join(EXAMPLE, "images", "val"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()

    pkg = load_package(args.package)
    paths = [p for p, _ in list_images(args.images)][:64]
    t0 = time.perf_counter()
    images = [load_image(p) for p in paths]
    frames = preprocess_batch(images, pkg.preprocess)
    pre_ms = 1000 * (time.perf_counter() - t0) / len(paths)
    print("package %s %s, %d images, batch %d, threads %d, %d iterations"
          % (pkg.manifest.name, pkg.manifest.version, len(paths), args.batch, args.threads, args.iterations))
    print("decode+preprocess: %.3f ms/image (Pillow decode + edgesight.calibration.preprocess)" % pre_ms)
    print("%-12s %-22s %-5s %9s %9s %9s %8s" % ("runtime", "artifact", "prec", "size KiB", "p50 ms", "p95 ms",
                                                 "img/s"))
    for i, art in enumerate(pkg.manifest.artifacts):
        if not is_installed(art.runtime):
            print("%-12s %-22s (runtime not installed)" % (art.runtime, art.file))
            continue
        config = {"threads": args.threads} if art.runtime in ("onnxruntime", "tflite") else None
        with pkg.open_runtime(artifact_index=i, config=config) as rt:
            for j in range(20):  # warm-up
                rt.infer(frames[j % len(frames):j % len(frames) + args.batch])
            times = []
            for j in range(args.iterations):
                k = (j * args.batch) % max(1, len(frames) - args.batch)
                x = frames[k:k + args.batch]
                t = time.perf_counter()
                rt.infer(x)
                times.append(1000 * (time.perf_counter() - t))
        p50 = statistics.median(times)
        p95 = float(np.percentile(times, 95))
        print("%-12s %-22s %-5s %9.1f %9.3f %9.3f %8.0f" % (art.runtime, art.file, art.precision,
                                                           os.path.getsize(pkg.path(art)) / 1024, p50, p95,
                                                           1000 * args.batch / p50))
    return 0


if __name__ == "__main__":
    sys.exit(main())
