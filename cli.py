"""The ``edgesight`` command. Subcommands: ``info``, ``package create``, ``classify`` (later issues add ``convert``,
``agent``, ``collect``, ``doctor``).

User errors (:class:`EdgesightError`) are printed as one paragraph without a traceback, with a non-zero exit code.
Device-side too (``edgesight agent`` runs here): keep it Python 3.8-compatible.
"""
import argparse
import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from . import __version__
from .errors import ConfigError, EdgesightError

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


# -- convert ---------------------------------------------------------------------------------------------------
def cmd_convert(args: argparse.Namespace) -> int:
    from .calibration.preprocess import PreprocessSpec
    from .converters.convert import TARGETS, ConvertOptions, Progress, convert, default_spec
    from .converters.onnx_model import read_interface
    from .converters.package_builder import read_labels, read_preprocess

    spec = read_preprocess(args.preprocess) if args.preprocess else None
    flags = {k: v for k, v in (("size", args.size), ("resize", args.resize), ("color", args.color),
                               ("scale", args.scale), ("mean", args.mean), ("std", args.std),
                               ("layout", args.layout)) if v is not None}
    if flags:
        base = spec.model_dump() if spec else {}
        if "size" not in base and "size" not in flags:
            base = default_spec(read_interface(args.model)).model_dump()
        try:
            spec = PreprocessSpec(**dict(base, **flags))
        except ValueError as exc:
            raise EdgesightError("invalid preprocessing flags: %s" % str(exc).replace("\n", " "))
    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else list(TARGETS)
    stem = os.path.splitext(os.path.basename(args.model))[0].replace(".fp32", "")
    opts = ConvertOptions(
        model=args.model, calib=args.calib, val=args.val, out=args.out or stem + "-package",
        labels=read_labels(args.labels) if args.labels else None, preprocess=spec, targets=targets,
        max_accuracy_drop=args.max_accuracy_drop, min_agreement=args.min_agreement, calib_count=args.calib_count,
        seed=args.seed, method=args.method, tflite_io=args.tflite_io, name=args.name, version=args.version,
        threshold=args.threshold, output=args.output, force=args.force)
    result = convert(opts, Progress(enabled=not args.quiet))
    rep = result.report
    if args.json:
        _out(json.dumps(dict(rep, exit_code=result.exit_code, package_dir=os.path.abspath(opts.out)), indent=2))
        return result.exit_code
    fp32 = rep["fp32"]
    _out("%-14s %-22s %9s %8s %8s %9s %8s %9s %6s  %s" % ("target", "file", "size", "x fp32", "top-1", "agreement",
                                                         "cosine", "latency", "x fp32", "gate"))
    rows = [dict(fp32, target="fp32 (source)", gate=None)] + rep["artifacts"]
    for a in rows:
        m = a.get("metrics", {})
        g = a.get("gate")
        _out("%-14s %-22s %9s %8s %8s %9s %8s %9s %6s  %s" % (
            a["target"], a["file"], _human(a["size_bytes"]), "%.2f" % (a["size_bytes"] / float(fp32["size_bytes"])),
            "-" if m.get("top1") is None else "%.2f%%" % (100 * m["top1"]),
            "-" if m.get("agreement") is None else "%.2f%%" % (100 * m["agreement"]),
            "-" if m.get("cosine_mean") is None else "%.4f" % m["cosine_mean"],
            "-" if a.get("latency_ms") is None else "%.3f ms" % a["latency_ms"],
            "-" if a.get("latency_ms") is None else "%.2f" % (a["latency_ms"] / fp32["latency_ms"]),
            "-" if g is None else ("passed" if g["passed"] else "FAILED: " + "; ".join(g["reasons"]))))
    for f in rep["failed"]:
        _out("%-14s FAILED: %s" % (f["target"], f["error"]))
    for note in rep["notes"]:
        _out(note)
    if rep["calibration"]["skipped"]:
        _out("skipped %d unreadable calibration image(s): %s" % (len(rep["calibration"]["skipped"]), ", ".join(
            os.path.basename(s["file"]) for s in rep["calibration"]["skipped"][:10])))
    _out("package %s (report.html, report.json) in %.1f s" % (opts.out, rep["seconds"]))
    if result.exit_code:
        sys.stderr.write("edgesight: error: %s\n" % ("a target failed (see above); the other artifacts were written"
                                                     if result.exit_code == 7 else
                                                     "the validation gate failed for at least one artifact; it is "
                                                     "marked failed in edgesight.yaml"))
    return result.exit_code


