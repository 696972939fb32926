"""Step 3 - pca: the feature table -> k principal components (Spark ML PCA) and explained variance.

Reads every committed featurize output (the feature table grows run after run; a key featurized again
keeps its newest features), L2-normalises them (`l2_normalize`, on by default), appends the colour
histogram with weight `color_weight` (1.0 by default), centres them and fits PCA with k components, or
the smallest k whose cumulative explained variance reaches `--target-variance`, and writes the reduced
vectors, the fitted model, the 2-D view and the study's `df_categ.csv` (categ;key). The mean and the
covariance come from sums the last pca step kept plus those of the new featurize steps (`pca_sums`); the
projection is still a pass over every row, since a new basis moves them all.
"""

from __future__ import annotations

import sys

import numpy as np
from pyspark.ml import PipelineModel
from pyspark.ml.feature import ElementwiseProduct, Normalizer, PCAModel, StandardScalerModel, VectorAssembler
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.linalg import DenseVector
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_jobs import pca_sums, step_cli
from spark_jobs.columns import csv_column
from spark_jobs.common import storage
from spark_jobs.common.config import Config
from spark_jobs.common.manifest import Timings, begin_step, committed_steps, read_manifest, write_manifest
from spark_jobs.feature_table import feature_table, model_of, same_model
from spark_jobs.pca_sums import Sums, sums_of

STEP = "pca"


# --------------------------------------------------------------------------- transform


def choose_k(explained: np.ndarray, k: int, target_variance: float | None) -> int:
    """`k`, or the smallest number of components whose cumulative explained variance reaches the target."""
    if target_variance is None:
        return min(k, len(explained))
    reached = np.nonzero(np.cumsum(explained) >= target_variance - 1e-12)[0]
    return int(reached[0]) + 1 if len(reached) else len(explained)


def _input_vectors(features: DataFrame) -> DataFrame:
    """The array columns as ML vectors: `vector` (CNN features) and, when present, `color_vector`."""
    frame = features.withColumn("vector", array_to_vector("features"))
    return frame.withColumn("color_vector", array_to_vector("color")) if "color" in features.columns else frame


def input_stages(features: DataFrame, l2_normalize: bool, color_weight: float) -> tuple[list, str]:
    """The transformers that make PCA's input from the table's columns, and the input's column: [L2
    normalisation], [the colour histogram appended with weight `color_weight`]."""
    stages: list = []
    column = "vector"
    if l2_normalize:  # unit-length features: the image's overall activation level stops weighing in
        stages.append(Normalizer(p=2.0, inputCol=column, outputCol="unit"))
        column = "unit"
    if color_weight > 0 and "color" in features.columns:
        # The histogram has unit length already: the weight sets its share against unit CNN vectors.
        n_bins = len(features.select("color").first()["color"])
        stages.append(ElementwiseProduct(scalingVec=DenseVector([color_weight] * n_bins),
                                         inputCol="color_vector", outputCol="color_weighted"))
        stages.append(VectorAssembler(inputCols=[column, "color_weighted"], outputCol="joined"))
        column = "joined"
    return stages, column


def pca_input(features: DataFrame, stages: list) -> DataFrame:
    """The table with PCA's input column (`input_stages`): transformers only, no pass yet."""
    return PipelineModel(stages=stages).transform(_input_vectors(features))


def fit_pca(features: DataFrame, k: int, target_variance: float | None, n_rows: int,
            l2_normalize: bool = True, color_weight: float = 0.0) -> PipelineModel:
    """[L2 normalisation], [the colour histogram appended with weight `color_weight`], centring and
    PCA with k components (or the smallest k reaching `target_variance`) as one Spark ML PipelineModel,
    from one pass over the table (`pca_sums.sums_of`)."""
    stages, column = input_stages(features, l2_normalize, color_weight)
    sums = sums_of(pca_input(features, stages).select(column), column)
    if sums is None:
        raise ValueError(f"no rows in {column!r}: a covariance needs at least one")
    return model_from_sums(features.sparkSession, stages, column, sums, k, target_variance, n_rows)


