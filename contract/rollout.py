"""The rollout contract (docs/rollout.md): the pack manifest inside a packed package, the signed desired-model
message a device reads on ``<prefix>/<device>/model/desired`` (retained) and the model state it reports on
``<prefix>/<device>/model/state`` (retained). Bodies are checked with these models only after their signature
verified (:mod:`contract.signing`); every string, list and number is bounded. Device-side: Python 3.8-compatible.
"""
import json
import posixpath
import re
import time
from typing import Any, List, Optional

from pydantic import Field, ValidationError, field_validator, model_validator
from typing_extensions import Literal

from . import payloads
from .payloads import ID, NAME, TS, _Part, _Payload
from .signing import SignatureError

PACK_MANIFEST = "edgesight.pack.json"  # the first member of a packed package: its signed manifest
PACK_KIND, DESIRED_KIND = "edgesight.pack/1", "edgesight.desired/1"
MAX_FILES = 256
MAX_PACKAGE_BYTES = 16 << 30
MAX_COUNTER = (1 << 53) - 1  # exact in every JSON reader
STATES = ("downloading", "verifying", "shadow", "active", "rejected", "rolled_back")
SHA256 = r"^[0-9a-f]{64}$"
_PATH = re.compile(r"^[A-Za-z0-9_.+-][A-Za-z0-9_.+/-]{0,254}$")


def check_member_path(path: str) -> str:
    """A relative POSIX path that stays inside its folder: no ``..``, no absolute path, no backslash, no empty or
    dot part, at most 8 levels. ValueError otherwise (archive entries and manifest file lists use it)."""
    if not isinstance(path, str) or not _PATH.match(path):
        raise ValueError("file path %r is not a plain relative path (letters, digits, _ . + - and /)" % str(path)[:100])
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or len(parts) > 8 or posixpath.normpath(path) != path:
        raise ValueError("file path %r escapes or is not normal (.., empty parts, more than 8 levels)" % path[:100])
    return path


class FileEntry(_Part):
    path: str = Field(max_length=255, description="path inside the package")
    sha256: str = Field(pattern=SHA256, description="hex sha256 of the file")
    size: int = Field(ge=0, le=MAX_PACKAGE_BYTES, description="bytes")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return check_member_path(v)


class _Files(_Part):
    name: str = Field(min_length=1, max_length=200, description="package name")
    version: str = Field(min_length=1, max_length=100, description="package version")
    counter: int = Field(ge=1, le=MAX_COUNTER, description="only goes up: a device never installs a counter that "
                                                           "is not above the active one")
    files: List[FileEntry] = Field(min_length=1, max_length=MAX_FILES, description="every file of the package")
    created: str = Field(pattern=TS, description="when it was signed")
    expires: Optional[str] = Field(None, pattern=TS, description="not installed after this time")

    @model_validator(mode="after")
    def _unique(self) -> "_Files":
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("files: a path is listed twice")
        if "edgesight.yaml" not in paths:
            raise ValueError("files: no edgesight.yaml (not a model package)")
        if PACK_MANIFEST in paths:
            raise ValueError("files: %s is the pack's own manifest, not a package file" % PACK_MANIFEST)
        return self

    def total_size(self) -> int:
        return sum(f.size for f in self.files)


class PackManifest(_Files):
    """``edgesight.pack.json``, signed: what ``edgesight package pack`` put in the file."""

    kind: Literal["edgesight.pack/1"] = PACK_KIND


class Archive(_Part):
    sha256: str = Field(pattern=SHA256, description="hex sha256 of the packed file")
    size: int = Field(ge=1, le=MAX_PACKAGE_BYTES, description="its size: the download cap")


class RolloutPolicy(_Part):
    shadow_frames: int = Field(200, ge=0, le=1000000, description="frames the candidate runs beside the current "
                                                                  "model before the swap (0: no shadow)")
    min_agreement: float = Field(0.9, ge=0.0, le=1.0, description="top-1 agreement with the current model needed")
    health_seconds: float = Field(60.0, ge=0.0, le=86400.0, description="after the swap: a failure in this window "
                                                                         "rolls back")


