"""Which Python the service will run, checked before `edgesight service install` writes a unit pointing at it.

JetPack 7 (Ubuntu 24.04) and Raspberry Pi OS trixie (Debian 13) mark the system Python externally managed (PEP 668):
pip refuses to install into it, so edgesight belongs in a venv, and the unit's ExecStart names that venv's
`edgesight`. On a Jetson, TensorRT's Python bindings are a system package (python3-libnvinfer, in
/usr/lib/python3*/dist-packages): a venv sees them only when made with --system-site-packages.
"""
import glob
import os
import sys
import sysconfig
from typing import NamedTuple, Optional

VENV = "/opt/edgesight/venv"


class PythonEnvironment(NamedTuple):
    in_venv: bool
    externally_managed: bool   # the base interpreter carries PEP 668's EXTERNALLY-MANAGED marker
    system_tensorrt: bool      # JetPack's TensorRT bindings are installed for the system Python
    sees_system_packages: bool  # the venv was made with --system-site-packages


def probe() -> PythonEnvironment:
    in_venv = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
    stdlib = sysconfig.get_paths(vars={"installed_base": sys.base_prefix, "base": sys.base_prefix})["stdlib"]
    sees = True
    if in_venv:
        sees = False
        try:
            with open(os.path.join(sys.prefix, "pyvenv.cfg")) as f:
                for line in f:
                    key, _, value = line.partition("=")
                    if key.strip() == "include-system-site-packages":
                        sees = value.strip().lower() == "true"
        except OSError:
            pass
    return PythonEnvironment(in_venv=in_venv,
                             externally_managed=os.path.isfile(os.path.join(stdlib, "EXTERNALLY-MANAGED")),
                             system_tensorrt=bool(glob.glob("/usr/lib/python3*/dist-packages/tensorrt*")),
                             sees_system_packages=sees)


def venv_command(system_site: bool) -> str:
    return ("sudo python3 -m venv %s%s && sudo %s/bin/pip install 'edgesight[agent,...]' && "
            "sudo %s/bin/edgesight service install" % ("--system-site-packages " if system_site else "", VENV, VENV,
                                                        VENV))


def problem(env: PythonEnvironment) -> Optional[str]:
    """Why the running Python must not be the one the service runs, with the command that fixes it; None when fine."""
    if not env.in_venv and env.externally_managed:
        return ("this Python is externally managed (PEP 668: JetPack 7, Raspberry Pi OS trixie, Ubuntu 24.04): "
                "install edgesight into a venv and run the service install from it: %s"
                % venv_command(env.system_tensorrt))
    if env.in_venv and env.system_tensorrt and not env.sees_system_packages:
        return ("TensorRT is installed for the system Python but this venv cannot see it, so the agent would fall "
                "back to ONNX Runtime on the CPU: recreate the venv with --system-site-packages: %s"
                % venv_command(True))
    return None
