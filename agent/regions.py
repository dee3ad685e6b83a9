"""Regions of interest at run time: which parts of a frame are classified, by which model, in one batch per model.

A camera without regions is classified whole, as one view. A camera with regions (``cameras[].regions``,
agent/cameras.py) has one view per region: the box is cropped from the frame before the package's own resize, and
the crops a model runs are stacked into one batch, so one frame with several regions is one run of the model where
the backend takes a batch (``Runtime.infer`` slices it where the model has a fixed batch).

A box that does not fit the frame (known only once frames arrive) is reported, not a crash: :class:`RegionProblems`
logs it once, stats and ``/metrics`` show it, and that region is skipped until the frame size changes. Pure but for
that record; device-side, Python 3.8-compatible.
"""
import logging
import math
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..calibration.preprocess import PreprocessSpec, preprocess
from .cameras import CameraConfig, target_key
from .sources import Frame

log = logging.getLogger(__name__)

MAIN = ""  # the model group of the agent's own package; a region with a ``model`` of its own is in that path's group
Box = Tuple[int, int, int, int]  # x, y, width, height in the frame's pixels


class View(NamedTuple):
    """One classified part of a frame: which region (None: the whole frame), where, and its row in a model's batch."""

    region: Optional[str]
    box: Optional[Box]
    group: str
    row: int


def _half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


def box_pixels(box: Sequence[float], units: str, height: int, width: int) -> Box:
    """A configured box (``units`` pixels or relative) on a ``height`` x ``width`` frame, as whole pixels;
    ValueError saying why when it does not lie inside the frame."""
    x, y, w, h = (float(v) for v in box)
    sx, sy = (width, height) if units == "relative" else (1, 1)
    x0, y0, x1, y1 = _half_up(x * sx), _half_up(y * sy), _half_up((x + w) * sx), _half_up((y + h) * sy)
    if x1 > width or y1 > height:
        raise ValueError("box [%g, %g, %g, %g] (%s) reaches x=%d, y=%d, outside the %dx%d frame"
                         % (x, y, w, h, units, x1, y1, width, height))
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ValueError("box [%g, %g, %g, %g] (%s) is less than a pixel wide or high in the %dx%d frame"
                         % (x, y, w, h, units, width, height))
    return x0, y0, x1 - x0, y1 - y0


def crop(image: np.ndarray, box: Box) -> np.ndarray:
    """The box's pixels (a view into ``image``, no copy)."""
    x, y, w, h = box
    return image[y:y + h, x:x + w]


class RegionProblems(object):
    """What is wrong with each region now (``camera/region`` -> why, None when it is fine), logged when it
    changes. Written by the preprocessing thread, read by telemetry (a dict copy is atomic)."""

    def __init__(self) -> None:
        self.now: Dict[str, Optional[str]] = {}

    def set(self, key: str, problem: Optional[str]) -> None:
        if self.now.get(key, "") == problem:
            return
        if problem is not None:
            log.error("region %s skipped: %s; fix its box in the config (docs/agent-config.md)", key, problem)
        elif key in self.now:
            log.info("region %s: the box fits the frame now", key)
        self.now[key] = problem

    def snapshot(self) -> Dict[str, Optional[str]]:
        return dict(self.now)


class Preparer(object):
    """A camera's frame -> (one float32 batch per model group, the views that say which row is which target)."""

    def __init__(self, cameras: Sequence[CameraConfig], specs: Dict[str, PreprocessSpec],
                 problems: Optional[RegionProblems] = None) -> None:
        self.cameras = {c.name: c for c in cameras}
        self.specs = specs  # group -> the preprocessing of that group's model, in its runtime's layout
        self.problems = problems if problems is not None else RegionProblems()
        self._boxes: Dict[Tuple[str, int, int], List[Tuple[str, Box, str]]] = {}

    def _plan(self, camera: str, height: int, width: int) -> List[Tuple[str, Box, str]]:
        """(region, box, group) of every region that fits a frame of this size (computed once per size)."""
        key = (camera, height, width)
        plan = self._boxes.get(key)
        if plan is None:
            cam, plan = self.cameras[camera], []
            for r in cam.regions:
                try:
                    plan.append((r.name, box_pixels(r.box, cam.region_units, height, width), r.model or MAIN))
                    self.problems.set(target_key(camera, r.name), None)
                except ValueError as exc:
                    self.problems.set(target_key(camera, r.name), str(exc))
            self._boxes = {k: v for k, v in self._boxes.items() if k[0] != camera}  # one frame size per camera
            self._boxes[key] = plan
        return plan

    def __call__(self, camera: str, frame: Frame) -> Tuple[Dict[str, np.ndarray], List[View]]:
        image = frame.image
        if not self.cameras[camera].regions:
            return {MAIN: preprocess(image, self.specs[MAIN], input_color=frame.color)[None]}, [
                View(None, None, MAIN, 0)]
        rows: Dict[str, List[np.ndarray]] = {}
        views = []
        for region, box, group in self._plan(camera, image.shape[0], image.shape[1]):
            group_rows = rows.setdefault(group, [])
            views.append(View(region, box, group, len(group_rows)))
            group_rows.append(preprocess(crop(image, box), self.specs[group], input_color=frame.color))
        return {g: r[0][None] if len(r) == 1 else np.stack(r) for g, r in rows.items()}, views
