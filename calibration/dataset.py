"""Image folders for calibration and validation, and the readers each quantization tool wants.

A folder is either flat (unlabelled) or has one sub-folder per class (the sub-folder name is the label). Images
(jpg/png/bmp/webp) are decoded with their EXIF orientation; unreadable or corrupt ones are skipped, counted and
listed, never fatal unless nothing usable is left. Sampling is deterministic (seeded) and stratified by class, and
tensors come only from the package's preprocessing spec (``calibration.preprocess``).
"""
import logging
import os
import random
from collections import OrderedDict
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConfigError, ImageError
from .images import list_images, load_image
from .preprocess import PreprocessSpec, preprocess, to_layout

log = logging.getLogger(__name__)


class Sample(NamedTuple):
    path: str
    label: str  # "" when the folder is flat


class LoadedSet(NamedTuple):
    """Preprocessed images (N first, in the spec's layout) and what was skipped."""

    tensors: np.ndarray
    samples: List[Sample]
    skipped: List[Tuple[str, str]]  # (path, reason)


class ImageFolder(object):
    """The images below ``root``; see the module docstring for the folder conventions."""

    def __init__(self, root: str) -> None:
        if not os.path.isdir(root):
            raise ConfigError("not a folder of images", file=root)
        self.root = root
        self.samples = [Sample(p, lbl) for p, lbl in list_images(root)]
        if not self.samples:
            raise ConfigError("no images found (looked for .jpg .jpeg .png .bmp .webp, also in sub-folders)",
                              file=root)

    @property
    def labelled(self) -> bool:
        return all(s.label for s in self.samples)

    @property
    def classes(self) -> List[str]:
        return sorted({s.label for s in self.samples})

    def sample(self, count: Optional[int], seed: int = 0) -> List[Sample]:
        """Up to ``count`` samples, stratified by label (round-robin over shuffled classes), deterministic per seed.

        Fewer images than requested is not an error: all of them are used and a warning is logged.
        """
        if count is None or count >= len(self.samples):
            if count is not None and count > len(self.samples):
                log.warning("%s has %d images, fewer than the %d requested: using all of them",
                            self.root, len(self.samples), count)
            return list(self.samples)
        rng = random.Random(seed)
        by_label = OrderedDict()  # type: Dict[str, List[Sample]]
        for s in self.samples:
            by_label.setdefault(s.label, []).append(s)
        for items in by_label.values():
            rng.shuffle(items)
        chosen = []  # type: List[Sample]
        queues = [list(v) for v in by_label.values()]
        while len(chosen) < count:
            for q in queues:
                if q and len(chosen) < count:
                    chosen.append(q.pop())
        return sorted(chosen)

    def load(self, spec: PreprocessSpec, count: Optional[int] = None, seed: int = 0,
             on_progress: Optional[Callable[[int, int], None]] = None) -> LoadedSet:
        """Decode and preprocess a (sampled) set; corrupt images are skipped and listed. ``on_progress(done, total)``
        is called after each image."""
        chosen = self.sample(count, seed)
        tensors, kept, skipped = [], [], []
        for i, s in enumerate(chosen):
            if on_progress is not None:
                on_progress(i + 1, len(chosen))
            try:
                tensors.append(preprocess(load_image(s.path), spec))
                kept.append(s)
            except ImageError as exc:
                skipped.append((s.path, exc.message))
                log.warning("skipping %s: %s", s.path, exc.message)
        if not kept:
            raise ConfigError("none of the %d images could be read (%s)" % (
                len(chosen), "; ".join("%s: %s" % (os.path.basename(p), r) for p, r in skipped[:3])), file=self.root)
        return LoadedSet(np.stack(tensors), kept, skipped)


class OrtCalibrationReader(object):
    """An onnxruntime ``CalibrationDataReader``: yields ``{input_name: batch}`` then ``None``; ``rewind()`` restarts.

    Duck-typed (``get_next``/``rewind``) so that importing this module does not need onnxruntime.
    """

    def __init__(self, input_name: str, tensors: np.ndarray, batch_size: int = 1) -> None:
        self.input_name = input_name
        self.tensors = tensors
        self.batch_size = batch_size
        self._pos = 0

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self._pos >= len(self.tensors):
            return None
        batch = self.tensors[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self) -> None:
        self._pos = 0

    def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
        self.rewind()
        while True:
            item = self.get_next()
            if item is None:
                return
            yield item

    def __len__(self) -> int:
        return (len(self.tensors) + self.batch_size - 1) // self.batch_size


def save_npy(tensors: np.ndarray, path: str, src_layout: str, dst_layout: str) -> str:
    """Calibration tensors as one float32 ``.npy`` in the layout a tool wants (TFLite/onnx2tf: NHWC)."""
    np.save(path, to_layout(np.asarray(tensors, dtype=np.float32), src_layout, dst_layout))
    return path


def label_indices(samples: Sequence[Sample], labels: Sequence[str]) -> Optional[np.ndarray]:
    """Class index per sample when every sample's folder is a known label, else None (unlabelled set)."""
    if not samples or not all(s.label in labels for s in samples):
        return None
    index = {lbl: i for i, lbl in enumerate(labels)}
    return np.array([index[s.label] for s in samples], dtype=np.int64)
