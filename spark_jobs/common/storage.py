"""Object-store access.

On the driver, through Hadoop's FileSystem API over py4j: the same s3a settings and credentials as
the Spark reads and writes, and any Hadoop scheme (s3a, file, hdfs) works. On executors, where there
is no JVM gateway, through boto3 and the standard AWS chain (see `client_for`), and, for the raw photos
the featurize pass reads by the ETag listed for them, through Arrow's S3 client (`read_listed_content`).
"""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the operator reads manifests at DAG-parse import time: no pyspark here
    from pyspark.sql import SparkSession

    from .config import Config

# py4j moves a byte array between the JVM and Python at ~20 MB/s (PCA's 17 MB of kept sums: ~0.9 s to read,
# ~0.5 s to write); a file larger than this goes through a local file instead, copied inside the JVM
PY4J_MAX_BYTES = 1 << 20
# S3A's IOStatistics counters behind `driver_requests`' figures
S3A_COUNTERS = {"requests": "store_io_request", "retries": "store_io_retry", "throttled": "store_io_throttled"}


def _path(spark: SparkSession, uri: str):
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, path


def exists(spark: SparkSession, uri: str) -> bool:
    fs, path = _path(spark, uri)
    return bool(fs.exists(path))


def delete(spark: SparkSession, uri: str) -> None:
    fs, path = _path(spark, uri)
    if fs.exists(path):
        fs.delete(path, True)


def driver_requests(spark: SparkSession, uris) -> dict[str, int]:
    """The S3 requests this driver has made so far (S3A's IOStatistics), summed over the s3a filesystems
    of the buckets in `uris`: how many were sent, retried after an error or a timeout, and throttled.
    The executors' clients keep their own counts; these are not in it."""
    totals = dict.fromkeys(S3A_COUNTERS, 0)
    for bucket in sorted({uri.split("/")[2] for uri in uris if uri.startswith("s3a://")}):
        fs, _ = _path(spark, f"s3a://{bucket}/")
        stats = fs.getIOStatistics()
        counters = stats.counters() if stats is not None else {}
        for name, counter in S3A_COUNTERS.items():
            totals[name] += int(counters.get(counter) or 0)
    return totals


def write_text(spark: SparkSession, uri: str, text: str) -> None:
    write_bytes(spark, uri, text.encode("utf-8"))


def write_bytes(spark: SparkSession, uri: str, data: bytes) -> None:
    if len(data) > PY4J_MAX_BYTES:
        with tempfile.TemporaryDirectory(prefix="fruitflow-write-") as folder:
            local = os.path.join(folder, "data")
            with open(local, "wb") as out:
                out.write(data)
            upload_file(spark, local, uri)
        return
    fs, path = _path(spark, uri)
    out = fs.create(path, True)
    try:
        out.write(bytearray(data))
    finally:
        out.close()


