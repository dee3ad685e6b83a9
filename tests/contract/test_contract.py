"""The MQTT contract: docs/mqtt.md says what the models say, the producer's payloads pass the consumer's checks,
every field is bounded, topics are checked before anything is committed."""
import json
import math
import os
import time

import pytest
from pydantic import ValidationError

from edgesight.contract import doc, payloads, topics
from edgesight.contract.client import ClientSettings, check_tls, read_password
from edgesight.errors import ConfigError

from support import ROOT

MODEL = {"name": "digits-cnn", "version": "1.0.0", "sha256": "0123456789ab", "artifact": "m.onnx",
         "runtime": "onnxruntime"}


def test_docs_mqtt_md_has_the_tables_the_models_generate():
    with open(os.path.join(ROOT, "docs", "mqtt.md"), encoding="utf-8") as f:
        text = f.read()
    assert doc.section() in text, "docs/mqtt.md is out of date: run python -m edgesight.contract.doc --write " \
                                  "docs/mqtt.md"
    for model in payloads.PAYLOADS:  # every field of every payload is documented, nested ones included
        for path, _, _ in doc.rows(model):
            assert "| `%s` |" % path in text, path


def test_the_generated_section_is_replaced_in_place():
    stale = "intro\n%s\nold table\n%s\noutro\n" % (doc.BEGIN, doc.END)
    fresh = doc.replace_section(stale)
    assert fresh.startswith("intro\n") and fresh.endswith("\noutro\n") and "old table" not in fresh
    assert doc.replace_section(fresh) == fresh


def test_what_the_agent_builds_is_what_the_collector_accepts():
    now = time.time()
    built = [payloads.status("online", "dev1"),
             payloads.result("dev1", "front", MODEL, "eight", 0.97, True, 0.8, [{"label": "eight", "score": 0.97}],
                             now, 1.5, 3.0, 7),
             payloads.state("dev1", "front", "eight", 0.97, now),
             payloads.sample("dev1", "front", MODEL, "low_confidence", "eight", 0.4, 0.8,
                             [{"label": "eight", "score": 0.4}], now, b"\xff\xd8jpeg", 8, 8, None),
             payloads.policy_status("dev1", "applied", "config", {"enabled": True})]
    for body in built:
        data = json.loads(payloads.encode(body))
        again = type(body).model_validate(data)
        assert again == body and data["v"] == 1 and len(data["id"]) == 36


@pytest.mark.parametrize("field, value", [
    ("ts", "2026-11-22T08:34:54." + "9" * 300 + "Z"),  # once made a file name over 255 bytes
    ("label", "x" * 201),
    ("device", "../etc"),
    ("camera", "a/b"),
    ("score", 1.5),
    ("threshold", float("nan")),
    ("top_k", [{"label": "a", "score": 0.1}] * 21),
    ("reason", ""),
    ("id", "short"),
])
def test_every_sample_field_is_bounded(field, value):
    good = payloads.sample("dev1", "front", MODEL, "low_confidence", "eight", 0.4, 0.8, [], time.time(),
                           b"\xff\xd8jpeg", 8, 8).model_dump(mode="json")
    with pytest.raises(ValidationError) as err:
        payloads.Sample.model_validate(dict(good, **{field: value}))
    assert err.value.errors()[0]["loc"][0] == field


def test_producer_typos_raise_instead_of_being_dropped():
    with pytest.raises(TypeError, match="no field"):
        payloads.build(payloads.State, device="dev1", camera="front", label="a", score=0.5, ts="x", lable="a")


def test_nan_is_never_encoded():
    with pytest.raises(ValueError):
        payloads.encode({"threshold": math.nan})


@pytest.mark.parametrize("level, ok", [("front", True), ("cam-2_b.x", True), ("", False), ("a+b", False),
                                       ("a#", False), ("a/b", False), ("a\x00b", False)])
def test_topic_levels(level, ok):
    if ok:
        assert topics.check_level(level) == level
    else:
        with pytest.raises(ValueError):
            topics.check_level(level)


@pytest.mark.parametrize("prefix, ok", [("edgesight", True), ("site-3/edgesight", True), ("edge/#", False),
                                        ("edge/+/x", False), ("/edge", False), ("edge/", False), ("a//b", False),
                                        ("$SYS", False), ("", False)])
def test_topic_prefixes(prefix, ok):
    if ok:
        assert topics.check_prefix(prefix) == prefix
    else:
        with pytest.raises(ValueError):
            topics.check_prefix(prefix)


def test_sample_topics_name_device_camera_and_region():
    assert topics.sample_subscriptions("edgesight") == ["edgesight/+/+/sample", "edgesight/+/+/+/sample"]
    assert topics.is_sample_topic_of("site/edgesight/dev1/front/sample", "dev1", "front")
    assert topics.is_sample_topic_of("site/edgesight/dev1/front/door/sample", "dev1", "front", "door")
    assert topics.is_sample_topic_of("site/edgesight/dev1/front/sample", "dev1", "front", prefix="site/edgesight")
    for topic, device, camera, region, prefix in (
            ("edgesight/dev1/front/result", "dev1", "front", None, None),  # not a sample topic
            ("edgesight/dev1/front/door/sample", "dev1", "front", None, None),  # a region's, not the camera's
            ("edgesight/dev1/front/sample", "dev1", "front", "door", None),
            ("edgesight/x/dev1/front/sample", "dev1", "front", None, "edgesight"),  # device x, camera dev1, ...
            ("other/dev1/front/sample", "dev1", "front", None, "edgesight")):
        assert not topics.is_sample_topic_of(topic, device, camera, region, prefix), topic


def test_tls_files_that_are_not_pem_are_config_errors_naming_the_option(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_bytes(b"this is not a certificate\n")
    with pytest.raises(ConfigError) as err:
        check_tls(str(bad), None, None)
    assert err.value.field == "mqtt.tls.ca_file" and "PEM" in str(err.value)
    with pytest.raises(ConfigError) as err:
        check_tls(None, str(bad), str(bad))
    assert err.value.field == "mqtt.tls.cert_file"


@pytest.mark.parametrize("content, needle", [(b"\xff\xfe\x00pw", "not UTF-8"), (b"", "no password"),
                                             (b"a" * 5000, "larger than")])
def test_bad_password_files(tmp_path, content, needle):
    p = tmp_path / "pw"
    p.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        read_password(str(p), None)
    assert needle in str(err.value) and err.value.field == "mqtt.password_file"
    with pytest.raises(ConfigError, match="directory"):
        read_password(str(tmp_path), None)
    p.write_bytes(b"s3cret\nsecond line\n")
    assert read_password(str(p), None) == "s3cret"


def test_client_settings_default_to_the_agent_field_names():
    s = ClientSettings("localhost", 1883, "c")
    assert s.fields["ca_file"] == "mqtt.tls.ca_file" and not s.manual_ack
