"""SparkSession with the s3a settings, built the same way by spark-submit and by tests."""

from __future__ import annotations

from pyspark.sql import SparkSession

from spark_jobs.common.config import Config
from spark_jobs.common.spark_conf import hadoop_aws_packages, session_conf, spark_conf


def build_session(app_name: str, cfg: Config, master: str | None = None) -> SparkSession:
    """Under spark-submit the master and launch settings come from the command line; tests and tools
    that start their own JVM pass `master`, and get the launch settings here."""
    builder = SparkSession.builder.appName(app_name)
    conf = session_conf(cfg)
    if master:
        builder = builder.master(master)
        conf = spark_conf(cfg)
        if master.startswith("local"):
            conf["spark.driver.memory"] = cfg.local_memory
        if packages := hadoop_aws_packages(cfg):
            builder = builder.config("spark.jars.packages", packages)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def stop_session(spark: SparkSession) -> None:
    """Stop the session and py4j's gateway (and with it the JVM), so that nothing is left for py4j to
    close at interpreter exit, when its logging stream is already closed."""
    from pyspark import SparkContext

    spark.stop()
    gateway = SparkContext._gateway
    if gateway is not None:
        gateway.shutdown()
        SparkContext._gateway = None
        SparkContext._jvm = None
