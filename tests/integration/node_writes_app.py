"""A Spark application test_store submits to the local stack: one task tries, from an executor with
the executor's own S3 identity, to write and delete each `bucket/key` given, and the driver records what
the store answered in a local JSON file ({key: "ok" or the error code}), with the names of the
executor's environment variables that hold the driver's S3 key or the Airflow host's control key."""

from __future__ import annotations

import json
import os
import sys

from spark_jobs.common.config import Config
from spark_jobs.session import build_session, stop_session


def main(argv: list[str]) -> int:
    out_file, *targets = argv
    cfg = Config.from_env()
    pipeline_key = os.environ["AWS_ACCESS_KEY_ID"]  # the driver's: the Airflow host's identity
    control_key = os.environ["FRUITFLOW_CONTROL_KEY"]  # signs the control objects: the driver's too

    def attempt(_):
        from botocore.exceptions import ClientError

        from spark_jobs.common import storage

        s3 = storage.client_for(cfg)  # the default chain: the worker's environment, not the driver's
        # where the executor's environment holds the driver's identity (an Airflow connection, say)
        answers = {"_holding_pipeline_key": sorted(k for k, v in os.environ.items() if pipeline_key in v),
                   "_holding_control_key": sorted(k for k, v in os.environ.items() if control_key in v)}
        for target in targets:
            bucket, key = target.split("/", 1)
            try:
                s3.put_object(Bucket=bucket, Key=key, Body=b"written by an executor")
                s3.delete_object(Bucket=bucket, Key=key)
                answers[target] = "ok"
            except ClientError as exc:
                answers[target] = exc.response["Error"]["Code"]
        yield answers

    spark = build_session("fruitflow-node-writes", cfg)
    try:
        (answers,) = spark.sparkContext.parallelize([0], 1).mapPartitions(attempt).collect()
    finally:
        stop_session(spark)
    with open(out_file, "w") as f:
        json.dump(answers, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
