"""``edgesight deploy FILE ...`` and ``edgesight deploy status``: roll a packed package out to devices (host)."""
import argparse
import json
import logging
from typing import Any, Dict

from ..errors import ConfigError
from .common import add_broker_args, broker_password, non_negative, out, positive, probability


def register(sub: Any) -> None:
    p = sub.add_parser("deploy", help="fleet: roll a packed package out to devices (signed, shadow-tested, "
                       "health-checked); `deploy status` shows every device's model state",
                       description="edgesight deploy FILE --url URL (--device ID ... | --all-online) --key KEY "
                                   "[options]  |  edgesight deploy status [--json]")
    p.add_argument("file", help="packed package (edgesight package pack), or `status`")
    p.add_argument("--url", help="where devices download FILE (http:// or https://, e.g. edgesight package serve)")
    p.add_argument("--device", action="append", default=[], metavar="ID", help="a device id (repeat for several)")
    p.add_argument("--all-online", action="store_true", help="every device whose retained status is online")
    p.add_argument("--key", help="Ed25519 signing key (edgesight keys generate); devices verify it")
    p.add_argument("--unsigned", action="store_true", help="send unsigned (only devices with models.allow_unsigned)")
    p.add_argument("--shadow-frames", type=int, default=200, help="frames the candidate runs beside the current model "
                   "(default 200; 0: no shadow)")
    p.add_argument("--min-agreement", type=probability, default=0.9, help="top-1 agreement needed (default 0.9)")
    p.add_argument("--health-seconds", type=non_negative, default=60.0,
                   help="after the swap, a failure in this many seconds rolls back (default 60)")
    p.add_argument("--canary", type=int, default=0, metavar="K", help="the first K devices first; the rest only "
                   "after they are active and healthy")
    p.add_argument("--timeout", type=positive, default=900, help="seconds each wave may take (default 900)")
    p.add_argument("--no-wait", action="store_true", help="do not wait for the last wave to finish")
    p.add_argument("--json", action="store_true")
    add_broker_args(p)
    p.set_defaults(func=run_deploy)


def _broker(args: argparse.Namespace) -> Any:
    from ..fleet.deploy import Broker

    password = broker_password(args)
    return Broker(host=args.host, port=args.port, topic_prefix=args.topic_prefix, username=args.username,
                  password=password, tls=args.tls, ca_file=args.ca_file, cert_file=args.cert_file,
                  key_file=args.key_file)


def run_deploy(args: argparse.Namespace) -> int:
    if args.file == "status":
        return run_status(args)
    from ..contract.rollout import RolloutPolicy
    from ..contract.topics import check_level
    from ..fleet.deploy import DeployOptions, deploy

    if not args.url:
        raise ConfigError("is required: where the devices download the packed file", field="--url")
    if bool(args.key) == bool(args.unsigned):
        raise ConfigError("give the signing key (--key FILE) or, for devices that allow it, --unsigned",
                          field="--key")
    if not args.device and not args.all_online:
        raise ConfigError("give --device ID (repeatable) or --all-online", field="--device")
    for d in args.device:
        try:
            check_level(d, "--device")
        except ValueError as exc:
            raise ConfigError(str(exc), field="--device")
    if args.canary < 0 or args.shadow_frames < 0:
        raise ConfigError("must be >= 0", field="--canary" if args.canary < 0 else "--shadow-frames")
    try:
        policy = RolloutPolicy(shadow_frames=args.shadow_frames, min_agreement=args.min_agreement,
                               health_seconds=args.health_seconds)
    except ValueError as exc:
        raise ConfigError(str(exc), field="--shadow-frames")
    if not args.url.lower().startswith(("http://", "https://")) or len(args.url) > 4096:
        raise ConfigError("must be an http:// or https:// URL", field="--url")
    if args.verbose == 0:
        logging.getLogger("edgesight").setLevel(logging.INFO)
    opts = DeployOptions(pack=args.file, url=args.url, broker=_broker(args), devices=list(args.device),
                         all_online=args.all_online, key=args.key, policy=policy, canary=args.canary,
                         wait=not args.no_wait, timeout=float(args.timeout))
    report = deploy(opts)
    if args.json:
        out(json.dumps(report, indent=1))
    else:
        out("%s %s (counter %d):" % (report["package"], report["version"], report["counter"]))
        _table(report["devices"])
    return 0


def run_status(args: argparse.Namespace) -> int:
    from ..fleet.deploy import fleet_status

    rows = fleet_status(_broker(args))
    if args.json:
        out(json.dumps(rows, indent=1))
    elif not rows:
        out("no device has reported a model state")
    else:
        _table(rows)
    return 0


def _table(rows: Dict[str, Dict[str, Any]]) -> None:
    out("%-20s %-8s %-12s %-30s %-30s %-9s %s" % ("device", "status", "state", "active", "candidate", "health",
                                                   "reason"))
    for device, r in rows.items():
        out("%-20s %-8s %-12s %-30s %-30s %-9s %s" % (device, r.get("status") or "-", r.get("state") or "-",
                                                       r.get("active") or "-", r.get("candidate") or "-",
                                                       r.get("health") or "-", (r.get("reason") or "")[:200]))
