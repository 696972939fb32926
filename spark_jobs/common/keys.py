"""Which object keys may be read: one set of rules for list_new (Python) and featurize (Spark).

Hadoop paths normalise '.', '..' and empty segments away, so such a key would be read as another
object (or a missing one); control characters have no business in a key. Such keys, and keys outside
the raw prefix, are refused and recorded as rejects, never read.
"""

from __future__ import annotations

import re

UNSAFE_SEGMENTS = ("", ".", "..")
CONTROL_CHARACTERS = r"[\x00-\x1f\x7f]"
OUTSIDE_PREFIX = "unsafe key: outside the raw prefix"
UNSAFE_SEGMENT = "unsafe key: empty, '.' or '..' segment"
CONTROL_CHARACTER = "unsafe key: control character"


def unsafe_key_reason(key: str, prefix: str) -> str | None:
    """Why `key` must not be read, or None."""
    if not key.startswith(prefix):
        return OUTSIDE_PREFIX
    if any(part in UNSAFE_SEGMENTS for part in key[len(prefix):].split("/")):
        return UNSAFE_SEGMENT
    if re.search(CONTROL_CHARACTERS, key):
        return CONTROL_CHARACTER
    return None


def check_location(uri: str) -> None:
    """A raw location (URI or prefix) must not climb out of where it points or hide a segment."""
    _, sep, rest = uri.partition("://")
    segments = rest.rstrip("/").split("/")[1:] if sep else uri.strip("/").split("/")
    if any(s in (".", "..") for s in segments) or re.search(CONTROL_CHARACTERS, uri):
        raise ValueError(f"refusing raw location {uri!r}: '.' or '..' segment or control character")