def model_from_sums(spark: SparkSession, stages: list, column: str, sums: Sums, k: int,
                    target_variance: float | None, n_rows: int) -> PipelineModel:
    """The PipelineModel of `fit_pca` from the sums of its input.

    Spark adds up the sums on the executors (d x d numbers, whatever the number of images); the
    eigendecomposition, d <= 2048 + 192, is numpy's on the driver. Spark ML's own PCA.fit decomposes with
    LAPACK, and on machines without a native LAPACK (libblas3/liblapack3) its pure-Java fallback gives
    wrong components beyond the second one on CNN features (tests/unit/test_pca_cluster.py compares with
    scikit-learn)."""
    mean, cov = sums.mean_and_covariance()
    eigenvalues, eigenvectors = _eigen(cov)
    total = eigenvalues.sum()
    explained = eigenvalues / total if total > 0 else np.zeros_like(eigenvalues)
    chosen = choose_k(explained, min(k, n_rows), target_variance)
    # Spark's PCAModel projects rows as they come; centring makes the projection the one the variance
    # describes. The centring stage is built from the sums' mean (StandardScaler.fit would read the table
    # once more for it).
    centring = _centring_model(spark, mean, np.sqrt(np.clip(np.diag(cov), 0.0, None)), column)
    return PipelineModel(stages=[*stages, centring,
                                 _pca_model(spark, eigenvectors[:, :chosen], explained[:chosen])])


def color_weight_of(model: PipelineModel) -> float:
    """The weight the colour histogram had in the fit (0.0 when it was not part of it)."""
    for stage in model.stages:
        if isinstance(stage, ElementwiseProduct):
            return float(stage.getScalingVec()[0])
    return 0.0


