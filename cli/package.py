"""``edgesight info``, ``edgesight package create|pack|serve`` and ``edgesight classify``: look at, make, ship and
try a package. Device-side (``info`` and ``classify`` run on devices): Python 3.8-compatible."""
import argparse
import json
import os
from typing import Any, Dict, List, Optional

from ..errors import EdgesightError
from .common import human, non_negative, out, positive, probability, stop_on_signals, usage


def register(sub: Any) -> None:
    p = sub.add_parser("info", help="validate a model package and summarise it")
    p.add_argument("package", help="package directory (holds edgesight.yaml)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-verify", action="store_true", help="skip sha256 verification of the model files")
    p.set_defaults(func=run_info)

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
    c.add_argument("--threshold", type=probability, default=0.8, help="default confidence threshold (0..1)")
    c.add_argument("--force", action="store_true", help="replace an existing package")
    c.set_defaults(func=run_create)
    c = psub.add_parser("pack", help="one signed file of a package, for `edgesight deploy`")
    c.add_argument("package", help="package directory")
    c.add_argument("--out", required=True, help="file to write (e.g. digits-2.0.0.espkg)")
    c.add_argument("--key", help="Ed25519 signing key (edgesight keys generate)")
    c.add_argument("--unsigned", action="store_true", help="no signature (devices with models.allow_unsigned only)")
    c.add_argument("--counter", type=positive, help="rollout counter, above every earlier one (default: the Unix "
                   "time now); sign a higher counter to roll an older package out again")
    c.add_argument("--expires-days", type=non_negative, help="devices refuse it after this many days")
    c.set_defaults(func=run_pack)
    c = psub.add_parser("serve", help="serve packed packages over HTTP with Range requests (resumable downloads)")
    c.add_argument("folder", help="folder of packed packages")
    c.add_argument("--host", default="0.0.0.0", help="address to listen on (default all)")
    c.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: a free one)")
    c.set_defaults(func=run_serve)
    p.set_defaults(func=lambda a: usage(p))

    p = sub.add_parser("classify", help="run a package on image files through one or every installed runtime")
    p.add_argument("package", help="package directory")
    p.add_argument("images", nargs="+", help="image files or folders (sub-folder names = true labels)")
    p.add_argument("--runtime", default="auto", help="onnxruntime | tflite | tensorrt | auto | all (default auto)")
    p.add_argument("--top-k", type=positive, default=3)
    p.add_argument("--batch", type=positive, default=32)
    p.add_argument("--threads", type=positive, default=None)
    p.add_argument("--show", type=int, default=20, help="print per-image lines up to this many images")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_classify)


# -- info ------------------------------------------------------------------------------------------------------
def run_info(args: argparse.Namespace) -> int:
    from ..runtimes.package import ModelPackage
    from ..runtimes.registry import is_installed

    pkg = ModelPackage.load(args.package, verify_hashes=not args.no_verify)
    info = pkg.summary()
    checks = []
    for i, art in enumerate(pkg.manifest.artifacts):
        entry: Dict[str, Any] = {"artifact": art.file, "runtime": art.runtime}
        if not is_installed(art.runtime):
            entry.update(status="not checked", reason="%s runtime not installed here" % art.runtime)
        else:
            with pkg.open_runtime(artifact_index=i) as rt:
                entry.update(status="ok", inputs=[t.describe() for t in rt.inputs],
                             outputs=[t.describe() for t in rt.outputs])
        checks.append(entry)
    info["checks"] = checks
    info["hashes_verified"] = not args.no_verify
    if args.json:
        out(json.dumps(info, indent=2))
    else:
        _print_info(pkg, info, checks, verified=not args.no_verify)
    return 0


