"""The one small store interface the collector and the exporter use, and the choice between its two
implementations: a folder (``fleet/store.py``: a manifest under a file lock, one machine) and S3-compatible object
storage (``fleet/s3store.py``: content-addressed keys and conditional puts, any number of hosts). The collector does
not know which it has.

    store = open_store("s3://bucket/prefix", collector="c1", s3_endpoint="http://127.0.0.1:9000")
    stored, duplicates = store.add_batch(samples)   # durable when it returns: only then is the MQTT ack sent
    store.reject(topic, body, reason)               # filed under _rejected/
    for rec in store.records(): store.read_image(rec)
"""
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ..errors import EdgesightError
from .intake import Sample


class StoreUnavailable(EdgesightError):
    """The store could not be reached for longer than the collector retries (nothing was acknowledged: the broker
    sends the messages again after a restart)."""

    exit_code = 9


class Store(object):
    """What a store offers. ``root`` names it in messages and summaries; ``counts`` are samples per label."""

    root: str
    counts: Dict[str, int]

    def add_batch(self, samples: List[Sample]) -> Tuple[int, int]:
        """Store the new ones; (stored, duplicates). Durable when it returns; transient failures are retried
        inside, :class:`StoreUnavailable` when they last too long."""
        raise NotImplementedError

    def reject(self, topic: str, body: bytes, reason: str, keep_bytes: int = 1 << 20) -> str:
        raise NotImplementedError

    def records(self) -> Iterator[Dict[str, Any]]:
        """Every stored sample's record (the manifest line's fields)."""
        raise NotImplementedError

    def read_image(self, rec: Dict[str, Any]) -> Optional[bytes]:
        """The JPEG of a record (None when it is missing)."""
        raise NotImplementedError

    def image_url(self, rec: Dict[str, Any], image_root: Optional[str]) -> str:
        """Where a labelling tool finds the image: ``image_root`` + the record's file, or the store's own URL."""
        raise NotImplementedError

    def __len__(self) -> int:
        """Samples stored, as far as this store object knows (cheap: progress lines)."""
        raise NotImplementedError

    def total(self) -> int:
        """Samples stored now, by every writer (may ask the storage)."""
        return len(self)

    def close(self) -> None:
        pass


def is_s3(url: str) -> bool:
    return url.startswith("s3://")


def open_store(location: str, collector: str = "edgesight-collect", s3_endpoint: Optional[str] = None,
               create: bool = True) -> Store:
    """The store at ``location``: ``s3://BUCKET[/PREFIX]`` or a folder."""
    if is_s3(location):
        from .s3store import S3Store

        return S3Store(location, collector=collector, endpoint=s3_endpoint)
    from .store import Dataset

    return Dataset(location, collector=collector, create=create)
