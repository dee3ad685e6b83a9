"""Checking what arrives on ``<prefix>/<device>/<camera>/sample`` against the contract (edgesight.contract, schema
v1, docs/mqtt.md): the same payload model the agent builds its samples with, then the topic, then the JPEG itself.

The fleet side depends on nothing but that contract: it never imports the agent. Every check raises
:class:`Rejected` with a reason a person can act on; the collector files the payload under ``_rejected/``.
"""
import base64
import binascii
import io
import json
import re
from typing import Any, Dict

from pydantic import ValidationError

from ..contract.payloads import SCHEMA_VERSION, Image, Sample as SamplePayload
from ..contract.topics import device_and_camera
from ..errors import validation_problems


class Rejected(Exception):
    """A payload the collector does not store; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Sample(object):
    """A checked sample: the payload's fields and the decoded JPEG."""

    __slots__ = ("payload", "jpeg", "topic")

    def __init__(self, payload: SamplePayload, jpeg: bytes, topic: str) -> None:
        self.payload, self.jpeg, self.topic = payload, jpeg, topic


def parse_sample(topic: str, body: bytes, max_bytes: int = 1 << 20) -> Sample:
    """The sample in ``body`` received on ``topic``, or :class:`Rejected`."""
    if len(body) > max_bytes:
        raise Rejected("payload is %d bytes, over the limit of %d (--max-bytes)" % (len(body), max_bytes))
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except RecursionError:
        raise Rejected("not JSON this collector reads: nested too deeply")
    except (UnicodeDecodeError, ValueError) as exc:
        raise Rejected("not JSON: %s" % exc)
    if not isinstance(data, dict):
        raise Rejected("not a JSON object")
    version = data.get("v")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise Rejected("schema version %r; this collector reads %d" % (str(version)[:20] if isinstance(version, str)
                                                                      else version, SCHEMA_VERSION))
    try:
        p = SamplePayload.model_validate(data)
    except ValidationError as exc:
        raise Rejected("wrong fields: %s" % validation_problems(exc.errors())[0])
    try:
        where = device_and_camera(topic)
    except ValueError:
        where = None
    if where != (p.device, p.camera):
        raise Rejected("topic %s does not match the payload's device %r and camera %r" % (topic[:200], p.device,
                                                                                            p.camera))
    jpeg = _decode_jpeg(p.image)
    return Sample(p, jpeg, topic)


def _no_constant(name: str) -> Any:
    raise ValueError("%s is not a number JSON allows" % name)


def _decode_jpeg(image: Image) -> bytes:
    try:
        jpeg = base64.b64decode(image.data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Rejected("image.data is not base64: %s" % exc)
    if not jpeg.startswith(b"\xff\xd8"):
        raise Rejected("image.data is not a JPEG (no SOI marker)")
    from PIL import Image as PilImage

    try:
        with PilImage.open(io.BytesIO(jpeg)) as im:  # the header only: the pixels are never decoded here
            size = im.size
            fmt = im.format
    except PilImage.DecompressionBombError as exc:
        raise Rejected("image.data is too large to be a sample (%s)" % exc)
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise Rejected("image.data does not open as a JPEG: %s: %s" % (type(exc).__name__, str(exc)[:200]))
    if fmt != "JPEG" or size != (image.width, image.height):
        raise Rejected("image is %s %dx%d, the payload says jpeg %dx%d" % (fmt, size[0], size[1], image.width,
                                                                          image.height))
    return jpeg


_UNSAFE = re.compile(r"[^A-Za-z0-9 ._+-]")


def folder_name(label: str) -> str:
    """A class folder for ``label``: the label itself where it is a safe file name, else ``_`` for odd characters
    (the manifest keeps the exact label). Never starts with ``.`` or ``_`` (those folders are not classes)."""
    name = _UNSAFE.sub("_", label).strip(" ")
    if not name or name[0] in "._":
        name = "c" + name
    return name[:120]


def manifest_record(s: Sample, file: str, sha256: str, received: str, collector: str) -> Dict[str, Any]:
    p = s.payload
    return {"id": p.id, "file": file, "sha256": sha256, "device": p.device, "camera": p.camera,
            "model": {"name": p.model.name, "version": p.model.version, "sha256": p.model.sha256},
            "reason": p.reason, "label": p.label, "score": p.score, "threshold": p.threshold,
            "top_k": [{"label": t.label, "score": t.score} for t in p.top_k], "result_id": p.result_id,
            "width": p.image.width, "height": p.image.height, "captured": p.ts, "received": received,
            "collector": collector}
