"""``edgesight collect [run] DATASET`` and ``edgesight collect export``: the fleet side (host)."""
import argparse
import json
import logging
from typing import Any, List

from .common import add_broker_args, broker_password, non_negative, out, positive, stop_on_signals, usage


def register(sub: Any) -> None:
    p = sub.add_parser("collect", help="fleet: store every device's samples as a dataset; export it for labelling",
                       description="edgesight collect [run] DATASET [options] | edgesight collect export DATASET ...")
    csub = p.add_subparsers(dest="collect_command", metavar="run|export")
    c = csub.add_parser("run", help="subscribe and store samples (the default: `edgesight collect DATASET`)")
    c.add_argument("dataset", help="dataset folder (created when missing), or s3://BUCKET/PREFIX (docs/collect.md)")
    c.add_argument("--s3-endpoint", metavar="URL", help="S3-compatible endpoint (MinIO, Ceph RGW, Garage, R2); "
                   "default AWS. Credentials the AWS way: environment, AWS_PROFILE, instance role")
    add_broker_args(c)
    c.add_argument("--group", default="edgesight", help="shared-subscription group: collectors in one group split "
                   "the samples")
    c.add_argument("--no-share", action="store_true", help="plain subscription instead of a shared one (a single "
                   "collector; mosquitto 2.0 restores only plain subscriptions after a broker restart)")
    c.add_argument("--client-id", help="stable and unique per collector (default edgesight-collect-<host>-<group>)")
    c.add_argument("--session-expiry", type=positive, default=7 * 86400,
                   help="seconds the broker keeps this collector's session and queue (default 7 days)")
    c.add_argument("--reconnect-max", type=positive, default=10, help="longest wait between reconnection attempts, "
                   "seconds (backoff doubles from 1 s; default 10)")
    c.add_argument("--max-bytes", type=positive, default=1 << 20, help="larger payloads are rejected (default 1 MiB)")
    c.add_argument("--progress-interval", type=non_negative, default=5.0, help="seconds between progress lines")
    c.add_argument("--max-samples", type=positive, help="stop after storing this many")
    c.add_argument("--idle-exit", type=non_negative, help="stop after this many seconds without a message")
    c.add_argument("--quiet", action="store_true", help="no progress lines")
    c.add_argument("--json", action="store_true", help="print a JSON summary on exit")
    c.set_defaults(func=run_collect)
    c = csub.add_parser("export", help="Label Studio tasks or class folders from a collected dataset")
    c.add_argument("dataset", help="dataset folder or s3://BUCKET/PREFIX")
    c.add_argument("--s3-endpoint", metavar="URL", help="S3-compatible endpoint (default AWS)")
    c.add_argument("--format", choices=("labelstudio", "folder"), required=True)
    c.add_argument("--out", required=True, help="labelstudio: tasks JSON file; folder: output folder")
    c.add_argument("--image-root", help="labelstudio: URL prefix of the dataset's files (default: Label Studio "
                   "local files, /data/local-files/?d=<dataset folder name>/; for s3:// datasets s3://BUCKET/KEY, "
                   "which Label Studio's S3 source storage resolves)")
    c.add_argument("--labels", help="labelstudio: labels file (one per line) for the choices; default: the "
                   "labels seen in the dataset")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=run_export)
    p.set_defaults(func=lambda a: usage(p))


def default_to_run(argv: List[str]) -> List[str]:
    """``edgesight collect DATASET`` means ``edgesight collect run DATASET``."""
    i = next((k for k, a in enumerate(argv) if not a.startswith("-")), None)
    if i is not None and argv[i] == "collect" and i + 1 < len(argv) and argv[i + 1] not in (
            "run", "export", "-h", "--help"):
        return argv[:i + 1] + ["run"] + argv[i + 1:]
    return argv


def run_collect(args: argparse.Namespace) -> int:
    from ..fleet.collector import CollectOptions, Collector

    password = broker_password(args)
    if args.verbose == 0 and not args.quiet:
        logging.getLogger("edgesight").setLevel(logging.INFO)
    opts = CollectOptions(dataset=args.dataset, host=args.host, port=args.port, topic_prefix=args.topic_prefix,
                          group=args.group, share=not args.no_share, client_id=args.client_id,
                          username=args.username, password=password,
                          tls=args.tls, ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file,
                          session_expiry=args.session_expiry, max_bytes=args.max_bytes,
                          reconnect_max=args.reconnect_max,
                          progress_interval=args.progress_interval, max_samples=args.max_samples,
                          idle_exit=args.idle_exit, s3_endpoint=args.s3_endpoint)
    summary = Collector(opts).run(stop_on_signals())
    if args.json:
        out(json.dumps(summary, indent=1))
    else:
        out("stored %d, duplicates %d, rejected %d (dataset %s now holds %d samples)"
            % (summary["stored"], summary["duplicates"], summary["rejected"], summary["dataset"],
               summary["dataset_total"]))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..files import read_labels
    from ..fleet.export import export_folder, export_labelstudio

    if args.format == "labelstudio":
        labels = read_labels(args.labels, field="--labels") if args.labels else None
        summary = export_labelstudio(args.dataset, args.out, args.image_root, labels, s3_endpoint=args.s3_endpoint)
    else:
        summary = export_folder(args.dataset, args.out, s3_endpoint=args.s3_endpoint)
    if args.json:
        out(json.dumps(summary, indent=1))
    elif args.format == "labelstudio":
        out("%d Label Studio tasks -> %s (labelling interface: %s)" % (summary["tasks"], summary["out"],
                                                                      summary["label_config"]))
    else:
        out("%d images in %d class folders -> %s" % (summary["images"], len(summary["by_label"]), summary["out"]))
    return 0