class Desired(_Files):
    """``model/desired``, signed, retained: install this package on this device."""

    kind: Literal["edgesight.desired/1"] = DESIRED_KIND
    id: str = Field(pattern=ID, description="unique id of this instruction")
    device: str = Field(pattern=NAME, description="the device it is for (a copy on another device's topic is "
                                                  "refused)")
    url: str = Field(min_length=8, max_length=4096, description="http(s) URL of the packed file")
    archive: Archive = Field(description="the packed file's sha256 and size")
    rollout: RolloutPolicy = Field(default_factory=RolloutPolicy)  # type: ignore[arg-type]

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.lower().startswith(("http://", "https://")):
            raise ValueError("url must be http:// or https://")
        return v


class ShadowNumbers(_Part):
    frames: int = Field(ge=0, description="frames both models ran on")
    target: int = Field(ge=0, description="frames wanted")
    agreement: Optional[float] = Field(None, ge=0, le=1, description="top-1 agreement (by label)")
    current_mean_score: Optional[float] = Field(None, ge=0, le=1, description="the current model's mean top-1")
    candidate_mean_score: Optional[float] = Field(None, ge=0, le=1, description="the candidate's mean top-1")
    current_uncertain: Optional[float] = Field(None, ge=0, le=1, description="share below threshold, current")
    candidate_uncertain: Optional[float] = Field(None, ge=0, le=1, description="share below threshold, candidate")


class ModelRef(_Part):
    name: str = Field(min_length=1, max_length=200, description="package name")
    version: str = Field(min_length=1, max_length=100, description="package version")
    counter: int = Field(ge=0, le=MAX_COUNTER, description="its counter (0: the package of the agent's config)")


class ModelState(_Payload):
    """``model/state``, QoS 1, retained: where the device's model rollout stands."""

    device: str = Field(pattern=NAME, description="device id")
    ts: str = Field(pattern=TS, description="when the state was entered")
    state: Literal["downloading", "verifying", "shadow", "active", "rejected", "rolled_back"] = Field(
        description="the rollout's step, or how it ended")
    active: ModelRef = Field(description="the model the device runs now")
    candidate: Optional[ModelRef] = Field(None, description="the model being rolled out (or rejected)")
    desired_id: Optional[str] = Field(None, pattern=ID, description="id of the desired message this is about")
    health: Optional[Literal["watching", "passed"]] = Field(None, description="with active: in the health window, "
                                                                             "or past it")
    progress: Optional[float] = Field(None, ge=0, le=1, description="downloading or shadow: share done")
    reason: Optional[str] = Field(None, max_length=2000, description="rejected, rolled_back or ignored: why")
    shadow: Optional[ShadowNumbers] = Field(None, description="the shadow comparison")


def parse(body: bytes, kind: Any) -> Any:
    """A verified body as ``kind`` (PackManifest or Desired); SignatureError naming the bad field otherwise."""
    try:
        data = json.loads(body.decode("utf-8"))
        return kind.model_validate(data)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise SignatureError("the signed %s is invalid: %s: %s" % (
            "desired-model message" if kind is Desired else "pack manifest",
            ".".join(str(p) for p in e["loc"]) or "(top level)", e["msg"]))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SignatureError("the signed body is not JSON: %s" % str(exc)[:200])


def model_state(device_id: str, state: str, active: ModelRef, **fields: Any) -> ModelState:
    return payloads.build(ModelState, device=device_id, ts=payloads.iso(time.time()), state=state,
                          active=active, **fields)


def read_pack(path: str) -> Any:
    """(the pack manifest, the packed file's sha256, its size) of a packed package, read without unpacking.
    The manifest's signature is not checked here: the desired message that names this file is signed and carries
    the file list, and that is what a device verifies."""
    import base64
    import hashlib
    import os
    import tarfile

    from ..errors import PackageError
    from .signing import MAX_ENVELOPE

    try:
        with tarfile.open(path, "r:") as tar:
            first = tar.next()
            if first is None or first.name != PACK_MANIFEST or not first.isreg() or first.size > MAX_ENVELOPE:
                raise PackageError("not a packed package: the first entry is not %s. Make it with "
                                   "`edgesight package pack`." % PACK_MANIFEST, file=path)
            raw = tar.extractfile(first).read()  # type: ignore[union-attr]
        env = json.loads(raw.decode("utf-8"))
        manifest = parse(base64.b64decode(env["body"]), PackManifest)
    except (tarfile.TarError, OSError, KeyError, TypeError, ValueError, SignatureError) as exc:
        if isinstance(exc, PackageError):
            raise
        raise PackageError("not a readable packed package (%s)" % str(exc)[:300], file=path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return manifest, h.hexdigest(), os.path.getsize(path)
