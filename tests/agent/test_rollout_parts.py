"""The rollout's parts, each on its own and real: Ed25519 signatures, packing and the device's unpack, the
resumable download against a real HTTP server, the model pointer, and the pure shadow/health decisions."""
import json
import os
import tarfile
import threading

import pytest

from edgesight.agent.fetch import download
from edgesight.agent.modelstore import ModelStore, Version
from edgesight.agent.shadow import Baseline, Outcome, ShadowStats, health_verdict, shadow_due
from edgesight.contract.rollout import Desired, ModelRef, PackManifest, parse, read_pack
from edgesight.contract.signing import SignatureError, open_envelope, sign, trusted
from edgesight.errors import RolloutError
from edgesight.contract.pack import unpack

from support.rollout import FaultHandler, Keys, desired, evil_pack, fault_server, packed, serve_as, variant


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return Keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def v2(tmp_path_factory, keys):
    d = tmp_path_factory.mktemp("v2")
    return packed(variant(d / "pkg"), d / "v2.espkg", keys, counter=5)


def test_signature_verifies_and_any_change_is_refused(keys, tmp_path):
    ring = trusted([keys.pub])
    env = sign(b'{"a": 1}', keys.key)
    assert open_envelope(env, ring) == (b'{"a": 1}', list(ring)[0])
    doc = json.loads(env)
    doc["body"] = "eyJhIjogMn0="  # {"a": 2}
    with pytest.raises(SignatureError, match="does not verify"):
        open_envelope(json.dumps(doc).encode(), ring)
    other = Keys(tmp_path, "other")
    with pytest.raises(SignatureError, match="does not trust"):
        open_envelope(sign(b"{}", other.key), ring)
    with pytest.raises(SignatureError, match="not signed"):
        open_envelope(sign(b"{}", None), ring)
    assert open_envelope(sign(b"{}", None), ring, allow_unsigned=True) == (b"{}", None)
    for junk in (b"", b"\xff", b"[]", b'{"kind": "edgesight.signed/1", "body": "!!"}', b"{" * 100000):
        with pytest.raises(SignatureError):
            open_envelope(junk, ring)


def test_pack_lists_every_file_and_unpacks_exactly(v2, tmp_path):
    manifest, digest, size = read_pack(v2)
    assert isinstance(manifest, PackManifest) and manifest.counter == 5 and manifest.version == "2.0.0"
    assert sorted(f.path for f in manifest.files) == ["edgesight.yaml", "model.fp32.onnx", "model.fp32.tflite"]
    unpack(v2, str(tmp_path / "out"), manifest.files, 1 << 30)
    assert sorted(os.listdir(tmp_path / "out")) == ["edgesight.yaml", "model.fp32.onnx", "model.fp32.tflite"]


