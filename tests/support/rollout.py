"""Rollout test material: versions of the example package (renamed, labels permuted, failing on real frames, not
loadable here), packed and signed, an HTTP server with faults, and desired messages built and signed as
``edgesight deploy`` does."""
import hashlib
import io
import os
import shutil
import tarfile
import threading
import time

import yaml

from edgesight.contract.rollout import Archive, Desired, RolloutPolicy, read_pack
from edgesight.contract.signing import generate, load_private, sign
from edgesight.contract import payloads
from edgesight.fleet.serve import Handler, PackServer
from edgesight.runtimes.package import ModelPackage
from edgesight.contract.pack import pack

from . import EXAMPLE

PACKAGE = os.path.join(EXAMPLE, "package")


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def variant(dst, version="2.0.0", labels=None, name=None, edit=None):
    """A copy of the example package with another version (and labels, name); ``edit(dir, manifest)`` may change
    files and the manifest further (hashes are recomputed)."""
    shutil.copytree(PACKAGE, str(dst))
    path = os.path.join(str(dst), "edgesight.yaml")
    with open(path) as f:
        m = yaml.safe_load(f)
    m["version"] = version
    if name:
        m["name"] = name
    if labels:
        m["labels"] = labels
    if edit:
        edit(str(dst), m)
    m["source"]["sha256"] = sha(os.path.join(str(dst), m["source"]["file"]))
    for art in m["artifacts"]:
        art["sha256"] = sha(os.path.join(str(dst), art["file"]))
    with open(path, "w") as f:
        yaml.safe_dump(m, f, sort_keys=False)
    return str(dst)


def fails_on_frames(dst, m):
    """The example ONNX plus a Gather whose index is 1000 x the input's maximum: in range for an all-zero tensor,
    out of range (an onnxruntime error at inference) for any real frame."""
    import onnx
    from onnx import TensorProto, helper

    path = os.path.join(dst, "model.fp32.onnx")
    model = onnx.load(path)
    g = model.graph
    x, y = g.input[0].name, g.output[0].name
    g.output[0].name = y + "_inner"
    for node in g.node:
        node.output[:] = [y + "_inner" if o == y else o for o in node.output]
    g.initializer.extend([helper.make_tensor("k1000", TensorProto.FLOAT, [], [1000.0]),
                          helper.make_tensor("table", TensorProto.FLOAT, [1], [0.0])])
    g.node.extend([helper.make_node("ReduceMax", [x], ["mx"], keepdims=0),
                   helper.make_node("Mul", ["mx", "k1000"], ["big"]),
                   helper.make_node("Cast", ["big"], ["idx"], to=TensorProto.INT64),
                   helper.make_node("Gather", ["table", "idx"], ["zero"]),
                   helper.make_node("Add", [y + "_inner", "zero"], [y])])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    os.unlink(os.path.join(dst, "model.fp32.tflite"))
    m["artifacts"] = [a for a in m["artifacts"] if a["runtime"] == "onnxruntime"]


def engine_only(dst, m):
    """Only a TensorRT engine: nothing here can run it."""
    for f in ("model.fp32.tflite",):
        os.unlink(os.path.join(dst, f))
    with open(os.path.join(dst, "model.int8.engine"), "wb") as f:
        f.write(os.urandom(4096))
    m["artifacts"] = [{"runtime": "tensorrt", "file": "model.int8.engine", "precision": "int8", "sha256": "",
                       "built_for": {"tensorrt": "10.3", "device": "Orin", "compute": "8.7"}}]


class Keys(object):
    def __init__(self, folder, name="edgesight"):
        self.priv, self.pub = generate(str(folder), name)
        self.key = load_private(self.priv)


def packed(pkg_dir, out, keys, counter):
    m = ModelPackage.load(pkg_dir).manifest
    pack(pkg_dir, m.name, m.version, str(out), keys.key if keys else None, counter=counter)
    return str(out)


def desired(pack_file, url, device, keys, policy=None, **change):
    """The signed desired message ``edgesight deploy`` would publish; ``change`` alters signed fields first."""
    manifest, digest, size = read_pack(pack_file)
    fields = dict(id=payloads.new_id(), device=device, name=manifest.name, version=manifest.version,
                  counter=manifest.counter, files=manifest.files, created=payloads.iso(time.time()),
                  expires=manifest.expires, url=url, archive=Archive(sha256=digest, size=size),
                  rollout=policy or RolloutPolicy(shadow_frames=20, min_agreement=0.9, health_seconds=2))
    fields.update(change)
    msg = Desired(**fields)
    return msg, sign(msg.model_dump_json().encode("utf-8"), keys.key if keys else None)


def evil_pack(src_pack, out):
    """``src_pack`` with an extra entry ``../evil.txt``."""
    with tarfile.open(src_pack, "r:") as src, tarfile.open(str(out), "w", format=tarfile.PAX_FORMAT) as dst:
        for member in src:
            dst.addfile(member, src.extractfile(member))
        info = tarfile.TarInfo("../evil.txt")
        info.size = 4
        dst.addfile(info, io.BytesIO(b"evil"))
    return str(out)


class FaultHandler(Handler):
    """Files as the real server serves them, except: ``stall-*`` stops sending after half the body and holds the
    connection; ``slow-*`` sends 16 KiB every 0.1 s; ``flaky-*`` breaks the first transfer off at half the file.
    Every request path (and Range header) is recorded."""

    requests = []
    ranges = []
    lock = threading.Lock()

    def _serve(self, body):
        with self.lock:
            self.requests.append(self.path)
            self.ranges.append(self.headers.get("Range"))
        super()._serve(body)

    def _copy(self, f, n):
        name = os.path.basename(self.path)
        if name.startswith("flaky-") and self.ranges[-1] is None:
            self.wfile.write(f.read(n // 2))
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if name.startswith("stall-"):
            self.wfile.write(f.read(n // 2))
            self.wfile.flush()
            time.sleep(30)
            return
        if name.startswith("slow-"):
            left = n
            while left > 0:
                block = f.read(min(16384, left))
                if not block:
                    return
                self.wfile.write(block)
                self.wfile.flush()
                left -= len(block)
                time.sleep(0.1)
            return
        super()._copy(f, n)


def fault_server(folder):
    os.makedirs(str(folder), exist_ok=True)
    FaultHandler.requests = []
    FaultHandler.ranges = []
    return PackServer(str(folder), "127.0.0.1", 0, handler=FaultHandler).start()


def serve_as(server, pack_file, name):
    """Put ``pack_file`` in the server's folder under ``name``; its URL."""
    shutil.copyfile(pack_file, os.path.join(server.root, name))
    return server.url(name)
