"""The local stack: every service healthy, buckets from config, and Spark writing Parquet through s3a."""

import re
import subprocess
import sys
import threading
from pathlib import Path

from fruitflow import stack as local_stack
from fruitflow.stack.services import master_state
from fruitflow_airflow import SPARK_CONN_ID
from tests.helpers import ROOT


def test_status_reports_every_service_healthy(stack):
    result = subprocess.run([sys.executable, "-m", "fruitflow.cli", "stack", "status"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("s3", "spark-master", "spark-worker", "airflow-db"):
        assert f"{name}" in result.stdout and "DOWN" not in result.stdout


def test_buckets_come_from_config(stack, s3, cfg):
    names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert set(cfg.buckets) <= names


def test_standalone_master_has_a_worker_with_both_cores(stack):
    state = master_state()
    alive = [w for w in state["workers"] if w["state"] == "ALIVE"]
    assert len(alive) == 1 and alive[0]["cores"] == local_stack.settings().worker_cores


def test_spark_writes_and_reads_parquet_through_s3a(stack, spark, cfg):
    uri = f"s3a://{cfg.features_bucket}/{cfg.runs_prefix}/s3a-check"
    spark.range(1000).selectExpr("id", "id * 2 as twice").write.mode("overwrite").parquet(uri)
    back = spark.read.parquet(uri)
    assert back.count() == 1000 and back.selectExpr("sum(twice)").first()[0] == 999 * 1000


def test_hadoop_aws_comes_from_the_class_path_not_shipped_per_application(stack):
    """The stack resolves hadoop-aws once into local jars; spark-submit then puts them on the class path
    instead of resolving --packages and copying the 0.7 GB AWS SDK bundle into every application."""
    import os

    from fruitflow_airflow.submit import submit_kwargs
    from spark_jobs.common.config import HADOOP_AWS_PACKAGE, Config

    cfg = Config.from_env()
    jars = cfg.spark_jars.split(",")
    assert any(j.endswith("hadoop-aws-3.5.0.jar") for j in jars) and any("awssdk_bundle" in j for j in jars)
    assert all(os.path.isfile(j) for j in jars)
    kwargs = submit_kwargs("pca", cfg)
    assert kwargs["packages"] is None
    assert kwargs["conf"]["spark.driver.extraClassPath"] == kwargs["conf"]["spark.executor.extraClassPath"] == ":".join(jars)
    # Elsewhere (no jars on the nodes) spark-submit resolves and ships the package itself.
    fallback = submit_kwargs("pca", cfg.with_overrides(spark_jars=""))
    assert fallback["packages"] == HADOOP_AWS_PACKAGE and "spark.executor.extraClassPath" not in fallback["conf"]


def test_drivers_and_executors_start_from_the_stacks_class_data_archive(stack, cfg):
    """Each application's JVMs map the stack's class-data archive (fruitflow.stack.class_data). With
    -Xshare:on a JVM that cannot map it does not start: the trivial job, submitted as a step is, completing
    with it on in its driver and its executor shows that both mapped it."""
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    from fruitflow.bench import trivial_job
    from fruitflow.stack.environment import spark_conf_dir, spark_defaults_file
    from fruitflow_airflow.submit import submit_kwargs
    from spark_jobs.common.config import s3a_uri

    stack_settings = local_stack.settings()
    defaults = spark_defaults_file(stack_settings).read_text()
    for role in ("driver", "executor"):
        archive = re.search(rf"^spark\.{role}\.defaultJavaOptions .*-XX:SharedArchiveFile=(\S+)$", defaults, re.M)
        assert archive and Path(archive.group(1)).is_file(), defaults
    # on every JVM's class path: a non-empty folder voids the archive
    assert not list(spark_conf_dir(stack_settings).iterdir())
    kwargs = submit_kwargs("pca", cfg)
    kwargs.pop("application")
    kwargs["conf"] = {**kwargs["conf"], "spark.driver.extraJavaOptions": "-Xshare:on",
                      "spark.executor.extraJavaOptions": "-Xshare:on"}
    output = s3a_uri(cfg.reports_bucket, cfg.runs_prefix, "class-data-check")
    hook = SparkSubmitHook(conn_id=SPARK_CONN_ID, application_args=[output], **{**kwargs, "name": "fruitflow-cds"})
    # an executor that cannot map it exits at once, and Spark asks for another for ever: a deadline
    deadline = threading.Timer(300, hook.on_kill)
    deadline.start()
    try:
        hook.submit(trivial_job.__file__)
    finally:
        deadline.cancel()


def test_a_client_without_the_clusters_secret_is_refused(stack, tmp_path):
    """spark.authenticate is on: an application without the stack's secret cannot even register with
    the master (its connection fails the SASL challenge). The REST submission server is off."""
    import os
    import signal
    import time

    import psutil

    from fruitflow.stack.services import service

    stack_settings = local_stack.settings()
    master = psutil.Process(service("spark-master").pid())
    listening = {c.laddr.port for p in (master, *master.children(recursive=True))
                 for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    assert stack_settings.spark_port in listening and 6066 not in listening, listening
    # an empty conf folder and no properties file: no secret
    env = {k: v for k, v in os.environ.items() if k != "PYSPARK_SUBMIT_ARGS"} | {"SPARK_CONF_DIR": str(tmp_path)}
    code = ("import sys; from pyspark.sql import SparkSession;"
            "SparkSession.builder.master(sys.argv[1]).config('spark.cores.max', '1').getOrCreate()"
            ".sparkContext.parallelize([1]).sum()")
    log = tmp_path / "client.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code, stack_settings.spark_master], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "Expected SaslMessage" not in log.read_text(errors="replace"):
            assert proc.poll() is None or "Expected SaslMessage" in log.read_text(errors="replace"), \
                log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        assert "Expected SaslMessage" in log.read_text(errors="replace"), log.read_text(errors="replace")[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
