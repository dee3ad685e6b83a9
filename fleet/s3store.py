"""The S3 store: collectors on any number of hosts write one dataset into S3-compatible object storage, exactly
once and without a lock (docs/collect.md).

    s3://BUCKET/PREFIX/images/<sha256[:2]>/<sha256>.jpg   the JPEG, content-addressed (same bytes, same key)
    s3://BUCKET/PREFIX/samples/<sha256>.json              its record (the manifest line of the folder store)
    s3://BUCKET/PREFIX/frames/<sha256[:2]>/<sha256>.jpg   a region sample's whole frame, when the device sent one
    s3://BUCKET/PREFIX/_rejected/<time>_<id>.json         payloads that were not stored, with the reason

A sample is stored when its record exists. The image is put first, then the record with a conditional put
(``If-None-Match: *``): of two collectors (or one that was killed and got the message again) exactly one creates
the record, and the other's 412 Precondition Failed means "already stored", a duplicate, which is success. Records
are keyed by the JPEG's sha256, so a redelivered message and a byte-identical image from another message are the
same sample, as in the folder store. The put returns once S3 has the object durably, and only then does the
collector acknowledge the MQTT message.

Transient failures (connection refused or reset, timeouts, HTTP 5xx, throttling) are retried with capped
exponential backoff for up to ``retry_for`` seconds, then :class:`StoreUnavailable` stops the collector without
acknowledging anything it has not stored. Credentials come the standard AWS way (environment, shared profile,
instance role); only the endpoint can be given on the command line. boto3 is imported here (``edgesight[s3]``).
"""
import base64
import hashlib
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from ..contract.payloads import iso
from ..errors import ConfigError, require_module
from .intake import Sample, manifest_record
from .stores import Store, StoreUnavailable

log = logging.getLogger(__name__)
TRANSIENT_CODES = {"RequestTimeout", "RequestTimeTooSkewed", "SlowDown", "Throttling", "ThrottlingException",
                   "InternalError", "ServiceUnavailable", "503", "500", "502", "504"}


