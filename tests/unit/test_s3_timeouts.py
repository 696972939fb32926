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
