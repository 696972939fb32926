"""What several test modules share: the real image sets, and the ways tests submit a step and read
what it wrote (the same calls as the DAG's: the provider's SparkSubmitHook, the step's manifest)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fruitflow.paths import ROOT, SAMPLE_500, SAMPLE_1179  # noqa: F401  (re-exported for the tests)
from fruitflow_airflow.submit import step_args, submit_kwargs
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


def submit_step(step, cfg, run_id, *extra):
    """spark-submit one step to the standalone master, as the DAG's operator does."""
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    kwargs = submit_kwargs(step, cfg)
    application = kwargs.pop("application")
    hook = SparkSubmitHook(conn_id="spark_default", application_args=[*step_args(step, cfg, run_id), *extra],
                           **kwargs)
    hook.submit(application)


def read_manifest(s3, step_uri):
    bucket, key = split_s3_uri(manifest_uri(step_uri))
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def list_keys(s3, uri):
    bucket, prefix = split_s3_uri(uri)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return [o["Key"] for page in pages for o in page.get("Contents", [])]