def _print_info(pkg: Any, info: Dict[str, Any], checks: List[Dict[str, Any]], verified: bool) -> None:
    m = pkg.manifest
    p = m.preprocess
    out("package   %s %s  (%s)" % (m.name, m.version, info["path"]))
    out("schema    %s; hashes %s" % (m.schema_, "verified" if verified else "NOT verified"))
    out("labels    %d: %s" % (len(m.labels), ", ".join(m.labels)))
    out("source    %s  sha256 %s..." % (m.source.file, m.source.sha256[:12]))
    out("preprocess size %dx%d (HxW), %s, %s, scale %.6g, mean %s, std %s, %s"
        % (p.height, p.width, p.resize, p.color, p.scale, list(p.mean), list(p.std), p.layout))
    out("output    %s; threshold default %.2f%s" % (m.output, m.thresholds.default, "".join(
        ", %s %.2f" % kv for kv in sorted(m.thresholds.per_class.items()))))
    out("artifacts")
    for art, size, chk in zip(m.artifacts, [a["size_bytes"] for a in info["artifacts"]], checks):
        extra = (" profile=%s" % art.profile if art.profile else "") + (
            " built_for=%s" % art.built_for if art.built_for else "")
        out("  %-12s %-22s %-5s %9s  sha256 %s...%s" % (art.runtime, art.file, art.precision, human(size),
                                                       art.sha256[:12], extra))
        if chk["status"] == "ok":
            out("               in  %s" % "; ".join(chk["inputs"]))
            out("               out %s" % "; ".join(chk["outputs"]))
        else:
            out("               (%s: %s)" % (chk["status"], chk["reason"]))
        cal = art.calibration
        if cal is not None:
            fitted = cal.thresholds
            out("               calibrated: temperature %.4f%s" % (cal.temperature, "; thresholds fitted (%s)%s" % (
                cal.goal or "-", "; never accepted: " + ", ".join((cal.fitted_on or {}).get("unmet") or [])
                if (cal.fitted_on or {}).get("unmet") else "") if fitted else ""))
    if m.validation:
        out("validation %s" % json.dumps(m.validation))


# -- package create --------------------------------------------------------------------------------------------
def run_create(args: argparse.Namespace) -> int:
    from ..calibration.preprocess import read_preprocess
    from ..converters.package_builder import create_fp32_package
    from ..files import read_labels
    from ..runtimes.registry import is_installed

    labels = read_labels(args.labels, field="--labels")
    spec = read_preprocess(args.preprocess)
    name = args.name or os.path.splitext(os.path.basename(args.model))[0].replace(".fp32", "")
    pkg = create_fp32_package(args.model, labels, spec, args.out, name=name, version=args.version,
                              tflite_path=args.tflite, output=args.output, threshold=args.threshold,
                              overwrite=args.force)
    for i, art in enumerate(pkg.manifest.artifacts):  # prove every artifact we can run here fits the labels
        if is_installed(art.runtime):
            pkg.open_runtime(artifact_index=i).close()
    out("wrote %s with %s" % (pkg.manifest_path, ", ".join(a.file for a in pkg.manifest.artifacts)))
    return 0


# -- package pack / serve -------------------------------------------------------------------------------------
def run_pack(args: argparse.Namespace) -> int:
    from ..contract.pack import pack
    from ..contract.signing import key_id, load_private
    from ..errors import ConfigError
    from ..runtimes.package import ModelPackage

    if bool(args.key) == bool(args.unsigned):
        raise ConfigError("give the signing key (--key FILE) or --unsigned", field="--key")
    key = load_private(args.key) if args.key else None
    pkg = ModelPackage.load(args.package)  # never ship a package that does not load as a device loads it
    m = pack(pkg.root, pkg.manifest.name, pkg.manifest.version, args.out, key, counter=args.counter,
             expires_days=args.expires_days)
    out("wrote %s: %s %s, counter %d, %d files, %s%s" % (
        args.out, m.name, m.version, m.counter, len(m.files), human(m.total_size()),
        ", signed by key %s" % key_id(key.public_key()) if key else ", UNSIGNED"))
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import threading

    from ..fleet.serve import PackServer

    server = PackServer(args.folder, args.host, args.port)
    out("serving %s on http://%s:%d/ (Range requests; Ctrl-C stops)" % (server.root, args.host, server.port))
    stop = stop_on_signals()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    while not stop.wait(0.5):
        pass
    server.stop()
    return 0


