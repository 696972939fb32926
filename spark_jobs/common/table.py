"""The feature table: the union of every committed featurize output under one runs prefix."""

from __future__ import annotations

import json

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from . import storage
from .config import Config


def committed_featurize_steps(spark: SparkSession, cfg: Config) -> list[dict]:
    """Manifests of every finished featurize step; a step without manifest never counts."""
    return [json.loads(storage.read_text(spark, uri)) for uri in storage.glob(spark, cfg.featurize_manifests_glob)]


def feature_table(spark: SparkSession, manifests: list[dict]) -> DataFrame:
    """Union of the featurize outputs; for a key present several times, the newest row wins."""
    if not manifests:
        raise SystemExit("no committed featurize output: run the featurize step first")
    frames = [
        spark.read.parquet(m["outputs"]["features"]).withColumn("written_at", F.lit(m["written_at"]))
        for m in manifests
    ]
    table = frames[0]
    for frame in frames[1:]:
        table = table.unionByName(frame)
    newest = Window.partitionBy("key").orderBy(F.col("written_at").desc())
    return table.withColumn("_n", F.row_number().over(newest)).filter("_n = 1").drop("_n", "written_at")
