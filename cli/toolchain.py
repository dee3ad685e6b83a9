"""``edgesight toolchain``: the managed converter environments (onnx2tf for TFLite; host side)."""
import argparse
import json
from typing import Any

from .common import out


def register(sub: Any) -> None:
    p = sub.add_parser("toolchain", help="managed converter environments (onnx2tf for TFLite)")
    tsub = p.add_subparsers(dest="toolchain_command", metavar="ACTION")
    t = tsub.add_parser("install", help="create or complete a toolchain venv")
    t.add_argument("name", choices=("tflite",))
    t.add_argument("--python", help="interpreter for the venv (default: this one)")
    t.add_argument("--upgrade", action="store_true")
    t = tsub.add_parser("status", help="what is installed where")
    t.add_argument("--json", action="store_true")
    p.set_defaults(func=run, toolchain_command="status", json=False)


def run(args: argparse.Namespace) -> int:
    from ..converters import toolchain

    if args.toolchain_command == "install":
        path = toolchain.install(args.name, python=args.python, upgrade=args.upgrade)
        out("installed %s toolchain: %s" % (args.name, path))
        return 0
    status = {name: {"path": toolchain.venv_dir(name), "installed": toolchain.tool_path(name) is not None,
                     "versions": toolchain.versions(name)} for name in toolchain.TOOLCHAINS}
    if args.json:
        out(json.dumps(status, indent=2))
    else:
        for name, st in status.items():
            out("%-8s %-13s %s %s" % (name, "installed" if st["installed"] else "not installed", st["path"],
                                      " ".join("%s=%s" % kv for kv in sorted(st["versions"].items()))))
    return 0 if all(st["installed"] for st in status.values()) else 1
