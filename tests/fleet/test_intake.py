"""The sample payload as the collector checks it (pure): a corpus of bad payloads, each refused with its
reason."""
import pytest

from edgesight.contract import payloads
from edgesight.fleet.intake import Rejected, parse_sample

from support.fleet import bad_corpus, sample_payload


@pytest.mark.parametrize("name, body, reason", bad_corpus(), ids=[c[0] for c in bad_corpus()])
def test_bad_payloads_are_rejected_with_a_reason(name, body, reason):
    with pytest.raises(Rejected) as exc:
        parse_sample("edgesight/dev1/front/sample", body, max_bytes=1 << 20)
    assert reason in exc.value.reason


def test_a_good_payload_parses():
    topic, body = sample_payload(2)
    s = parse_sample(topic, payloads.encode(body))
    assert s.payload.label == "three" and s.jpeg.startswith(b"\xff\xd8") and s.payload.top_k[1].label == "eight"


def test_a_regions_sample_parses_on_its_regions_topic_with_its_whole_frame():
    topic, body = sample_payload(2, region="door")
    assert topic == "edgesight/dev1/front/door/sample"
    s = parse_sample(topic, payloads.encode(body), prefix="edgesight")
    assert s.payload.region == "door" and s.payload.box == [4, 3, 40, 30] and s.context.startswith(b"\xff\xd8")
    for wrong in ("edgesight/dev1/front/sample", "edgesight/dev1/front/gate/sample",
                  "x/edgesight/dev1/front/door/sample"):
        with pytest.raises(Rejected, match="does not match the payload's device 'dev1', camera 'front' and region"):
            parse_sample(wrong, payloads.encode(body), prefix="edgesight")
    body["context"]["data"] = body["image"]["data"][:8]
    with pytest.raises(Rejected, match="context.data does not open"):
        parse_sample(topic, payloads.encode(body))
