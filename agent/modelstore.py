"""The device's model versions on disk and the pointer to the active one (docs/rollout.md).

    <models.dir>/active.json        the pointer: active model, previous ones, probation after a swap, the last
                                    rollout that ended without becoming active (so a retained message that was
                                    rejected is not tried again at every start)
    <models.dir>/versions/<counter>/  unpacked packages (``keep`` of them stay)
    <models.dir>/staging/            downloads (resumed with Range) and unpacking in progress

The pointer is written atomically (temporary file, fsync, rename, fsync of the folder): after a power cut or a
SIGKILL it names the old model or the new one, never half of either. Without a pointer the agent runs the package
of its config (counter 0). Device-side: Python 3.8-compatible.
"""
import json
import logging
import os
import shutil
import time
from typing import Any, Dict, List, NamedTuple, Optional

from ..contract.rollout import ModelRef
from ..files import atomic_write

log = logging.getLogger(__name__)
POINTER = "active.json"


class Version(NamedTuple):
    ref: ModelRef
    path: str

    def as_json(self) -> Dict[str, Any]:
        return {"name": self.ref.name, "version": self.ref.version, "counter": self.ref.counter, "path": self.path}

    @staticmethod
    def of(data: Any) -> "Version":
        return Version(ModelRef(name=str(data["name"]), version=str(data["version"]), counter=int(data["counter"])),
                       str(data["path"]))


class Boot(NamedTuple):
    """What a start runs, and what happened at this start that must be reported once MQTT is up."""

    version: Version
    note: Optional[Dict[str, Any]]  # {"state": "rolled_back", "reason": ..., "candidate": ModelRef} or None
    probation: Optional[float]  # health seconds, when the active model was swapped in and has not yet passed


