"""Train the example digits classifier and write the files the repository ships.

Data: scikit-learn's bundled handwritten digits (1,797 labelled 8x8 images, no download). Each image is rendered as
a 48x48 RGB PNG (white ink on black); the split is stratified and seeded: 1,197 train / 300 calibration /
300 validation. Only the calibration and validation PNGs are written (train images are regenerated from
scikit-learn whenever this script runs).

The network sees the images through edgesight's own preprocessing (the spec in preprocess.yaml), exactly as the
converter and the agent will. Output: ``package/model.fp32.onnx`` (opset 17, dynamic batch), ``images/``, and the
FP32 package's ``edgesight.yaml``.

    pip install torch==2.13.0 scikit-learn pillow onnx   # torch only for this script
    python examples/digits/train.py
    python examples/digits/make_tflite.py                 # adds the FP32 TFLite (needs the tflite toolchain)
"""
import argparse
import json
import logging
import os
import shutil
import sys

import numpy as np
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
log = logging.getLogger("train")


def render(digit_8x8: np.ndarray, size: int = 48) -> np.ndarray:
    """0..16 grey 8x8 -> size x size x 3 uint8 (white ink on black)."""
    from edgesight.calibration.preprocess import resize_bilinear

    grey = (digit_8x8.astype(np.float32) * (255.0 / 16.0))[:, :, None]
    big = resize_bilinear(grey, size, size)
    return np.repeat(np.clip(np.round(big), 0, 255).astype(np.uint8), 3, axis=2)


def build_net():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # 32 -> 16
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 16 -> 8
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 8 -> 4
        nn.Flatten(), nn.Linear(64 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def shift_augment(x: np.ndarray, rng: np.random.Generator, max_shift: int = 2) -> np.ndarray:
    """Random translation by up to max_shift pixels (NCHW), padding with each image's corner value."""
    out = np.empty_like(x)
    for i in range(len(x)):
        dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
        out[i] = np.roll(x[i], (int(dy), int(dx)), axis=(1, 2))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from edgesight.calibration.preprocess import PreprocessSpec, preprocess_batch

    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    rng = np.random.default_rng(args.seed)

    with open(os.path.join(HERE, "labels.txt")) as f:
        labels = [line.strip() for line in f if line.strip()]
    with open(os.path.join(HERE, "preprocess.yaml")) as f:
        spec = PreprocessSpec(**yaml.safe_load(f))

    digits = load_digits()
    images = np.stack([render(d) for d in digits.images])
    y = digits.target.astype(np.int64)
    idx = np.arange(len(y))
    train_idx, rest_idx = train_test_split(idx, test_size=600, stratify=y, random_state=args.seed)
    calib_idx, val_idx = train_test_split(rest_idx, test_size=300, stratify=y[rest_idx], random_state=args.seed)

    # The PNGs users, tests and the converter see.
    img_root = os.path.join(HERE, "images")
    shutil.rmtree(img_root, ignore_errors=True)
    for split, ids in (("calib", calib_idx), ("val", val_idx)):
        for i in ids:
            d = os.path.join(img_root, split, labels[y[i]])
            os.makedirs(d, exist_ok=True)
            Image.fromarray(images[i]).save(os.path.join(d, "digit_%04d.png" % i), optimize=True)

    # Train on exactly what the deployed pipeline produces.
    x_all = preprocess_batch(images, spec)
    xt, yt = x_all[train_idx], y[train_idx]
    net = build_net()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        net.train()
        order = rng.permutation(len(xt))
        total = 0.0
        for b in range(0, len(order), 64):
            sel = order[b:b + 64]
            xb = torch.from_numpy(shift_augment(xt[sel], rng))
            loss = loss_fn(net(xb), torch.from_numpy(yt[sel]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(sel)
        sched.step()
        if (epoch + 1) % 10 == 0:
            log.info("epoch %d loss %.4f", epoch + 1, total / len(xt))

    net.eval()
    with torch.no_grad():
        acc = {name: float((net(torch.from_numpy(x_all[ids])).argmax(1).numpy() == y[ids]).mean())
               for name, ids in (("train", train_idx), ("calib", calib_idx), ("val", val_idx))}
    log.info("accuracy: %s", json.dumps(acc))

    pkg = os.path.join(HERE, "package")
    os.makedirs(pkg, exist_ok=True)
    onnx_path = os.path.join(pkg, "model.fp32.onnx")
    torch.onnx.export(net, torch.zeros(1, *spec.input_shape()[1:]), onnx_path, opset_version=17,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    with open(os.path.join(HERE, "accuracy.json"), "w") as f:
        json.dump({"split": {"train": len(train_idx), "calib": len(calib_idx), "val": len(val_idx)},
                   "accuracy_torch": acc}, f, indent=2)
        f.write("\n")
    log.info("wrote %s", onnx_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
