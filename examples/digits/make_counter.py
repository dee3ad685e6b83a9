"""The digits "counter": a camera looking at a two-wheel mechanical counter, for regions of interest.

    python examples/digits/make_counter.py        # rewrites examples/digits/images/counter/

Each frame is a 128x64 grey panel with two validation digits side by side, the tens wheel at [16, 8, 48, 48] and
the ones wheel at [64, 8, 48, 48] (x, y, width, height): the boxes of the example config's ``counter`` camera
(examples/agent.yaml), whose two regions are classified on their own. The counter steps from 37 to 56, one step
every three frames (the camera is faster than the counter: the state's hysteresis of 2 frames settles), so the ones
wheel changes every third frame and the tens wheel twice. Deterministic: the n-th frame takes the
n-th validation image of the tens digit's class and the (n+7)-th of the ones digit's (never the same picture twice
in a frame). Needs Pillow only.
"""
import os
import shutil
import sys

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
VAL = os.path.join(HERE, "images", "val")
OUT = os.path.join(HERE, "images", "counter")
LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
BOXES = {"tens": (16, 8, 48, 48), "ones": (64, 8, 48, 48)}
FIRST, FRAMES, STEP = 37, 60, 3  # reads 37 to 56, each for three frames


def digit(value: int, n: int) -> Image.Image:
    folder = os.path.join(VAL, LABELS[value])
    names = sorted(os.listdir(folder))
    with Image.open(os.path.join(folder, names[n % len(names)])) as im:
        return im.convert("RGB")


def frame(reading: int, n: int) -> Image.Image:
    panel = Image.new("RGB", (128, 64), (70, 70, 70))
    for name, value, pick in (("tens", reading // 10 % 10, n), ("ones", reading % 10, n + 7)):
        x, y, w, h = BOXES[name]
        panel.paste(digit(value, pick).resize((w, h)), (x, y))
    return panel


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    for n in range(FRAMES):
        frame(FIRST + n // STEP, n).save(os.path.join(OUT, "frame_%03d.png" % n), optimize=True)
    print("wrote %d frames to %s" % (FRAMES, OUT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
