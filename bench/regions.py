"""Regions of interest: one frame's regions as one batch through the runtime against one run per region.

    python bench/regions.py [--regions 1 2 4 8] [--rounds 30] [--threads 1 2] [--mobilenet]

Per runtime and model, for R regions a frame: the inference time of a frame (ms, median over rounds) when the R
crops go through the model as one batch of R (what the agent does where the model takes a batch) and when they go
one image at a time (R runs), and their ratio. The two are measured in alternating rounds so this machine's drifting
speed hits both alike. Models: the example digits package (ONNX Runtime and LiteRT, FP32) and, with --mobilenet,
bench/mobilenetv2.py's MobileNetV2 (224x224) on ONNX Runtime. Prints numbers; not a test.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
EXAMPLE = os.path.join(HERE, "..", "examples", "digits")


def frame_ms(rt, crops, batched: bool) -> float:
    t0 = time.perf_counter()
    if batched:
        rt.infer(crops)
    else:
        for i in range(len(crops)):
            rt.infer(crops[i:i + 1])
    return 1000.0 * (time.perf_counter() - t0)


def measure(rt, shape, regions, rounds):
    rng = np.random.default_rng(0)
    rows = []
    for n in regions:
        crops = rng.standard_normal((n,) + tuple(shape)).astype(np.float32)
        frame_ms(rt, crops, True), frame_ms(rt, crops, False)  # warm-up (a dynamic batch allocates once)
        batch, single = [], []
        for _ in range(rounds):
            batch.append(frame_ms(rt, crops, True))
            single.append(frame_ms(rt, crops, False))
        b, s = statistics.median(batch), statistics.median(single)
        rows.append((n, b, s))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regions", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--mobilenet", action="store_true", help="also bench/mobilenetv2.py's model (224x224)")
    args = ap.parse_args()

    from edgesight.runtimes import create_runtime, load_package
    from edgesight.runtimes.registry import is_installed

    pkg = load_package(os.path.join(EXAMPLE, "package"))
    cases = []  # (label, runtime name, model file, layout)
    for art in pkg.manifest.artifacts:
        if is_installed(art.runtime):
            cases.append(("digits %s" % art.file, art.runtime, os.path.join(pkg.root, art.file), art.layout))
    work = tempfile.mkdtemp(prefix="bench-regions-")
    try:
        if args.mobilenet:
            import mobilenetv2

            cases.append(("mobilenetv2 fp32 onnx", "onnxruntime",
                          mobilenetv2.build(os.path.join(work, "mobilenetv2.onnx")), None))
        print("%-28s %-11s %7s %7s %10s %10s %7s %9s" % ("model", "runtime", "threads", "regions", "batch ms",
                                                        "1-by-1 ms", "ratio", "max_batch"))
        for label, runtime, path, layout in cases:
            for threads in args.threads:
                rt = create_runtime(runtime, path, config={"threads": threads}, layout=layout,
                                    input_layout="native").load()
                try:
                    shape = rt.inputs[0].shape[1:]
                    for n, b, s in measure(rt, shape, args.regions, args.rounds):
                        print("%-28s %-11s %7d %7d %10.3f %10.3f %7.2f %9s" % (
                            label, runtime, threads, n, b, s, b / s, rt.max_batch or "any"))
                finally:
                    rt.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
