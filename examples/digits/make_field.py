"""The digits "field set": the example's classes as a camera in the field sees them, so that calibration, thresholds,
drift and sampling have real mistakes to work on (the clean validation images score 100%).

    python examples/digits/make_field.py          # rewrites examples/digits/images/field/{val,test}/<label>/

Deterministic (numpy's PCG64 seeded per image): the same files every run on every machine with the same Pillow.
Made from scikit-learn digits the model was NOT trained on: ``field/val`` (for fitting temperatures and thresholds)
from the 300 calibration images, 10 variants each; ``field/test`` (for reporting only) from the 300 validation
images, 5 variants each. Source digits never cross the split. Each variant draws a random mix of what a cheap
camera does: rotation and framing, defocus and motion blur, low contrast, uneven and tinted lighting, sensor
noise, partial occlusion, JPEG artefacts. Needs numpy and Pillow only.
"""
import os
import shutil
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGES = os.path.join(HERE, "images")
SPLITS = (("calib", "val", 10, 1), ("val", "test", 5, 2))  # source folder, field split, variants, seed
SIZE = 48


def degrade(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One field variant of a clean 48x48 RGB digit (white ink on black)."""
    g = img.convert("L")
    # framing: rotation, zoom and shift as a hand-aimed camera gives them
    angle = rng.uniform(-12, 12)
    zoom = rng.uniform(0.85, 1.05)
    g = g.rotate(angle, resample=Image.BILINEAR, fillcolor=0)
    side = max(8, int(round(SIZE * zoom)))
    g = g.resize((side, side), Image.BILINEAR)
    canvas = Image.new("L", (SIZE, SIZE), 0)
    dx, dy = (int(v) for v in rng.integers(-3, 4, 2))
    canvas.paste(g, ((SIZE - side) // 2 + dx, (SIZE - side) // 2 + dy))
    g = canvas
    # focus and motion
    if rng.random() < 0.7:
        g = g.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    if rng.random() < 0.2:
        k = int(rng.integers(3, 6))
        kernel = np.zeros((k, k))
        kernel[k // 2, :] = 1.0
        g = Image.fromarray(np.clip(_convolve(np.asarray(g, np.float64), kernel / k), 0, 255).astype(np.uint8))
    x = np.asarray(g, np.float64) / 255.0
    # partial occlusion: a bar or blob of something in front of the digit
    if rng.random() < 0.2:
        occ = Image.new("L", (SIZE, SIZE), 0)
        d = ImageDraw.Draw(occ)
        x0, y0 = (int(v) for v in rng.integers(4, SIZE - 12, 2))
        w, h = (int(v) for v in rng.integers(5, 14, 2))
        (d.rectangle if rng.random() < 0.6 else d.ellipse)([x0, y0, x0 + w, y0 + h], fill=255)
        m = np.asarray(occ, np.float64) / 255.0
        x = x * (1 - m) + m * rng.uniform(0.0, 0.6)
    # contrast and lighting: ink and paper move towards each other, a gradient across the frame, a colour cast
    contrast = rng.uniform(0.5, 1.0)
    base = rng.uniform(0.0, 0.35)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / float(SIZE)
    grad = rng.uniform(-0.3, 0.3) * (xx - 0.5) + rng.uniform(-0.3, 0.3) * (yy - 0.5)
    lum = np.clip(base + contrast * x * (1 - base) + grad, 0, 1)
    tint = rng.uniform(0.75, 1.15, 3)
    rgb = np.clip(lum[..., None] * tint, 0, 1) * 255.0
    # sensor noise (per channel, heavier in the dark)
    rgb += rng.normal(0, rng.uniform(2, 16), rgb.shape) * (1.3 - lum[..., None] * 0.5)
    out = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    return out


def _convolve(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    pad = k.shape[0] // 2
    p = np.pad(x, pad, mode="edge")
    out = np.zeros_like(x)
    for i in range(k.shape[0]):
        for j in range(k.shape[1]):
            if k[i, j]:
                out += k[i, j] * p[i:i + x.shape[0], j:j + x.shape[1]]
    return out


def main() -> int:
    field = os.path.join(IMAGES, "field")
    total = 0
    for source, split, variants, seed in SPLITS:
        dst = os.path.join(field, split)
        if os.path.isdir(dst):
            shutil.rmtree(dst)
        for label in sorted(os.listdir(os.path.join(IMAGES, source))):
            src_dir = os.path.join(IMAGES, source, label)
            os.makedirs(os.path.join(dst, label))
            for name in sorted(os.listdir(src_dir)):
                stem = os.path.splitext(name)[0]
                clean = Image.open(os.path.join(src_dir, name)).convert("RGB")
                for v in range(variants):
                    index = int(stem.rsplit("_", 1)[-1])
                    rng = np.random.default_rng([seed, index, v])
                    img = degrade(clean, rng)
                    img.save(os.path.join(dst, label, "%s_v%d.jpg" % (stem, v)), quality=int(rng.integers(30, 90)))
                    total += 1
    print("wrote %d images under %s" % (total, field))
    return 0


if __name__ == "__main__":
    sys.exit(main())
