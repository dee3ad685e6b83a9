"""Reading image files into HxWx3 uint8 RGB arrays (Pillow, imported when first needed)."""
import os
from typing import List, Tuple

import numpy as np

from ..errors import ImageError, require_module

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _pil():
    require_module("PIL.ImageOps", "Reading image files", "camera", package="Pillow")
    from PIL import Image, ImageOps

    return Image, ImageOps


MAX_PIXELS = 100_000_000


def to_rgb8(im) -> np.ndarray:
    """A Pillow image as HxWx3 uint8 RGB. 16- and 32-bit integer images (16-bit PNGs, TIFFs) are scaled to 8 bits,
    not clipped (Pillow's own conversion clips 0..65535 to 0..255, which turns a dark 16-bit frame white)."""
    if im.mode.startswith("I") or im.mode == "F":
        arr = np.asarray(im)
        top = 65535.0 if im.mode.startswith("I;16") or (arr.size and float(arr.max()) <= 65535) else float(arr.max())
        gray = np.clip(np.round(arr.astype(np.float64) * (255.0 / top if top > 0 else 1.0)), 0, 255)
        return np.repeat(gray.astype(np.uint8)[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def load_image(path: str) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, honouring its EXIF orientation."""
    Image, ImageOps = _pil()
    try:
        with Image.open(path) as im:
            if im.size[0] * im.size[1] > MAX_PIXELS:
                raise ImageError("is %dx%d pixels, more than %d: not a camera frame or a training image"
                                 % (im.size[0], im.size[1], MAX_PIXELS), file=path)
            im = ImageOps.exif_transpose(im)
            return to_rgb8(im)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("no such image file", file=path)
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise ImageError("cannot read image (%s: %s); is it a valid jpg/png/bmp/webp file?"
                         % (type(exc).__name__, exc), file=path)


def list_images(folder: str) -> List[Tuple[str, str]]:
    """(path, label) for every image below ``folder``, sorted.

    A flat folder gives label ``""``; one sub-folder per class gives the sub-folder name as label. Folders whose
    names start with ``_`` or ``.`` are not classes and are skipped (a collected dataset's ``_rejected/``).
    """
    if not os.path.isdir(folder):
        raise ImageError("not a folder of images", file=folder)
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
        rel = os.path.relpath(root, folder)
        label = "" if rel == "." else rel.split(os.sep)[0]
        for name in sorted(files):
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                found.append((os.path.join(root, name), label))
    return found