def test_unpack_refuses_escaping_linked_extra_and_altered_entries(v2, tmp_path):
    manifest = read_pack(v2)[0]
    with pytest.raises(RolloutError, match="escapes|not a plain"):
        unpack(evil_pack(v2, tmp_path / "evil.espkg"), str(tmp_path / "a"), manifest.files, 1 << 30)
    assert not os.path.exists(tmp_path / "evil.txt")
    link = tmp_path / "link.espkg"
    with tarfile.open(v2) as src, tarfile.open(str(link), "w") as dst:
        for m in src:
            dst.addfile(m, src.extractfile(m))
        info = tarfile.TarInfo("model.link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        dst.addfile(info)
    with pytest.raises(RolloutError, match="not a regular file"):
        unpack(str(link), str(tmp_path / "b"), manifest.files, 1 << 30)
    fewer = [f for f in manifest.files if f.path != "model.fp32.tflite"]
    with pytest.raises(RolloutError, match="not in the signed file list"):
        unpack(v2, str(tmp_path / "c"), fewer, 1 << 30)
    wrong = [f.model_copy(update={"sha256": "0" * 64}) if f.path == "model.fp32.onnx" else f for f in manifest.files]
    with pytest.raises(RolloutError, match="sha256"):
        unpack(v2, str(tmp_path / "d"), wrong, 1 << 30)
    with pytest.raises(RolloutError, match="more than"):
        unpack(v2, str(tmp_path / "e"), manifest.files, 1000)


def test_desired_message_fields_are_bounded(v2, keys):
    msg, _ = desired(v2, "http://127.0.0.1:1/x", "dev1", keys)
    body = json.loads(msg.model_dump_json())
    for change in ({"url": "file:///etc/passwd"}, {"counter": 0}, {"device": "a/b"},
                   {"files": [{"path": "../x", "sha256": "0" * 64, "size": 1}]}):
        with pytest.raises(SignatureError):
            parse(json.dumps(dict(body, **change)).encode(), Desired)


def test_download_resumes_with_range_and_checks_the_sha256(v2, tmp_path):
    server = fault_server(tmp_path / "www")
    try:
        _, digest, size = read_pack(v2)
        url = serve_as(server, v2, "v2.espkg")
        part = str(tmp_path / "dl.part")
        with open(v2, "rb") as f, open(part, "wb") as out:
            out.write(f.read(size // 3))  # an interrupted earlier try
        seen = []
        download(url, part, size, digest, 5, 2, 0.1, threading.Event(), seen.append)
        assert os.path.getsize(part) == size and seen and seen[-1] == 1.0
        assert min(seen) > 0.3  # it resumed: progress started at a third
        with pytest.raises(RolloutError, match="sha256"):
            os.unlink(part)
            download(url, part, size, "0" * 64, 5, 2, 0.1, threading.Event())
        assert not os.path.exists(part)  # a file that is not the signed one is not kept
    finally:
        server.stop()


def test_a_transfer_that_breaks_off_is_resumed_from_where_it_stopped(v2, tmp_path):
    server = fault_server(tmp_path / "www")
    try:
        _, digest, size = read_pack(v2)
        url = serve_as(server, v2, "flaky-v2.espkg")
        download(url, str(tmp_path / "dl"), size, digest, 5, 3, 0.1, threading.Event())
        assert FaultHandler.ranges[-2:] == [None, "bytes=%d-" % (size // 2)]
    finally:
        server.stop()


def test_download_gives_up_on_stalls_short_files_and_http_errors(v2, tmp_path):
    server = fault_server(tmp_path / "www")
    try:
        _, digest, size = read_pack(v2)
        stall = serve_as(server, v2, "stall-v2.espkg")
        with pytest.raises(RolloutError, match="after 2 tries"):
            download(stall, str(tmp_path / "a"), size, digest, 0.5, 2, 0.1, threading.Event())
        with open(v2, "rb") as f:
            (tmp_path / "www" / "short.espkg").write_bytes(f.read(size - 100))
        with pytest.raises(RolloutError, match="shorter than the signed"):
            download(server.url("short.espkg"), str(tmp_path / "b"), size, digest, 2, 3, 0.1, threading.Event())
        with pytest.raises(RolloutError, match="HTTP 404"):
            download(server.url("missing.espkg"), str(tmp_path / "c"), size, digest, 2, 3, 0.1, threading.Event())
        with pytest.raises(RolloutError, match="after 2 tries"):
            download("http://127.0.0.1:9/x", str(tmp_path / "d"), size, digest, 0.5, 2, 0.1, threading.Event())
    finally:
        server.stop()


def _store(tmp_path, crash_starts=3, keep=2):
    return ModelStore(str(tmp_path / "models"), Version(ModelRef(name="m", version="1", counter=0), "/factory"),
                      keep=keep, crash_starts=crash_starts)


def _version(store, counter):
    path = store.version_dir(counter)
    os.makedirs(path, exist_ok=True)
    return Version(ModelRef(name="m", version=str(counter), counter=counter), path)


def test_pointer_swaps_rolls_back_and_keeps_versions(tmp_path):
    store = _store(tmp_path)
    assert store.active.path == "/factory" and store.boot().probation is None
    store.activate(_version(store, 2), "id-2", 5.0)
    assert _store(tmp_path).active.ref.counter == 2  # on disk
    store.passed()
    store.activate(_version(store, 3), "id-3", 5.0)
    store.passed()
    store.activate(_version(store, 4), "id-4", 5.0)
    store.passed()
    assert sorted(os.listdir(store.versions_dir)) == ["3", "4"]  # keep 2: the active one and the one before
    back = store.rollback("broken")
    assert back.ref.counter == 3 and store.finished(4)["state"] == "rolled_back"
    assert _store(tmp_path).active.ref.counter == 3


def test_a_crash_loop_after_a_swap_comes_up_on_the_previous_model(tmp_path):
    store = _store(tmp_path, crash_starts=2)
    store.activate(_version(store, 7), "id-7", 30.0)
    boot = _store(tmp_path, crash_starts=2).boot()  # died once in the window
    assert boot.version.ref.counter == 7 and boot.probation == 30.0 and boot.note is None
    boot = _store(tmp_path, crash_starts=2).boot()  # twice
    assert boot.version.path == "/factory" and boot.note["state"] == "rolled_back"
    assert "crash loop" in boot.note["reason"] and boot.probation is None
    assert _store(tmp_path).finished(7)["state"] == "rolled_back"


def test_dying_during_a_rollout_abandons_it_after_crash_starts_but_a_clean_stop_does_not_count(tmp_path):
    ref = ModelRef(name="m", version="9", counter=9)
    store = _store(tmp_path, crash_starts=2)
    store.begin(ref, "id-9")
    store.paused()  # SIGTERM during the download
    assert _store(tmp_path, crash_starts=2).boot().note is None
    assert _store(tmp_path, crash_starts=2).boot().note is None  # one death
    boot = _store(tmp_path, crash_starts=2).boot()  # two: abandoned, remembered
    assert boot.note["state"] == "rejected" and "died 2 times" in boot.note["reason"]
    assert boot.version.path == "/factory" and _store(tmp_path).finished(9)["state"] == "rejected"


def test_an_unreadable_pointer_starts_on_the_configs_package(tmp_path):
    store = _store(tmp_path)
    store.activate(_version(store, 2), "id", 1.0)
    with open(store.path, "w") as f:
        f.write("{not json")
    assert _store(tmp_path).active.path == "/factory"


def test_shadow_agreement_is_by_label_and_the_share_bounds_its_time():
    s = ShadowStats(4)
    for cur, cand in (("a", "a"), ("b", "b"), ("a", "b"), ("c", "c")):
        s.add(Outcome(cur, 0.9, True), Outcome(cand, 0.5, False))
    assert s.done and s.agreement == 0.75 and s.numbers()["candidate_uncertain"] == 1.0
    assert shadow_due(0.05, 1.0, 0.1) and not shadow_due(0.2, 1.0, 0.1) and shadow_due(5.0, 1.0, 1.0)


def test_health_verdicts():
    args = dict(min_fps_ratio=0.5, max_uncertain_increase=0.3, window=10.0)
    assert health_verdict(4.0, 10, 0, 10.0, 0.1, **args)[0] == "failed"  # 2.5 fps after 10
    assert health_verdict(4.0, 40, 0, 10.0, 0.1, **args)[0] == "watching"
    verdict, reason = health_verdict(4.0, 40, 30, 10.0, 0.1, **args)
    assert verdict == "failed" and "uncertain" in reason
    assert health_verdict(10.0, 100, 5, 10.0, 0.1, **args)[0] == "passed"
    assert health_verdict(1.0, 0, 0, None, None, **args)[0] == "watching"
    # the camera was away for most of the window: the frame rate counts from its return only
    assert health_verdict(8.0, 10, 0, 10.0, 0.1, fps_span=(1.0, 10), **args)[0] == "watching"
    b = Baseline(window=30.0)
    for i in range(40):
        b.add(100.0 + i * 0.1, i % 4 != 0)
    assert abs(b.fps() - 10.0) < 0.01 and b.uncertain() == 0.25