def read_bytes(spark: SparkSession, uri: str, max_bytes: int | None = None) -> bytes:
    """A file's bytes; a ValueError, before reading, for a file over `max_bytes` (one a Spark node could
    have planted where the driver reads)."""
    fs, path = _path(spark, uri)
    size = fs.getFileStatus(path).getLen()
    if max_bytes is not None and size > max_bytes:
        raise ValueError(f"{uri} is over {max_bytes} bytes")
    jvm = spark.sparkContext._jvm
    if size > PY4J_MAX_BYTES:
        with tempfile.TemporaryDirectory(prefix="fruitflow-read-") as folder:
            local_fs, local = _path(spark, "file://" + os.path.join(folder, "data"))
            # the size read above and no more: a file grown since (planted) cannot fill the disk
            jvm.org.apache.hadoop.io.IOUtils.copyBytes(fs.open(path), local_fs.create(local, True), size, True)
            with open(os.path.join(folder, "data"), "rb") as copied:
                return copied.read()
    stream = fs.open(path)
    try:
        return bytes(jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()


def read_text(spark: SparkSession, uri: str) -> str:
    return read_bytes(spark, uri).decode("utf-8")


def copy(spark: SparkSession, source_uri: str, dest_uri: str) -> None:
    """Stream one file between any two Hadoop file systems (file://, s3a://), inside the JVM.

    (s3a's copyFromLocalFile can stall waiting on its own thread pool; a plain stream copy cannot.)
    """
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    src_fs, src = _path(spark, source_uri)
    dest_fs, dest = _path(spark, dest_uri)
    jvm.org.apache.hadoop.io.IOUtils.copyBytes(src_fs.open(src), dest_fs.create(dest, True), conf, True)


def upload_file(spark: SparkSession, local_path: str, uri: str) -> None:
    copy(spark, "file://" + os.path.abspath(local_path), uri)


def download_file(spark: SparkSession, uri: str, local_path: str) -> None:
    copy(spark, uri, "file://" + os.path.abspath(local_path))


def glob(spark: SparkSession, pattern: str) -> list[str]:
    return sorted(glob_modified(spark, pattern))


def glob_modified(spark: SparkSession, pattern: str) -> dict[str, int]:
    """uri -> the store's modification time (ms since the epoch; S3's LastModified) of each match."""
    fs, path = _path(spark, pattern)
    statuses = fs.globStatus(path) or []
    return {str(s.getPath().toString()): int(s.getModificationTime()) for s in statuses}


def modified_ms(spark: SparkSession, uri: str) -> int:
    """The store's modification time of one object (S3's LastModified), ms since the epoch."""
    fs, path = _path(spark, uri)
    return int(fs.getFileStatus(path).getModificationTime())


def single_csv(df, spark: SparkSession, uri: str, sep: str = ";") -> None:
    """Write a small DataFrame as one CSV object named `uri` (Spark writes folders of parts)."""
    tmp = uri + ".parts"
    delete(spark, tmp)
    df.coalesce(1).write.mode("overwrite").option("header", True).option("sep", sep).csv(tmp)
    parts = glob(spark, tmp + "/part-*")
    fs, dest = _path(spark, uri)
    delete(spark, uri)
    fs.rename(spark.sparkContext._jvm.org.apache.hadoop.fs.Path(parts[0]), dest)
    delete(spark, tmp)


# --------------------------------------------------------------------------- executors


def client_for(cfg: Config):
    """The boto3 S3 client for a Config's endpoint, region and timeout. On executors the Config travels
    from the driver in the UDF's closure."""
    return s3_client(cfg.s3_endpoint, cfg.s3_region, cfg.s3_timeout_s)


@lru_cache(maxsize=4)
def s3_client(endpoint: str | None, region: str, timeout_s: int):
    """A boto3 S3 client, one per Python worker (or tool process) and setting: endpoint None is real
    AWS; credentials from the AWS default chain. Built through `client_for`, from a Config."""
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        config=BotoConfig(
            retries={"max_attempts": 10, "mode": "adaptive"},
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            s3={"addressing_style": "path" if endpoint else "auto"},
        ),
    )


def arrow_s3_for(cfg: Config):
    """Arrow's S3 file system (the AWS C++ SDK) for a Config's endpoint, region and timeout, one per Python
    worker and setting, credentials from the AWS default chain, as `client_for`'s."""
    return arrow_s3(cfg.s3_endpoint, cfg.s3_region, cfg.s3_timeout_s)


@lru_cache(maxsize=4)
def arrow_s3(endpoint: str | None, region: str, timeout_s: int):
    from pyarrow import fs

    return fs.S3FileSystem(endpoint_override=endpoint, region=region, connect_timeout=timeout_s,
                           request_timeout=timeout_s, force_virtual_addressing=endpoint is None,
                           retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=10))


def read_listed_content(arrow_fs, bucket: str, key: str, etag: str, max_bytes: int) -> bytes | None:
    """An object's bytes when they are the content its listing gave `etag` for (a single-part upload's ETag
    is the MD5 of its bytes); None when they cannot be shown to be: any error, an object over `max_bytes`,
    one replaced since it was listed (or between Arrow's HEAD and its GET), an ETag that is not an MD5
    (multipart, SSE-KMS). The caller then reads it with boto3, whose errors say why.

    Why Arrow: its C++ client costs under half of boto3's CPU per object (bench/RESULTS.md), and a photo's
    GET through boto3 is the largest part of the featurize pass after the CNN. The MD5 check also means
    that bytes accepted here are the listed object's, whatever key the client resolved."""
    import hashlib

    try:
        with arrow_fs.open_input_stream(f"{bucket}/{key}", compression=None) as stream:
            size = int(stream.metadata().get("Content-Length", b"-1"))
            if not 0 <= size <= max_bytes:
                return None
            content = stream.read()
    except (OSError, ValueError) as exc:  # ArrowIOError, ArrowInvalid (a key Arrow will not take): boto3 says why
        if not isinstance(exc, FileNotFoundError):  # a key gone since its listing is the object's, not Arrow's
            _first_arrow_error(exc)
        return None
    return content if hashlib.md5(content).hexdigest() == etag else None


_ARROW_ERRORS_SAID: list[str] = []


def _first_arrow_error(exc: Exception) -> None:
    """Said once per Python worker in the executor's log: a setting Arrow's client does not share with
    boto3 (its credentials, a CA bundle) would otherwise cost every photo a second read, silently."""
    import sys

    if _ARROW_ERRORS_SAID:
        return
    _ARROW_ERRORS_SAID.append(type(exc).__name__)
    print(f"storage: a read through Arrow's S3 client failed, boto3 reads it ({type(exc).__name__}: "
          f"{str(exc)[:300]}); said once per worker", file=sys.stderr)
