"""Step 3 - pca: the feature table -> k principal components (Spark ML PCA) and explained variance.

Reads every committed featurize output (the feature table grows run after run; a key featurized again
keeps its newest features), L2-normalises them (`l2_normalize`, on by default), appends the colour
histogram with weight `color_weight` (1.0 by default), centres them and fits PCA with k components, or
the smallest k whose cumulative explained variance reaches `--target-variance`, and writes the reduced
vectors, the fitted model, the 2-D view and the study's `df_categ.csv` (categ;key).
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

from spark_jobs import step_cli
from spark_jobs.columns import csv_column
from spark_jobs.common import storage
from spark_jobs.common.config import Config
from spark_jobs.common.manifest import Timings, begin_step, read_manifest, write_manifest
from spark_jobs.feature_table import committed_featurize_steps, feature_table, model_of, same_model

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


def fit_pca(features: DataFrame, k: int, target_variance: float | None, n_rows: int,
            l2_normalize: bool = True, color_weight: float = 0.0) -> PipelineModel:
    """[L2 normalisation], [the colour histogram appended with weight `color_weight`], centring and
    PCA with k components (or the smallest k reaching `target_variance`) as one Spark ML PipelineModel.

    Spark computes the covariance matrix (an aggregate over the executors: d x d numbers, whatever the
    number of images); its eigendecomposition, d <= 2048 + 192, is numpy's on the driver. Spark ML's own
    PCA.fit decomposes it with LAPACK, and on machines without a native LAPACK (libblas3/liblapack3)
    its pure-Java fallback gives wrong components beyond the second one on CNN features
    (tests/unit/test_pca_cluster.py compares with scikit-learn)."""
    vectors = _input_vectors(features)
    stages: list = []
    column = "vector"
    if l2_normalize:  # unit-length features: the image's overall activation level stops weighing in
        stages.append(Normalizer(p=2.0, inputCol=column, outputCol="unit"))
        column = "unit"
    if color_weight > 0 and "color_vector" in vectors.columns:
        # The histogram has unit length already: the weight sets its share against unit CNN vectors.
        n_bins = len(features.select("color").first()["color"])
        stages.append(ElementwiseProduct(scalingVec=DenseVector([color_weight] * n_bins),
                                         inputCol="color_vector", outputCol="color_weighted"))
        stages.append(VectorAssembler(inputCols=[column, "color_weighted"], outputCol="joined"))
        column = "joined"
    prepared = PipelineModel(stages=stages).transform(vectors).select(column)  # transformers: no pass yet
    mean, cov = mean_and_covariance(prepared, column)  # the one pass over the table the fit makes
    eigenvalues, eigenvectors = _eigen(cov)
    total = eigenvalues.sum()
    explained = eigenvalues / total if total > 0 else np.zeros_like(eigenvalues)
    chosen = choose_k(explained, min(k, n_rows), target_variance)
    spark = features.sparkSession
    # Spark's PCAModel projects rows as they come; centring makes the projection the one the variance
    # describes. The centring stage is built from the pass's mean (StandardScaler.fit would read the table
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


def mean_and_covariance(frame: DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """The mean and the d x d sample covariance of a vector column, in one pass over it: each Python
    worker sums its share of the rows and of their outer products with numpy (`partial_moments`: matrix products over
    Arrow batches), and the partial sums are added up in a tree on the executors, so d x d numbers
    reach the driver whatever the number of rows.

    One partition per executor core: each partial sum is d x d (17 MB at d = 1472), so more partitions
    would only move more of them. Spark ML's own route (Summarizer.variance, then Correlation.corr) reads
    the column twice and adds each row's outer product on the JVM's BLAS, a pure-Java fallback wherever
    no native libblas is installed: several times slower (bench/RESULTS.md)."""
    spark = frame.sparkSession
    arrays = frame.select(vector_to_array(column).alias("v")).coalesce(spark.sparkContext.defaultParallelism)
    partials = arrays.mapInArrow(partial_moments, "n long, total binary, gram binary")
    moments = partials.rdd.map(_moments_of).treeAggregate(None, _add_moments, _add_moments)
    if moments is None:
        raise ValueError(f"no rows in {column!r}: a covariance needs at least one")
    n, total, gram = moments
    mean = total / n
    return mean, (gram.reshape(len(total), len(total)) - n * np.outer(mean, mean)) / max(n - 1, 1)


def partial_moments(batches):
    """Arrow batches of a `v` array column -> at most one row: the row count, the sum of the rows and the
    sum of their outer products (d x d), as raw float64 bytes."""
    import pyarrow as pa

    n, total, gram = 0, None, None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        x = batch.column(0).flatten().to_numpy(zero_copy_only=False).reshape(batch.num_rows, -1)
        if gram is None:
            total, gram = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
        n += len(x)
        total += x.sum(axis=0)
        gram += x.T @ x
    if n:
        yield pa.RecordBatch.from_arrays([pa.array([n], pa.int64()), pa.array([total.tobytes()], pa.binary()),
                                          pa.array([gram.tobytes()], pa.binary())], names=["n", "total", "gram"])


def _moments_of(row) -> tuple[int, np.ndarray, np.ndarray]:
    return row["n"], np.frombuffer(row["total"]), np.frombuffer(row["gram"])


def _add_moments(a, b):
    if a is None or b is None:
        return b if a is None else a
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


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
    committed = [read_manifest(spark, input_uri, cfg)] if input_uri else committed_featurize_steps(spark, cfg)
    manifests, left_out = same_model(committed)
    if left_out:
        print(f"pca: {len(left_out)} featurize step(s) made with another model left out of the table: "
              f"{sorted({m['step_uri'] for m in left_out})[:5]}", file=sys.stderr)
    begin_step(spark, out_uri)
    features = feature_table(spark, manifests).cache()
    n_images = features.count()
    with timings.measure("fit"):
        model = fit_pca(features, cfg.pca_k, cfg.target_variance, n_images, cfg.l2_normalize, cfg.color_weight)
    explained = [float(v) for v in explained_variance(model)]
    reduced_uri, model_uri = f"{out_uri}/reduced", f"{out_uri}/model"
    with timings.measure("write"):
        project(model, features).write.mode("overwrite").parquet(reduced_uri)
        model.write().overwrite().save(model_uri)
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
            "inputs": {"features": [m["outputs"]["features"] for m in manifests]},
            "outputs": {
                "reduced": reduced_uri,
                "model": model_uri,
                "categories_csv": f"{out_uri}/df_categ.csv",
                "pca_2d_csv": f"{out_uri}/pca_2d.csv",
            },
            "counts": {"n_images": n_images, "n_featurize_steps": len(manifests),
                       "n_featurize_steps_left_out": len(left_out)},
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
