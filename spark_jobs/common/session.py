"""SparkSession with the s3a settings, built the same way by spark-submit and by tests."""

from __future__ import annotations

from pyspark.sql import SparkSession

from .config import HADOOP_AWS_PACKAGE, Config


def spark_conf(cfg: Config) -> dict[str, str]:
    """Spark properties every fruitflow job needs. The DAG passes the same dict to spark-submit."""
    conf = {
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # One Arrow batch feeds one model call: batch size and Arrow batch move together.
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(cfg.batch_size),
        "spark.sql.parquet.compression.codec": "zstd",
        # A preprocessed row carries 150 KB of pixels: Parquet's vectorized reader would hold 4096 rows
        # (600 MB) per column batch and task, and ran a 1 GB executor out of heap at 4716 images.
        "spark.sql.parquet.columnarReaderBatchSize": "256",
        "spark.executor.memory": cfg.executor_memory,
        "spark.hadoop.fs.s3a.path.style.access": "true" if cfg.s3_endpoint else "false",
        "spark.hadoop.fs.s3a.endpoint.region": cfg.s3_region,
        # Credentials: s3a's default chain (environment variables, then the instance profile).
        "spark.hadoop.fs.s3a.retry.limit": "10",
        "spark.hadoop.fs.s3a.attempts.maximum": "10",
        "spark.task.maxFailures": "4",
        "spark.ui.showConsoleProgress": "false",
        # Executors' boto3 writes the preprocessed JPEGs: point it at the same endpoint.
        "spark.executorEnv.FRUITFLOW_S3_ENDPOINT": cfg.s3_endpoint or "",
    }
    if cfg.s3_endpoint:
        conf["spark.hadoop.fs.s3a.endpoint"] = cfg.s3_endpoint
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(cfg.s3_endpoint.startswith("https")).lower()
    if cfg.ivy_dir:
        conf["spark.jars.ivy"] = cfg.ivy_dir
    if cfg.spark_jars:
        class_path = ":".join(j.strip() for j in cfg.spark_jars.split(",") if j.strip())
        conf["spark.driver.extraClassPath"] = conf["spark.executor.extraClassPath"] = class_path
    return conf


def hadoop_aws_packages(cfg: Config) -> str | None:
    """What spark-submit must resolve and ship itself: nothing when the jars are on the nodes."""
    return None if cfg.spark_jars else HADOOP_AWS_PACKAGE


def build_session(app_name: str, cfg: Config, master: str | None = None) -> SparkSession:
    """Under spark-submit the master and packages come from the command line; tests pass `master`."""
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
        if packages := hadoop_aws_packages(cfg):
            builder = builder.config("spark.jars.packages", packages)
    for key, value in spark_conf(cfg).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