# -- engine --------------------------------------------------------------------------------------------------
def cmd_engine_build(args: argparse.Namespace) -> int:
    """Prebuild the TensorRT engine on one device and write it into the package (for a uniform fleet)."""
    from .converters.package_builder import write_manifest
    from .runtimes.package import Artifact, Manifest, ModelPackage, sha256_file
    from .runtimes.tensorrt_build import build_engine

    pkg = ModelPackage.load(args.package)
    dst = os.path.join(pkg.root, "model.int8.engine")
    if args.legacy_calib:
        built_for = _legacy_engine(pkg, dst, args)
        layout = pkg.preprocess.layout
    else:
        qdq = [(i, a) for i, a in enumerate(pkg.manifest.artifacts) if a.profile == "tensorrt-qdq"]
        if not qdq:
            raise EdgesightError("the package has no TensorRT-safe Q/DQ ONNX (profile tensorrt-qdq); convert it "
                                 "with `edgesight convert --targets onnx-int8-trt`", file=pkg.manifest_path)
        _, src = qdq[0]
        built_for = build_engine(pkg.path(src), dst, pkg.preprocess.input_shape()[1:], max_batch=args.max_batch,
                                 workspace_mb=args.workspace_mb)
        layout = src.layout
    engine = Artifact(runtime="tensorrt", file="model.int8.engine", precision="int8", sha256=sha256_file(dst),
                      layout=layout, built_for=built_for)
    arts = [a for a in pkg.manifest.artifacts if a.runtime != "tensorrt"] + [engine]
    data = pkg.manifest.to_yaml_dict()
    data["artifacts"] = [a.model_dump(mode="json", exclude_none=True) for a in arts]
    write_manifest(pkg.root, Manifest(**data))
    _out("wrote %s (built for %s); devices whose TensorRT/GPU differ rebuild their own" % (dst, built_for))
    return 0


