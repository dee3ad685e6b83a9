"""What every subcommand module shares: output, argument types that reject bad values with the flag named, and the
stop event for long-running commands. Device-side: Python 3.8-compatible."""
import argparse
import logging
import math
import sys
import threading
from typing import Any

log = logging.getLogger("edgesight")


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0
    return str(n)


def usage(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return 2


def _number(kind: Any, text: str, lo: float, hi: float, what: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not %s" % (text, what))
    if isinstance(value, float) and not math.isfinite(value) or not lo <= value <= hi:
        raise argparse.ArgumentTypeError("%s must be %s in %s..%s" % (text, what, lo, hi))
    return value


def probability(text: str) -> float:
    return _number(float, text, 0.0, 1.0, "a number")


def port(text: str) -> int:
    return _number(int, text, 1, 65535, "a port number")


def positive(text: str) -> int:
    return _number(int, text, 1, 1 << 31, "a whole number")


def non_negative(text: str) -> float:
    return _number(float, text, 0.0, 1e12, "a number")


def add_broker_args(p: argparse.ArgumentParser) -> None:
    """The broker options of the fleet commands (collect, deploy): one spelling, one set of checks."""
    p.add_argument("--host", default="localhost")
    p.add_argument("--port", type=port, default=1883)
    p.add_argument("--topic-prefix", default="edgesight")
    p.add_argument("--username")
    p.add_argument("--password-file")
    p.add_argument("--password-env", help="name of an environment variable holding the password")
    p.add_argument("--tls", action="store_true", help="TLS with the system CA store")
    p.add_argument("--ca-file")
    p.add_argument("--cert-file", help="client certificate (mutual TLS)")
    p.add_argument("--key-file", help="the client certificate's key (mutual TLS)")


def broker_password(args: argparse.Namespace) -> Any:
    """Check the broker options; the password (from --password-file or --password-env) or None."""
    from ..contract.client import CLI_FIELDS, read_password
    from ..contract.topics import check_prefix
    from ..errors import ConfigError

    try:
        check_prefix(args.topic_prefix)
    except ValueError as exc:
        raise ConfigError(str(exc), field="--topic-prefix")
    password = read_password(args.password_file, args.password_env, CLI_FIELDS)
    if password is not None and not args.username:
        raise ConfigError("a password needs --username", field="--username")
    return password


def stop_on_signals() -> threading.Event:
    """A threading.Event that SIGTERM and SIGINT set: long-running commands finish their work in hand, exit 0."""
    import signal

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop
