"""Fuzzing every parser that takes outside input (hypothesis, a bounded number of examples in CI): whatever the
bytes, a parser raises only the project's own error for that input, never anything else.

Inputs are generated two ways: raw bytes, and documents built from the schema's own keys with values of every
JSON/YAML type (so that they reach deep into validation), then optionally damaged byte-wise."""
import json
import os

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from edgesight.agent.config import load_config
from edgesight.calibration.preprocess import read_preprocess
from edgesight.contract.policy import parse_policy
from edgesight.errors import ConfigError, EdgesightError, PackageError
from edgesight.fleet.intake import Rejected, parse_sample
from edgesight.runtimes.manifest import read_manifest

from support import EXAMPLE_PACKAGE
from support.fleet import sample_payload

EXAMPLES = int(os.environ.get("EDGESIGHT_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("EDGESIGHT_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

KEYS = ["v", "id", "device", "camera", "ts", "model", "name", "version", "sha256", "reason", "label", "score",
        "threshold", "top_k", "result_id", "image", "format", "width", "height", "data", "enabled", "strategies",
        "type", "rate", "band", "max_margin", "classes", "min_per_day", "per_minute", "max_per_minute", "min_gap",
        "dedup", "max_bytes", "jpeg_quality", "package", "cameras", "source", "path", "fps", "mqtt", "host",
        "port", "topic_prefix", "tls", "ca_file", "thresholds", "per_class", "default", "runtime",
        "runtime_options", "threads", "outbox", "schema", "labels", "preprocess", "size", "resize", "color",
        "scale", "mean", "std", "layout", "artifacts", "file", "precision", "profile", "validation", "output",
        "low_confidence", "random", "letterbox", "nchw", "onnxruntime", "edgesight.package/1", "folder"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(KEYS),
                    st.text(max_size=40), st.sampled_from(["", "x" * 300, "2026-11-22T08:34:54.223Z", "../../etc",
                                                           "edge/#", "\x00", "1e999", "NaN", "-0"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=6), st.dictionaries(st.sampled_from(KEYS), inner, max_size=8)), max_leaves=40)
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=12)


def damage(data: bytes, cuts) -> bytes:
    for pos, byte in cuts:
        if data:
            i = pos % len(data)
            data = data[:i] + bytes([byte]) + data[i + 1:]
    return data


damages = st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), max_size=4)


def as_json(doc) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


def as_yaml(doc) -> bytes:
    return yaml.safe_dump(doc, allow_unicode=True).encode("utf-8")


@FUZZ
@given(st.one_of(st.binary(max_size=2000), st.builds(lambda d, c: damage(as_json(d), c), documents, damages)))
def test_sampling_policy_parser(payload):
    try:
        parse_policy(payload)
    except ConfigError:
        pass


_TOPIC, _GOOD = sample_payload(3)


@FUZZ
@given(st.one_of(st.binary(max_size=3000),
                 st.builds(lambda d, c: damage(as_json(dict(_GOOD, **d)), c), documents, damages)),
       st.sampled_from([_TOPIC, "edgesight/x/y/sample", "edgesight/dev1/front/result", "a", "/" * 10]))
def test_sample_payload_parser(payload, topic):
    try:
        parse_sample(topic, payload)
    except Rejected:
        pass


def _write(tmp_path_factory, data: bytes, name: str) -> str:
    path = str(tmp_path_factory.mktemp("fuzz") / name)
    with open(path, "wb") as f:
        f.write(data)
    return path


@FUZZ
@given(st.one_of(st.binary(max_size=2000),
                 st.builds(lambda d, c: damage(as_yaml(dict({"package": EXAMPLE_PACKAGE, "cameras": [
                     {"name": "a", "source": {"type": "folder", "path": "/tmp"}}]}, **d)), c), documents, damages)))
def test_agent_config_loader(tmp_path_factory, data):
    try:
        load_config(_write(tmp_path_factory, data, "agent.yaml"))
    except (ConfigError, PackageError):
        pass


with open(os.path.join(EXAMPLE_PACKAGE, "edgesight.yaml"), encoding="utf-8") as _f:
    _MANIFEST = yaml.safe_load(_f)


@FUZZ
@given(st.one_of(st.binary(max_size=2000),
                 st.builds(lambda d, c: damage(as_yaml(dict(_MANIFEST, **d)), c), documents, damages)))
def test_package_manifest_reader(tmp_path_factory, data):
    try:
        read_manifest(_write(tmp_path_factory, data, "edgesight.yaml"))
    except PackageError:
        pass


@FUZZ
@given(st.one_of(st.binary(max_size=1000),
                 st.builds(lambda d, c: damage(as_yaml(dict(_MANIFEST["preprocess"], **d)), c), documents, damages)))
def test_preprocess_spec_reader(tmp_path_factory, data):
    try:
        read_preprocess(_write(tmp_path_factory, data, "preprocess.yaml"))
    except ConfigError:
        pass


def test_the_fuzzers_reach_the_validators():
    """The structured inputs are not all rejected at the door: some parse, some fail on a field."""
    assert parse_policy(as_json({"min_gap": 1, "v": 1})).min_gap == 1
    with pytest.raises(ConfigError) as err:
        parse_policy(as_json({"strategies": [{"type": "random", "rate": "x"}]}))
    assert err.value.field == "strategies[0].rate"
    assert isinstance(Rejected("x"), Exception) and not isinstance(Rejected("x"), EdgesightError)
