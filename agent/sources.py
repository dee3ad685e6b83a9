"""Frame sources: a source opens, grabs frames, decodes them, and closes; ``grab`` returns None at the end of a file
or folder (without ``loop``) and raises :class:`SourceLost` when the device or stream goes away. The capture thread
that runs one (``agent/capture.py``) never decodes.

Decode on demand: a live OpenCV source (camera, stream, GStreamer) only ``grab``s in the capture thread, which keeps
its buffer fresh, and the frame the pipeline takes is decoded then (``retrieve``), in the taking thread: a frame
replaced before it was taken was never decoded. A recording (folder, video file) waits for the pipeline to take and
decode a frame before it grabs the next one, so every frame is processed, in order, and is read and decoded once,
by the thread that preprocesses it (no decoded image crosses threads).
"""
import logging
import os
import threading
import time
from typing import Any, List, NamedTuple, Optional

import numpy as np

from ..calibration.images import list_images, load_image
from ..errors import ConfigError, ImageError, require_module
from .cameras import SourceConfig

log = logging.getLogger(__name__)


class Frame(NamedTuple):
    image: np.ndarray  # HxWx3 uint8
    color: str  # "rgb" or "bgr" (OpenCV)
    captured: float  # time.time() at capture
    seq: int
    decode_ms: float = 0.0  # reading and decoding the image (stage timings)


class Grabbed(NamedTuple):
    """A frame a source holds but has not decoded yet (``Source.decode`` makes it a Frame)."""

    captured: float
    seq: int
    ref: Any = None  # what the source needs to decode it (a folder: the file)


class SourceLost(Exception):
    """The camera or stream went away; the capture thread reopens it."""


def _cv2():
    return require_module("cv2", "Camera, stream and video sources", "camera", package="opencv-python-headless")


def jetson_csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, fps: float = 30.0) -> str:
    return ("nvarguscamerasrc sensor-id=%d ! video/x-raw(memory:NVMM), width=%d, height=%d, framerate=%d/1 ! "
            "nvvidconv ! video/x-raw, format=BGRx ! videoconvert ! video/x-raw, format=BGR ! "
            "appsink drop=true max-buffers=1 sync=false" % (sensor_id, width, height, max(1, int(round(fps)))))


def pi_libcamera_pipeline(width: int = 1280, height: int = 720, fps: float = 30.0) -> str:
    return ("libcamerasrc ! video/x-raw, width=%d, height=%d, framerate=%d/1 ! videoconvert ! "
            "video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false"
            % (width, height, max(1, int(round(fps)))))


class Source(object):
    kind = "base"
    replay = False  # a recording (folder, video file): every frame is processed, fps is the most it runs at

    def open(self) -> None:
        raise NotImplementedError

    def read(self) -> Optional[Frame]:
        raise NotImplementedError

    def grab(self) -> Optional[Any]:
        """What the capture thread keeps in its slot: a :class:`Grabbed` that ``decode`` turns into a Frame in the
        thread that takes it (the default: a Frame ``read`` decoded already). None at the end of the input."""
        return self.read()

    def decode(self, item: Any) -> Optional[Frame]:
        """The Frame for what ``grab`` returned (None: it could not be decoded; the frame is dropped)."""
        return item

    def close(self) -> None:
        pass


class FolderSource(Source):
    """Replays an image folder (sorted; sub-folders too). What the tests and the demo use."""

    kind = "folder"
    replay = True

    def __init__(self, path: str, loop: bool = True) -> None:
        self.path, self.loop = path, loop
        self._files: List[str] = []
        self._i = 0
        self._seq = 0
        self._failures = 0  # images in a row that did not decode (counted by the taking thread)
        self._last_error = ""

    def open(self) -> None:
        if not os.path.isdir(self.path):
            raise SourceLost("image folder %s does not exist" % self.path)
        files = [p for p, _ in list_images(self.path)]
        if not files:
            raise SourceLost("image folder %s has no images" % self.path)
        if self._none_read() and not any(_readable(p) for p in files):
            raise self._unreadable()  # reopening fails too (the capture thread backs off), until an image reads
        self._files, self._i, self._failures = files, 0, 0

    def grab(self) -> Optional[Grabbed]:
        """The next file, not read yet: the thread that takes it reads and decodes it (``decode``)."""
        if self._none_read():
            raise self._unreadable()
        if self._i >= len(self._files):
            if not self.loop:
                return None
            self.open()  # list the folder again: it may have been emptied (SourceLost) or refilled
        path = self._files[self._i]
        self._i += 1
        self._seq += 1
        return Grabbed(time.time(), self._seq, path)

    def decode(self, item: Any) -> Optional[Frame]:
        """The image of a grabbed file; None (the frame is dropped) when it cannot be read: a folder where none can
        be fails its next ``grab`` with SourceLost, and the capture thread reopens it with backoff."""
        t0 = time.perf_counter()
        try:
            img = load_image(item.ref)
        except ImageError as exc:
            self._failures += 1
            self._last_error = exc.message
            log.warning("skipping %s", exc)
            return None
        self._failures = 0
        return Frame(img, "rgb", item.captured, item.seq, 1000.0 * (time.perf_counter() - t0))

    def _none_read(self) -> bool:
        """The last pass over the folder read no image (``decode`` counts the failures in a row)."""
        return bool(self._files) and self._failures >= len(self._files)

    def _unreadable(self) -> SourceLost:
        return SourceLost("no readable image in %s (%s)" % (self.path, self._last_error))

    def read(self) -> Optional[Frame]:
        while True:  # grab and decode in one (edgesight doctor), skipping unreadable images
            item = self.grab()
            if item is None:
                return None
            frame = self.decode(item)
            if frame is not None:
                return frame


