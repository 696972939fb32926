"""Object-store access.

On the driver, through Hadoop's FileSystem API over py4j: the same s3a settings and credentials as
the Spark reads and writes, and any Hadoop scheme (s3a, file, hdfs) works. On executors, where there
is no JVM gateway, through boto3 and the standard AWS chain (see `client_for`).
"""

from __future__ import annotations

import os
from functools import lru_cache

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the operator reads manifests at DAG-parse import time: no pyspark here
    from pyspark.sql import SparkSession

    from .config import Config

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
    if max_bytes is not None and fs.getFileStatus(path).getLen() > max_bytes:
        raise ValueError(f"{uri} is over {max_bytes} bytes")
    jvm = spark.sparkContext._jvm
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