def parse_url(url: str) -> Tuple[str, str]:
    """(bucket, prefix without slashes at the ends) of ``s3://bucket/prefix``."""
    rest = url[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if not bucket or not all(c.isalnum() or c in ".-" for c in bucket) or not 3 <= len(bucket) <= 63:
        raise ConfigError("is not s3://BUCKET[/PREFIX] with a valid bucket name", field="dataset", file=url)
    return bucket, prefix.strip("/")


class S3Store(Store):
    def __init__(self, url: str, collector: str = "edgesight-collect", endpoint: Optional[str] = None,
                 retry_for: float = 300.0, backoff_max: float = 10.0, workers: int = 16) -> None:
        boto3 = require_module("boto3", "The S3 store (s3:// datasets)", "s3")
        botocore_config = require_module("botocore.config", "The S3 store (s3:// datasets)", "s3")
        self.exceptions = require_module("botocore.exceptions", "The S3 store (s3:// datasets)", "s3")
        self.bucket, self.prefix = parse_url(url)
        self.root = url.rstrip("/")
        self.collector = collector
        self.retry_for, self.backoff_max = retry_for, backoff_max
        cfg = botocore_config.Config(connect_timeout=5, read_timeout=15, max_pool_connections=workers,
                                     retries={"max_attempts": 2, "mode": "standard"})
        self.s3 = boto3.session.Session().client("s3", endpoint_url=endpoint, config=cfg)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s3")
        self.counts: Dict[str, int] = {}
        self._known = 0
        self._retrying(lambda: self.s3.head_bucket(Bucket=self.bucket), "open the bucket", limit=30.0)
        self._known = sum(1 for _ in self._keys("samples/"))

    # -- keys and retries ------------------------------------------------------------------------------------
    def key(self, rel: str) -> str:
        return "%s/%s" % (self.prefix, rel) if self.prefix else rel

    def _transient(self, exc: BaseException) -> bool:
        e = self.exceptions
        if isinstance(exc, (e.EndpointConnectionError, e.ConnectionClosedError, e.ConnectTimeoutError,
                            e.ReadTimeoutError)):
            return True
        if isinstance(exc, e.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return code in TRANSIENT_CODES or status >= 500
        return isinstance(exc, (e.BotoCoreError, ConnectionError, TimeoutError)) and not isinstance(
            exc, e.NoCredentialsError)

    def _retrying(self, op: Callable[[], Any], what: str, limit: Optional[float] = None) -> Any:
        """``op()`` until it succeeds, retrying transient failures with capped backoff for ``retry_for`` s (at
        start, ``limit``: a wrong endpoint should not take minutes to say so)."""
        limit = self.retry_for if limit is None else limit
        end = time.monotonic() + limit
        attempt = 0
        while True:
            try:
                return op()
            except Exception as exc:
                if not self._transient(exc):
                    self._fatal(exc, what)
                if time.monotonic() >= end:
                    raise StoreUnavailable("cannot %s in %s for %.0f s (last: %s); nothing unstored was "
                                           "acknowledged" % (what, self.root, limit, exc))
                wait = min(self.backoff_max, 0.25 * 2 ** attempt)
                attempt += 1
                log.warning("S3: cannot %s (%s); again in %.1f s", what, str(exc)[:200], wait)
                time.sleep(wait)

    def _fatal(self, exc: BaseException, what: str) -> None:
        e = self.exceptions
        if isinstance(exc, e.NoCredentialsError):
            raise ConfigError("no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an "
                              "instance role (never on the command line)", file=self.root)
        if isinstance(exc, e.ClientError):
            err = exc.response.get("Error", {})
            raise ConfigError("cannot %s: %s %s" % (what, err.get("Code"), err.get("Message", "")), file=self.root)
        raise exc

    def _keys(self, rel: str) -> Iterator[str]:
        token = None
        while True:
            kwargs: Dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.key(rel)}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._retrying(lambda: self.s3.list_objects_v2(**kwargs), "list %s" % rel)
            for obj in page.get("Contents", []):
                yield obj["Key"]
            token = page.get("NextContinuationToken")
            if not token:
                return

    # -- storing ---------------------------------------------------------------------------------------------
    def _put_jpeg(self, rel: str, data: bytes) -> None:
        self._retrying(lambda: self.s3.put_object(Bucket=self.bucket, Key=self.key(rel), Body=data,
                                                  ContentType="image/jpeg"), "store an image")

    def _store_one(self, s: Sample, received: str) -> bool:
        """True when this call created the record, False when it existed (a duplicate)."""
        digest = hashlib.sha256(s.jpeg).hexdigest()
        rel = "images/%s/%s.jpg" % (digest[:2], digest)
        self._put_jpeg(rel, s.jpeg)
        context = None
        if s.context is not None:  # a region's whole frame: content-addressed too, stored before the record
            ctx_digest = hashlib.sha256(s.context).hexdigest()
            context = "frames/%s/%s.jpg" % (ctx_digest[:2], ctx_digest)
            self._put_jpeg(context, s.context)
        rec = manifest_record(s, rel, digest, received, self.collector, context)
        body = json.dumps(rec, separators=(",", ":"), allow_nan=False).encode("utf-8")

        def put_record() -> bool:
            try:
                self.s3.put_object(Bucket=self.bucket, Key=self.key("samples/%s.json" % digest), Body=body,
                                   ContentType="application/json", IfNoneMatch="*")
                return True
            except self.exceptions.ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status == 412 or exc.response.get("Error", {}).get("Code") == "PreconditionFailed":
                    return False  # another collector (or an earlier try of ours) has it: stored once
                if status == 409:  # ConditionalRequestConflict: a concurrent put of the same key; try again
                    raise self.exceptions.ClientError({"Error": {"Code": "SlowDown"}}, "PutObject")
                raise

        return bool(self._retrying(put_record, "store a sample record"))

    def add_batch(self, samples: List[Sample]) -> Tuple[int, int]:
        received = iso(time.time())
        created = list(self._pool.map(lambda s: self._store_one(s, received), samples))
        stored = 0
        for s, new in zip(samples, created):
            if new:
                stored += 1
                self.counts[s.payload.label] = self.counts.get(s.payload.label, 0) + 1
        self._known += stored
        return stored, len(samples) - stored

    def reject(self, topic: str, body: bytes, reason: str, keep_bytes: int = 1 << 20) -> str:
        now = time.time()
        name = "%s_%s.json" % (iso(now).replace("-", "").replace(":", ""), uuid.uuid4().hex[:12])
        kept = body[:keep_bytes]
        rec: Dict[str, Any] = {"reason": reason, "topic": topic, "received": iso(now), "collector": self.collector,
                               "size": len(body), "truncated": len(body) > keep_bytes}
        try:
            rec["payload"] = kept.decode("utf-8")
        except UnicodeDecodeError:
            rec["payload_base64"] = base64.b64encode(kept).decode("ascii")
        data = json.dumps(rec, indent=1).encode("utf-8")
        self._retrying(lambda: self.s3.put_object(Bucket=self.bucket, Key=self.key("_rejected/" + name), Body=data,
                                                  ContentType="application/json"), "file a rejected payload")
        return name

    # -- reading ---------------------------------------------------------------------------------------------
    def _get(self, key: str) -> Optional[bytes]:
        def get() -> Optional[bytes]:
            try:
                return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except self.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise

        return self._retrying(get, "read %s" % key)

    def records(self) -> Iterator[Dict[str, Any]]:
        keys = list(self._keys("samples/"))
        for data in self._pool.map(self._get, keys):
            if data is None:
                continue
            try:
                rec = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                log.warning("an object under %s/samples/ is not a record: skipped", self.root)
                continue
            if isinstance(rec, dict) and all(isinstance(rec.get(k), str) for k in ("id", "file", "sha256",
                                                                                    "label")):
                yield rec

    def read_image(self, rec: Dict[str, Any]) -> Optional[bytes]:
        return self._get(self.key(rec["file"]))

    def image_url(self, rec: Dict[str, Any], image_root: Optional[str]) -> str:
        if image_root is not None:
            return image_root + rec["file"]
        return "s3://%s/%s" % (self.bucket, self.key(rec["file"]))  # Label Studio's S3 source storage resolves it

    def rejected(self) -> List[str]:
        return list(self._keys("_rejected/"))

    def __len__(self) -> int:
        return self._known

    def total(self) -> int:
        self._known = sum(1 for _ in self._keys("samples/"))
        return self._known

    def close(self) -> None:
        self._pool.shutdown(wait=True)
