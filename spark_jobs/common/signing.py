"""Signatures on the pipeline's control objects (step manifests, run summaries, the latest-run pointer, the
listing state). They live under the runs prefixes, which the Spark nodes' identity may write: an executor
could plant or edit one. Each is signed with a key only the Airflow host holds (its tasks and the Spark
drivers it starts; never an executor, never the settings that travel to executors), and a reader that
holds the key follows only what it signed.

The key is `FRUITFLOW_CONTROL_KEY` in the Airflow host's environment; an unsigned or altered object is
refused. Without it (or with the example file's placeholder, or a key too short to be a secret) nothing is
signed or trusted: a deployment that forgot to set one stops at its first control object with `NoKey`,
instead of following whatever an executor planted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os

KEY_VARIABLE = "FRUITFLOW_CONTROL_KEY"
FIELD = "signature"
MIN_KEY_LENGTH = 16
PLACEHOLDER = "change-me"  # how `.env.example` marks the values to replace


class Unsigned(ValueError):
    """A control object without a valid signature, where the reader holds the key."""


class NoKey(RuntimeError):
    """The control key is not set (or is a placeholder): nothing can be signed, nothing trusted."""


def _key() -> bytes:
    key = os.environ.get(KEY_VARIABLE, "")
    if len(key) < MIN_KEY_LENGTH or key.startswith(PLACEHOLDER):
        what = "is not set" if not key else ("is the example's placeholder" if key.startswith(PLACEHOLDER)
                                            else f"is shorter than {MIN_KEY_LENGTH} characters")
        raise NoKey(f"{KEY_VARIABLE} {what}: the control objects (manifests, run summaries, pointers, the "
                    "listing state) can be neither signed nor checked. Set it to a random secret in the Airflow "
                    "host's environment only (docs/security.md)")
    return key.encode()


def require_key() -> None:
    """NoKey unless a usable control key is set: a step or task checks it before doing any work."""
    _key()


def _digest(key: bytes, document: dict) -> str:
    body = json.dumps({k: v for k, v in document.items() if k != FIELD}, sort_keys=True, separators=(",", ":"),
                      default=str)
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def sign(document: dict) -> dict:
    """`document` as it will be stored (plain JSON data: what JSON cannot hold, a datetime say, becomes its
    text) with its signature. A reader checks the stored form: signing anything else would not verify."""
    key = _key()
    unsigned = {k: v for k, v in json.loads(json.dumps(document, default=str)).items() if k != FIELD}
    return {**unsigned, FIELD: _digest(key, unsigned)}


def verified(document: dict, what: str) -> dict:
    """`document` without its signature, once checked; Unsigned when it does not match."""
    key = _key()
    if not isinstance(document, dict):
        raise Unsigned(f"{what}: not a JSON object")
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
