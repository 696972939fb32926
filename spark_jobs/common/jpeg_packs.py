"""The preprocessed JPEGs the report and the Recognise page show as thumbnails: packed, one S3 object per
batch of photos (`<featurize step's folder in the preprocessed bucket>/jpeg/<uuid>.pack`, the JPEGs end
to end), not one object per photo, whose PUT cost more than the rest of the photo's preprocessing. A
photo's JPEG is named by a locator, `<pack URI>#<offset>+<length>`, which travels with the photo's row
(the feature table, the PCA vectors, the classifier's bank) and is read back with one ranged GET.

A locator comes from a table the Spark nodes write: readers take it only inside the preprocessed bucket,
without '.' or '..' segments, and no longer than a stored JPEG can be (`parse`); what it points to is
decoded in the decoder sandbox only.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

SUFFIX = ".pack"
# A stored image is 224x224 RGB as JPEG (`images.stored`): 150 KB of raw pixels, far less once encoded
MAX_LENGTH = 512 * 1024
_LOCATOR = re.compile(r"^(s3a?)://([^/#]+)/([^#]+)#(\d{1,15})\+(\d{1,9})$")


def pack(jpegs: list[bytes | None]) -> tuple[bytes, list[tuple[int, int] | None]]:
    """The JPEGs end to end, and each one's (offset, length) in the body (None for a missing one)."""
    spans: list[tuple[int, int] | None] = []
    offset = 0
    for data in jpegs:
        if data is None:
            spans.append(None)
            continue
        spans.append((offset, len(data)))
        offset += len(data)
    return b"".join(d for d in jpegs if d is not None), spans


def locator(pack_uri: str, span: tuple[int, int] | None) -> str | None:
    return None if span is None else f"{pack_uri}#{span[0]}+{span[1]}"


def parse(value: object, preprocessed_bucket: str) -> tuple[str, str, int, int]:
    """(bucket, key, offset, length) of a locator, or ValueError when it points anywhere a stored JPEG of
    this pipeline cannot be."""
    found = _LOCATOR.match(value) if isinstance(value, str) else None
    if not found:
        raise ValueError(f"not a JPEG locator: {str(value)[:200]!r}")
    _, bucket, key, offset, length = found.groups()
    if bucket != preprocessed_bucket:
        raise ValueError(f"JPEG locator outside the preprocessed bucket: {value[:200]!r}")
    if not key.endswith(SUFFIX) or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"JPEG locator with a key no pack has: {value[:200]!r}")
    if not 0 < int(length) <= MAX_LENGTH:
        raise ValueError(f"JPEG locator of {length} bytes: over {MAX_LENGTH}")
    return bucket, key, int(offset), int(length)


def read(value: object, preprocessed_bucket: str, get_range: Callable[[str, str, int, int], bytes]) -> bytes:
    """The JPEG a locator names, through `get_range(bucket, key, offset, length)`; ValueError when the
    locator is refused or the store gives back another length."""
    bucket, key, offset, length = parse(value, preprocessed_bucket)
    data = get_range(bucket, key, offset, length)
    if len(data) != length:
        raise ValueError(f"JPEG locator {value[:200]!r}: {len(data)} bytes read, {length} expected")
    return data


def read_all(locators: dict[str, str], preprocessed_bucket: str, get_range: Callable[[str, str, int, int], bytes],
             left_out: Callable[[str, Exception], None], threads: int = 10) -> dict[str, bytes]:
    """{key: locator} -> {key: JPEG} of those read (`read`); a locator refused or a read failed is left
    out and told to `left_out(key, error)`. A few hundred small reads (a report's thumbnails), each a round
    trip to the store that leaves the reader idle: `threads` of them side by side (boto3's default pool
    holds 10 connections)."""

    def one(item: tuple[str, str]) -> tuple[str, bytes | None]:
        key, value = item
        try:
            return key, read(value, preprocessed_bucket, get_range)
        except Exception as exc:  # noqa: BLE001 - a thumbnail is never worth failing its reader
            left_out(key, exc)
            return key, None

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return {key: data for key, data in pool.map(one, locators.items()) if data is not None}


def s3_range(s3) -> Callable[[str, str, int, int], bytes]:
    """`get_range` over a boto3 S3 client."""

    def get_range(bucket: str, key: str, offset: int, length: int) -> bytes:
        answer = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}")
        return answer["Body"].read(length + 1)

    return get_range
