"""The collected dataset on disk: ``DATASET/<label>/<file>.jpg``, one line per sample in ``DATASET/manifest.jsonl``,
``DATASET/_rejected/`` for payloads that were not stored.

Exactly once, across restarts and across several collectors writing the same folder:
- the manifest is the record of what is stored; every writer holds an exclusive lock (``.collect.lock``) while it
  reads what others appended since its last look, decides which of its samples are new (by message id and by the
  SHA-256 of the JPEG), renames their images into place and appends their lines (one write, then fsync);
- an image is written to a temporary file, fsynced and renamed, so a file under its final name is complete;
- the MQTT message is acknowledged only after that, so a collector killed at any point gets the unacknowledged
  messages again (persistent session) and the manifest tells it which of them it already has.
A crash can leave an image without a manifest line (renamed, not yet recorded): its message comes again and the
same file name is reused. A torn last line (a writer killed mid-append) is cut off by the next writer.
"""
import base64
import fcntl
import hashlib
import json
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

from ..contract.payloads import iso
from ..errors import ConfigError
from ..files import atomic_write, fsync_dir
from .intake import Sample, folder_name, manifest_record
from .stores import Store

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
REJECTED = "_rejected"
FRAMES = "_frames"  # the whole frames sent with region samples (not a class folder: it starts with _)
LOCK = ".collect.lock"
TMP = ".tmp"


def _write_synced(path: str, data: bytes, flags: int = os.O_CREAT | os.O_EXCL) -> None:
    """Write all of ``data`` and fsync; ``flags`` O_CREAT|O_EXCL for a new file, O_CREAT|O_APPEND to append."""
    fd = os.open(path, os.O_WRONLY | flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


REQUIRED = ("id", "file", "sha256", "label")


def parse_record(line: bytes) -> Optional[Dict[str, Any]]:
    """One manifest line as a record, or None when it is not one (not JSON, not an object, or without a string
    ``id``, ``file``, ``sha256`` and ``label``): such a line was not written by a collector and is skipped."""
    try:
        rec = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in REQUIRED):
        return None
    return rec


def read_manifest(root: str) -> Iterator[Dict[str, Any]]:
    """Every complete, well-formed record of a dataset's manifest (a torn last line and lines that are not records
    are left out, the latter with a warning naming the line)."""
    path = os.path.join(root, MANIFEST)
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.endswith(b"\n") or not line.strip():
                continue
            rec = parse_record(line)
            if rec is None:
                log.warning("%s line %d is not a sample record (needs %s): skipped", path, n, ", ".join(REQUIRED))
                continue
            yield rec