def _eigen(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, >= 0) and eigenvectors with a deterministic sign (largest entry positive)."""
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    values, vectors = np.clip(values[order], 0.0, None), vectors[:, order]
    signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])])
    return values, vectors * np.where(signs == 0, 1.0, signs)


def _centring_model(spark: SparkSession, mean: np.ndarray, std: np.ndarray, column: str) -> StandardScalerModel:
    """The StandardScalerModel (with mean, without std) StandardScaler.fit would give for these moments."""
    from pyspark.ml.common import _py2java

    sc = spark.sparkContext
    std_vector, mean_vector = (_py2java(sc, DenseVector(v.tolist())) for v in (std, mean))
    java_model = sc._jvm.org.apache.spark.ml.feature.StandardScalerModel(
        "StandardScalerModel_fruitflow", std_vector, mean_vector)
    model = StandardScalerModel(java_model)
    model._set(withMean=True, withStd=False, inputCol=column, outputCol="centred")
    return model


def _pca_model(spark: SparkSession, components: np.ndarray, explained: np.ndarray) -> PCAModel:
    """A Spark ML PCAModel (transform, save, load as usual) from given components."""
    from pyspark.ml.common import _py2java
    from pyspark.ml.linalg import DenseMatrix, DenseVector

    sc = spark.sparkContext
    d, k = components.shape
    matrix = _py2java(sc, DenseMatrix(d, k, components.ravel(order="F").tolist()))  # column-major
    variance = _py2java(sc, DenseVector(explained.tolist()))
    java_model = sc._jvm.org.apache.spark.ml.feature.PCAModel(f"PCAModel_fruitflow_{k}", matrix, variance)
    model = PCAModel(java_model)
    model._set(inputCol="centred", outputCol="pca", k=k)
    return model


def explained_variance(model: PipelineModel) -> np.ndarray:
    return model.stages[-1].explainedVariance.toArray()


def project(model: PipelineModel, features: DataFrame) -> DataFrame:
    """key, category, features, jpeg -> key, category, pca (double[k]), pc1, pc2, jpeg (the thumbnail's
    locator, for the report and the classifier's bank: `jpeg_packs`)."""
    reduced = model.transform(_input_vectors(features))
    pca = vector_to_array("pca")
    return reduced.select(
        "key", "category", pca.alias("pca"),
        pca.getItem(0).alias("pc1"),
        F.coalesce(pca.getItem(1), F.lit(0.0)).alias("pc2"),
        "jpeg",
    )


# --------------------------------------------------------------------------- load


def run(spark: SparkSession, cfg: Config, *, out_uri: str, input_uri: str | None = None) -> dict:
    timings = Timings(spark, STEP)
    committed = ([read_manifest(spark, input_uri, cfg)] if input_uri
                 else committed_steps(spark, cfg, "featurize"))
    manifests, left_out = same_model(committed)
    if left_out:
        print(f"pca: {len(left_out)} featurize step(s) made with another model left out of the table: "
              f"{sorted({m['step_uri'] for m in left_out})[:5]}", file=sys.stderr)
    begin_step(spark, out_uri)
    features = feature_table(spark, manifests).cache()
    n_images = features.count()
    stages, column = input_stages(features, cfg.l2_normalize, cfg.color_weight)
    with timings.measure("fit"):
        sums, summed = fitted_sums(spark, cfg, manifests, features, stages, column, n_images)
        model = model_from_sums(spark, stages, column, sums, cfg.pca_k, cfg.target_variance, n_images)
    explained = [float(v) for v in explained_variance(model)]
    reduced_uri, model_uri = f"{out_uri}/reduced", f"{out_uri}/model"
    with timings.measure("write"):
        project(model, features).write.mode("overwrite").parquet(reduced_uri)
        model.write().overwrite().save(model_uri)
        sums_uri, kept = pca_sums.keep(spark, out_uri, sums, manifests, sums_inputs(manifests, stages, column))
        reduced = spark.read.parquet(reduced_uri)
        # category names and keys come from object keys: no cell a spreadsheet would run as a formula
        categ, key = csv_column(F.col("category")), csv_column(F.col("key"))
        storage.single_csv(reduced.select(categ.alias("categ"), key.alias("key")), spark, f"{out_uri}/df_categ.csv")
        storage.single_csv(reduced.select(key.alias("key"), categ.alias("category"), "pc1", "pc2"), spark,
                           f"{out_uri}/pca_2d.csv")
    features.unpersist()
    return write_manifest(
        spark,
        out_uri,
        {
            "step": STEP,
            "inputs": {"features": [m["outputs"]["features"] for m in manifests],
                       "featurize_steps": [m["step_uri"] for m in manifests]},
            "outputs": {
                "reduced": reduced_uri,
                "model": model_uri,
                "categories_csv": f"{out_uri}/df_categ.csv",
                "pca_2d_csv": f"{out_uri}/pca_2d.csv",
                "sums": sums_uri,
            },
            "sums": {**kept, "added_to": summed["from"]},
            "counts": {"n_images": n_images, "n_featurize_steps": len(manifests),
                       "n_featurize_steps_left_out": len(left_out),
                       "n_featurize_steps_summed": summed["featurize_steps_summed"]},
            "params": {"k": len(explained), "k_requested": cfg.pca_k, "target_variance": cfg.target_variance,
                       "l2_normalize": cfg.l2_normalize, "centred": True, "color_weight": color_weight_of(model),
                       **(model_of(manifests[0]) if manifests else {})},
            "metrics": {
                "explained_variance": round(sum(explained), 6),
                "explained_variance_per_component": [round(v, 6) for v in explained],
            },
            "timings_s": dict(timings),
        },
    )


def sums_inputs(manifests: list[dict], stages: list, column: str) -> dict:
    """What the sums of PCA's input depend on (the model, each input stage with its parameters): kept sums
    are added to only under the same."""
    def plain(value):
        return value.toArray().tolist() if hasattr(value, "toArray") else value

    return {"model": model_of(manifests[0]), "column": column,
            "stages": [[type(stage).__name__, {p.name: plain(v) for p, v in stage.extractParamMap().items()}]
                       for stage in stages]}


def fitted_sums(spark: SparkSession, cfg: Config, manifests: list[dict], features: DataFrame, stages: list,
                column: str, n_images: int) -> tuple[Sums, dict]:
    """The sums of this table's PCA input (`features`, the table of `manifests`): the newest pca step's
    plus the new featurize steps', or the whole table's (`pca_sums`)."""
    kept = pca_sums.last_kept(spark, cfg, [pca_sums.step_id(m) for m in manifests],
                              sums_inputs(manifests, stages, column))

    def table_of(steps: list[dict]) -> DataFrame:
        return pca_input(features if steps is manifests else feature_table(spark, steps), stages)

    return pca_sums.running_sums(kept, manifests, table_of, column, n_images)


def arg_parser():
    parser = step_cli.parser(__doc__)
    parser.add_argument("--input", help="one featurize step URI (default: every committed featurize output)")
    parser.add_argument("--k", dest="pca_k", type=step_cli.optional(int), help="number of components (default 20)")
    parser.add_argument("--target-variance", dest="target_variance", type=step_cli.optional(float),
                        help="pick the smallest k reaching this cumulative explained variance")
    parser.add_argument("--color-weight", dest="color_weight", type=step_cli.optional(float),
                        help="weight of the colour histogram appended to the unit-length CNN features (0: none)")
    step_cli.add_l2_normalize(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return step_cli.run_step(STEP, arg_parser(), argv, lambda spark, cfg, args, out: run(
        spark, cfg, out_uri=out, input_uri=args.input))


if __name__ == "__main__":
    sys.exit(main())
