"""Object-store access.

On the driver, through Hadoop's FileSystem API over py4j: the same s3a settings and credentials as
the Spark reads and writes, and any Hadoop scheme (s3a, file, hdfs) works. On executors, where there
is no JVM gateway, through boto3 and the standard AWS chain (see `s3_client`).
"""

from __future__ import annotations

import os
from functools import lru_cache

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the operator reads manifests at DAG-parse import time: no pyspark here
    from pyspark.sql import SparkSession


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


def write_text(spark: SparkSession, uri: str, text: str) -> None:
    fs, path = _path(spark, uri)
    out = fs.create(path, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()


def read_bytes(spark: SparkSession, uri: str) -> bytes:
    fs, path = _path(spark, uri)
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


@lru_cache(maxsize=4)
def s3_client(endpoint: str | None, region: str | None = None):
    """A boto3 S3 client, one per Python worker (or tool process). The endpoint travels from the
    driver's Config in the UDF's closure (None: real AWS); credentials from the AWS default chain."""
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        config=BotoConfig(
            retries={"max_attempts": 10, "mode": "adaptive"},
            s3={"addressing_style": "path" if endpoint else "auto"},
        ),
    )
