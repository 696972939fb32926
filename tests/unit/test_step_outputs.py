"""Tables an older fruitflow wrote, read by this version's steps: a cleared task of a run from before a
deploy reads them, and a feature table keeps the outputs of every version that fed it."""

import numpy as np
from pyspark.sql import functions as F

from spark_jobs import cluster, pca, train
from spark_jobs.common.config import Config
from spark_jobs.common.manifest import STORED_MS
from spark_jobs.feature_table import feature_table
from spark_jobs.step_outputs import read_output, with_added_columns


def _features_before_packs(spark, n_per_class=10, classes=3, dim=16, seed=0):
    """Features as featurize wrote them before JPEG packs: no `jpeg` column."""
    rng = np.random.default_rng(seed)
    rows = [(f"c{c}/{i}.jpg", f"c{c}", (10 * c + rng.normal(0, 1, dim)).tolist(), [1.0, 0.0])
            for c in range(classes) for i in range(n_per_class)]
    return spark.createDataFrame(rows, "key string, category string, features array<float>, color array<float>")


def test_a_reduced_table_from_before_packs_is_sampled_by_cluster_and_train(spark, tmp_path):
    """The PCA step of an older version wrote no thumbnail locators; clearing the cluster or train task of
    that run reads its table again. Both sample it for the driver with the locator column, which the
    reader adds as nulls: a run without thumbnails, not a failed task."""
    features = with_added_columns(_features_before_packs(spark))
    uri = str(tmp_path / "reduced")
    pca.project(pca.fit_pca(features, 4, None, n_rows=30), features).drop("jpeg").write.parquet(uri)

    reduced = read_output(spark, uri)
    model, _ = cluster.fit_kmeans(reduced, 3, seed=1, starts=2)
    points = cluster.with_clusters(cluster.sample(reduced, 100, 1, 30), cluster.assign(model, reduced))
    assert len(points) == 30 and points["jpeg"].isna().all() and set(points["cluster"]) <= {0, 1, 2}

    split = train.split_held_out(reduced, 0.25, seed=1)
    n_held = split.filter("held_out").count()
    bank, vectors, _ = train.neighbour_bank(split.filter("not held_out"), split.filter("held_out"),
                                            30 - n_held, n_held, Config.from_env())
    assert len(bank) == len(vectors) == 30 - n_held and bank["jpeg"].isna().all()


def test_a_feature_table_unites_outputs_from_before_and_after_packs(spark, tmp_path):
    before, after = str(tmp_path / "before"), str(tmp_path / "after")
    _features_before_packs(spark, n_per_class=2).write.parquet(before)
    _features_before_packs(spark, n_per_class=3, seed=1).withColumn("jpeg", F.lit("a locator")).write.parquet(after)
    manifests = [{"outputs": {"features": before}, STORED_MS: 1, "step_uri": "s3a://b/runs/r1/featurize"},
                 {"outputs": {"features": after}, STORED_MS: 2, "step_uri": "s3a://b/runs/r2/featurize"}]
    table = feature_table(spark, manifests).toPandas().set_index("key")
    assert len(table) == 9 and (table["jpeg"] == "a locator").all()  # the newer step's row wins
    only_before = feature_table(spark, manifests[:1]).toPandas()
    assert len(only_before) == 6 and only_before["jpeg"].isna().all()
