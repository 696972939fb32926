"""The core's rules on untrusted text as Spark column expressions, for the tables Spark reads and writes:
the same rules as `spark_jobs.common.keys` (object keys) and `spark_jobs.common.untrusted` (CSV cells)."""

from __future__ import annotations

from pyspark.sql import functions as F

from spark_jobs.common.keys import (
    CONTROL_CHARACTER,
    CONTROL_CHARACTERS,
    UNSAFE_SEGMENT,
    UNSAFE_SEGMENTS,
)
from spark_jobs.common.untrusted import AFTER_SEPARATOR, FORMULA_PATTERN


def unsafe_key_column(relative):
    """The same rules as a Spark column over a key relative to the raw prefix (null: safe)."""
    parts = F.split(relative, "/")
    return (
        F.when(F.exists(parts, lambda p: p.isin(*UNSAFE_SEGMENTS)), F.lit(UNSAFE_SEGMENT))
        .when(relative.rlike(CONTROL_CHARACTERS), F.lit(CONTROL_CHARACTER))
    )


def csv_column(column):
    """The same rule as `csv_cell`, as a Spark column expression (for CSVs that Spark writes)."""
    column = F.regexp_replace(column, AFTER_SEPARATOR, "$1'")
    return F.when(column.rlike(FORMULA_PATTERN), F.concat(F.lit("'"), column)).otherwise(column)
