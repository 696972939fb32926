"""The steps' Parquet outputs as this version reads them, whichever version wrote them.

A run can read outputs an older fruitflow wrote: a cleared task of a run from before a deploy, or a
feature table that grew over many versions. Each column a later version added is listed here once, with
what it holds in a table written before it existed; every step reads the other steps' tables through
`read_output`, so no transform has to ask whether a column is there."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

# column -> its Spark type; null in a table written before the column existed
ADDED_COLUMNS = {
    "jpeg": "string",  # the thumbnail's locator in a JPEG pack (`jpeg_packs`): none before packs
}


def with_added_columns(frame: DataFrame) -> DataFrame:
    """`frame` with every column of `ADDED_COLUMNS` it lacks, as nulls of the column's type."""
    for name, spark_type in ADDED_COLUMNS.items():
        if name not in frame.columns:
            frame = frame.withColumn(name, F.lit(None).cast(spark_type))
    return frame


def read_output(spark: SparkSession, uri: str) -> DataFrame:
    """A step's Parquet output, with the columns added since (`ADDED_COLUMNS`)."""
    return with_added_columns(spark.read.parquet(uri))
