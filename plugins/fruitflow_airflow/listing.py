"""What the incremental listing has already handed to a successful run, per raw prefix, kept in S3.

S3's LastModified is when an upload *began* for a multipart upload, and a PUT that finishes after a
listing can carry a time before it: a plain "newer than the last run" watermark skips such an object for
ever. So the state of a raw prefix holds the newest LastModified its last successful run listed (the
watermark) and the ETag of every object listed within `overlap` below it. An object is new when it is
newer than the watermark, or inside that window with a key or ETag the state does not hold (an upload
that landed late, a photo replaced under the same key). Older objects are never listed again, but for
the keys the last run could not read for a reason that may pass (`retry`: the featurize step's RETRY_NEXT_RUN),
each for at most MAX_RETRIES runs in a row (a file that crashes its decoder every time is given up).

The state lives at `<features bucket>/<runs prefix>/_listing/<digest of the raw prefix>.json`: one per
raw prefix (a manual run on another prefix does not move this one's), written by list_new into the
run's folder and promoted by `publish` only when the run succeeded (a failed run's objects are listed
again by the next run). Its size is bounded by the uploads of one overlap window.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass, field

from spark_jobs.common import signing
from spark_jobs.common.config import Config, s3a_uri, split_s3_uri

MAX_RETRIES = 3
log = logging.getLogger(__name__)


def state_uri(cfg: Config, raw_prefix: str) -> str:
    digest = hashlib.sha256(raw_prefix.strip("/").encode("utf-8")).hexdigest()[:24]
    return s3a_uri(cfg.features_bucket, cfg.runs_prefix, "_listing", f"{digest}.json")


@dataclass
class ListingState:
    raw_prefix: str
    watermark: dt.datetime | None = None  # the newest LastModified a successful run listed (None: never)
    seen: dict[str, str] = field(default_factory=dict)  # key -> ETag, LastModified within the overlap window
    retry: dict[str, int] = field(default_factory=dict)  # keys to list again (unreadable last time) -> runs so far

    def is_new(self, key: str, etag: str, last_modified: dt.datetime, overlap: dt.timedelta) -> bool:
        if self.watermark is None or last_modified > self.watermark or key in self.retry:
            return True
        return last_modified > self.watermark - overlap and self.seen.get(key) != etag

    def to_json(self) -> str:
        return json.dumps(signing.sign({"raw_prefix": self.raw_prefix,
                                        "watermark": self.watermark.isoformat() if self.watermark else None,
                                        "seen": self.seen, "retry": self.retry}), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, raw_prefix: str) -> "ListingState":
        data = signing.loads(text, "listing state")
        if data.get("raw_prefix") != raw_prefix.strip("/"):
            raise ValueError(f"listing state of {data.get('raw_prefix')!r}, not of {raw_prefix!r}")
        mark = data.get("watermark")
        return cls(raw_prefix.strip("/"), dt.datetime.fromisoformat(mark) if mark else None,
                   {str(k): str(v) for k, v in (data.get("seen") or {}).items()},
                   {str(k): int(n) for k, n in (data.get("retry") or {}).items()})


class NextState:
    """The state after a listing, built object by object: the newest LastModified seen and the ETags of
    the objects within `overlap` below it (older ones are dropped as the watermark rises)."""

    def __init__(self, previous: ListingState, overlap: dt.timedelta):
        self.raw_prefix, self.overlap = previous.raw_prefix, overlap
        self.watermark = previous.watermark
        self.window: dict[str, tuple[str, dt.datetime]] = {}

    def add(self, key: str, etag: str, last_modified: dt.datetime) -> None:
        if self.watermark is None or last_modified > self.watermark:
            self.watermark = last_modified
        if last_modified > self.watermark - self.overlap:
            self.window[key] = (etag, last_modified)
        if len(self.window) > 1024 and len(self.window) & (len(self.window) - 1) == 0:  # now and then
            self._prune()

    def _prune(self) -> None:
        floor = self.watermark - self.overlap
        self.window = {k: v for k, v in self.window.items() if v[1] > floor}

    def state(self) -> ListingState:
        self._prune()
        return ListingState(self.raw_prefix, self.watermark, {k: etag for k, (etag, _) in self.window.items()})


def read_state(client, cfg: Config, raw_prefix: str) -> ListingState:
    """The raw prefix's state (an empty one before its first successful run), with a boto3 client."""
    bucket, key = split_s3_uri(state_uri(cfg, raw_prefix))
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        return ListingState(raw_prefix.strip("/"))
    try:
        return ListingState.from_json(body, raw_prefix)
    except signing.Unsigned as exc:
        # planted or edited (a watermark in the future would hide every later upload): list the whole
        # prefix again; what is already featurized is skipped by featurize, not redone
        log.warning("%s: listing %s from the start", exc, raw_prefix)
        return ListingState(raw_prefix.strip("/"))


def retry_keys(s3_hook, retry_uri: str) -> set[str]:
    """The keys a featurize step wrote to its `retry` output (JSON lines in Spark's part files)."""
    bucket, prefix = split_s3_uri(retry_uri)
    keys: set[str] = set()
    for part in s3_hook.list_keys(bucket_name=bucket, prefix=prefix.rstrip("/") + "/") or []:
        if part.rsplit("/", 1)[-1].startswith("part-"):
            text = s3_hook.read_key(part, bucket_name=bucket)
            keys.update(json.loads(line)["key"] for line in text.splitlines() if line.strip())
    return keys


def retries(before: dict[str, int], unreadable: set[str]) -> dict[str, int]:
    """Keys to list again -> runs in a row they could not be read: those unreadable again count one more,
    up to MAX_RETRIES; a key read since (or given up) is no longer among them."""
    return {k: before.get(k, 0) + 1 for k in unreadable if before.get(k, 0) < MAX_RETRIES}


def promote(s3_hook, cfg: Config, pending_uri: str, raw_prefix: str, retry: set[str] = frozenset()) -> str:
    """A successful run's listing state, with the keys to try again, becomes its raw prefix's state. A key
    retried MAX_RETRIES runs in a row is given up (until it is uploaded again)."""
    bucket, key = split_s3_uri(pending_uri)
    state = ListingState.from_json(s3_hook.read_key(key, bucket_name=bucket), raw_prefix)
    state.retry = retries(read_state(s3_hook.get_conn(), cfg, raw_prefix).retry, retry)
    dest = state_uri(cfg, raw_prefix)
    bucket, key = split_s3_uri(dest)
    given_up = sorted(k for k in retry if k not in state.retry)
    if given_up:
        log.warning("giving up %d keys unreadable %d runs in a row, e.g. %s", len(given_up), MAX_RETRIES, given_up[:20])
    s3_hook.load_string(state.to_json(), key=key, bucket_name=bucket, replace=True)
    return dest
