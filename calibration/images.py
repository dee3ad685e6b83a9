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


def load_image(path: str) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, honouring its EXIF orientation."""
    Image, ImageOps = _pil()
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
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
