"""Signatures on the pipeline's control objects (step manifests, run summaries, the latest-run pointer, the
listing state). They live under the runs prefixes, which the Spark nodes' identity may write: an executor
could plant or edit one. Each is signed with a key only the Airflow host holds (its tasks and the Spark
drivers it starts; never an executor, never the settings that travel to executors), and a reader that
holds the key follows only what it signed.

The key is `FRUITFLOW_CONTROL_KEY` in the Airflow host's environment. Without it nothing is signed or
checked (a deployment that has not set one yet); with it, an unsigned or altered object is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os

KEY_VARIABLE = "FRUITFLOW_CONTROL_KEY"
FIELD = "signature"


class Unsigned(ValueError):
    """A control object without a valid signature, where the reader holds the key."""


def _key() -> bytes | None:
    key = os.environ.get(KEY_VARIABLE, "")
    return key.encode() if key else None


def _digest(key: bytes, document: dict) -> str:
    body = json.dumps({k: v for k, v in document.items() if k != FIELD}, sort_keys=True, separators=(",", ":"),
                      default=str)
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def sign(document: dict) -> dict:
    """`document` as it will be stored (plain JSON data: what JSON cannot hold, a datetime say, becomes its
    text) with its signature; without a key, unsigned. A reader checks the stored form: signing
    anything else would not verify."""
    key = _key()
    unsigned = {k: v for k, v in json.loads(json.dumps(document, default=str)).items() if k != FIELD}
    return {**unsigned, FIELD: _digest(key, unsigned)} if key else unsigned


def verified(document: dict, what: str) -> dict:
    """`document` without its signature, once checked; Unsigned when the key is held and it does not match."""
    key = _key()
    if not isinstance(document, dict):
        raise Unsigned(f"{what}: not a JSON object")
    if key:
        given = document.get(FIELD)
        if not isinstance(given, str) or not hmac.compare_digest(given, _digest(key, document)):
            raise Unsigned(f"{what}: {'unsigned' if given is None else 'signature does not match'}; "
                           "not written by this pipeline's Airflow host")
    return {k: v for k, v in document.items() if k != FIELD}


def loads(text: str | bytes, what: str) -> dict:
    """A control object's JSON, verified."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise Unsigned(f"{what}: not JSON ({exc})") from None
    return verified(document, what)
