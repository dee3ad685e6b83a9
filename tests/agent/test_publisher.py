"""The publisher against a real mosquitto: acknowledged rows are deleted in groups (one delete per message cost the
agent more CPU than the rest of publishing it), none is left behind at a stop or sent twice, and it sleeps until a
commit (or, with a full in-flight window, an ack) wakes it instead of polling the outbox 20 times a second."""
import json
import signal
import time

import pytest

from edgesight.agent import mqtt as agent_mqtt
from edgesight.agent.config import MqttConfig
from edgesight.agent.mqtt import MqttLink, Publisher
from edgesight.agent.outbox import Outbox

from support import wait_until
from support.mqtt import Collector


@pytest.fixture
def parts(broker, tmp_path):
    outbox = Outbox(str(tmp_path / "outbox.db"))
    link = MqttLink(MqttConfig(host="127.0.0.1", port=broker.port), "pub1")
    pub = Publisher(link, outbox)
    outbox.on_put = pub.wake
    deletes = []
    real = outbox.ack_many
    outbox.ack_many = lambda ids: deletes.append(len(ids)) or real(ids)  # counts the transactions, still deletes
    link.start()
    assert link.connected.wait(10)
    yield outbox, link, pub, deletes
    pub.stop()
    link.stop()
    outbox.close()


def count_steps(pub):
    """The times of the publisher's looks at the outbox, from now on (each still runs)."""
    steps = []
    real = pub.step
    pub.step = lambda: steps.append(time.monotonic()) or real()
    return steps


def results(sub):
    with sub.lock:
        return [json.loads(p)["n"] for t, p, _ in sub.messages if t.endswith("/result")]


def test_acknowledged_rows_are_deleted_in_groups_and_each_message_goes_once(broker, parts):
    outbox, link, pub, deletes = parts
    sub = Collector(broker.port)
    time.sleep(0.5)
    pub.start()
    for n in range(100):  # a camera at 200 fps: each row is published and acknowledged before the next
        outbox.put("result", "edgesight/pub1/cam/result", json.dumps({"n": n}).encode(), captured=time.time())
        time.sleep(0.005)
    wait_until(lambda: outbox.depth() == 0 and len(results(sub)) >= 100, timeout=15.0)
    assert sorted(results(sub)) == list(range(100))
    assert sum(deletes) == 100 and len(deletes) <= 25, deletes  # one per message before
    assert len(pub.capture_to_ack_ms) == 100 and max(pub.capture_to_ack_ms) < 5000


def test_a_stop_deletes_what_was_acknowledged(broker, parts, monkeypatch):
    monkeypatch.setattr(agent_mqtt, "ACK_DELAY", 60.0)  # acknowledged rows wait for the stop
    outbox, link, pub, deletes = parts
    pub.start()
    for n in range(3):
        outbox.put("result", "edgesight/pub1/cam/result", json.dumps({"n": n}).encode())
    # all three acknowledged by the broker: collected by the publisher, or queued for its next look
    wait_until(lambda: pub.published == 3 and len(pub._acked) + link.acks.qsize() == 3, timeout=15.0)
    assert outbox.depth() == 3 and not deletes
    pub.stop()
    assert outbox.depth() == 0 and deletes == [3]  # not sent again at the next start


def test_a_committed_row_wakes_the_publisher(broker, parts, monkeypatch):
    """With an idle poll of a minute, only the outbox's wake-up can publish the row in time."""
    monkeypatch.setattr(agent_mqtt, "IDLE_POLL", 60.0)
    outbox, link, pub, deletes = parts
    sub = Collector(broker.port)
    time.sleep(0.5)
    pub.start()
    time.sleep(0.3)  # asleep
    outbox.put("result", "edgesight/pub1/cam/result", b'{"n": 7}')
    wait_until(lambda: results(sub) == [7], timeout=10.0)
    wait_until(lambda: outbox.depth() == 0, timeout=10.0)  # the ack collected at the next look, then deleted


def test_an_idle_publisher_sleeps(broker, parts):
    outbox, link, pub, deletes = parts
    steps = count_steps(pub)
    pub.start()
    time.sleep(2.5)
    assert len(steps) <= 5, len(steps)  # 50 with the 50 ms poll it had


