"""The Spark properties every fruitflow job runs with. Pure Python (no pyspark): the DAG's operator
reads the launch settings at parse time, and `session.build_session` applies them all."""

from __future__ import annotations

import sys

from .config import HADOOP_AWS_PACKAGE, Config


def launch_conf(cfg: Config) -> dict[str, str]:
    """What must be known when the driver's JVM starts: spark-submit's --conf."""
    conf = {"spark.executor.memory": cfg.executor_memory}
    if cfg.ivy_dir:
        conf["spark.jars.ivy"] = cfg.ivy_dir
    if cfg.spark_jars:
        class_path = ":".join(j.strip() for j in cfg.spark_jars.split(",") if j.strip())
        conf["spark.driver.extraClassPath"] = conf["spark.executor.extraClassPath"] = class_path
    if cfg.pyspark_python:
        conf["spark.pyspark.python"] = cfg.pyspark_python
        # spark.pyspark.python names the driver's too: the driver stays with the Python that submits
        conf["spark.pyspark.driver.python"] = sys.executable
    return conf


def session_conf(cfg: Config) -> dict[str, str]:
    """The rest, set on the session by the job itself (from its Config: the S3 endpoint among them)."""
    conf = {
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # One Arrow batch feeds one model call: batch size and Arrow batch move together.
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(cfg.batch_size),
        "spark.sql.parquet.compression.codec": "zstd",
        # A preprocessed row carries 150 KB of pixels: Parquet's vectorized reader would hold 4096 rows
        # (600 MB) per column batch and task, more than a small executor's heap.
        "spark.sql.parquet.columnarReaderBatchSize": "256",
        "spark.hadoop.fs.s3a.path.style.access": "true" if cfg.s3_endpoint else "false",
        "spark.hadoop.fs.s3a.endpoint.region": cfg.s3_region,
        "spark.hadoop.fs.s3a.connection.timeout": f"{cfg.s3_timeout_s}s",
        "spark.hadoop.fs.s3a.connection.establish.timeout": f"{cfg.s3_timeout_s}s",
        # Credentials: s3a's default chain (environment variables, then the instance profile).
        "spark.hadoop.fs.s3a.retry.limit": "10",
        "spark.hadoop.fs.s3a.attempts.maximum": "10",
        "spark.task.maxFailures": "4",
        "spark.ui.showConsoleProgress": "false",
        # OpenCV's own pixel limit in the executors' decoders, behind the header check in images.decode
        "spark.executorEnv.OPENCV_IO_MAX_IMAGE_PIXELS": str(cfg.max_image_pixels),
    }
    if cfg.s3a_committer == "magic":
        conf.update(magic_committer_conf())
    if cfg.s3_endpoint:
        conf["spark.hadoop.fs.s3a.endpoint"] = cfg.s3_endpoint
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(cfg.s3_endpoint.startswith("https")).lower()
    return conf


def magic_committer_conf() -> dict[str, str]:
    """Parquet and other file output to s3a through the S3A magic committer (Spark's cloud binding)."""
    return {
        "spark.hadoop.fs.s3a.committer.name": "magic",
        "spark.hadoop.fs.s3a.committer.magic.enabled": "true",
        "spark.hadoop.mapreduce.outputcommitter.factory.scheme.s3a":
            "org.apache.hadoop.fs.s3a.commit.S3ACommitterFactory",
        "spark.sql.sources.commitProtocolClass": "org.apache.spark.internal.io.cloud.PathOutputCommitProtocol",
        "spark.sql.parquet.output.committer.class":
            "org.apache.spark.internal.io.cloud.BindingParquetOutputCommitter",
    }


def spark_conf(cfg: Config) -> dict[str, str]:
    return {**session_conf(cfg), **launch_conf(cfg)}


def hadoop_aws_packages(cfg: Config) -> str | None:
    """What spark-submit must resolve and ship itself: nothing when the jars are on the nodes."""
    return None if cfg.spark_jars else HADOOP_AWS_PACKAGE
