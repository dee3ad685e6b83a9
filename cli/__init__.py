"""The ``edgesight`` command: one thin module per subcommand group, each with ``register(subparsers)`` beside the
functions that run its commands; the work itself lives in the parts (runtimes, converters, agent, fleet).

User errors (:class:`EdgesightError`) are printed as one paragraph without a traceback and exit with the error's
code (docs/architecture.md): 2 config, 3 package or model file, 4 image, 5 missing optional package, 6 runtime,
7 a conversion target failed, 8 a validation gate failed, 9 broker unreachable, 10 a rollout was refused, rejected or rolled back; 1 is a bug (traceback logged),
130 an interrupt. Device-side too (``edgesight agent`` runs here): Python 3.8-compatible.
"""
import argparse
import logging
import sys
from typing import Optional, Sequence

from .. import __version__
from ..errors import EdgesightError
from . import agent, calibrate, collect, convert, deploy, engine, keys, package, toolchain

log = logging.getLogger("edgesight")

EXIT_OK, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 130
GROUPS = (package, convert, calibrate, engine, agent, collect, keys, deploy, toolchain)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edgesight", description="Image classifiers on Jetson and Raspberry Pi fleets.")
    ap.add_argument("--version", action="version", version="edgesight %s" % __version__)
    ap.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = build_parser()
    args = ap.parse_args(collect.default_to_run(list(sys.argv[1:] if argv is None else argv)))
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        ap.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or EXIT_OK)
    except EdgesightError as exc:
        sys.stderr.write("edgesight: error: %s\n" % exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception:  # a bug or an unexpected failure: show it, exit 1 so systemd restarts the service
        log.exception("edgesight %s failed", getattr(args, "command", ""))
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