def test_acks_wake_the_publisher_only_while_its_window_is_full(broker, parts, monkeypatch):
    """An ack per message used to wake the publisher once more per message; with room in the window the acks wait
    for its next look (a commit, or ACK_DELAY later), and only a full window, which cannot publish until an ack
    frees a place, or a refusal wakes it."""
    monkeypatch.setattr(agent_mqtt, "IDLE_POLL", 60.0)
    outbox, link, pub, deletes = parts
    steps = count_steps(pub)
    pub.start()
    time.sleep(0.3)
    n0 = len(steps)
    outbox.put("result", "edgesight/pub1/cam/result", b'{"n": 1}')
    wait_until(lambda: outbox.depth() == 0, timeout=10.0)  # collected at the ACK_DELAY look, then deleted
    assert not link.wake_on_ack and len(steps) - n0 <= 4, steps  # the commit, the ack look, the delete
    link.wake_on_ack = False
    link.kick.clear()
    link._on_publish(None, None, 12345, None, None)  # a success with room in the window: no wake-up
    assert not link.kick.is_set()

    class Refused(object):
        is_failure = True

    link._on_publish(None, None, 12346, Refused(), None)  # a refusal is recorded at once
    assert link.kick.is_set()
    monkeypatch.setattr(agent_mqtt, "ACK_DELAY", 60.0)  # from here only a wake-up makes the publisher look again
    pub.max_inflight = 1  # a window of one: the second row waits for the first one's ack, which must wake it
    outbox.stage("result", "edgesight/pub1/cam/result", b'{"n": 2}')
    outbox.put("result", "edgesight/pub1/cam/result", b'{"n": 3}')
    wait_until(lambda: pub.published == 3, timeout=10.0)


def test_staged_results_go_out_before_their_commit_and_the_ones_acknowledged_in_time_are_never_written(broker,
                                                                                                        parts):
    """Below the maximum rate with the broker there, a result's commit (a transaction and an fsync) was the agent's
    largest cost after the inference; now a staged result is sent at once, and its acknowledgement, which wakes the
    publisher, takes it out of the group before the group's commit is due."""
    outbox, link, pub, deletes = parts
    sub = Collector(broker.port)
    time.sleep(0.5)
    inserts = []
    real = outbox._insert
    outbox._insert = lambda cur, m: inserts.append(m.payload) or real(cur, m)
    pub.start()
    for n in range(30):  # a camera at 100 fps
        outbox.stage("result", "edgesight/pub1/cam/result", json.dumps({"n": n}).encode(), captured=time.time())
        outbox.offer()
        wait_until(lambda: outbox.staged == 0, timeout=5.0)  # acknowledged well within GROUP_DELAY
        time.sleep(0.01)
    wait_until(lambda: len(results(sub)) >= 30, timeout=10.0)
    assert sorted(results(sub)) == list(range(30)) and inserts == [] and outbox.depth() == 0
    wait_until(lambda: sum(deletes) == 30, timeout=5.0)  # the sent counts, written in groups
    assert outbox.counters()["sent_result"] == 30 and outbox.committed == {"result": 30}
    assert len(deletes) <= 10 and len(pub.capture_to_ack_ms) == 30
    # with the broker frozen, nothing is acknowledged: the group is committed, and the acks that come after delete
    # the rows under the keys they were sent with, without a second send
    broker.proc.send_signal(signal.SIGSTOP)
    try:
        for n in range(30, 35):
            outbox.stage("result", "edgesight/pub1/cam/result", json.dumps({"n": n}).encode())
            outbox.offer()
        wait_until(lambda: pub.published == 35, timeout=5.0)
        assert outbox.flush() and outbox.depth() == 5 and len(inserts) == 5
        pub.wake()
        time.sleep(0.3)
        assert pub.published == 35  # in flight under their keys: not sent again from the rows
    finally:
        broker.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: outbox.depth() == 0 and len(results(sub)) >= 35, timeout=10.0)
    assert sorted(results(sub)) == list(range(35)) and pub.published == 35
    assert outbox.counters()["sent_result"] == 35
    sub.close()
