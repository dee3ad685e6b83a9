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
