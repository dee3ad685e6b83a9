"""JPEG encoding for samples, sized so the whole MQTT message stays under a byte limit (default 128 KiB)."""
import io
import logging
from typing import Optional, Tuple

import numpy as np

from ..calibration.preprocess import resize_bilinear

log = logging.getLogger(__name__)


def encode_jpeg(image: np.ndarray, color: str, quality: int) -> bytes:
    """HxWx3 uint8 (``color`` rgb or bgr) -> JPEG bytes, with OpenCV if present, else Pillow."""
    try:
        import cv2

        bgr = image if color == "bgr" else image[:, :, ::-1]
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
        if ok:
            return buf.tobytes()
    except ImportError:
        pass
    from PIL import Image

    rgb = image if color == "rgb" else image[:, :, ::-1]
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(out, format="JPEG", quality=int(quality))
    return out.getvalue()


def jpeg_within(image: np.ndarray, color: str, max_jpeg_bytes: int, quality: int = 85,
                max_side: int = 1280) -> Optional[Tuple[bytes, int, int]]:
    """JPEG of at most ``max_jpeg_bytes``: shrink to ``max_side``, then lower quality, then halve the size.
    Returns (jpeg, width, height) or None when even a tiny image does not fit."""
    img = np.asarray(image)
    h, w = img.shape[:2]
    scale = min(1.0, float(max_side) / max(h, w))
    q = quality
    for _ in range(12):
        nh, nw = max(8, int(h * scale)), max(8, int(w * scale))
        small = img if (nh, nw) == (h, w) else np.clip(resize_bilinear(img, nh, nw) + 0.5, 0, 255).astype(np.uint8)
        data = encode_jpeg(small, color, q)
        if len(data) <= max_jpeg_bytes:
            return data, nw, nh
        if q > 50:
            q -= 15
        else:
            scale *= 0.5
        if max(nh, nw) <= 16:
            break
    log.warning("sample does not fit in %d bytes even at 16 px; skipped", max_jpeg_bytes)
    return None


def jpeg_budget(max_message_bytes: int, overhead_bytes: int) -> int:
    """Base64 makes bytes 4/3 larger; keep room for the JSON around the image."""
    return max(1024, int((max_message_bytes - overhead_bytes) * 3 // 4))