class Dataset(Store):
    """The folder store: one machine (the lock is a local file lock; not to be trusted over NFS)."""

    def __init__(self, root: str, collector: str = "edgesight-collect", create: bool = True) -> None:
        self.root = os.path.abspath(root)
        self.collector = collector
        if not create and not os.path.isfile(os.path.join(self.root, MANIFEST)):
            raise ConfigError("no %s here: not a dataset written by `edgesight collect`" % MANIFEST, file=root)
        try:
            os.makedirs(os.path.join(self.root, REJECTED), exist_ok=True)
        except OSError as exc:
            raise ConfigError("cannot create the dataset folder (%s)" % exc.strerror, file=root)
        if not os.access(self.root, os.W_OK):
            raise ConfigError("the dataset folder is not writable", file=root)
        self.manifest_path = os.path.join(self.root, MANIFEST)
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fsync")
        self._lock_fd = os.open(os.path.join(self.root, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        self._offset = 0
        self.ids: Set[str] = set()
        self.hashes: Set[str] = set()
        self.counts: Dict[str, int] = {}  # label -> samples stored (whole dataset)
        with self._locked():
            self._catch_up()
        self._clean_tmp()

    # -- locking and the manifest ----------------------------------------------------------------------------
    class _Lock(object):
        def __init__(self, fd: int) -> None:
            self.fd = fd

        def __enter__(self) -> None:
            fcntl.flock(self.fd, fcntl.LOCK_EX)

        def __exit__(self, *exc: Any) -> None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def _locked(self) -> "Dataset._Lock":
        return Dataset._Lock(self._lock_fd)

    def _catch_up(self) -> None:
        """Read what was appended since the last look (lock held); cut off a torn last line."""
        if not os.path.exists(self.manifest_path):
            return
        with open(self.manifest_path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a writer died mid-line: it holds no lock any more, so nobody is writing this
            log.warning("%s: cutting off an incomplete last line (%d bytes) left by a killed collector",
                        self.manifest_path, len(data) - end)
            with open(self.manifest_path, "r+b") as f:
                f.truncate(self._offset + end)
                os.fsync(f.fileno())
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            rec = parse_record(line)
            if rec is None:
                log.warning("%s: skipping a line that is not a sample record", self.manifest_path)
                continue
            self.ids.add(rec["id"])
            self.hashes.add(rec["sha256"])
            self.counts[rec["label"]] = self.counts.get(rec["label"], 0) + 1
        self._offset += end

    def _clean_tmp(self) -> None:
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                if name.endswith(TMP):
                    try:
                        os.remove(os.path.join(dirpath, name))
                    except OSError:
                        pass

    def __len__(self) -> int:
        return len(self.ids)

    def total(self) -> int:
        with self._locked():
            self._catch_up()
        return len(self.ids)

    # -- storing ---------------------------------------------------------------------------------------------
    def file_for(self, s: Sample) -> str:
        """``<class folder>/<message id>.jpg``: the name comes from the checked id, never from free payload text
        (the class folder is the label made safe and short; the manifest keeps the exact label)."""
        return "%s/%s.jpg" % (folder_name(s.payload.label), s.payload.id)

    def _stage(self, rel: str) -> str:
        os.makedirs(os.path.join(self.root, os.path.dirname(rel)), exist_ok=True)
        return os.path.join(self.root, rel) + "." + uuid.uuid4().hex[:8] + TMP

    def add_batch(self, samples: List[Sample]) -> Tuple[int, int]:
        """Store the new ones of ``samples``; returns (stored, duplicates). Durable when it returns."""
        staged = []  # (sample, rel path, sha256, [(tmp path, rel path, bytes)]: the image, then a region's frame)
        for s in samples:
            if s.payload.id in self.ids:  # known already: no need to write the image at all
                staged.append((s, None, None, []))
                continue
            rel = self.file_for(s)
            files = [(self._stage(rel), rel, s.jpeg)]
            if s.context is not None:
                ctx = "%s/%s.jpg" % (FRAMES, s.payload.id)
                files.append((self._stage(ctx), ctx, s.context))
            staged.append((s, rel, hashlib.sha256(s.jpeg).hexdigest(), files))
        # the fsyncs overlap in a few threads (they release the GIL; the file system commits them together)
        list(self._pool.map(lambda f: _write_synced(f[0], f[2]), [f for st in staged for f in st[3]]))
        stored, dupes = 0, 0
        lines, folders = [], set()
        received = iso(time.time())
        with self._locked():
            self._catch_up()
            for s, rel, digest, files in staged:
                if rel is None or s.payload.id in self.ids or digest in self.hashes:
                    dupes += 1
                    for tmp, _, _ in files:
                        os.remove(tmp)
                    continue
                for tmp, final, _ in files:
                    os.replace(tmp, os.path.join(self.root, final))
                    folders.add(os.path.dirname(os.path.join(self.root, final)))
                rec = manifest_record(s, rel, digest, received, self.collector,
                                      files[1][1] if len(files) > 1 else None)
                lines.append(json.dumps(rec, separators=(",", ":"), allow_nan=False) + "\n")
                self.ids.add(s.payload.id)
                self.hashes.add(digest)
                self.counts[s.payload.label] = self.counts.get(s.payload.label, 0) + 1
                stored += 1
            if lines:
                # the renames are durable before the manifest says the files exist
                list(self._pool.map(fsync_dir, sorted(folders)))
                data = "".join(lines).encode("utf-8")
                _write_synced(self.manifest_path, data, os.O_CREAT | os.O_APPEND)
                self._offset += len(data)
        return stored, dupes

    def reject(self, topic: str, body: bytes, reason: str, keep_bytes: int = 1 << 20) -> str:
        """File a payload that was not stored under ``_rejected/`` with the reason; returns the file name."""
        now = time.time()
        name = "%s_%s.json" % (iso(now).replace("-", "").replace(":", ""), uuid.uuid4().hex[:12])
        kept = body[:keep_bytes]
        try:
            text: Optional[str] = kept.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        rec = {"reason": reason, "topic": topic, "received": iso(now), "collector": self.collector,
               "size": len(body), "truncated": len(body) > keep_bytes}
        if text is not None:
            rec["payload"] = text
        else:
            rec["payload_base64"] = base64.b64encode(kept).decode("ascii")
        atomic_write(os.path.join(self.root, REJECTED, name), json.dumps(rec, indent=1), sync_dir=True)
        return name

    def records(self) -> Iterator[Dict[str, Any]]:
        return read_manifest(self.root)

    def read_image(self, rec: Dict[str, Any]) -> Optional[bytes]:
        path = os.path.join(self.root, rec["file"])
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            return f.read()

    def image_path(self, rec: Dict[str, Any]) -> str:
        return os.path.join(self.root, rec["file"])

    def image_url(self, rec: Dict[str, Any], image_root: Optional[str]) -> str:
        root = image_root if image_root is not None else "/data/local-files/?d=%s/" % os.path.basename(self.root)
        return root + rec["file"]

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
