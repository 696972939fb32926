"""The feature table: the union of every committed featurize output under one runs prefix."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from spark_jobs.common.config import Config
from spark_jobs.common.manifest import store_order
from spark_jobs.step_outputs import read_output


def model_of(manifest: dict) -> dict:
    """What made a featurize step's vectors: vectors of different models do not mix in one table."""
    params = manifest.get("params", {})
    return {"backbone": params.get("backbone"), "weights": params.get("weights"), "model_tag": params.get("model_tag"),
            # INT8 runs calibrate on their own images: their models differ by a hair, not by kind
            "precision": params.get("precision", "fp32"),
            # colour vectors of another definition (or none, before they existed) do not mix either
            "color_descriptor": params.get("color_descriptor")}


def made_with(manifests: list[dict], cfg: Config) -> list[dict]:
    """The featurize steps made with the model this run featurizes with (backbone, weights, precision,
    colour descriptor): "already featurized" means featurized by it. An image seen under another model
    (before a backbone switch) is featurized again, or the new model's table would lack it."""
    from spark_jobs.common.images import COLOR_DESCRIPTOR

    want = {"backbone": cfg.backbone, "weights": cfg.weights, "precision": cfg.precision,
            "color_descriptor": COLOR_DESCRIPTOR}
    return [m for m in manifests if all(model_of(m)[k] == v for k, v in want.items())]


def same_model(manifests: list[dict]) -> tuple[list[dict], list[dict]]:
    """(kept, left out): the newest step's model defines the table; steps made with another model
    (a backbone or weights switched under the same runs prefix) are left out, never mixed in."""
    if not manifests:
        return [], []
    newest = model_of(max(manifests, key=store_order))
    kept = [m for m in manifests if model_of(m) == newest]
    return kept, [m for m in manifests if model_of(m) != newest]


# Keys in more than one row (photos featurized again) that are told apart with a broadcast of their names;
# past this many, the newest row of each key comes from a shuffle of every row instead.
MAX_REPEATED_KEYS = 50_000


def feature_table(spark: SparkSession, manifests: list[dict], max_repeated_keys: int = MAX_REPEATED_KEYS
                  ) -> DataFrame:
    """Union of the featurize outputs; for a key present several times, the row of the step whose
    manifest the store saw last wins.

    A photo is featurized again only when its object changed, so few keys repeat: they are found with a
    shuffle of the keys alone, and only their rows move to pick the newest. Shuffling every row (~6 KB of
    features each) would cost every run a pass that grows with the whole table."""
    if not manifests:
        raise SystemExit("no committed featurize output: run the featurize step first")
    frames = [
        # a featurize output keeps its rows' (null) reject reason since one pass wrote rows and rejects together
        read_output(spark, m["outputs"]["features"]).drop("reason")
        .withColumn("_stored_ms", F.lit(store_order(m)[0])).withColumn("_step", F.lit(store_order(m)[1]))
        for m in manifests
    ]
    table = frames[0]
    for frame in frames[1:]:
        table = table.unionByName(frame)
    columns = [c for c in table.columns if c not in ("_stored_ms", "_step")]
    repeated = [row.key for row in table.groupBy("key").count().filter("count > 1").select("key")
                .limit(max_repeated_keys + 1).collect()]
    if not repeated:
        return table.select(*columns)
    if len(repeated) > max_repeated_keys:
        return newest_rows(table).select(*columns)
    marks = spark.createDataFrame([(key,) for key in repeated], "key string").withColumn("_repeated", F.lit(True))
    flagged = table.join(F.broadcast(marks), "key", "left")
    once = flagged.filter(F.col("_repeated").isNull()).select(*columns)
    return once.unionByName(newest_rows(flagged.filter(F.col("_repeated"))).select(*columns))


def newest_rows(table: DataFrame) -> DataFrame:
    """One row per key: the newest step's (a step that wrote a key twice gives one of its rows)."""
    newest = Window.partitionBy("key").orderBy(F.col("_stored_ms").desc(), F.col("_step").desc())
    return table.withColumn("_n", F.row_number().over(newest)).filter("_n = 1").drop("_n")
