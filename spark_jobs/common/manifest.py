"""Step manifests: the small JSON each step writes last, and the only thing downstream steps trust."""

from __future__ import annotations

import datetime as dt
import json
import platform
import sys
import time
from contextlib import contextmanager

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the operator reads manifests at DAG-parse import time: no pyspark here
    from pyspark.sql import SparkSession

from . import signing, storage
from .config import Config, s3a_uri, split_s3_uri

MANIFEST_NAME = "_manifest.json"
# Set by every reader from the store's own modification time (S3's LastModified), never from the file:
# manifests are ordered by it, so a planted manifest cannot date itself into the future and win.
STORED_MS = "stored_ms"


class MissingInput(FileNotFoundError):
    """An upstream step's manifest is not there: no retry of this step can fix that."""


class BadManifest(ValueError):
    """A manifest that does not describe its own folder: planted, copied or edited; never followed."""


def manifest_uri(step_uri: str) -> str:
    return step_uri.rstrip("/") + "/" + MANIFEST_NAME


def versions() -> dict[str, str]:
    """The versions a manifest records (read from the installed distributions: no import of pyspark)."""
    from importlib.metadata import version

    return {"python": platform.python_version(), "pyspark": version("pyspark")}


def s3a_uris(value) -> list[str]:
    """Every s3a URI in a manifest's values, nested ones included."""
    if isinstance(value, str):
        return [value] if value.startswith("s3a://") else []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [uri for item in value for uri in s3a_uris(item)]
    return []


def write_manifest(spark: SparkSession, step_uri: str, manifest: dict) -> dict:
    body = {
        **manifest,
        # the driver's S3 requests over the buckets the step read and wrote: retries show a store that
        # stalled or failed and recovered
        "driver_s3": storage.driver_requests(spark, [step_uri, *s3a_uris(manifest)]),
        "step_uri": step_uri,
        "written_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {**versions(), **manifest.get("versions", {})},
    }
    signed = signing.sign(body)
    storage.write_text(spark, manifest_uri(step_uri), json.dumps(signed, indent=2, sort_keys=True))
    return body


def parse_manifest(text: str | bytes, stored_ms: int) -> dict:
    """A manifest as read: its JSON, signed by the Airflow host (`signing`), with the store's modification
    time under STORED_MS."""
    try:
        manifest = signing.loads(text, "manifest")
    except signing.Unsigned as exc:
        raise BadManifest(str(exc)) from None
    return {**manifest, STORED_MS: int(stored_ms)}


def store_order(manifest: dict) -> tuple[int, str]:
    """The order of manifests: the store's time (whole seconds on S3), then the folder (no ties)."""
    return manifest[STORED_MS], str(manifest.get("step_uri", ""))


def read_manifest(spark: SparkSession, step_uri: str, cfg: Config) -> dict:
    uri = manifest_uri(step_uri)
    if not storage.exists(spark, uri):
        raise MissingInput(
            f"no manifest at {uri}: the upstream step did not finish; run it (again) before this one"
        )
    manifest = parse_manifest(storage.read_text(spark, uri), storage.modified_ms(spark, uri))
    reason = untrusted_reason(manifest, step_uri, cfg)
    if reason:
        raise BadManifest(f"refusing {uri}: {reason}")
    return manifest


def other_folder_reason(manifest: dict, step_uri: str) -> str | None:
    """Why a manifest read from `step_uri` is not that folder's own, or None. Signing proves who wrote a
    manifest, not where: a Spark node may copy another run's signed manifest into its own folder."""
    named = str(manifest.get("step_uri", "")).rstrip("/")
    if named != step_uri.rstrip("/"):
        return f"it names another folder ({manifest.get('step_uri')!r}) than its own"
    return None


