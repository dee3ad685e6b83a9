"""Architecture coverage: common ImageNet classifiers exported from timm (random weights) through `edgesight convert`,
every CPU target, with fidelity, latency and convert time against FP32 and against the same tools run by hand.

    python bench/coverage.py --export-python /path/to/venv-with-torch-and-timm/bin/python [--models a,b] [--by-hand]

The export venv: `pip install torch==2.14.1 torchvision==0.29.1` then `pip install --no-deps timm` and
`pip install pyyaml huggingface_hub safetensors onnx` (torch 2.13.0 alone does not import timm: it needs
torchvision). Images: 200 calibration and 100 validation 224x224 synthetic pictures (gradients, shapes, blur, noise),
made deterministically here: the weights are random, so fidelity is the logit cosine (and centred cosine) against
FP32, not top-1. `--latency-only` measures the latency of the packages a run left in --work again (3 rounds).
Targets (issue 14): every model converts to every CPU target; cosine >= 0.99 for every INT8
artifact; the INT8 CPU profile faster than FP32 on every CNN; convert time <= 1.2x the same tools by hand.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from convert import by_hand, latencies_ms  # noqa: E402

from edgesight.calibration.dataset import ImageFolder  # noqa: E402
from edgesight.calibration.preprocess import PreprocessSpec  # noqa: E402
from edgesight.converters.convert import ConvertOptions, convert  # noqa: E402

MODELS = ("mobilenetv2_100", "mobilenetv3_large_100", "efficientnet_b0", "resnet18", "regnetx_002", "ghostnet_100",
          "mnasnet_100", "efficientvit_b0", "convnext_atto", "vit_tiny_patch16_224")
TRANSFORMERS = ("vit_tiny_patch16_224",)
TARGETS = ("onnx-int8-trt", "onnx-int8-cpu", "tflite-int8")
SPEC = PreprocessSpec(size=(224, 224), resize="center_crop", color="rgb", scale=1 / 255.0,
                      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), layout="nchw")
EXPORT = r"""
import sys, torch, timm
out = sys.argv[1]
for name in sys.argv[2:]:
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, num_classes=1000).eval()
    torch.onnx.export(m, torch.randn(1, 3, 224, 224), "%s/%s.onnx" % (out, name), opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamo=False,
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    print(name, flush=True)
"""


def images(folder: str, n: int, seed: int) -> str:
    from PIL import Image, ImageDraw, ImageFilter

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        yy, xx = np.mgrid[0:256, 0:256] / 255.0
        base = np.stack([np.sin(xx * rng.uniform(1, 12) + rng.uniform(0, 6)) * 0.5 + 0.5,
                         np.cos(yy * rng.uniform(1, 12) + rng.uniform(0, 6)) * 0.5 + 0.5,
                         (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) % 1.0], axis=2)
        img = Image.fromarray((base * 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 12))):
            x0, y0 = (int(v) for v in rng.integers(0, 256, 2))
            box = [x0, y0, x0 + int(rng.integers(10, 120)), y0 + int(rng.integers(10, 120))]
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=tuple(int(c) for c in
                                                                                     rng.integers(0, 255, 3)))
        arr = np.asarray(img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 2)))).astype(np.float32)
        arr += rng.normal(0, rng.uniform(0, 12), arr.shape)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(os.path.join(folder, "img_%04d.jpg" % i),
                                                                   quality=90)
    return folder


def one(name: str, work: str, calib: str, val: str, hand: bool, threads: int, runs: int) -> dict:
    model = os.path.join(work, name + ".onnx")
    out = os.path.join(work, name + "-package")
    t0 = time.perf_counter()
    res = convert(ConvertOptions(model=model, calib=calib, val=val, out=out, preprocess=SPEC, targets=TARGETS,
                                 calib_count=200, force=True, max_accuracy_drop=100, min_agreement=0))
    row = {"model": name, "seconds": round(time.perf_counter() - t0, 1), "failed": res.report["failed"],
           "targets": {}, "timings": res.report["timings"]}
    x = ImageFolder(val).load(SPEC, 4).tensors[:1]
    models = [("fp32", os.path.join(out, "model.fp32.onnx"), "onnxruntime", "nchw")] + [
        (a["target"], os.path.join(out, a["file"]), a["runtime"], a["layout"]) for a in res.report["artifacts"]]
    lats = latencies_ms(models, x, threads, runs)
    for a in res.report["artifacts"]:
        m = a["metrics"]
        row["targets"][a["target"]] = {
            "cosine": round(m["cosine_mean"], 4), "centred_cosine": round(m["cosine_centred_mean"], 4),
            "latency_x_fp32": round(lats[a["target"]] / lats["fp32"], 2), "convert_s": a.get("seconds"),
            "float_layers": len(a.get("float_nodes", [])), "gate": a["gate"]["passed"],
            "size_x_fp32": round(a["size_bytes"] / float(res.report["fp32"]["size_bytes"]), 2)}
    row["fp32_latency_ms"] = round(lats["fp32"], 2)
    if hand:
        rtpo = ",".join(s for s in ("Erf",) if any("pseudo ops" in (a.get("steps") or {}).get("onnx2tf", "")
                                                   for a in res.report["artifacts"]))
        seconds, _ = by_hand(model, SPEC, calib, 200, tempfile.mkdtemp(dir=work), "input", rtpo)
        row["by_hand_s"] = round(seconds, 1)
        row["convert_x_hand"] = round(res.report["timings"]["targets"] / seconds, 2)
    return row


def latency_again(names, work: str, threads: int, runs: int, rounds: int = 3) -> int:
    """Each package's artifacts against its FP32, ``rounds`` times in a row: the spread is this machine's noise."""
    import yaml

    x = ImageFolder(os.path.join(work, "val")).load(SPEC, 4).tensors[:1]
    print("%-24s %-22s %s" % ("model", "artifact", "latency x FP32, %d rounds of %d runs" % (rounds, runs)))
    for name in names:
        pkg = os.path.join(work, name + "-package")
        with open(os.path.join(pkg, "edgesight.yaml")) as f:
            arts = yaml.safe_load(f)["artifacts"]
        models = [(a["file"], os.path.join(pkg, a["file"]), a["runtime"], a["layout"]) for a in arts]
        ratios = {m[0]: [] for m in models}
        for _ in range(rounds):
            lats = latencies_ms(models, x, threads, runs)
            for m in models:
                ratios[m[0]].append(lats[m[0]] / lats["model.fp32.onnx"])
        for m in models[1:]:
            print("%-24s %-22s %s" % (name, m[0], "  ".join("%.2f" % r for r in ratios[m[0]])), flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export-python", required=True, help="a Python with torch and timm")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "edgesight-coverage"))
    ap.add_argument("--by-hand", action="store_true", help="also time the same tools run directly")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=200, help="latency: runs per model, in 4 blocks")
    ap.add_argument("--latency-only", action="store_true",
                    help="measure again the latency of the packages an earlier run left in --work (no conversion)")
    args = ap.parse_args()
    names = [m for m in args.models.split(",") if m]
    os.makedirs(args.work, exist_ok=True)
    if args.latency_only:
        return latency_again(names, args.work, args.threads, args.runs)
    missing = [n for n in names if not os.path.isfile(os.path.join(args.work, n + ".onnx"))]
    if missing:
        subprocess.run([args.export_python, "-c", EXPORT, args.work] + missing, check=True,
                       stderr=subprocess.DEVNULL)
    calib = os.path.join(args.work, "calib")
    val = os.path.join(args.work, "val")
    if not os.path.isdir(calib):
        images(calib, 200, 1)
        images(val, 100, 2)
    rows = []
    for name in names:
        row = one(name, args.work, calib, val, args.by_hand, args.threads, args.runs)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n%-24s %-14s %8s %9s %8s %7s %6s %9s" % ("model", "target", "cosine", "centred", "lat x", "size x",
                                                     "float", "convert s"))
    for r in rows:
        for t in TARGETS:
            v = r["targets"].get(t)
            if v is None:
                f = [x for x in r["failed"] if x["target"] == t]
                print("%-24s %-14s FAILED at %s: %s" % (r["model"], t, f[0].get("step") if f else "?",
                                                        f[0]["error"][:90] if f else "?"))
                continue
            print("%-24s %-14s %8.4f %9.4f %8.2f %7.2f %6d %9s" % (
                r["model"], t, v["cosine"], v["centred_cosine"], v["latency_x_fp32"], v["size_x_fp32"],
                v["float_layers"], v["convert_s"]))
        if "by_hand_s" in r:
            print("%-24s conversions %.1f s, the same tools by hand %.1f s: %.2fx" % (
                r["model"], r["timings"]["targets"], r["by_hand_s"], r["convert_x_hand"]))
    with open(os.path.join(args.work, "coverage.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