class ModelStore(object):
    def __init__(self, root: str, factory: Version, keep: int = 3, crash_starts: int = 3) -> None:
        self.root = root
        self.factory = factory
        self.keep = keep
        self.crash_starts = crash_starts
        self.versions_dir = os.path.join(root, "versions")
        self.staging = os.path.join(root, "staging")
        for d in (root, self.versions_dir, self.staging):
            os.makedirs(d, exist_ok=True)
        self.path = os.path.join(root, POINTER)
        self.data = self._read()

    # -- the pointer -----------------------------------------------------------------------------------------
    def _read(self) -> Dict[str, Any]:
        empty: Dict[str, Any] = {"v": 1, "active": None, "previous": [], "probation": None, "finished": None,
                                 "attempt": None}
        if not os.path.exists(self.path):
            return empty
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read(1 << 20).decode("utf-8"))
            if data.get("active") is not None:
                Version.of(data["active"])
            [Version.of(p) for p in data.get("previous") or []]
            return dict(empty, **data)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # written atomically: disk damage
            log.error("model pointer %s is unreadable (%s): starting on the config's package %s", self.path, exc,
                      self.factory.path)
            return empty

    def _write(self) -> None:
        atomic_write(self.path, json.dumps(self.data, indent=1), sync_dir=True)

    @property
    def active(self) -> Version:
        a = self.data.get("active")
        return Version.of(a) if a else self.factory

    @property
    def previous(self) -> List[Version]:
        return [Version.of(p) for p in self.data.get("previous") or []]

    def finished(self, counter: int) -> Optional[Dict[str, Any]]:
        """How the rollout of ``counter`` ended, when it ended without becoming active (rejected, rolled back)."""
        f = self.data.get("finished")
        return f if f and f.get("counter") == counter else None

    # -- transitions -----------------------------------------------------------------------------------------
    def boot(self) -> Boot:
        """Called once per start: counts starts during probation and falls back after ``crash_starts``."""
        note = None
        probation = self.data.get("probation")
        if probation is not None:
            probation["starts"] = int(probation.get("starts", 0)) + 1
            if probation["starts"] >= self.crash_starts:
                bad = self.active
                reason = "crash loop: the agent started %d times after the swap without passing the health " \
                         "window; back on %s %s" % (probation["starts"], (self.previous or [self.factory])[0].ref.name,
                                                    (self.previous or [self.factory])[0].ref.version)
                self._fall_back(reason)
                note = {"state": "rolled_back", "reason": reason, "candidate": bad.ref,
                        "desired_id": probation.get("desired_id")}
            self._write()
        attempt = self.data.get("attempt")
        if attempt is not None and note is None and attempt.pop("clean_stop", False):
            self._write()  # stopped cleanly during the rollout: not a death
        elif attempt is not None and note is None:  # the agent died while a rollout was fetched or shadowed
            attempt["starts"] = int(attempt.get("starts", 0)) + 1
            if attempt["starts"] >= self.crash_starts:
                reason = "the agent died %d times during this rollout (before the swap); abandoned" % attempt["starts"]
                note = {"state": "rejected", "reason": reason, "desired_id": attempt.get("desired_id"),
                        "candidate": ModelRef(name=str(attempt.get("name", "?")), version=str(attempt.get("version",
                                                                                                   "?")),
                                              counter=int(attempt["counter"]))}
                self.finish(int(attempt["counter"]), "rejected", reason, attempt.get("desired_id"))
            else:
                self._write()
        probation = self.data.get("probation")
        return Boot(self.active, note, None if probation is None else float(probation.get("health_seconds", 60.0)))

    def begin(self, ref: ModelRef, desired_id: str) -> None:
        """A rollout starts: a start that finds it still open counts towards ``crash_starts``."""
        att = self.data.get("attempt")
        starts = int(att.get("starts", 0)) if att and att.get("counter") == ref.counter else 0
        self.data["attempt"] = {"counter": ref.counter, "name": ref.name, "version": ref.version,
                                "desired_id": desired_id, "starts": starts}
        self._write()

    def paused(self) -> None:
        """The agent stops cleanly with a rollout open: the next start resumes it without counting a death."""
        if self.data.get("attempt") is not None:
            self.data["attempt"]["clean_stop"] = True
            self._write()

    def activate(self, version: Version, desired_id: Optional[str], health_seconds: float) -> None:
        """The swap: ``version`` becomes active, on probation until :meth:`passed`."""
        old = self.active
        prev = [old.as_json()] + [p for p in self.data.get("previous") or [] if p.get("path") != version.path]
        self.data.update(active=version.as_json(), previous=prev[:max(self.keep, 1)], attempt=None,
                         probation={"starts": 0, "since": time.time(), "desired_id": desired_id,
                                    "health_seconds": health_seconds})
        self._write()

    def passed(self) -> None:
        """The health window passed: no more probation; versions beyond ``keep`` are deleted."""
        self.data["probation"] = None
        self._write()
        self.prune()

    def rollback(self, reason: str) -> Version:
        """Back to the previous model (pointer first); returns it."""
        self._fall_back(reason)
        self._write()
        return self.active

    def _fall_back(self, reason: str) -> None:
        bad = self.active
        prev = self.previous
        back = prev[0] if prev else self.factory
        self.data.update(active=None if back.path == self.factory.path else back.as_json(),
                         previous=[p.as_json() for p in prev[1:]], probation=None,
                         finished={"counter": bad.ref.counter, "state": "rolled_back", "reason": reason[:2000],
                                   "desired_id": (self.data.get("probation") or {}).get("desired_id")})

    def finish(self, counter: int, state: str, reason: str, desired_id: Optional[str]) -> None:
        """A rollout ended without a swap (rejected): remember it, drop its files."""
        self.data["finished"] = {"counter": counter, "state": state, "reason": reason[:2000], "desired_id": desired_id}
        self.data["attempt"] = None
        self._write()
        self.drop(counter)

    # -- files -----------------------------------------------------------------------------------------------
    def version_dir(self, counter: int) -> str:
        return os.path.join(self.versions_dir, str(counter))

    def download_path(self, counter: int) -> str:
        return os.path.join(self.staging, "%d.espkg.part" % counter)

    def drop_unpacked(self, counter: int) -> None:
        """Remove what an earlier, interrupted unpack of ``counter`` left (it is unpacked again)."""
        for path in (self.version_dir(counter), self.version_dir(counter) + ".tmp"):
            if os.path.isdir(path) and path not in {v.path for v in [self.active] + self.previous}:
                shutil.rmtree(path)

    def drop(self, counter: int) -> None:
        """Remove the download and unpacked files of ``counter`` unless a kept version uses them."""
        kept = {v.path for v in [self.active] + self.previous}
        for path in (self.download_path(counter), self.version_dir(counter), self.version_dir(counter) + ".tmp"):
            if path in kept:
                continue
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.unlink(path)

    def prune(self) -> None:
        """Keep the active version and the ``keep - 1`` before it; delete other versions and stale downloads."""
        kept = [self.active] + self.previous[:max(self.keep - 1, 0)]
        if len(self.previous) > self.keep - 1:
            self.data["previous"] = [v.as_json() for v in self.previous[:max(self.keep - 1, 0)]]
            self._write()
        keep_paths = {os.path.abspath(v.path) for v in kept}
        for name in os.listdir(self.versions_dir):
            path = os.path.join(self.versions_dir, name)
            if os.path.abspath(path) not in keep_paths:
                shutil.rmtree(path, ignore_errors=True)
        for name in os.listdir(self.staging):  # downloads of counters at or below the active one are done with
            head = name.split(".", 1)[0]
            path = os.path.join(self.staging, name)
            if head.isdigit() and int(head) <= self.active.ref.counter and os.path.isfile(path):
                os.unlink(path)
