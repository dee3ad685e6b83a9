"""``edgesight calibrate PKG --val DIR``: fit each artifact's temperature (and thresholds to a goal) on labelled
validation images of an existing package, report on --test; the same step ``edgesight convert`` ends with."""
import argparse
import json
from typing import Any, Dict, Optional

from .common import out, probability


def add_goal_flags(p: Any) -> None:
    p.add_argument("--test", help="labelled held-out images: confidence is reported on them, never fitted")
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--target-precision", type=probability, metavar="P",
                      help="fit per-class thresholds so that accepted results are right with precision >= P "
                      "(with probability --confidence, on images like --val)")
    goal.add_argument("--target-coverage", type=probability, metavar="C",
                      help="fit one threshold that accepts at least the share C of images")
    p.add_argument("--confidence", type=probability, default=0.9,
                   help="confidence of the precision bound (default 0.9)")


def goal_of(args: argparse.Namespace) -> Any:
    from ..converters.calibrate import Goal

    return Goal(args.target_precision, args.target_coverage, args.confidence).check()


def register(sub: Any) -> None:
    p = sub.add_parser("calibrate", help="fit temperatures and thresholds of a package on labelled images")
    p.add_argument("package", help="model package directory (edgesight.yaml)")
    p.add_argument("--val", required=True, help="labelled validation images (one sub-folder per class) to fit on")
    add_goal_flags(p)
    p.add_argument("--json", action="store_true", help="print the calibration report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..converters.calibrate import calibrate_package

    step = (lambda s: None) if args.quiet else (lambda s: sys.stderr.write("[calibrate] %s\n" % s))
    rep = calibrate_package(args.package, args.val, args.test, goal_of(args), step)
    if args.json:
        out(json.dumps(rep, indent=2))
    else:
        print_confidence(rep["confidence"])
        out("package %s: calibration written to edgesight.yaml (calibration.json, calibration.html)" % args.package)
    return 0


def print_confidence(section: Optional[Dict[str, Any]]) -> None:
    if not section:
        return
    if section.get("skipped"):
        out(section["skipped"])
        return
    out("confidence (goal: %s)" % (section.get("goal") or "temperature only"))
    for f, e in section["artifacts"].items():
        fit, test = e["fit"], e.get("test")
        line = "  %-26s T %.3f  val ECE %.4f -> %.4f" % (f, fit["temperature"], fit["ece_before"], fit["ece_after"])
        if test:
            s = test["selective"]
            line += "  test ECE %.4f -> %.4f, accepted %s precision %s coverage %s" % (
                test["ece_before"], test["ece_after"], s["accepted"], _pct(s["precision"]), _pct(s["coverage"]))
        out(line)
        if fit.get("unmet"):
            out("  %-26s goal not met for: %s (threshold 1.0: never accepted)" % ("", ", ".join(fit["unmet"])))


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else "%.1f%%" % (100.0 * v)