# -- doctor ----------------------------------------------------------------------------------------------------
def cmd_doctor(args: argparse.Namespace) -> int:
    from .agent import doctor

    checks = doctor.run(config_path=args.config, package=args.package)
    failures = sum(1 for c in checks if c.status == "fail")
    if args.json:
        _out(json.dumps({"checks": [c._asdict() for c in checks], "failures": failures}, indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            _out("%-*s  %-4s  %s" % (width, c.name, c.status.upper(), c.detail))
            if c.fix and c.status in ("fail", "warn"):
                _out("%-*s        fix: %s" % (width, "", c.fix))
        _out("%d check(s), %d failed" % (len(checks), failures))
    return min(failures, 100)


# -- service ---------------------------------------------------------------------------------------------------
def cmd_service(args: argparse.Namespace) -> int:
    from .agent import install as inst

    if args.service_command == "install":
        report = inst.install(root=args.root, user=args.user, executable=args.executable, device_id=args.device_id,
                              enable=not args.no_enable)
    elif args.service_command == "uninstall":
        report = inst.uninstall(root=args.root, purge=args.purge)
    else:
        return _usage(args.parser)
    for line in report:
        _out(line)
    return 0


def _legacy_engine(pkg, dst: str, args: argparse.Namespace):
    """TensorRT <= 10 only: implicit INT8 from the FP32 source with an entropy calibrator fed by calibration images
    preprocessed with the package's spec, and a calibration cache beside the engine."""
    from .calibration.dataset import ImageFolder
    from .runtimes.cuda_adapter import cuda_adapter
    from .runtimes.tensorrt_backend import import_tensorrt
    from .runtimes.tensorrt_build import build_engine, make_entropy_calibrator

    trt = import_tensorrt()
    data = ImageFolder(args.legacy_calib).load(pkg.preprocess, args.calib_count)
    batch = args.calib_batch
    batches = (data.tensors[i:i + batch] for i in range(0, len(data.tensors) - batch + 1, batch))
    calibrator = make_entropy_calibrator(trt, cuda_adapter(), batches, dst + ".calib-cache", batch)
    return build_engine(pkg.path(pkg.manifest.source), dst, pkg.preprocess.input_shape()[1:],
                        max_batch=args.max_batch, workspace_mb=args.workspace_mb, calibrator=calibrator, trt=trt)


# -- toolchain -------------------------------------------------------------------------------------------------
def cmd_toolchain(args: argparse.Namespace) -> int:
    from .converters import toolchain

    if args.toolchain_command == "install":
        path = toolchain.install(args.name, python=args.python, upgrade=args.upgrade)
        _out("installed %s toolchain: %s" % (args.name, path))
        return 0
    status = {name: {"path": toolchain.venv_dir(name), "installed": toolchain.tool_path(name) is not None,
                     "versions": toolchain.versions(name)} for name in toolchain.TOOLCHAINS}
    if args.json:
        _out(json.dumps(status, indent=2))
    else:
        for name, st in status.items():
            _out("%-8s %-13s %s %s" % (name, "installed" if st["installed"] else "not installed", st["path"],
                                       " ".join("%s=%s" % kv for kv in sorted(st["versions"].items()))))
    return 0 if all(st["installed"] for st in status.values()) else 1


def _stop_on_signals() -> Any:
    """A threading.Event that SIGTERM and SIGINT set: long-running commands finish their work in hand, exit 0."""
    import signal
    import threading

    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


# -- agent -----------------------------------------------------------------------------------------------------
def cmd_agent(args: argparse.Namespace) -> int:
    from .agent.config import load_config
    from .agent.sdnotify import Notifier
    from .agent.service import Agent

    cfg = load_config(args.config)
    if args.check_config:
        _out("%s: valid (device %s, %d camera(s), package %s, broker %s:%d)"
             % (args.config, cfg.device_id, len(cfg.cameras), cfg.package, cfg.mqtt.host, cfg.mqtt.port))
        return 0
    if not args.verbose:
        logging.getLogger().setLevel(cfg.log_level.upper())
    stop = _stop_on_signals()
    notifier = Notifier()
    try:
        return Agent(cfg, notifier, drain_timeout=args.drain_timeout).run(stop, max_frames=args.max_frames,
                                                                         duration=args.duration)
    finally:
        notifier.close()


# -- collect (fleet) -------------------------------------------------------------------------------------------
def cmd_collect(args: argparse.Namespace) -> int:
    from .credentials import read_password
    from .fleet.collector import CollectOptions, Collector

    password = read_password(args.password_file, args.password_env, "--password-file", "--password-env")
    if (password is not None) and not args.username:
        raise ConfigError("a password needs --username", field="--username")
    if args.verbose == 0 and not args.quiet:
        logging.getLogger("edgesight").setLevel(logging.INFO)
    opts = CollectOptions(dataset=args.dataset, host=args.host, port=args.port, topic_prefix=args.topic_prefix,
                          group=args.group, share=not args.no_share, client_id=args.client_id,
                          username=args.username, password=password,
                          tls=args.tls, ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file,
                          session_expiry=args.session_expiry, max_bytes=args.max_bytes,
                          reconnect_max=args.reconnect_max,
                          progress_interval=args.progress_interval, max_samples=args.max_samples,
                          idle_exit=args.idle_exit)
    summary = Collector(opts).run(_stop_on_signals())
    if args.json:
        _out(json.dumps(summary, indent=1))
    else:
        _out("stored %d, duplicates %d, rejected %d (dataset %s now holds %d samples)"
             % (summary["stored"], summary["duplicates"], summary["rejected"], summary["dataset"],
                summary["dataset_total"]))
    return 0


def cmd_collect_export(args: argparse.Namespace) -> int:
    from .fleet.export import export_folder, export_labelstudio

    if args.format == "labelstudio":
        labels = None
        if args.labels:
            try:
                with open(args.labels, encoding="utf-8") as f:
                    labels = [ln.strip() for ln in f if ln.strip()]
            except OSError as exc:
                raise ConfigError("cannot read the labels file (%s)" % exc.strerror, file=args.labels,
                                  field="--labels")
        summary = export_labelstudio(args.dataset, args.out, args.image_root, labels)
    else:
        summary = export_folder(args.dataset, args.out)
    if args.json:
        _out(json.dumps(summary, indent=1))
    elif args.format == "labelstudio":
        _out("%d Label Studio tasks -> %s (labelling interface: %s)" % (summary["tasks"], summary["out"],
                                                                       summary["label_config"]))
    else:
        _out("%d images in %d class folders -> %s" % (summary["images"], len(summary["by_label"]), summary["out"]))
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

    p = sub.add_parser("convert", help="FP32 ONNX + calibration images -> validated INT8 model package")
    p.add_argument("model", help="FP32 ONNX image classifier (one 4-D image input)")
    p.add_argument("--calib", required=True, help="calibration images: flat folder or one sub-folder per class")
    p.add_argument("--val", help="validation images; sub-folders named after labels give accuracy")
    p.add_argument("--labels", help="text file, one class per line in output order (default: --val sub-folders)")
    p.add_argument("--preprocess", help="YAML preprocessing spec; the flags below override its fields")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--resize", choices=("letterbox", "center_crop", "stretch"))
    p.add_argument("--color", choices=("rgb", "bgr", "gray"))
    p.add_argument("--scale", type=float)
    p.add_argument("--mean", type=float, nargs="+")
    p.add_argument("--std", type=float, nargs="+")
    p.add_argument("--layout", choices=("nchw", "nhwc"))
    p.add_argument("--targets", help="comma-separated: onnx-int8-trt,onnx-int8-cpu,tflite-int8,tensorrt (default all)")
    p.add_argument("--out", help="package directory (default: MODEL-package)")
    p.add_argument("--max-accuracy-drop", type=float, default=1.0, help="gate: top-1 drop in points (default 1.0)")
    p.add_argument("--min-agreement", type=float, default=0.98, help="gate: top-1 agreement with FP32 (0.98)")
    p.add_argument("--calib-count", type=int, default=300, help="calibration images to sample (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax",
                   help="ONNX calibration method (default minmax, see docs/converting.md)")
    p.add_argument("--tflite-io", choices=("int8", "float"), default="float",
                   help="TFLite input/output type around the int8 body (default float: faster from Python)")
    p.add_argument("--name", help="package name (default: model file name)")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--threshold", type=float, default=0.8)
    p.add_argument("--output", choices=("logits", "probabilities"), default="logits")
    p.add_argument("--force", action="store_true", help="replace an existing package")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("engine", help="TensorRT engines (on a device with TensorRT)")
    esub = p.add_subparsers(dest="engine_command", metavar="ACTION")
    e = esub.add_parser("build", help="build the engine from the package's Q/DQ ONNX and add it to the package")
    e.add_argument("package")
    e.add_argument("--max-batch", type=int, default=8)
    e.add_argument("--workspace-mb", type=int, default=1024)
    e.add_argument("--legacy-calib", metavar="DIR", help="TensorRT <= 10 only: implicit INT8 from the FP32 source "
                   "with an entropy calibrator fed by these images (default: explicit Q/DQ)")
    e.add_argument("--calib-count", type=int, default=300)
    e.add_argument("--calib-batch", type=int, default=8)
    e.set_defaults(func=cmd_engine_build)
    p.set_defaults(func=lambda a: _usage(p))

    p = sub.add_parser("doctor", help="check that this device can run the agent (exit code = failed checks)")
    p.add_argument("--config", help="agent YAML: also checks the broker, outbox and package")
    p.add_argument("--package", help="package to load on every runtime (default: the config's, else the example)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)

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
    p.set_defaults(func=cmd_service, service_command=None, parser=p)

    p = sub.add_parser("toolchain", help="managed converter environments (onnx2tf for TFLite)")
    tsub = p.add_subparsers(dest="toolchain_command", metavar="ACTION")
    t = tsub.add_parser("install", help="create or complete a toolchain venv")
    t.add_argument("name", choices=("tflite",))
    t.add_argument("--python", help="interpreter for the venv (default: this one)")
    t.add_argument("--upgrade", action="store_true")
    t = tsub.add_parser("status", help="what is installed where")
    t.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_toolchain, toolchain_command="status", json=False)

    p = sub.add_parser("agent", help="run the on-device service (camera -> model -> MQTT)")
    p.add_argument("--config", required=True, help="agent YAML (see docs/agent-config.md)")
    p.add_argument("--check-config", action="store_true", help="validate the config and exit")
    p.add_argument("--max-frames", type=int, help="stop after this many processed frames (tests, demos)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (tests, demos)")
    p.add_argument("--drain-timeout", type=float, default=10.0,
                   help="seconds to keep publishing the outbox after a stop (default 10)")
    p.set_defaults(func=cmd_agent)

    p = sub.add_parser("collect", help="fleet: store every device's samples as a dataset; export it for labelling",
                       description="edgesight collect [run] DATASET [options] | edgesight collect export DATASET ...")
    csub = p.add_subparsers(dest="collect_command", metavar="run|export")
    c = csub.add_parser("run", help="subscribe and store samples (the default: `edgesight collect DATASET`)")
    c.add_argument("dataset", help="dataset folder (created when missing)")
    c.add_argument("--host", default="localhost")
    c.add_argument("--port", type=int, default=1883)
    c.add_argument("--topic-prefix", default="edgesight")
    c.add_argument("--group", default="edgesight", help="shared-subscription group: collectors in one group split "
                   "the samples")
    c.add_argument("--no-share", action="store_true", help="plain subscription instead of a shared one (a single "
                   "collector; mosquitto 2.0 restores only plain subscriptions after a broker restart)")
    c.add_argument("--client-id", help="stable and unique per collector (default edgesight-collect-<host>-<group>)")
    c.add_argument("--username")
    c.add_argument("--password-file")
    c.add_argument("--password-env", help="name of an environment variable holding the password")
    c.add_argument("--tls", action="store_true", help="TLS with the system CA store")
    c.add_argument("--ca-file")
    c.add_argument("--cert-file", help="client certificate (mutual TLS)")
    c.add_argument("--key-file")
    c.add_argument("--session-expiry", type=int, default=7 * 86400,
                   help="seconds the broker keeps this collector's session and queue (default 7 days)")
    c.add_argument("--reconnect-max", type=int, default=10, help="longest wait between reconnection attempts, "
                   "seconds (backoff doubles from 1 s; default 10)")
    c.add_argument("--max-bytes", type=int, default=1 << 20, help="larger payloads are rejected (default 1 MiB)")
    c.add_argument("--progress-interval", type=float, default=5.0, help="seconds between progress lines")
    c.add_argument("--max-samples", type=int, help="stop after storing this many")
    c.add_argument("--idle-exit", type=float, help="stop after this many seconds without a message")
    c.add_argument("--quiet", action="store_true", help="no progress lines")
    c.add_argument("--json", action="store_true", help="print a JSON summary on exit")
    c.set_defaults(func=cmd_collect)
    c = csub.add_parser("export", help="Label Studio tasks or class folders from a collected dataset")
    c.add_argument("dataset")
    c.add_argument("--format", choices=("labelstudio", "folder"), required=True)
    c.add_argument("--out", required=True, help="labelstudio: tasks JSON file; folder: output folder")
    c.add_argument("--image-root", help="labelstudio: URL prefix of the dataset's files (default: Label Studio "
                   "local files, /data/local-files/?d=<dataset folder name>/)")
    c.add_argument("--labels", help="labelstudio: labels file (one per line) for the choices; default: the "
                   "labels seen in the dataset")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_collect_export)
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
    argv = list(sys.argv[1:] if argv is None else argv)
    i = next((k for k, a in enumerate(argv) if not a.startswith("-")), None)
    if i is not None and argv[i] == "collect" and i + 1 < len(argv) and argv[i + 1] not in (
            "run", "export", "-h", "--help"):
        argv.insert(i + 1, "run")  # `edgesight collect DATASET` means `edgesight collect run DATASET`
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
    except Exception:  # a bug or an unexpected failure: show it, exit 1 so systemd restarts the service
        log.exception("edgesight %s failed", getattr(args, "command", ""))
        return 1


if __name__ == "__main__":
    sys.exit(main())
