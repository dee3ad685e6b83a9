"""Packed packages: one file that carries a model package to devices (docs/rollout.md).

A packed package is an uncompressed tar whose first member is ``edgesight.pack.json``, the signed pack manifest
(name, version, counter, created/expires, sha256 and size of every file), followed by the package's files. Model
files barely compress, and a plain tar is read as a stream and resumes byte-exact with HTTP Range.

:func:`pack` runs on the workstation (on a package its caller validated: ``edgesight package pack`` loads it as a
device would first); :func:`unpack` runs on the device and trusts nothing in the archive: only
regular files and folders, no path out of the destination (no ``..``, absolute paths or links), every file exactly
the size and sha256 the signed list says, nothing extra, nothing missing, bounded counts and sizes.
Device-side: Python 3.8-compatible.
"""
import hashlib
import io
import logging
import os
import tarfile
import time
from typing import Any, Dict, List, Optional, Sequence

from ..errors import PackageError, RolloutError
from . import payloads
from .rollout import MAX_FILES, PACK_MANIFEST, FileEntry, PackManifest, check_member_path
from .signing import sign

MANIFEST = "edgesight.yaml"

log = logging.getLogger(__name__)


def package_files(root: str) -> List[str]:
    """Every file of a package directory, relative POSIX paths, sorted; links and odd names refused."""
    out = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if os.path.islink(full):
                raise PackageError("is a symbolic link: a packed package holds plain files only", file=full)
            try:
                check_member_path(rel)
            except ValueError as exc:
                raise PackageError(str(exc), file=full)
            if rel != PACK_MANIFEST:
                out.append(rel)
    if len(out) > MAX_FILES:
        raise PackageError("holds %d files; a package packs at most %d" % (len(out), MAX_FILES), file=root)
    return out


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pack(root: str, name: str, version: str, out: str, private_key: Optional[Any], counter: Optional[int] = None,
         expires_days: Optional[float] = None) -> PackManifest:
    """Write ``out``: the package folder ``root`` (named ``name`` ``version``) with its signed manifest.
    ``counter`` defaults to the current Unix time in seconds, so packs made later count higher."""
    now = time.time()
    files = [FileEntry(path=rel, sha256=sha256_file(os.path.join(root, rel)),
                       size=os.path.getsize(os.path.join(root, rel))) for rel in package_files(root)]
    manifest = PackManifest(name=name, version=version,
                            counter=int(now) if counter is None else counter, files=files,
                            created=payloads.iso(now),
                            expires=None if expires_days is None else payloads.iso(now + 86400.0 * expires_days))
    envelope = sign(manifest.model_dump_json().encode("utf-8"), private_key)
    tmp = out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(PACK_MANIFEST)
        info.size, info.mtime, info.mode = len(envelope), int(now), 0o644
        tar.addfile(info, io.BytesIO(envelope))
        for entry in files:
            info = tarfile.TarInfo(entry.path)
            info.size, info.mtime, info.mode = entry.size, int(now), 0o644
            with open(os.path.join(root, entry.path), "rb") as f:
                tar.addfile(info, f)
    os.replace(tmp, out)
    return manifest


def unpack(archive: str, dest: str, files: Sequence[FileEntry], max_bytes: int) -> None:
    """Extract ``archive`` into the new folder ``dest``: exactly ``files`` (sizes and sha256 checked while
    writing) plus the pack manifest, which is skipped. RolloutError naming the entry on any deviation."""
    want: Dict[str, FileEntry] = {f.path: f for f in files}
    if MANIFEST not in want:
        raise RolloutError("the file list has no %s" % MANIFEST)
    os.makedirs(dest)
    seen = set()
    written = 0
    try:
        tar = tarfile.open(archive, "r:")
    except (tarfile.TarError, OSError) as exc:
        raise RolloutError("the downloaded file is not a packed package (%s)" % exc)
    with tar:
        for n, member in enumerate(tar):
            if n > MAX_FILES + 1:
                raise RolloutError("the archive has more than %d entries" % (MAX_FILES + 1))
            name = member.name
            try:
                check_member_path(name)
            except ValueError as exc:
                raise RolloutError("archive entry refused: %s" % exc)
            if member.isdir():
                continue
            if not member.isreg():
                raise RolloutError("archive entry %r is not a regular file (links and devices are refused)" % name)
            if name == PACK_MANIFEST:
                continue
            entry = want.get(name)
            if entry is None:
                raise RolloutError("archive entry %r is not in the signed file list" % name)
            if name in seen:
                raise RolloutError("archive entry %r appears twice" % name)
            if member.size != entry.size:
                raise RolloutError("archive entry %r is %d bytes; the signed list says %d" % (name, member.size,
                                                                                            entry.size))
            written += member.size
            if written > max_bytes:
                raise RolloutError("the archive unpacks to more than %d bytes" % max_bytes)
            _write_checked(tar, member, os.path.join(dest, *name.split("/")), entry)
            seen.add(name)
    missing = sorted(set(want) - seen)
    if missing:
        raise RolloutError("the archive lacks signed file(s): %s" % ", ".join(missing[:5]))


def _write_checked(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str, entry: FileEntry) -> None:
    src = tar.extractfile(member)
    if src is None:
        raise RolloutError("archive entry %r cannot be read" % member.name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    h = hashlib.sha256()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        while True:
            block = src.read(1 << 20)
            if not block:
                break
            h.update(block)
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    if h.hexdigest() != entry.sha256:
        raise RolloutError("archive entry %r: sha256 %s..., the signed list says %s..." % (
            member.name, h.hexdigest()[:12], entry.sha256[:12]))
