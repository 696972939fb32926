"""boto3 access to the pipeline's object store for the project's commands (demo, benchmarks): the
endpoint comes from the same Config as the pipeline's (FRUITFLOW_S3_ENDPOINT; unset: real AWS)."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def client():
    """The pipeline's own S3 client (storage.client_for: path-style for an endpoint, retries, timeouts),
    for the endpoint, region and timeout of the current Config."""
    from spark_jobs.common.config import Config
    from spark_jobs.common.storage import client_for

    return client_for(Config.from_env())


def upload_files(pairs: list[tuple[Path, str]], bucket: str, threads: int = 8) -> int:
    """(local file, key) pairs into `bucket`, in parallel."""
    s3 = client()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda pair: s3.upload_file(str(pair[0]), bucket, pair[1]), pairs))
    return len(pairs)


def upload_folder(folder: Path, bucket: str, prefix: str) -> int:
    """Every file under `folder` to <bucket>/<prefix>/<relative path>."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    return upload_files([(p, f"{prefix}/{p.relative_to(folder).as_posix()}") for p in files], bucket)


def download_prefix(uri: str, dest: Path) -> Path:
    """Every object under the folder `uri` (s3:// or s3a://) into `dest`, replaced."""
    from spark_jobs.common.config import split_s3_uri

    s3 = client()
    bucket, prefix = split_s3_uri(uri.rstrip("/"))
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    root = dest.resolve()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            relative = obj["Key"][len(prefix) + 1:]
            target = (root / relative).resolve()
            # object keys are untrusted: '..' segments or a leading '/' would write outside `dest`
            if root not in target.parents or any(part in ("", ".", "..") for part in relative.split("/")):
                raise ValueError(f"refusing to download {obj['Key']!r}: it would land outside {dest}")
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))
    return dest


def write_json(uri: str, body: dict) -> None:
    from spark_jobs.common.config import split_s3_uri

    bucket, key = split_s3_uri(uri)
    client().put_object(Bucket=bucket, Key=key, Body=json.dumps(body, indent=2).encode(),
                        ContentType="application/json")


def read_text(uri: str) -> str:
    from spark_jobs.common.config import split_s3_uri

    bucket, key = split_s3_uri(uri)
    return client().get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")


def read_json(uri: str) -> dict:
    return json.loads(read_text(uri))
