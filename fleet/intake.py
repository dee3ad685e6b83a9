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
from typing import Any, Dict, Optional

from pydantic import ValidationError

from ..contract.payloads import SCHEMA_VERSION, Image, Sample as SamplePayload
from ..contract.topics import is_sample_topic_of
from ..errors import validation_problems


class Rejected(Exception):
    """A payload the collector does not store; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Sample(object):
    """A checked sample: the payload's fields and the decoded JPEG."""

    __slots__ = ("payload", "jpeg", "topic", "context")

    def __init__(self, payload: SamplePayload, jpeg: bytes, topic: str, context: Optional[bytes] = None) -> None:
        self.payload, self.jpeg, self.topic = payload, jpeg, topic
        self.context = context  # a region's whole frame (JPEG), when the device sent it


def parse_sample(topic: str, body: bytes, max_bytes: int = 1 << 20, prefix: Optional[str] = None) -> Sample:
    """The sample in ``body`` received on ``topic`` (under the topic ``prefix`` when given), or :class:`Rejected`."""
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
    if not is_sample_topic_of(topic, p.device, p.camera, p.region, prefix):
        raise Rejected("topic %s does not match the payload's device %r, camera %r and region %r"
                       % (topic[:200], p.device, p.camera, p.region))
    if p.region is None and (p.box is not None or p.context is not None):
        raise Rejected("box and context belong to a region's sample, and this one names no region")
    if p.region is not None and p.box is None:
        raise Rejected("a region's sample names its box in the frame, and this one does not")
    jpeg = _decode_jpeg(p.image, "image")
    context = None if p.context is None else _decode_jpeg(p.context, "context")
    return Sample(p, jpeg, topic, context)


def _no_constant(name: str) -> Any:
    raise ValueError("%s is not a number JSON allows" % name)


def _decode_jpeg(image: Image, field: str) -> bytes:
    try:
        jpeg = base64.b64decode(image.data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Rejected("%s.data is not base64: %s" % (field, exc))
    if not jpeg.startswith(b"\xff\xd8"):
        raise Rejected("%s.data is not a JPEG (no SOI marker)" % field)
    from PIL import Image as PilImage

    try:
        with PilImage.open(io.BytesIO(jpeg)) as im:  # the header only: the pixels are never decoded here
            size = im.size
            fmt = im.format
    except PilImage.DecompressionBombError as exc:
        raise Rejected("%s.data is too large to be a sample (%s)" % (field, exc))
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise Rejected("%s.data does not open as a JPEG: %s: %s" % (field, type(exc).__name__, str(exc)[:200]))
    if fmt != "JPEG" or size != (image.width, image.height):
        raise Rejected("%s is %s %dx%d, the payload says jpeg %dx%d" % (field, fmt, size[0], size[1], image.width,
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


def manifest_record(s: Sample, file: str, sha256: str, received: str, collector: str,
                    context_file: Optional[str] = None) -> Dict[str, Any]:
    """The stored record of a sample; a region's sample also names its region, its box in the frame and, when the
    device sent the whole frame, the file that holds it (``context_file``)."""
    p = s.payload
    rec = {"id": p.id, "file": file, "sha256": sha256, "device": p.device, "camera": p.camera,
           "model": {"name": p.model.name, "version": p.model.version, "sha256": p.model.sha256},
           "reason": p.reason, "label": p.label, "score": p.score, "threshold": p.threshold,
           "top_k": [{"label": t.label, "score": t.score} for t in p.top_k], "result_id": p.result_id,
           "width": p.image.width, "height": p.image.height, "captured": p.ts, "received": received,
           "collector": collector}
    if p.region is not None:
        rec.update(region=p.region, box=list(p.box or ()))
    if context_file is not None:
        rec["context_file"] = context_file
    return rec
