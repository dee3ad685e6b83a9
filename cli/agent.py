"""``edgesight agent``, ``edgesight doctor`` and ``edgesight service``: the device side. Python 3.8-compatible."""
import argparse
import json
import logging
import os
from typing import Any

from .common import non_negative, out, positive, stop_on_signals, usage


def register(sub: Any) -> None:
    p = sub.add_parser("agent", help="run the on-device service (camera -> model -> MQTT)")
    p.add_argument("--config", required=True, help="agent YAML (see docs/agent-config.md)")
    p.add_argument("--check-config", action="store_true", help="validate the config and exit")
    p.add_argument("--max-frames", type=positive, help="stop after this many processed frames (tests, demos)")
    p.add_argument("--duration", type=non_negative, help="stop after this many seconds (tests, demos)")
    p.add_argument("--drain-timeout", type=non_negative, default=10.0,
                   help="seconds to keep publishing the outbox after a stop (default 10)")
    p.set_defaults(func=run_agent)

    p = sub.add_parser("doctor", help="check that this device can run the agent (exit code = failed checks)")
    p.add_argument("--config", help="agent YAML: also checks the broker, outbox and package")
    p.add_argument("--package", help="package to load on every runtime (default: the config's, else the example)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_doctor)

    p = sub.add_parser("service", help="install the agent as a hardened systemd service")
    ssub = p.add_subparsers(dest="service_command", metavar="ACTION")
    s_ = ssub.add_parser("install", help="user, directories, unit, env file and config skeleton (idempotent)")
    s_.add_argument("--root", default="/", help="install into this staging tree instead of / (no user, no systemctl)")
    s_.add_argument("--user", default="edgesight")
    s_.add_argument("--executable", help="edgesight command for ExecStart (default: this venv's)")
    s_.add_argument("--device-id", help="device_id for the config skeleton (default: host name)")
    s_.add_argument("--no-enable", action="store_true", help="do not enable the unit")
    s_ = ssub.add_parser("uninstall", help="disable and remove the unit (config and state stay unless --purge)")
    s_.add_argument("--root", default="/")
    s_.add_argument("--purge", action="store_true")
    p.set_defaults(func=run_service, service_command=None, parser=p)


def run_agent(args: argparse.Namespace) -> int:
    from ..agent.config import load_config
    from ..agent.sdnotify import Notifier
    from ..agent.service import Agent

    cfg = load_config(args.config)
    if args.check_config:
        package = "package %s" % cfg.package if os.path.isdir(cfg.package) else \
            "package %s not there yet: thresholds.per_class not checked against its labels" % cfg.package
        regions = sum(len(c.regions) for c in cfg.cameras)
        out("%s: valid (device %s, %d camera(s)%s, %s, broker %s:%d)"
            % (args.config, cfg.device_id, len(cfg.cameras), ", %d region(s) of interest" % regions if regions else "",
               package, cfg.mqtt.host, cfg.mqtt.port))
        return 0
    if not args.verbose:
        logging.getLogger().setLevel(cfg.log_level.upper())
    stop = stop_on_signals()
    notifier = Notifier()
    try:
        return Agent(cfg, notifier, drain_timeout=args.drain_timeout).run(stop, max_frames=args.max_frames,
                                                                         duration=args.duration)
    finally:
        notifier.close()


def run_doctor(args: argparse.Namespace) -> int:
    from ..agent import doctor

    checks = doctor.run(config_path=args.config, package=args.package)
    failures = sum(1 for c in checks if c.status == "fail")
    if args.json:
        out(json.dumps({"checks": [c._asdict() for c in checks], "failures": failures}, indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            out("%-*s  %-4s  %s" % (width, c.name, c.status.upper(), c.detail))
            if c.fix and c.status in ("fail", "warn"):
                out("%-*s        fix: %s" % (width, "", c.fix))
        out("%d check(s), %d failed" % (len(checks), failures))
    return min(failures, 100)


def run_service(args: argparse.Namespace) -> int:
    from ..agent import install as inst

    if args.service_command == "install":
        report = inst.install(root=args.root, user=args.user, executable=args.executable, device_id=args.device_id,
                              enable=not args.no_enable)
    elif args.service_command == "uninstall":
        report = inst.uninstall(root=args.root, purge=args.purge)
    else:
        return usage(args.parser)
    for line in report:
        out(line)
    return 0
