"""The ``edgesight`` command. Subcommands: ``info``, ``package create``, ``classify`` (later issues add ``convert``,
``agent``, ``collect``, ``doctor``).

User errors (:class:`EdgesightError`) are printed as one paragraph without a traceback, with a non-zero exit code.
Device-side too (``edgesight agent`` runs here): keep it Python 3.8-compatible.
"""
import argparse
import json
import logging
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from . import __version__
from .errors import EdgesightError

log = logging.getLogger("edgesight")


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


# -- info ------------------------------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    from .runtimes.package import ModelPackage
    from .runtimes.registry import is_installed

    pkg = ModelPackage.load(args.package, verify_hashes=not args.no_verify)
    info = pkg.summary()
    checks = []
    for i, art in enumerate(pkg.manifest.artifacts):
        entry: Dict[str, Any] = {"artifact": art.file, "runtime": art.runtime}
        if not is_installed(art.runtime):
            entry.update(status="not checked", reason="%s runtime not installed here" % art.runtime)
        else:
            rt = pkg.open_runtime(artifact_index=i)
            try:
                entry.update(status="ok", inputs=[t.describe() for t in rt.inputs],
                             outputs=[t.describe() for t in rt.outputs])
            finally:
                rt.close()
        checks.append(entry)
    info["checks"] = checks
    info["hashes_verified"] = not args.no_verify
    if args.json:
        _out(json.dumps(info, indent=2))
        return 0
    m = pkg.manifest
    p = m.preprocess
    _out("package   %s %s  (%s)" % (m.name, m.version, info["path"]))
    _out("schema    %s; hashes %s" % (m.schema_, "verified" if not args.no_verify else "NOT verified"))
    _out("labels    %d: %s" % (len(m.labels), ", ".join(m.labels)))
    _out("source    %s  sha256 %s..." % (m.source.file, m.source.sha256[:12]))
    _out("preprocess size %dx%d (HxW), %s, %s, scale %.6g, mean %s, std %s, %s"
         % (p.height, p.width, p.resize, p.color, p.scale, list(p.mean), list(p.std), p.layout))
    _out("output    %s; threshold default %.2f%s" % (m.output, m.thresholds.default, "".join(
        ", %s %.2f" % kv for kv in sorted(m.thresholds.per_class.items()))))
    _out("artifacts")
    for art, size, chk in zip(m.artifacts, [a["size_bytes"] for a in info["artifacts"]], checks):
        extra = (" profile=%s" % art.profile if art.profile else "") + (
            " built_for=%s" % art.built_for if art.built_for else "")
        _out("  %-12s %-22s %-5s %9s  sha256 %s...%s" % (art.runtime, art.file, art.precision,
                                                        _human(size), art.sha256[:12], extra))
        if chk["status"] == "ok":
            _out("               in  %s" % "; ".join(chk["inputs"]))
            _out("               out %s" % "; ".join(chk["outputs"]))
        else:
            _out("               (%s: %s)" % (chk["status"], chk["reason"]))
    if m.validation:
        _out("validation %s" % json.dumps(m.validation))
    return 0


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0
    return str(n)


# -- package create --------------------------------------------------------------------------------------------
def cmd_package_create(args: argparse.Namespace) -> int:
    import os

    from .converters.package_builder import create_fp32_package, read_labels, read_preprocess
    from .runtimes.registry import is_installed

    labels = read_labels(args.labels)
    spec = read_preprocess(args.preprocess)
    name = args.name or os.path.splitext(os.path.basename(args.model))[0].replace(".fp32", "")
    pkg = create_fp32_package(args.model, labels, spec, args.out, name=name, version=args.version,
                              tflite_path=args.tflite, output=args.output, threshold=args.threshold,
                              overwrite=args.force)
    for i, art in enumerate(pkg.manifest.artifacts):  # prove every artifact we can run here fits the labels
        if is_installed(art.runtime):
            pkg.open_runtime(artifact_index=i).close()
    _out("wrote %s with %s" % (pkg.manifest_path, ", ".join(a.file for a in pkg.manifest.artifacts)))
    return 0


