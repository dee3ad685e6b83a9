"""Frame sources and the capture thread that keeps only the latest frame.

A source opens, reads frames, and closes; ``read`` returns None at the end of a file/folder (without ``loop``) and
raises :class:`SourceLost` when the device or stream goes away. :class:`Capture` runs one source in a thread: it
caps the rate at ``fps``, keeps only the latest frame (a slot, never a queue: a frame the pipeline did not take in
time is dropped and counted), and reopens a lost source with capped exponential backoff, reporting its state.

Decode on demand: a live OpenCV source (camera, stream, GStreamer) only ``grab``s in the capture thread, which keeps
its buffer fresh without decoding, and the frame the pipeline takes is decoded then (``retrieve``), in the taking
thread. A frame replaced before it was taken was never decoded. Recordings (folder, video file) wait for the
pipeline, so every frame they read is taken and decoded once either way.
"""
import logging
import os
import threading
import time
from typing import Any, Dict, List, NamedTuple, Optional

import numpy as np

from ..calibration.images import list_images, load_image
from ..errors import ConfigError, ImageError, MissingDependencyError, require_module
from .cameras import SourceConfig
from .slot import SlotWorker

log = logging.getLogger(__name__)


class Frame(NamedTuple):
    image: np.ndarray  # HxWx3 uint8
    color: str  # "rgb" or "bgr" (OpenCV)
    captured: float  # time.time() at capture
    seq: int
    decode_ms: float = 0.0  # reading and decoding the image (stage timings)


class Grabbed(NamedTuple):
    """A frame a live source holds but has not decoded yet (``Source.decode`` makes it a Frame)."""

    captured: float
    seq: int


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
        """What the capture thread keeps in its slot: a decoded Frame, or for a live source that decodes on demand
        a :class:`Grabbed`. None at the end of the input."""
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

    def open(self) -> None:
        if not os.path.isdir(self.path):
            raise SourceLost("image folder %s does not exist" % self.path)
        self._files = [p for p, _ in list_images(self.path)]
        if not self._files:
            raise SourceLost("image folder %s has no images" % self.path)
        self._i = 0

    def read(self) -> Optional[Frame]:
        failures = 0
        while True:
            if self._i >= len(self._files):
                if not self.loop:
                    return None
                self.open()  # list the folder again: it may have been emptied (SourceLost) or refilled
            path = self._files[self._i]
            self._i += 1
            t0 = time.perf_counter()
            try:
                img = load_image(path)
            except ImageError as exc:
                failures += 1
                if failures >= max(1, len(self._files)):
                    raise SourceLost("no readable image in %s (%s)" % (self.path, exc.message))
                log.warning("skipping %s", exc)
                continue
            self._seq += 1
            return Frame(img, "rgb", time.time(), self._seq, 1000.0 * (time.perf_counter() - t0))


class OpenCVSource(Source):
    """V4L2 devices, RTSP/HTTP URLs, GStreamer pipelines and video files through cv2.VideoCapture."""

    def __init__(self, target: Any, kind: str, api: Optional[str] = None, loop: bool = False,
                 width: Optional[int] = None, height: Optional[int] = None) -> None:
        self.target, self.kind, self.api, self.loop = target, kind, api, loop
        self.replay = kind == "video"
        self.width, self.height = width, height
        self._cap = None
        self._seq = 0
        self.grabbed = 0  # frames grabbed from a live source
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
        if self.replay:  # a video file: every frame is taken, read and decode it here
            return self.read()
        with self._lock:
            if self._cap is None:
                raise SourceLost("%s not open" % self.kind)
            if not self._cap.grab():
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


def next_due(due: float, now: float, period: float) -> float:
    """When the next frame is due: one ``period`` after the last one was due, on a fixed schedule, so a late
    wake-up (a busy interpreter, a loaded host) does not slow a camera below its ``fps``; a source or pipeline that
    fell more than a period behind starts a new schedule at ``now`` instead of catching up in a burst."""
    due += period
    return now if due < now - period else due


