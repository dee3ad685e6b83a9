"""The outbox's messages that are not committed yet: each waits at most ``GROUP_DELAY`` (or until ``GROUP_ROWS``
wait) for a commit it shares with others, and meanwhile the publisher may send it from memory. One the broker
acknowledges before its commit is never written at all: below the maximum frame rate, with the broker there, a
result costs no transaction and no fsync (one per result was the agent's largest cost after the inference).

A staged message has a key below zero until it is committed; a committed one is known by its row id, and the key of
one that was sent before its commit is kept as an alias of its row (bounded), so that its acknowledgement deletes
the row and the publisher does not send it a second time. Pure bookkeeping: the outbox calls it under its lock.
"""
from collections import OrderedDict
from typing import Iterable, List, NamedTuple, Optional, Set, Tuple

GROUP_ROWS = 16  # group commit: at most this many staged messages wait for one commit ...
GROUP_DELAY = 0.05  # s: ... and none waits longer (commit_due)
ALIASES = 4096  # keys of sent-then-committed messages remembered for their acknowledgement


class Message(NamedTuple):
    """A message to commit."""
    kind: str
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    captured: Optional[float] = None


class Staged(NamedTuple):
    key: int  # below zero: not a row id
    message: Message
    at: float  # time.monotonic() when staged
    wall: float  # time.time() when staged


def commit_due(staged: int, waited: float, next_frame: float) -> bool:
    """Group commit's rule, after a frame: commit what is staged once ``GROUP_ROWS`` messages wait, or when the
    oldest (``waited`` s) would pass ``GROUP_DELAY`` during the next frame (``next_frame`` s, the last one's time).
    Messages the broker acknowledged have left the group by then, so with the broker there a group is mostly empty;
    with the broker away results are committed in groups at any frame rate."""
    return staged > 0 and (staged >= GROUP_ROWS or waited + next_frame >= GROUP_DELAY)


class Staging(object):
    def __init__(self) -> None:
        self.items: List[Staged] = []
        self.handed: Set[int] = set()  # keys the publisher took before their commit
        self.aliases: "OrderedDict[int, int]" = OrderedDict()  # key of a sent-then-committed message -> row id
        self._next = -1

    def __len__(self) -> int:
        return len(self.items)

    def add(self, message: Message, at: float, wall: float) -> int:
        key, self._next = self._next, self._next - 1
        self.items.append(Staged(key, message, at, wall))
        return key

    def oldest(self) -> Optional[float]:
        return self.items[0].at if self.items else None

    def take(self) -> List[Staged]:
        """Remove and return every message, oldest first (a commit takes the whole group)."""
        taken, self.items = self.items, []
        return taken

    def put_back(self, taken: List[Staged]) -> None:
        """A commit failed: its messages wait again, in front."""
        self.items = taken + self.items

    def hand(self, limit: int) -> List[Staged]:
        """Up to ``limit`` messages the publisher has not taken yet, oldest first; now counted as taken."""
        out = [s for s in self.items if s.key not in self.handed][:max(0, limit)]
        self.handed.update(s.key for s in out)
        return out

    def committed(self, pairs: Iterable[Tuple[Staged, Optional[int]]]) -> None:
        """(staged, row id or None) of a commit: a message the publisher took becomes an alias of its row."""
        for s, row_id in pairs:
            if s.key in self.handed:
                self.handed.discard(s.key)
                if row_id is not None:
                    self.aliases[s.key] = row_id
        while len(self.aliases) > ALIASES:  # acknowledgements lost with a connection: sent again from the rows
            self.aliases.popitem(last=False)

    def acknowledged(self, key: int) -> Optional[Staged]:
        """The broker has the message of ``key``: removed from the group (it needs no commit) and returned; None when
        it is not staged (committed meanwhile, see :meth:`row_of`)."""
        for n, s in enumerate(self.items):
            if s.key == key:
                del self.items[n]
                self.handed.discard(key)
                return s
        return None

    def row_of(self, key: int, forget: bool = False) -> Optional[int]:
        """The row id of ``key``: itself for a row id, the alias of a sent-then-committed message, else None."""
        if key >= 0:
            return key
        return self.aliases.pop(key, None) if forget else self.aliases.get(key)

    def is_staged(self, key: int) -> bool:
        return any(s.key == key for s in self.items)

    def rows_of(self, keys: Iterable[int]) -> Set[int]:
        """Row ids of ``keys`` where they have one (exclusions for the outbox's reads)."""
        out = (self.row_of(k) for k in keys)
        return {r for r in out if r is not None}
