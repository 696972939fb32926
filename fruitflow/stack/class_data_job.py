"""The application whose JVM's classes make the stack's class-data archive (`fruitflow.stack.class_data`):
a little of what every step does, so that the classes the steps load at start are in it. A session with
the steps' settings; a pandas UDF over Arrow; a Parquet folder written to S3 through s3a and its committer,
read back; JSON lines; Spark ML's KMeans and logistic regression, fitted on a few rows."""

from __future__ import annotations

import sys

import pandas as pd
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.clustering import KMeans
from pyspark.ml.functions import array_to_vector
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import ArrayType, FloatType

from spark_jobs.common.config import Config
from spark_jobs.session import build_session, stop_session


@pandas_udf(ArrayType(FloatType()))  # a type object: no session exists yet
def _two_floats(ids: pd.Series) -> pd.Series:
    return ids.map(lambda i: [float(i % 4), float(i % 7)])


def main(argv: list[str] | None = None) -> int:
    (output_uri,) = argv if argv is not None else sys.argv[1:]
    spark = build_session("fruitflow-class-data", Config.from_env())
    try:
        rows = spark.range(64).withColumn("label", (F.col("id") % 2).cast("double"))
        rows.withColumn("features", _two_floats("id")).write.mode("overwrite").parquet(f"{output_uri}/table")
        table = spark.read.parquet(f"{output_uri}/table").withColumn("features", array_to_vector("features"))
        KMeans(k=2, maxIter=2, seed=1).fit(table)
        LogisticRegression(maxIter=2).fit(table)
        table.select("id").write.mode("overwrite").json(f"{output_uri}/json")
    finally:
        stop_session(spark)
    return 0


if __name__ == "__main__":
    sys.exit(main())