# -- classify --------------------------------------------------------------------------------------------------
def run_classify(args: argparse.Namespace) -> int:
    import numpy as np

    from ..calibration.images import list_images, load_image
    from ..calibration.preprocess import preprocess_batch, to_layout
    from ..runtimes.evaluate import accuracy, evaluate
    from ..runtimes.package import Choice, ModelPackage
    from ..runtimes.postprocess import accepted_rows, to_probabilities, top_k
    from ..runtimes.registry import is_installed

    pkg = ModelPackage.load(args.package)
    items: List = []
    for path in args.images:
        items.extend(list_images(path) if os.path.isdir(path) else [(path, "")])
    if not items:
        raise EdgesightError("no images (jpg, png, bmp, webp) found in %s" % ", ".join(args.images))
    if args.runtime == "all":
        choices = [Choice(i, a, a.runtime) for i, a in enumerate(pkg.manifest.artifacts) if is_installed(a.runtime)]
        if not choices:
            pkg.artifact_for("auto")  # raises the "install a runtime" error
    else:
        choices = [pkg.artifact_for(args.runtime)]
    batch = preprocess_batch([load_image(p) for p, _ in items], pkg.preprocess)
    truth = [pkg.labels.index(lbl) if lbl in pkg.labels else None for _, lbl in items]
    labelled = [i for i, t in enumerate(truth) if t is not None]
    results = []
    reference: Optional[np.ndarray] = None
    for choice in choices:
        config = {"threads": args.threads} if args.threads and choice.runtime != "tensorrt" else None
        with pkg.open_runtime(choice=choice, config=config, input_layout="native") as rt:
            ev = evaluate(rt, to_layout(batch, pkg.preprocess.layout, rt.input_layout), args.batch)
        art = choice.artifact
        cal = art.calibration
        probs = to_probabilities(ev.outputs, pkg.manifest.output, cal.temperature if cal else 1.0)
        top1 = probs.argmax(axis=1)
        ok = accepted_rows(probs, pkg.labels, *pkg.manifest.thresholds_for(cal))
        results.append({
            "runtime": choice.runtime, "artifact": art.file, "precision": art.precision, "images": len(items),
            "calibrated": cal is not None, "accepted": float(ok.mean()),
            "ms_per_image": 1000.0 * ev.seconds / len(items),
            "accuracy": accuracy(top1[labelled], np.array([truth[i] for i in labelled])) if labelled else None,
            "labelled": len(labelled),
            "agreement_with_first": None if reference is None else float((top1 == reference).mean()),
            "predictions": [{"image": path, "top_k": [dict(p._asdict()) for p in top_k(pr, pkg.labels, args.top_k)]}
                            for (path, _), pr in zip(items, probs)],
        })
        if reference is None:
            reference = top1
    if args.json:
        out(json.dumps({"package": pkg.manifest.name, "results": results}, indent=2))
    else:
        _print_classify(results, len(items) <= args.show)
    return 0


def _print_classify(results: List[Dict[str, Any]], per_image: bool) -> None:
    if per_image:
        for res in results:
            for pred in res["predictions"]:
                best = pred["top_k"][0]
                out("%-12s %s -> %s (%.3f)" % (res["runtime"], pred["image"], best["label"], best["score"]))
    out("%-12s %-22s %-5s %7s %9s %10s %10s %9s" % ("runtime", "artifact", "prec", "images", "top-1", "agreement",
                                                     "ms/image", "accepted"))
    for res in results:
        acc = "-" if res["accuracy"] is None else "%.2f%%" % (100 * res["accuracy"])
        agr = "-" if res["agreement_with_first"] is None else "%.2f%%" % (100 * res["agreement_with_first"])
        out("%-12s %-22s %-5s %7d %9s %10s %10.3f %8.1f%%%s" % (
            res["runtime"], res["artifact"], res["precision"], res["images"], acc, agr, res["ms_per_image"],
            100 * res["accepted"], "" if res["calibrated"] else " (not calibrated)"))
