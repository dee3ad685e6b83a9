"""The bookkeeping of messages not committed yet (agent/staging.py), on its own: keys, the group's order, what the
publisher took, and the aliases that let an acknowledgement find the row of a message sent before its commit."""
from edgesight.agent import staging
from edgesight.agent.staging import Message, Staging


def msg(n):
    return Message("result", "t/r", b"%d" % n)


def test_keys_are_below_zero_and_a_group_is_taken_oldest_first_and_put_back_in_front():
    st = Staging()
    keys = [st.add(msg(n), at=float(n), wall=100.0 + n) for n in range(2)]
    assert all(k < 0 for k in keys) and len(set(keys)) == 2 and st.oldest() == 0.0 and len(st) == 2
    taken = st.take()
    later = st.add(msg(2), at=2.0, wall=102.0)  # staged while the commit ran
    st.put_back(taken)  # the commit failed
    assert [s.key for s in st.items] == keys + [later] and st.oldest() == 0.0
    assert [s.key for s in st.take()] == keys + [later] and len(st) == 0 and st.oldest() is None


def test_each_message_is_handed_once_and_only_a_handed_one_becomes_an_alias_of_its_row():
    st = Staging()
    keys = [st.add(msg(n), 0.0, 0.0) for n in range(3)]
    assert [s.key for s in st.hand(2)] == keys[:2] and [s.key for s in st.hand(5)] == keys[2:] and st.hand(5) == []
    st2 = Staging()
    k = [st2.add(msg(n), 0.0, 0.0) for n in range(3)]
    st2.hand(1)
    st2.committed(zip(st2.take(), [11, 12, None]))
    assert dict(st2.aliases) == {k[0]: 11} and st2.handed == set()  # the others were never sent under a key
    assert st2.rows_of({k[0], k[1], 7}) == {11, 7} and st2.row_of(k[0]) == 11 and st2.row_of(k[0], forget=True) == 11
    assert st2.row_of(k[0]) is None and st2.row_of(5) == 5


def test_an_acknowledged_message_leaves_the_group_and_aliases_stay_bounded(monkeypatch):
    st = Staging()
    keys = [st.add(msg(n), float(n), 0.0) for n in range(3)]
    st.hand(3)
    s = st.acknowledged(keys[0])
    assert s is not None and s.message.payload == b"0" and st.oldest() == 1.0 and keys[0] not in st.handed
    assert st.acknowledged(keys[0]) is None and st.is_staged(keys[1]) and not st.is_staged(keys[0])
    monkeypatch.setattr(staging, "ALIASES", 2)
    more = [st.add(msg(n), 9.0, 0.0) for n in range(3)]
    st.hand(10)
    st.committed(zip(st.take(), [1, 2, 3, 4, 5]))
    assert list(st.aliases) == more[1:]  # the oldest forgotten: its ack finds nothing, the row is sent again