# -- classify --------------------------------------------------------------------------------------------------
def cmd_classify(args: argparse.Namespace) -> int:
    import os

    import numpy as np

    from .calibration.images import list_images, load_image
    from .calibration.preprocess import preprocess_batch
    from .runtimes.package import ModelPackage
    from .runtimes.postprocess import to_probabilities, top_k
    from .runtimes.registry import is_installed

    pkg = ModelPackage.load(args.package)
    items: List = []
    for path in args.images:
        items.extend(list_images(path) if os.path.isdir(path) else [(path, "")])
    if not items:
        raise EdgesightError("no images (jpg, png, bmp, webp) found in %s" % ", ".join(args.images))
    if args.runtime == "all":
        indices = [i for i, a in enumerate(pkg.manifest.artifacts) if is_installed(a.runtime)]
        if not indices:
            pkg.artifact_for("auto")  # raises the "install a runtime" error
    else:
        indices = [pkg.artifact_for(args.runtime)[0]]
    batch = preprocess_batch([load_image(p) for p, _ in items], pkg.preprocess)
    truth = [pkg.labels.index(lbl) if lbl in pkg.labels else None for _, lbl in items]
    results = []
    reference: Optional[np.ndarray] = None
    for idx in indices:
        art = pkg.manifest.artifacts[idx]
        config = {"threads": args.threads} if args.threads and art.runtime != "tensorrt" else None
        rt = pkg.open_runtime(artifact_index=idx, config=config)
        try:
            t0 = time.perf_counter()
            outs = [next(iter(rt.infer(batch[i:i + args.batch]).values())) for i in range(0, len(batch), args.batch)]
            elapsed = time.perf_counter() - t0
        finally:
            rt.close()
        probs = to_probabilities(np.concatenate(outs), pkg.manifest.output)
        top1 = probs.argmax(axis=1)
        labelled = [(t, p) for t, p in zip(truth, top1) if t is not None]
        res: Dict[str, Any] = {
            "runtime": art.runtime, "artifact": art.file, "precision": art.precision, "images": len(items),
            "ms_per_image": 1000.0 * elapsed / len(items),
            "accuracy": (sum(int(t == p) for t, p in labelled) / len(labelled)) if labelled else None,
            "labelled": len(labelled),
            "agreement_with_first": None if reference is None else float((top1 == reference).mean()),
            "predictions": [{"image": path, "top_k": [dict(p._asdict()) for p in top_k(pr, pkg.labels, args.top_k)]}
                            for (path, _), pr in zip(items, probs)],
        }
        if reference is None:
            reference = top1
        results.append(res)
    if args.json:
        _out(json.dumps({"package": pkg.manifest.name, "results": results}, indent=2))
        return 0
    if len(items) <= args.show:
        for res in results:
            for pred in res["predictions"]:
                best = pred["top_k"][0]
                _out("%-12s %s -> %s (%.3f)" % (res["runtime"], pred["image"], best["label"], best["score"]))
    _out("%-12s %-22s %-5s %7s %9s %10s %10s" % ("runtime", "artifact", "prec", "images", "top-1", "agreement",
                                                 "ms/image"))
    for res in results:
        acc = "-" if res["accuracy"] is None else "%.2f%%" % (100 * res["accuracy"])
        agr = "-" if res["agreement_with_first"] is None else "%.2f%%" % (100 * res["agreement_with_first"])
        _out("%-12s %-22s %-5s %7d %9s %10s %10.3f" % (res["runtime"], res["artifact"], res["precision"],
                                                      res["images"], acc, agr, res["ms_per_image"]))
    return 0


# -- entry point -----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edgesight", description="Image classifiers on Jetson and Raspberry Pi fleets.")
    ap.add_argument("--version", action="version", version="edgesight %s" % __version__)
    ap.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="validate a model package and summarise it")
    p.add_argument("package", help="package directory (holds edgesight.yaml)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-verify", action="store_true", help="skip sha256 verification of the model files")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("package", help="create model packages")
    psub = p.add_subparsers(dest="package_command", metavar="ACTION")
    c = psub.add_parser("create", help="package a plain FP32 ONNX classifier (+ optional FP32 TFLite)")
    c.add_argument("model", help="FP32 ONNX classifier")
    c.add_argument("--labels", required=True, help="text file, one class name per line in output order")
    c.add_argument("--preprocess", required=True, help="YAML preprocessing spec (see docs/package.md)")
    c.add_argument("--out", required=True, help="package directory to write")
    c.add_argument("--name", help="package name (default: model file name)")
    c.add_argument("--version", default="1.0.0", help="package version (default 1.0.0)")
    c.add_argument("--tflite", help="an FP32 TFLite of the same model, NHWC input")
    c.add_argument("--output", choices=("logits", "probabilities"), default="logits", help="what the model outputs")
    c.add_argument("--threshold", type=float, default=0.8, help="default confidence threshold (0..1)")
    c.add_argument("--force", action="store_true", help="replace an existing package")
    c.set_defaults(func=cmd_package_create)
    p.set_defaults(func=lambda a: _usage(p))

    p = sub.add_parser("classify", help="run a package on image files through one or every installed runtime")
    p.add_argument("package", help="package directory")
    p.add_argument("images", nargs="+", help="image files or folders (sub-folder names = true labels)")
    p.add_argument("--runtime", default="auto", help="onnxruntime | tflite | tensorrt | auto | all (default auto)")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--show", type=int, default=20, help="print per-image lines up to this many images")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_classify)
    return ap


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        ap.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except EdgesightError as exc:
        sys.stderr.write("edgesight: error: %s\n" % exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