def _readable(path: str) -> bool:
    try:
        load_image(path)
        return True
    except ImageError:
        return False


class OpenCVSource(Source):
    """V4L2 devices, RTSP/HTTP URLs, GStreamer pipelines and video files through cv2.VideoCapture."""

    def __init__(self, target: Any, kind: str, api: Optional[str] = None, loop: bool = False,
                 width: Optional[int] = None, height: Optional[int] = None) -> None:
        self.target, self.kind, self.api, self.loop = target, kind, api, loop
        self.replay = kind == "video"
        self.width, self.height = width, height
        self._cap = None
        self._seq = 0
        self.grabbed = 0  # frames grabbed
        self.decoded = 0  # of those, decoded (the ones the pipeline took)
        self._lock = threading.Lock()  # grab (capture thread) and retrieve (taking thread) on one VideoCapture
        self._last: Optional[Grabbed] = None
        self._decoded_seq = 0  # seq of the last frame retrieved: never hand the same frame on twice

    def open(self) -> None:
        cv2 = _cv2()
        api = {"gstreamer": cv2.CAP_GSTREAMER, "v4l2": cv2.CAP_V4L2}.get(self.api or "", cv2.CAP_ANY)
        cap = cv2.VideoCapture(self.target, api)
        if not cap.isOpened():
            cap.release()
            raise SourceLost("cannot open %s %s" % (self.kind, self.target))
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        with self._lock:
            self._cap, self._last = cap, None

    def read(self) -> Optional[Frame]:
        if self._cap is None:
            raise SourceLost("%s not open" % self.kind)
        t0 = time.perf_counter()
        ok, img = self._cap.read()
        if not ok or img is None:
            if self.kind == "video":
                if not self.loop:
                    return None
                self._cap.set(_cv2().CAP_PROP_POS_FRAMES, 0)
                ok, img = self._cap.read()
                if ok and img is not None:
                    self._seq += 1
                    return Frame(img, "bgr", time.time(), self._seq, 1000.0 * (time.perf_counter() - t0))
            raise SourceLost("%s %s stopped delivering frames" % (self.kind, self.target))
        self._seq += 1
        return Frame(img, "bgr", time.time(), self._seq, 1000.0 * (time.perf_counter() - t0))

    def grab(self) -> Optional[Any]:
        with self._lock:
            if self._cap is None:
                raise SourceLost("%s not open" % self.kind)
            ok = self._cap.grab()
            if not ok and self.kind == "video":  # the end of a video file
                if not self.loop:
                    return None
                self._cap.set(_cv2().CAP_PROP_POS_FRAMES, 0)
                ok = self._cap.grab()
            if not ok:
                raise SourceLost("%s %s stopped delivering frames" % (self.kind, self.target))
            self._seq += 1
            self.grabbed += 1
            self._last = Grabbed(time.time(), self._seq)
            return self._last

    def decode(self, item: Any) -> Optional[Frame]:
        if not isinstance(item, Grabbed):
            return item
        t0 = time.perf_counter()
        with self._lock:  # the frame retrieved is the latest grabbed: never older than the one asked for
            if self._cap is None or self._last is None or self._last.seq <= self._decoded_seq:
                return None  # (already decoded for an earlier take: the grab raced ahead of that take's decode)
            ok, img = self._cap.retrieve()
            last = self._last
            self._decoded_seq = last.seq
        if not ok or img is None:
            log.warning("%s %s: a grabbed frame could not be decoded; dropped", self.kind, self.target)
            return None
        self.decoded += 1
        return Frame(img, "bgr", last.captured, last.seq, 1000.0 * (time.perf_counter() - t0))

    def close(self) -> None:
        with self._lock:
            if self._cap is not None:
                self._cap.release()
                self._cap = None


def make_source(cfg: SourceConfig) -> Source:
    if cfg.type == "folder":
        return FolderSource(cfg.path or "", loop=cfg.loop)
    if cfg.type == "video":
        return OpenCVSource(cfg.path, "video", loop=cfg.loop)
    if cfg.type == "v4l2":
        dev = cfg.device
        if isinstance(dev, str) and dev.isdigit():
            dev = int(dev)
        return OpenCVSource(dev, "v4l2", api="v4l2", width=cfg.width, height=cfg.height)
    if cfg.type == "url":
        return OpenCVSource(cfg.url, "url")
    if cfg.type == "gstreamer":
        return OpenCVSource(cfg.pipeline, "gstreamer", api="gstreamer")
    if cfg.type == "jetson_csi":
        return OpenCVSource(jetson_csi_pipeline(cfg.sensor_id, cfg.width or 1280, cfg.height or 720, cfg.fps),
                            "jetson_csi", api="gstreamer")
    if cfg.type == "pi_libcamera":
        return OpenCVSource(pi_libcamera_pipeline(cfg.width or 1280, cfg.height or 720, cfg.fps), "pi_libcamera",
                            api="gstreamer")
    raise ConfigError("unknown source type %r" % cfg.type, field="cameras.source.type")
