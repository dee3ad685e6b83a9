"""``edgesight keys generate``: the Ed25519 key pair that signs packs and desired-model messages (host)."""
import argparse
from typing import Any

from .common import out, usage


def register(sub: Any) -> None:
    p = sub.add_parser("keys", help="signing keys for model rollouts")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION")
    g = ksub.add_parser("generate", help="a new Ed25519 key pair: NAME.key (keep it secret) and NAME.pub (devices)")
    g.add_argument("--out", required=True, help="folder to write the key pair to")
    g.add_argument("--name", default="edgesight", help="file name stem (default edgesight)")
    g.add_argument("--force", action="store_true", help="replace an existing pair")
    g.set_defaults(func=run_generate)
    p.set_defaults(func=lambda a: usage(p))


def run_generate(args: argparse.Namespace) -> int:
    from ..contract.signing import generate, key_id, load_public

    priv, pub = generate(args.out, args.name, force=args.force)
    out("private key %s (mode 0600: keep it on the workstation, never on a device)" % priv)
    out("public key  %s (key id %s: list it in every device's models.trusted_keys)" % (
        pub, key_id(load_public(pub, "--out"))))
    return 0
