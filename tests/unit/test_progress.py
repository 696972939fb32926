"""A long step is not silent in its Airflow log: Spark's stage progress is printed every few seconds."""

import io
import time

from pyspark.sql import functions as F
from pyspark.sql.types import LongType

from spark_jobs.progress import ProgressLog


def test_active_stages_are_logged_while_a_job_runs(spark):
    @F.udf(LongType())
    def slow(x):
        time.sleep(0.5)
        return x

    out = io.StringIO()
    with ProgressLog(spark, "featurize", every=0.5, out=out):
        assert spark.range(8).repartition(2).select(slow("id").alias("id")).agg(F.sum("id")).first()[0] == 28
    lines = out.getvalue().splitlines()
    assert lines and all(line.startswith("[featurize] progress: stage ") for line in lines), lines
    assert any("/2 tasks done" in line for line in lines), lines


def test_nothing_is_printed_when_no_stage_runs(spark):
    out = io.StringIO()
    with ProgressLog(spark, "pca", every=0.2, out=out):
        time.sleep(0.7)
    assert out.getvalue() == ""
