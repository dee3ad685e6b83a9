"""The ``cameras`` section of agent.yaml: where each camera's frames come from (``source``), what is blacked out before
a sample leaves the device (``privacy_masks``) and which parts of the picture are classified (``regions``).

A camera without regions is classified whole. With regions (Frigate's "state classification": is the garage door
open, is the conveyor slot empty), each box is cropped from the frame before the package's own resize and
classified, thresholded, sampled and published on its own (agent/regions.py). Boxes are checked here as far as the
config alone allows; against the frame size when frames arrive. Device-side: Python 3.8-compatible.
"""
from typing import List, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from typing_extensions import Literal

from ..contract import topics
from ..contract.policy import repeated

LEVEL = r"^[A-Za-z0-9_-]{1,32}$"  # a camera or region name: one MQTT topic level and a safe file-name part
# camera names that would share a topic with the device's own: <device>/model/state, <device>/config/sampling/...
RESERVED_CAMERAS = ("config", "model")
MAX_REGIONS = 16
MAX_PIXELS = 1e5


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SourceConfig(_Strict):
    """Where frames come from. ``type`` selects the kind; only that kind's keys apply."""

    type: str = Field(description="folder | video | v4l2 | url | gstreamer | jetson_csi | pi_libcamera")
    path: Optional[str] = Field(None, max_length=4096)  # folder, video
    device: Optional[Union[int, str]] = None  # v4l2: index or /dev/videoN
    url: Optional[str] = Field(None, max_length=4096)  # rtsp:// http://
    pipeline: Optional[str] = Field(None, max_length=8192)  # gstreamer, ending in appsink
    sensor_id: int = Field(0, ge=0, le=64)  # jetson_csi
    width: Optional[int] = Field(None, ge=16, le=16384)
    height: Optional[int] = Field(None, ge=16, le=16384)
    fps: float = Field(10.0, gt=0, le=1000, description="frames per second to process at most")
    loop: bool = True  # folder, video: start again at the end
    reconnect_min: float = Field(0.5, gt=0, le=3600)
    reconnect_max: float = Field(30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _required_for_type(self) -> "SourceConfig":
        need = {"folder": "path", "video": "path", "v4l2": "device", "url": "url", "gstreamer": "pipeline",
                "jetson_csi": None, "pi_libcamera": None}
        if self.type not in need:
            raise ValueError("type must be one of %s, got %r" % (" | ".join(need), self.type))
        key = need[self.type]
        if key and getattr(self, key) in (None, ""):
            raise ValueError("type %s needs '%s'" % (self.type, key))
        if self.type == "url" and not str(self.url).lower().startswith(("rtsp://", "rtsps://", "http://",
                                                                         "https://", "rtmp://", "udp://")):
            raise ValueError("url must start with rtsp://, rtsps://, http://, https://, rtmp:// or udp://, got %r"
                             % self.url)
        if self.reconnect_max < self.reconnect_min:
            raise ValueError("reconnect_max must be >= reconnect_min")
        return self


class RegionConfig(_Strict):
    """One region of interest: ``box`` is [x, y, width, height] from the frame's top-left corner, in the camera's
    ``region_units``."""

    name: str = Field(pattern=LEVEL, description="used in MQTT topics: <device>/<camera>/<name>/result")
    box: Tuple[float, float, float, float] = Field(description="[x, y, width, height]")
    model: Optional[str] = Field(None, min_length=1, max_length=4096,
                                 description="a package of its own for this region (default: the agent's package)")

    @field_validator("box", mode="before")
    @classmethod
    def _four(cls, v: object) -> object:
        if isinstance(v, (list, tuple)) and len(v) != 4:
            raise ValueError("box is [x, y, width, height]: 4 numbers, got %d" % len(v))
        return v

    @field_validator("box")
    @classmethod
    def _box(cls, v: Tuple[float, float, float, float]) -> Tuple[float, float, float, float]:
        x, y, w, h = v
        if x < 0 or y < 0:
            raise ValueError("x and y are >= 0 (from the frame's top-left corner), got [%g, %g, %g, %g]" % v)
        if w <= 0 or h <= 0:
            raise ValueError("width and height are > 0, got [%g, %g, %g, %g]" % v)
        if max(x + w, y + h) > MAX_PIXELS:
            raise ValueError("the box reaches past %d pixels, got [%g, %g, %g, %g]" % (MAX_PIXELS, x, y, w, h))
        return v


class CameraConfig(_Strict):
    name: str = Field(pattern=LEVEL, description="used in MQTT topics")
    source: SourceConfig
    # polygons blacked out in every sample before it leaves the device (never changed over MQTT)
    privacy_masks: List[List[Tuple[float, float]]] = Field(default_factory=list, max_length=64)
    mask_units: Literal["pixels", "relative"] = "pixels"
    # classified instead of the whole frame, each on its own topics (agent/regions.py)
    regions: List[RegionConfig] = Field(default_factory=list, max_length=MAX_REGIONS)
    region_units: Literal["pixels", "relative"] = "pixels"
    region_sample_frame: int = Field(0, ge=0, le=4096, description="a region's sample also carries the whole frame "
                                                                   "(masked), at most this many pixels on its long "
                                                                   "side; 0: the crop only")

    @model_validator(mode="after")
    def _polygons(self) -> "CameraConfig":
        for i, poly in enumerate(self.privacy_masks):
            if not 3 <= len(poly) <= 1024:
                raise ValueError("privacy_masks[%d] needs 3 to 1024 points [x, y], got %d" % (i, len(poly)))
            if self.mask_units == "relative" and not all(0 <= c <= 1 for pt in poly for c in pt):
                raise ValueError("privacy_masks[%d]: relative coordinates lie in [0, 1]" % i)
            if self.mask_units == "pixels" and not all(0 <= c <= 1e5 for pt in poly for c in pt):
                raise ValueError("privacy_masks[%d]: pixel coordinates are >= 0" % i)
        return self

    @model_validator(mode="after")
    def _regions(self) -> "CameraConfig":
        if self.name in RESERVED_CAMERAS:
            raise ValueError("a camera must not be named %s: its topics would be the device's own (%s)"
                             % (self.name, ", ".join("<device>/%s/..." % n for n in RESERVED_CAMERAS)))
        dup = repeated([r.name for r in self.regions])
        if dup:
            raise ValueError("region names must be unique within a camera; repeated: %s" % ", ".join(dup))
        for i, r in enumerate(self.regions):
            x, y, w, h = r.box
            if self.region_units == "relative" and (x + w > 1 + 1e-9 or y + h > 1 + 1e-9):
                raise ValueError("regions[%d] (%s): a relative box lies in [0, 1] (x + width <= 1, y + height <= 1),"
                                 " got [%g, %g, %g, %g]; for pixels set region_units: pixels" % (i, r.name, x, y,
                                                                                                  w, h))
            if self.region_units == "pixels" and (w < 1 or h < 1):
                raise ValueError("regions[%d] (%s): a box in pixels is at least 1x1, got %gx%g; for fractions of the"
                                 " frame set region_units: relative" % (i, r.name, w, h))
        return self

    def targets(self) -> List[Optional[RegionConfig]]:
        """What this camera classifies: its regions, or the whole frame (None)."""
        return list(self.regions) if self.regions else [None]


def target_key(camera: str, region: Optional[str]) -> str:
    """``camera`` or ``camera/region``: the relative topic of one classified target, and its key in stats."""
    return "/".join(topics.target(camera, region))

