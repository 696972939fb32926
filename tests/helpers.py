"""What several test modules share: the real image sets, and the ways tests submit a step and read
what it wrote (the same calls as the DAG's: the provider's SparkSubmitHook, the step's manifest)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fruitflow_airflow import SPARK_CONN_ID
from fruitflow_airflow.submit import step_args, submit_kwargs

from fruitflow.paths import ROOT, SAMPLE_500, SAMPLE_1179  # noqa: F401  (re-exported for the tests)
from spark_jobs.common.config import split_s3_uri
from spark_jobs.common.manifest import manifest_uri


def real_images(root: Path, classes: int, per_class: int) -> list[Path]:
    """The first `per_class` JPEGs of the first `classes` folders; skips where ../shared is absent."""
    if not root.is_dir():
        pytest.skip(f"real images not found at {root} (../shared is absent on this machine)")
    picked = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir())[:classes]:
        picked += sorted(folder.glob("*.jpg"))[:per_class]
    return picked


class UserData:
    """What the store held before the tests, plus one object planted where a demo keeps its results
    (`demo-<stamp>/`, `runs-demo-<stamp>/`): `changes()` lists whatever was deleted or rewritten since."""

    PLANTED = ("demo-00000000T000000/Apple/planted-by-the-tests.jpg",
               "runs-demo-00000000T000000/planted/featurize/_manifest.json")

    def __init__(self):
        from fruitflow import buckets
        from spark_jobs.common.config import Config

        self.s3, self.cfg, self.before = buckets.client(), Config.from_env(), {}

    def snapshot(self):
        self.s3.put_object(Bucket=self.cfg.raw_bucket, Key=self.PLANTED[0], Body=b"a user's photo")
        self.s3.put_object(Bucket=self.cfg.features_bucket, Key=self.PLANTED[1], Body=b"{}")
        self.before = self._listing()

    def changes(self) -> list[str]:
        after = self._listing()
        return [f"{where} ({'deleted' if where not in after else 'rewritten'})"
                for where, etag in self.before.items() if after.get(where) != etag]

    def remove_planted(self):
        self.s3.delete_object(Bucket=self.cfg.raw_bucket, Key=self.PLANTED[0])
        self.s3.delete_object(Bucket=self.cfg.features_bucket, Key=self.PLANTED[1])

    def _listing(self) -> dict[str, str]:
        found = {}
        for bucket in self.cfg.buckets:
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                found.update({f"{bucket}/{o['Key']}": o["ETag"] for o in page.get("Contents", [])})
        return found


def submit_step(step, cfg, run_id, *extra):
    """spark-submit one step to the standalone master, as the DAG's operator does."""
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    kwargs = submit_kwargs(step, cfg)
    application = kwargs.pop("application")
    hook = SparkSubmitHook(conn_id=SPARK_CONN_ID, application_args=[*step_args(step, cfg, run_id), *extra],
                           **kwargs)
    hook.submit(application)


def read_manifest(s3, step_uri):
    bucket, key = split_s3_uri(manifest_uri(step_uri))
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def list_keys(s3, uri):
    bucket, prefix = split_s3_uri(uri)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def read_parquet(s3, uri):
    """A Parquet folder written by Spark, as one pandas DataFrame (its part files fetched with boto3)."""
    import io

    import pandas as pd

    bucket, _ = split_s3_uri(uri)
    parts = [k for k in list_keys(s3, uri) if k.endswith(".parquet")]
    return pd.concat([pd.read_parquet(io.BytesIO(s3.get_object(Bucket=bucket, Key=k)["Body"].read())) for k in parts],
                     ignore_index=True)


def stored_jpegs(s3, featurize_manifest: dict) -> dict[str, tuple[str, bytes]]:
    """key -> (its pack's key, its thumbnail JPEG) for each image of a featurize step, read back by the
    locator in the step's features (`jpeg_packs`), as the report and the Recognise page read them."""
    from spark_jobs.common import jpeg_packs

    table = read_parquet(s3, featurize_manifest["outputs"]["features"])
    bucket, _ = split_s3_uri(featurize_manifest["outputs"]["jpeg"])
    get_range = jpeg_packs.s3_range(s3)
    return {key: (jpeg_packs.parse(locator, bucket)[1], jpeg_packs.read(locator, bucket, get_range))
            for key, locator in zip(table["key"], table["jpeg"])}
