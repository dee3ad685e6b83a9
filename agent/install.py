"""``edgesight service install|uninstall``: the hardened systemd unit, its user and directories, a config skeleton.

Idempotent: an existing config or environment file is never overwritten; the unit is rewritten only when it
changed. ``--root DIR`` installs into a staging tree (no user creation, no systemctl): that is how it is tested.
"""
import grp
import logging
import os
import pwd
import shutil
import subprocess
import sys
from typing import Dict, List, Optional

from ..errors import ConfigError, EdgesightError
from ..files import atomic_write
from . import environment

log = logging.getLogger(__name__)

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the edgesight package directory
UNIT_NAME = "edgesight-agent.service"

CONFIG_SKELETON = """# edgesight agent configuration: every key in docs/agent-config.md
# Check with: edgesight agent --config /etc/edgesight/agent.yaml --check-config
device_id: {device_id}
package: /var/lib/edgesight/package        # copy your model package here
runtime: auto
engine_cache: /var/cache/edgesight/engines
cameras:
  - name: cam0
    source: {{type: v4l2, device: /dev/video0, fps: 5}}
mqtt:
  host: localhost
  port: 1883
  # username: {device_id}
  # password_env: EDGESIGHT_MQTT_PASSWORD     # set in /etc/edgesight/agent.env
  # tls: {{ca_file: /etc/edgesight/ca.pem}}
outbox:
  path: /var/lib/edgesight/outbox.db
"""


def _resource(name: str) -> str:
    path = os.path.join(HERE, "systemd", name)
    if not os.path.isfile(path):
        raise EdgesightError("%s is missing from the installed edgesight; reinstall it" % path)
    return path


def render_unit(executable: str) -> str:
    with open(_resource(UNIT_NAME)) as f:
        return f.read().replace("@EDGESIGHT@", executable)


def _write(path: str, content: str, mode: int, overwrite: bool, report: List[str]) -> None:
    if os.path.exists(path):
        with open(path) as f:
            same = f.read() == content
        if same or not overwrite:
            os.chmod(path, mode)
            report.append("kept      %s" % path)
            return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, content, mode)
    report.append("wrote     %s" % path)


def _chown(path: str, user: str, group: str, staged: bool, report: List[str]) -> None:
    if staged:
        return
    try:
        shutil.chown(path, user, group)
    except (LookupError, PermissionError) as exc:
        report.append("could not chown %s to %s:%s (%s)" % (path, user, group, exc))


def systemd_running(root: str) -> bool:
    return root == "/" and os.path.isdir("/run/systemd/system")


def install(root: str = "/", user: str = "edgesight", executable: Optional[str] = None,
            device_id: Optional[str] = None, enable: bool = True) -> List[str]:
    """Returns a report line per action."""
    import socket

    staged = root != "/"
    if not staged and os.geteuid() != 0:
        raise ConfigError("installing the service needs root (or use --root DIR to stage the files)")
    report: List[str] = []
    if executable is None:  # the unit will run this Python's edgesight: make sure that is one a device should run
        env = environment.probe()
        why = environment.problem(env)
        if why:
            raise ConfigError(why)
        if env.in_venv:
            report.append("note      the unit runs this venv's edgesight (%s)" % sys.prefix)
        executable = os.path.join(os.path.dirname(sys.executable), "edgesight")
    if not staged:
        try:
            pwd.getpwnam(user)
            report.append("kept      user %s" % user)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/var/lib/edgesight",
                            "--shell", "/usr/sbin/nologin", "--user-group", user], check=True, timeout=60)
            report.append("created   user %s" % user)
        for g in ("video", "render"):
            try:
                grp.getgrnam(g)
            except KeyError:
                report.append("note      group %s does not exist on this system (SupplementaryGroups=)" % g)
    etc = os.path.join(root, "etc", "edgesight")
    dirs: Dict[str, int] = {etc: 0o750, os.path.join(root, "var", "lib", "edgesight"): 0o750,
                            os.path.join(root, "var", "cache", "edgesight"): 0o750}
    for d, mode in dirs.items():
        existed = os.path.isdir(d)
        os.makedirs(d, exist_ok=True)
        os.chmod(d, mode)
        _chown(d, "root" if d == etc else user, user, staged, report)
        report.append("%s %s" % ("kept     " if existed else "created  ", d))
    unit = render_unit(executable).replace("User=edgesight", "User=%s" % user).replace(
        "Group=edgesight", "Group=%s" % user)
    _write(os.path.join(root, "etc", "systemd", "system", UNIT_NAME), unit, 0o644, True, report)
    with open(_resource("agent.env.example")) as f:
        _write(os.path.join(etc, "agent.env"), f.read(), 0o640, False, report)
    _write(os.path.join(etc, "agent.yaml"), CONFIG_SKELETON.format(
        device_id=device_id or socket.gethostname().split(".")[0]), 0o640, False, report)
    for name in ("agent.env", "agent.yaml"):
        _chown(os.path.join(etc, name), "root", user, staged, report)
    if systemd_running(root):
        subprocess.run(["systemctl", "daemon-reload"], check=True, timeout=60)
        report.append("ran       systemctl daemon-reload")
        if enable:
            subprocess.run(["systemctl", "enable", UNIT_NAME], check=True, timeout=60)
            report.append("ran       systemctl enable %s" % UNIT_NAME)
    else:
        report.append("note      systemd is not running here: no daemon-reload / enable")
    return report


def uninstall(root: str = "/", purge: bool = False) -> List[str]:
    report: List[str] = []
    unit = os.path.join(root, "etc", "systemd", "system", UNIT_NAME)
    if systemd_running(root):
        subprocess.run(["systemctl", "disable", "--now", UNIT_NAME], check=False, timeout=60)
        report.append("ran       systemctl disable --now %s" % UNIT_NAME)
    if os.path.exists(unit):
        os.unlink(unit)
        report.append("removed   %s" % unit)
    if systemd_running(root):
        subprocess.run(["systemctl", "daemon-reload"], check=True, timeout=60)
    if purge:
        for d in ("etc/edgesight", "var/lib/edgesight", "var/cache/edgesight"):
            path = os.path.join(root, d)
            if os.path.isdir(path):
                shutil.rmtree(path)
                report.append("removed   %s" % path)
    else:
        report.append("kept      config, outbox and engine cache (use --purge to remove them)")
    return report
