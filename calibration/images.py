"""Reading image files into HxWx3 uint8 RGB arrays (Pillow, imported when first needed).

Pillow reads every format. A plain 8-bit RGB or grey JPEG without an EXIF rotation is decoded by OpenCV instead
when it is installed: the same libjpeg-turbo decode and the same pixels (tests/calibration/test_dataset.py checks
equality), without Pillow's slow copy into numpy (0.7 ms instead of 2.9 ms for a 640x480 frame here). Pillow still
reads the header first, so the size bound and the format checks are the same either way."""
import functools
import os
from typing import Any, List, Optional, Tuple

import numpy as np

from ..errors import ImageError, require_module

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _pil():
    require_module("PIL.ImageOps", "Reading image files", "camera", package="Pillow")
    from PIL import Image, ImageOps

    return Image, ImageOps


MAX_PIXELS = 100_000_000


@functools.lru_cache(maxsize=None)
def optional_cv2() -> Any:
    """OpenCV, or None when it is not installed (looked up once)."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def _cv2_jpeg(path: str) -> Optional[np.ndarray]:
    """The OpenCV decode of a JPEG as HxWx3 uint8 RGB, or None when OpenCV is not installed or cannot read it."""
    cv2 = optional_cv2()
    if cv2 is None:
        return None
    rgb_flag = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV 4.10+: libjpeg writes RGB, no conversion pass
    if rgb_flag is not None:
        return cv2.imread(path, rgb_flag | cv2.IMREAD_IGNORE_ORIENTATION)
    bgr = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


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
            rotated = im.getexif().get(0x0112, 1) not in (0, 1)  # EXIF orientation; 1 (or none): as stored
            if im.format == "JPEG" and im.mode in ("RGB", "L") and not rotated:
                fast = _cv2_jpeg(path)
                if fast is not None and fast.shape[:2] == (im.size[1], im.size[0]):
                    return fast
            if rotated:
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
