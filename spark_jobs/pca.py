"""Step 3 - pca: the feature table -> k principal components (Spark ML PCA) and explained variance.

Reads every committed featurize output (the feature table grows run after run; a key featurized again
keeps its newest features), fits PCA with k components, or the smallest k whose cumulative explained
variance reaches `--target-variance`, and writes the reduced vectors, the fitted model, the 2-D view
and the study's `df_categ.csv` (categ;key).
"""

from __future__ import annotations

import sys

import numpy as np
from pyspark.ml.feature import PCA, PCAModel
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_jobs.common import cli, storage
from spark_jobs.common.table import committed_featurize_steps, feature_table
from spark_jobs.common.config import Config
from spark_jobs.common.manifest import Timings, begin_step, read_manifest, write_manifest

STEP = "pca"


# --------------------------------------------------------------------------- transform


def choose_k(explained: np.ndarray, k: int, target_variance: float | None) -> int:
    """`k`, or the smallest number of components whose cumulative explained variance reaches the target."""
    if target_variance is None:
        return min(k, len(explained))
    reached = np.nonzero(np.cumsum(explained) >= target_variance - 1e-12)[0]
    return int(reached[0]) + 1 if len(reached) else len(explained)


def fit_pca(features: DataFrame, k: int, target_variance: float | None, n_rows: int,
            max_k_search: int = 256) -> PCAModel:
    """Spark ML PCA on `features` (array). With a target variance, one wide fit picks k, then k is fitted."""
    vectors = features.select(array_to_vector("features").alias("vector"))
    dim = len(features.select("features").first()["features"])
    upper = min(dim, n_rows, max(k, max_k_search) if target_variance else k)
    pca = PCA(k=max(1, upper), inputCol="vector", outputCol="pca")
    model = pca.fit(vectors)
    if target_variance is None:
        return model
    chosen = choose_k(model.explainedVariance.toArray(), upper, target_variance)
    return pca.setK(chosen).fit(vectors) if chosen != upper else model


def project(model: PCAModel, features: DataFrame) -> DataFrame:
    """key, category, features -> key, category, pca (double[k]), pc1, pc2."""
    reduced = model.transform(features.withColumn("vector", array_to_vector("features")))
    pca = vector_to_array("pca")
    return reduced.select(
        "key", "category", pca.alias("pca"),
        pca.getItem(0).alias("pc1"),
        F.coalesce(pca.getItem(1), F.lit(0.0)).alias("pc2"),
    )


# --------------------------------------------------------------------------- load


def run(spark: SparkSession, cfg: Config, out_uri: str, input_uri: str | None = None) -> dict:
    timings = Timings()
    manifests = [read_manifest(spark, input_uri)] if input_uri else committed_featurize_steps(spark, cfg)
    begin_step(spark, out_uri)
    features = feature_table(spark, manifests).cache()
    n_images = features.count()
    with timings.measure("fit"):
        model = fit_pca(features, cfg.pca_k, cfg.target_variance, n_images)
    explained = [float(v) for v in model.explainedVariance.toArray()]
    reduced_uri, model_uri = f"{out_uri}/reduced", f"{out_uri}/model"
    with timings.measure("write"):
        project(model, features).write.mode("overwrite").parquet(reduced_uri)
        model.write().overwrite().save(model_uri)
        reduced = spark.read.parquet(reduced_uri)
        storage.single_csv(reduced.select(F.col("category").alias("categ"), "key"), spark, f"{out_uri}/df_categ.csv")
        storage.single_csv(reduced.select("key", "category", "pc1", "pc2"), spark, f"{out_uri}/pca_2d.csv")
    features.unpersist()
    return write_manifest(
        spark,
        out_uri,
        {
            "step": STEP,
            "inputs": {"features": [m["outputs"]["features"] for m in manifests]},
            "outputs": {
                "reduced": reduced_uri,
                "model": model_uri,
                "categories_csv": f"{out_uri}/df_categ.csv",
                "pca_2d_csv": f"{out_uri}/pca_2d.csv",
            },
            "counts": {"n_images": n_images},
            "params": {"k": len(explained), "k_requested": cfg.pca_k, "target_variance": cfg.target_variance},
            "metrics": {
                "explained_variance": round(sum(explained), 6),
                "explained_variance_per_component": [round(v, 6) for v in explained],
            },
            "timings_s": dict(timings),
        },
    )


def arg_parser():
    parser = cli.parser(__doc__)
    parser.add_argument("--input", help="one featurize step URI (default: every committed featurize output)")
    parser.add_argument("--k", dest="pca_k", type=cli.optional(int), help="number of components (default 20)")
    parser.add_argument("--target-variance", dest="target_variance", type=cli.optional(float),
                        help="pick the smallest k reaching this cumulative explained variance")
    return parser


def main(argv: list[str] | None = None) -> int:
    return cli.run_step(STEP, arg_parser(), argv, lambda spark, cfg, args, out: run(spark, cfg, out, args.input))


if __name__ == "__main__":
    sys.exit(main())
