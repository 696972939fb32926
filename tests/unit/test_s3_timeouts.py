"""One S3 timeout, from the Config, reaches every client: s3a on the driver and executors, and boto3
(the executors' reads and writes, the project's commands). The freeze itself is in test_faults."""

import pytest

from spark_jobs.common.config import S3_MIN_TIMEOUT_S, Config
from spark_jobs.common.spark_conf import session_conf
from spark_jobs.common.storage import client_for


def test_the_configured_timeout_reaches_s3a_and_boto3():
    cfg = Config.from_env({"FRUITFLOW_S3_TIMEOUT_S": "20"}, s3_endpoint="http://127.0.0.1:9")
    conf = session_conf(cfg)
    assert conf["spark.hadoop.fs.s3a.connection.timeout"] == "20s"
    assert conf["spark.hadoop.fs.s3a.connection.establish.timeout"] == "20s"
    boto = client_for(cfg).meta.config
    assert (boto.connect_timeout, boto.read_timeout) == (20, 20)
    assert boto.retries["mode"] == "adaptive"


def test_a_timeout_under_s3as_floor_is_refused():
    with pytest.raises(ValueError, match="s3_timeout_s"):
        Config(s3_timeout_s=S3_MIN_TIMEOUT_S - 1)


def test_airflows_s3_hooks_get_the_same_timeout(monkeypatch, tmp_path):
    """The sensor and the tasks use S3Hook over the AWS_CONN_ID connection: the local stack's carries
    the Config's timeout in its botocore settings, and so does docker-compose's (the default)."""
    import json

    import yaml
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from fruitflow.stack.environment import Prepared, environment
    from fruitflow_airflow import AWS_CONN_ID, connection_variable
    from fruitflow.stack.stack_settings import StackSettings
    from tests.helpers import ROOT

    prepared = Prepared("key", "secret", (), spark_secret="spark-secret")
    env = environment(StackSettings(state_dir=str(tmp_path)), prepared, {"FRUITFLOW_S3_TIMEOUT_S": "25", "PATH": "/usr/bin"})
    monkeypatch.setenv(connection_variable(AWS_CONN_ID), env[connection_variable(AWS_CONN_ID)])
    boto = S3Hook(aws_conn_id=AWS_CONN_ID).get_conn().meta.config
    assert (boto.connect_timeout, boto.read_timeout) == (25, 25)
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    extra = json.loads(compose["x-airflow-common"]["environment"][connection_variable(AWS_CONN_ID)])["extra"]
    timeouts = {k: extra["config_kwargs"][k] for k in ("connect_timeout", "read_timeout")}
    assert timeouts == {"connect_timeout": Config().s3_timeout_s, "read_timeout": Config().s3_timeout_s}
