"""Ed25519 signatures for what travels to devices: the pack manifest inside a packed package and the desired-model
message on ``model/desired`` (docs/rollout.md).

A signed document is a small JSON envelope around the exact bytes that were signed, so nothing depends on
re-serialising JSON the same way on both sides::

    {"kind": "edgesight.signed/1", "key": "<key id>", "sig": "<base64 Ed25519 signature>", "body": "<base64 JSON>"}

The key id is the first 16 hex digits of the sha256 of the raw 32-byte public key; a device trusts the public key
files its config lists. An unsigned envelope (``"sig": null``) is only accepted where the device allows unsigned
rollouts. Device-side (the agent verifies): Python 3.8-compatible; ``cryptography`` is imported when used.
"""
import base64
import binascii
import hashlib
import json
import os
from typing import Any, Dict, Iterable, Optional, Tuple

from ..errors import ConfigError, RolloutError, require_module

KIND = "edgesight.signed/1"
MAX_ENVELOPE = 256 << 10  # bytes: a desired message or pack manifest is a few KiB
MAX_KEY_FILE = 16 << 10


class SignatureError(RolloutError):
    """A signed document is malformed, unsigned, signed by an unknown key, or its signature does not verify."""


def _ed25519(what: str) -> Any:
    return require_module("cryptography.hazmat.primitives.asymmetric.ed25519", what, "agent", package="cryptography")


def _serialization() -> Any:
    return require_module("cryptography.hazmat.primitives.serialization", "Signing keys", "agent",
                          package="cryptography")


def key_id(public_key: Any) -> str:
    s = _serialization()
    raw = public_key.public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate(out_dir: str, name: str = "edgesight", force: bool = False) -> Tuple[str, str]:
    """A new key pair: ``<name>.key`` (PKCS#8 PEM, mode 0600: keep it off the devices) and ``<name>.pub``
    (SubjectPublicKeyInfo PEM: copy it to every device's ``models.trusted_keys``). Returns both paths."""
    ed = _ed25519("Generating a signing key")
    s = _serialization()
    os.makedirs(out_dir, exist_ok=True)
    priv_path, pub_path = os.path.join(out_dir, name + ".key"), os.path.join(out_dir, name + ".pub")
    for path in (priv_path, pub_path):
        if os.path.exists(path) and not force:
            raise ConfigError("already exists; a new key pair would orphan every device that trusts the old one. "
                              "Give another --out or --name (or --force).", file=path)
    key = ed.Ed25519PrivateKey.generate()
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))
    with open(pub_path, "wb") as f:
        f.write(key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))
    return priv_path, pub_path


def _read_key_file(path: str, field: str) -> bytes:
    try:
        size = os.path.getsize(path)
        if size > MAX_KEY_FILE:
            raise ConfigError("is %d bytes: not a PEM key file (at most %d)" % (size, MAX_KEY_FILE), file=path,
                              field=field)
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError("cannot read the key file: %s" % exc.strerror, file=path, field=field)


def load_private(path: str, field: str = "--key") -> Any:
    ed = _ed25519("Signing")
    s = _serialization()
    try:
        key = s.load_pem_private_key(_read_key_file(path, field), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError("not an unencrypted PEM private key (%s). Make one with `edgesight keys generate`."
                          % exc, file=path, field=field)
    if not isinstance(key, ed.Ed25519PrivateKey):
        raise ConfigError("is not an Ed25519 key; make one with `edgesight keys generate`.", file=path, field=field)
    return key


def load_public(path: str, field: str = "models.trusted_keys") -> Any:
    ed = _ed25519("Verifying a signed rollout")
    s = _serialization()
    try:
        key = s.load_pem_public_key(_read_key_file(path, field))
    except (ValueError, TypeError) as exc:
        raise ConfigError("not a PEM public key (%s): give the .pub file of `edgesight keys generate`." % exc,
                          file=path, field=field)
    if not isinstance(key, ed.Ed25519PublicKey):
        raise ConfigError("is not an Ed25519 public key.", file=path, field=field)
    return key


def trusted(paths: Iterable[str], field: str = "models.trusted_keys") -> Dict[str, Any]:
    """key id -> public key, for the files a device trusts."""
    out = {}
    for i, path in enumerate(paths):
        key = load_public(path, "%s[%d]" % (field, i))
        out[key_id(key)] = key
    return out


def sign(body: bytes, private_key: Optional[Any]) -> bytes:
    """The envelope of ``body`` signed with ``private_key`` (None: unsigned, for devices that allow it)."""
    env: Dict[str, Any] = {"kind": KIND, "key": None, "sig": None, "body": base64.b64encode(body).decode("ascii")}
    if private_key is not None:
        env["key"] = key_id(private_key.public_key())
        env["sig"] = base64.b64encode(private_key.sign(body)).decode("ascii")
    return json.dumps(env, separators=(",", ":")).encode("utf-8")


def open_envelope(data: bytes, keys: Dict[str, Any], allow_unsigned: bool = False) -> Tuple[bytes, Optional[str]]:
    """(the signed body bytes, the key id that signed them; None when unsigned and allowed) or SignatureError.
    Checks the envelope's shape and size first, then the signature, before anything reads the body."""
    if len(data) > MAX_ENVELOPE:
        raise SignatureError("the signed message is %d bytes (at most %d)" % (len(data), MAX_ENVELOPE))
    try:
        env = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SignatureError("not a signed edgesight message (not JSON: %s)" % str(exc)[:200])
    if not isinstance(env, dict) or env.get("kind") != KIND or not isinstance(env.get("body"), str):
        raise SignatureError("not a signed edgesight message (want kind %r and a body)" % KIND)
    try:
        body = base64.b64decode(env["body"].encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise SignatureError("the body is not base64")
    sig, kid = env.get("sig"), env.get("key")
    if sig is None:
        if allow_unsigned:
            return body, None
        raise SignatureError("the message is not signed and this device accepts signed rollouts only "
                             "(models.allow_unsigned is false)")
    if not isinstance(sig, str) or not isinstance(kid, str) or len(kid) > 64:
        raise SignatureError("the signature or key id is malformed")
    key = keys.get(kid)
    if key is None:
        raise SignatureError("signed by key %s, which this device does not trust (models.trusted_keys: %s)"
                             % (kid[:16], ", ".join(sorted(keys)) or "none configured"))
    try:
        key.verify(base64.b64decode(sig.encode("ascii"), validate=True), body)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise SignatureError("the signature is not base64")
    except Exception as exc:  # cryptography's InvalidSignature
        if type(exc).__name__ != "InvalidSignature":
            raise
        raise SignatureError("the signature does not verify with key %s: the message was altered or signed by "
                             "another key" % kid)
    return body, kid
