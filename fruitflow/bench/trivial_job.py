"""A Spark application that does only what every fruitflow step does before its work: start a session
with the steps' settings, get an executor, write one row to S3, stop. `make bench E2E=1` submits it the
way the operator submits a step and times it: the floor under each Spark task of the DAG."""

from __future__ import annotations

import sys

from spark_jobs.common.config import Config
from spark_jobs.session import build_session, stop_session


def main(argv: list[str] | None = None) -> int:
    (output_uri,) = argv if argv is not None else sys.argv[1:]
    spark = build_session("fruitflow-trivial", Config.from_env())
    try:
        spark.range(1).write.mode("overwrite").json(output_uri)
    finally:
        stop_session(spark)
    return 0


if __name__ == "__main__":
    sys.exit(main())
