"""Small file helpers every part shares: atomic writes and the labels file. Device-side: Python 3.8-compatible."""
import os
import shutil
import tempfile
from typing import List, Optional, Type, Union

from .errors import ConfigError, EdgesightError

MAX_LABELS = 100000
MAX_LABEL_CHARS = 200


def atomic_write(path: str, data: Union[bytes, str], mode: int = 0o644, sync_dir: bool = False) -> str:
    """``data`` at ``path``, complete or not at all: a temporary file in the same folder, fsync, rename.
    ``sync_dir`` also fsyncs the folder, so the rename itself survives a power cut."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path)[:40] + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(folder)
    return path


def atomic_copy(src: str, dst: str) -> str:
    """Copy ``src`` to ``dst`` so that ``dst`` is never seen half-written."""
    folder = os.path.dirname(os.path.abspath(dst))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(dst)[:40] + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dst


def cache_dir(name: str, env: str) -> str:
    """``$<env>`` if set, else ``$XDG_CACHE_HOME/edgesight/<name>`` (default ``~/.cache/edgesight/<name>``)."""
    override = os.environ.get(env)
    if override:
        return override
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "edgesight", name)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_labels(path: str, field: Optional[str] = None, error: Type[EdgesightError] = ConfigError) -> List[str]:
    """One class name per line, in model output order; blank lines and lines starting with ``#`` are skipped.
    Duplicates, an empty file, overlong names and non-UTF-8 text are errors naming the file (and ``field``)."""
    from .configfile import read_text

    text = read_text(path, "labels file", error, max_bytes=MAX_LABELS * (MAX_LABEL_CHARS + 1), field=field)
    labels = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not labels:
        raise error("labels file is empty; write one class name per line, in model output order", file=path,
                    field=field)
    long = [lbl for lbl in labels if len(lbl) > MAX_LABEL_CHARS]
    if long:
        raise error("label %r... is longer than %d characters" % (long[0][:40], MAX_LABEL_CHARS), file=path,
                    field=field)
    seen, dup = set(), []
    for lbl in labels:
        if lbl in seen and lbl not in dup:
            dup.append(lbl)
        seen.add(lbl)
    if dup:
        raise error("labels must be unique; repeated: %s" % ", ".join(sorted(dup)), file=path, field=field)
    return labels