class Capture(SlotWorker):
    """One camera's capture thread with a latest-frame slot; ``take`` gives the latest Frame not yet taken. A live
    camera replaces a frame the pipeline has not taken (dropped, counted); a replay (``Source.replay``) waits."""

    def __init__(self, name: str, source: Source, fps: float, reconnect_min: float = 0.5,
                 reconnect_max: float = 30.0) -> None:
        super().__init__("capture-%s" % name)
        self.name, self.source = name, source
        self.period = 1.0 / fps
        self.reconnect_min, self.reconnect_max = reconnect_min, reconnect_max
        self.state = "starting"  # starting | online | reconnecting | ended | stopped
        self.captured = 0
        self.dropped = 0  # frames replaced in the slot before the pipeline took them
        self.taken = 0  # frames the pipeline took
        self.reconnects = 0
        self.last_error: Optional[str] = None

    def _taken(self, item: Any) -> None:
        self.taken += 1

    def take(self, timeout: float) -> Optional[Frame]:
        """The latest frame not yet taken, decoded now: a live source decodes only the frames that are taken."""
        item = super().take(timeout)
        if item is None:
            return None
        frame = self.source.decode(item)
        if frame is None:  # grabbed but not decodable: a dropped frame, not one handed on
            with self._cond:
                self.taken -= 1
                self.dropped += 1
        return frame

    @property
    def ended(self) -> bool:
        return self.state == "ended"

    def _put(self, frame: Any) -> None:
        with self._cond:
            if self.source.replay:  # a recording waits for the pipeline instead of replacing the frame it holds
                while self._slot is not None and not self._stop.is_set():
                    self._cond.wait(0.5)
            if self._slot is not None:
                self.dropped += 1  # a live camera's stale frame: never processed
            self._slot = frame
            self.captured += 1
            self._cond.notify_all()
        self._tell()

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # not a known transient error: fail loudly, the main loop stops the agent
            log.exception("camera %s capture thread failed", self.name)
            self.failed, self.state, self.last_error = exc, "failed", "%s: %s" % (type(exc).__name__, exc)
            with self._cond:
                self._cond.notify_all()
            self._tell()

    def _loop(self) -> None:
        delay, due = self.reconnect_min, 0.0
        opened = False
        while not self._stop.is_set():
            if not opened:
                try:
                    self.source.open()
                    opened, delay = True, self.reconnect_min
                    if self.state == "reconnecting":
                        log.info("camera %s is back", self.name)
                    self.state = "online"
                    due = time.monotonic()  # frames at ``fps`` on a fixed schedule: a late wake-up does not slow it
                except (SourceLost, MissingDependencyError, ConfigError) as exc:
                    self.last_error = str(exc)
                    if isinstance(exc, (MissingDependencyError, ConfigError)):
                        log.error("camera %s cannot start: %s", self.name, exc)
                        self.state = "ended"
                        return
                    self.state = "reconnecting"
                    log.warning("camera %s: %s; retrying in %.1f s", self.name, exc, delay)
                    self._stop.wait(delay)
                    delay = min(self.reconnect_max, delay * 2)
                    self.reconnects += 1
                    continue
            try:
                frame = self.source.grab()
            except SourceLost as exc:
                self.last_error = str(exc)
                self.state = "reconnecting"
                log.warning("camera %s lost: %s", self.name, exc)
                self.source.close()
                opened = False
                continue
            if frame is None:
                self.state = "ended"
                log.info("camera %s: end of input", self.name)
                break
            self._put(frame)
            due = next_due(due, time.monotonic(), self.period)
            self._stop.wait(max(0.0, due - time.monotonic()))
        self.source.close()
        if self.state != "ended":
            self.state = "stopped"
        with self._cond:
            self._cond.notify_all()
        self._tell()

    def stats(self) -> Dict[str, Any]:
        return {"state": self.state, "captured": self.captured, "dropped": self.dropped,
                "reconnects": self.reconnects, "last_error": self.last_error}
