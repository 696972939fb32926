"""Step manifests: the small JSON each step writes last, and the only thing downstream steps trust."""

from __future__ import annotations

import datetime as dt
import json
import platform
import time
from contextlib import contextmanager

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the operator reads manifests at DAG-parse import time: no pyspark here
    from pyspark.sql import SparkSession

from . import storage

MANIFEST_NAME = "_manifest.json"


def manifest_uri(step_uri: str) -> str:
    return step_uri.rstrip("/") + "/" + MANIFEST_NAME


def versions() -> dict[str, str]:
    import pyspark

    return {"python": platform.python_version(), "pyspark": pyspark.__version__}


def write_manifest(spark: SparkSession, step_uri: str, manifest: dict) -> dict:
    body = {
        **manifest,
        "step_uri": step_uri,
        "written_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {**versions(), **manifest.get("versions", {})},
    }
    storage.write_text(spark, manifest_uri(step_uri), json.dumps(body, indent=2, sort_keys=True, default=str))
    return body


def read_manifest(spark: SparkSession, step_uri: str) -> dict:
    uri = manifest_uri(step_uri)
    if not storage.exists(spark, uri):
        raise FileNotFoundError(
            f"no manifest at {uri}: the upstream step did not finish; run it (again) before this one"
        )
    return json.loads(storage.read_text(spark, uri))


def begin_step(spark: SparkSession, step_uri: str) -> None:
    """A rerun replaces its outputs: the old manifest goes first, so no reader trusts half-new data."""
    storage.delete(spark, manifest_uri(step_uri))
    storage.delete(spark, step_uri)


class Timings(dict):
    @contextmanager
    def measure(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(time.perf_counter() - start, 3)