def untrusted_reason(manifest: dict, step_uri: str, cfg: Config) -> str | None:
    """Why a manifest read from `step_uri` must not be followed, or None. A step's outputs are where it
    wrote them: inside its own folder, `<configured bucket>/<runs prefix>/<run>/<step>/`, or the same
    folder of the preprocessed bucket (featurize's thumbnails, which the report and the Recognise page
    read from that bucket only); a model it materialised (featurize's `model`) or used (train's
    `backbone_model`) may also sit in the models bucket under its backbone's folder. Anything else
    (another run's or bucket's data, a manifest copied from elsewhere) would let whoever can write one
    object point the pipeline at data it never made."""
    step_uri = step_uri.rstrip("/")
    if reason := other_folder_reason(manifest, step_uri):
        return reason
    if not any(step_uri.startswith(s3a_uri(bucket, cfg.runs_prefix) + "/") for bucket in cfg.buckets):
        return f"its folder is not under {cfg.runs_prefix}/ of a configured bucket"
    folders = (step_uri + "/", s3a_uri(cfg.preprocessed_bucket, split_s3_uri(step_uri)[1]) + "/")
    models = s3a_uri(cfg.models_bucket, str(manifest.get("params", {}).get("backbone") or "")) + "/"
    for name, value in manifest.get("outputs", {}).items():
        for uri in value if isinstance(value, list) else [value]:
            if not isinstance(uri, str):
                return f"output {name!r} is not a URI"
            if not (uri.startswith(folders) or (name in ("model", "backbone_model") and uri.startswith(models)
                                                and models.count("/") > 3)):
                return f"output {name!r} ({uri}) is outside the step's folder"
            if any(part in (".", "..") for part in uri.split("://", 1)[-1].split("/")):
                return f"output {name!r} ({uri}) has a '.' or '..' segment"
    return None


def committed_steps(spark: SparkSession, cfg: Config, step: str) -> list[dict]:
    """Manifests of every finished run of one step under the runs prefix, by URI: a step without
    manifest never counts, nor one that does not describe its own folder (`untrusted_reason`: said in the
    log, then left out). The featurize ones make the feature table; the newest pca one's sums are added to;
    the newest cluster one's clusters may start the next KMeans."""
    committed = []
    for uri, modified in sorted(storage.glob_modified(spark, cfg.manifests_glob(step)).items()):
        try:
            manifest = parse_manifest(storage.read_text(spark, uri), modified)
        except ValueError as exc:  # not JSON (json's error is a ValueError), or not an object
            reason = f"not a manifest ({exc})"
        else:
            reason = untrusted_reason(manifest, uri.rsplit("/", 1)[0], cfg)
        if reason:
            print(f"[{step}] leaving out {uri}: {reason}", file=sys.stderr)
        else:
            committed.append(manifest)
    return committed


def newest_matching(spark: SparkSession, cfg: Config, step: str, params: dict) -> dict | None:
    """The newest committed run of one step whose params have these values (the earlier run an incremental
    one may start from: the cluster step's clusters, the train step's classifier), or None."""
    matching = [m for m in committed_steps(spark, cfg, step)
                if all(m.get("params", {}).get(name) == value for name, value in params.items())]
    return max(matching, key=store_order) if matching else None


def begin_step(spark: SparkSession, step_uri: str) -> None:
    """A rerun replaces its outputs: the old manifest goes first, so no reader trusts half-new data."""
    storage.delete(spark, manifest_uri(step_uri))
    storage.delete(spark, step_uri)


class Timings(dict):
    """Wall seconds of a step's parts, for its manifest. The Spark jobs a part runs carry "<step>: <part>"
    as their description: the Spark UI and the history server name them by it instead of a call site
    ("parquet at NativeMethodAccessorImpl.java:0")."""

    def __init__(self, spark: SparkSession, step: str):
        super().__init__()
        self._context, self._step = spark.sparkContext, step

    @contextmanager
    def measure(self, name: str):
        self._context.setJobDescription(f"{self._step}: {name}")
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(time.perf_counter() - start, 3)
            self._context.setJobDescription(None)
