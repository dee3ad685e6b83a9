"""The collected dataset on disk: exactly once across reopen and writers, torn manifest lines."""
import json
import os


from edgesight.contract import payloads
from edgesight.fleet.intake import parse_sample
from edgesight.fleet.store import MANIFEST, Dataset, read_manifest

from support.fleet import sample_payload


def parsed(seed, **kw):
    topic, body = sample_payload(seed, **kw)
    return parse_sample(topic, payloads.encode(body))


def test_dataset_dedups_by_id_and_image_hash_across_reopen_and_writers(tmp_path):
    root = str(tmp_path / "ds")
    a = Dataset(root, collector="a")
    s1, s2 = parsed(1), parsed(2)
    assert a.add_batch([s1, s2, s1]) == (2, 1)  # the same message twice in one batch
    b = Dataset(root, collector="b")  # another collector on the same folder
    same_image_new_id = parsed(1)  # a replayed frame: new id, same JPEG
    assert b.add_batch([s2, same_image_new_id, parsed(3)]) == (1, 2)
    assert a.add_batch([parsed(3)]) == (0, 1)  # a sees what b appended (catch-up under the lock)
    a.close()
    b.close()
    c = Dataset(root)
    assert len(c) == 3 and c.add_batch([s1]) == (0, 1)
    recs = list(read_manifest(root))
    assert len(recs) == 3 and len({r["id"] for r in recs}) == 3
    for r in recs:
        assert os.path.isfile(os.path.join(root, r["file"])) and r["file"].startswith("three/")
        assert set(r) >= {"device", "camera", "model", "reason", "label", "score", "top_k", "captured", "received"}
    assert not [f for _, _, fs in os.walk(root) for f in fs if f.endswith(".tmp")]


def test_a_torn_manifest_line_is_cut_off(tmp_path):
    root = str(tmp_path / "ds")
    d = Dataset(root)
    d.add_batch([parsed(1)])
    d.close()
    with open(os.path.join(root, MANIFEST), "ab") as f:
        f.write(b'{"id": "half a li')  # a collector killed mid-append
    d = Dataset(root)
    assert len(d) == 1 and d.add_batch([parsed(2)]) == (1, 0)
    d.close()
    lines = open(os.path.join(root, MANIFEST), "rb").read().splitlines()
    assert len(lines) == 2 and all(json.loads(ln) for ln in lines)


def test_a_regions_sample_keeps_its_region_box_and_whole_frame(tmp_path):
    root = str(tmp_path / "ds")
    d = Dataset(root)
    region, whole = parsed(7, region="door"), parsed(8)
    assert d.add_batch([region, whole, region]) == (2, 1)
    d.close()
    recs = {r["id"]: r for r in read_manifest(root)}
    rec = recs[region.payload.id]
    assert rec["region"] == "door" and rec["box"] == [4, 3, 40, 30]
    assert rec["context_file"] == "_frames/%s.jpg" % region.payload.id
    with open(os.path.join(root, rec["context_file"]), "rb") as f:
        assert f.read() == region.context
    with open(os.path.join(root, rec["file"]), "rb") as f:
        assert f.read() == region.jpeg
    assert set(recs[whole.payload.id]).isdisjoint({"region", "box", "context_file"})  # as before
    assert os.listdir(os.path.join(root, "_frames")) == ["%s.jpg" % region.payload.id]  # the duplicate left none
