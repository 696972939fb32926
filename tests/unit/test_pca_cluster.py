"""PCA (k and target variance) and clustering metrics on a local SparkSession."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from spark_jobs import cluster, pca
from spark_jobs.common import tsne_view
from spark_jobs.pca_sums import sums_of
from spark_jobs.step_outputs import with_added_columns


def _features(spark, n_per_class=12, classes=4, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (classes, dim))
    rows = []
    for c in range(classes):
        for i in range(n_per_class):
            rows.append((f"c{c}/{i}.jpg", f"c{c}", (centres[c] + rng.normal(0, 1, dim)).astype(float).tolist()))
    return with_added_columns(spark.createDataFrame(rows, "key string, category string, features array<float>"))


def test_choose_k():
    explained = np.array([0.5, 0.3, 0.1, 0.05, 0.05])
    assert pca.choose_k(explained, 3, None) == 3
    assert pca.choose_k(explained, 3, 0.8) == 2
    assert pca.choose_k(explained, 3, 0.95) == 4
    assert pca.choose_k(explained, 3, 1.0) == 5


def test_the_number_of_clusters_is_capped_and_the_wanted_number_kept():
    """Thousands of one-image folders must not make thousands of clusters: k stops at max_clusters (and
    at one per image), and the number wanted goes on to the summary."""
    from spark_jobs.common.config import Config

    cfg = Config.from_env().with_overrides(max_clusters=50)
    assert cluster.choose_k(cfg, 10**6, 5000) == (50, 5000)
    assert cluster.choose_k(cfg.with_overrides(n_clusters=7), 10**6, 5000) == (7, 7)
    assert cluster.choose_k(cfg, 3, 20) == (3, 20)
    with pytest.raises(SystemExit, match="at least 2"):
        cluster.choose_k(cfg, 1, 20)


def test_pca_k_and_target_variance(spark):
    features = _features(spark)
    model = pca.fit_pca(features, 5, None, n_rows=48)
    assert model.stages[-1].getK() == 5
    explained = pca.explained_variance(model)
    assert 0 < explained.sum() <= 1 + 1e-9 and np.all(np.diff(explained) <= 1e-12)
    by_target = pca.fit_pca(features, 20, 0.9, n_rows=48)
    cumulative = np.cumsum(pca.explained_variance(by_target))
    assert cumulative[-1] >= 0.9 and (len(cumulative) == 1 or cumulative[-2] < 0.9)
    reduced = pca.project(model, features).collect()
    assert len(reduced) == 48 and len(reduced[0]["pca"]) == 5 and reduced[0]["pc1"] == reduced[0]["pca"][0]


def test_metrics_from_contingency_match_scikit_learn():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 6, 300)
    pred = np.where(rng.random(300) < 0.7, truth, rng.integers(0, 7, 300))
    table = pd.crosstab(pd.Series(truth, name="category"), pd.Series(pred, name="cluster"))
    scores = cluster.scores_from_contingency(table)
    assert scores["ari"] == pytest.approx(adjusted_rand_score(truth, pred), abs=1e-12)
    assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(truth, pred), abs=1e-12)
    assert 0 < scores["purity"] <= 1


def test_kmeans_finds_separated_classes(spark):
    features = _features(spark)
    reduced = pca.project(pca.fit_pca(features, 5, None, n_rows=48), features)
    model, fit = cluster.fit_kmeans(reduced, 4, seed=1, starts=3)
    assert fit["start_points"] == 48 and fit["starts"] == 3
    assigned = cluster.assign(model, reduced)
    scores = cluster.scores_from_contingency(cluster.contingency(assigned))
    assert scores["ari"] == pytest.approx(1.0) and scores["purity"] == pytest.approx(1.0)
    assert 0 < cluster.silhouette(assigned) <= 1


def test_kmeans_from_a_sample_iterates_over_all_vectors(spark, tmp_path):
    """The start comes from a sample smaller than the data; Spark's iterations over all the vectors
    still find the classes, and the model is an ordinary Spark ML KMeansModel (save, load, transform)."""
    from pyspark.ml.clustering import KMeansModel

    features = _features(spark, n_per_class=40)
    reduced = pca.project(pca.fit_pca(features, 5, None, n_rows=160), features)
    model, fit = cluster.fit_kmeans(reduced, 4, seed=2, starts=2, start_max_points=20, n_rows=160)
    assert 8 <= fit["start_points"] <= 20
    model.write().overwrite().save(str(tmp_path / "kmeans"))
    loaded = KMeansModel.load(str(tmp_path / "kmeans"))
    assert np.allclose(np.stack(loaded.clusterCenters()), np.stack(model.clusterCenters()))
    assigned = cluster.assign(loaded, reduced)
    assert assigned.count() == 160
    assert cluster.scores_from_contingency(cluster.contingency(assigned))["ari"] == pytest.approx(1.0)
    # The cost is that of all the vectors: their squared distances to the nearest centre, computed here.
    rows = cluster.with_vectors(reduced, True).select("vector").toPandas()
    x = np.stack([v.toArray() for v in rows["vector"]])
    centres = np.stack(model.clusterCenters())
    expected = ((x[:, None, :] - centres[None]) ** 2).sum(axis=2).min(axis=1).sum()
    assert fit["cost"] == pytest.approx(expected, rel=1e-6)


def _wide_features(spark, n=240, dim=1280, seed=5):
    """CNN-like: non-negative, 1280 wide, a slowly decaying spectrum, some dead (constant) channels."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(60, dim)) * np.linspace(3.0, 0.2, 60)[:, None]
    x = np.maximum(rng.normal(size=(n, 60)) @ basis + rng.normal(0, 0.3, (n, dim)) + 1.0, 0.0)
    x[:, :7] = 0.0
    rows = [(f"c{i % 6}/{i}.jpg", f"c{i % 6}", r.astype(np.float32).tolist()) for i, r in enumerate(x)]
    return with_added_columns(spark.createDataFrame(rows, "key string, category string, features array<float>"))


@pytest.mark.parametrize("l2_normalize", [False, True])
def test_reduction_matches_scikit_learn(spark, l2_normalize):
    """Centred PCA (after optional L2 normalisation) gives scikit-learn's explained variance and
    projection (up to sign) on wide features, where Spark ML's own PCA.fit went wrong without a
    native LAPACK."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import normalize

    features = _wide_features(spark)
    rows = features.orderBy("key").collect()
    x = np.array([r["features"] for r in rows], dtype=np.float64)
    x = normalize(x) if l2_normalize else x
    want = PCA(10, svd_solver="full").fit(x)
    model = pca.fit_pca(features, 10, None, n_rows=len(rows), l2_normalize=l2_normalize)
    np.testing.assert_allclose(pca.explained_variance(model), want.explained_variance_ratio_, rtol=1e-5)
    got = np.array([r["pca"] for r in pca.project(model, features).orderBy("key").collect()])
    expected = want.transform(x)
    signs = np.sign((got * expected).sum(axis=0))
    np.testing.assert_allclose(got * signs, expected, atol=1e-5 * np.abs(expected).max())


def test_mean_and_covariance_in_one_pass_match_numpy(spark):
    """The executors' partial sums (one per core, some partitions empty) add up to numpy's covariance,
    for rows that are not centred and with a constant dimension (a dead ReLU channel)."""
    from pyspark.ml.functions import array_to_vector

    rng = np.random.default_rng(3)
    x = rng.normal(size=(37, 6)) * [1.0, 2.0, 3.0, 0.0, 1.0, 5.0] + 4.0
    frame = spark.createDataFrame([(row.tolist(),) for row in x], "v array<double>").repartition(50)
    mean, cov = sums_of(frame.select(array_to_vector("v").alias("vector")), "vector").mean_and_covariance()
    np.testing.assert_allclose(mean, x.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), atol=1e-10)
    single = spark.createDataFrame([([1.0, 2.0],)], "v array<double>").select(array_to_vector("v").alias("vector"))
    mean, cov = sums_of(single, "vector").mean_and_covariance()
    np.testing.assert_array_equal(mean, [1.0, 2.0])
    np.testing.assert_array_equal(cov, np.zeros((2, 2)))


def test_pca_model_saves_and_loads(spark, tmp_path):
    from pyspark.ml import PipelineModel

    features = _features(spark)
    model = pca.fit_pca(features, 3, None, n_rows=48)
    model.write().overwrite().save(str(tmp_path / "model"))
    loaded = PipelineModel.load(str(tmp_path / "model"))
    before = [r["pca"] for r in pca.project(model, features).orderBy("key").collect()]
    after = [r["pca"] for r in pca.project(loaded, features).orderBy("key").collect()]
    np.testing.assert_allclose(np.array(after), np.array(before))


def test_feature_table_never_mixes_models():
    from spark_jobs.feature_table import same_model

    def step(uri, stored_ms, backbone, tag):
        return {"step_uri": uri, "stored_ms": stored_ms,
                "params": {"backbone": backbone, "weights": "imagenet", "model_tag": tag}}

    old = step("s3a://f/runs/a/featurize", 1_000, "resnet50", "imagenet-keras3")
    new = step("s3a://f/runs/b/featurize", 2_000, "efficientnet_lite0", "imagenet-pypi0.1.0")
    newer = step("s3a://f/runs/c/featurize", 3_000, "efficientnet_lite0", "imagenet-pypi0.1.0")
    kept, left_out = same_model([old, new, newer])
    assert kept == [new, newer] and left_out == [old]
    assert same_model([]) == ([], [])


def test_quality_evaluation_agrees_with_scikit_learn_on_separable_data(spark):
    """`make quality`'s scoring: the pipeline's PCA + KMeans and scikit-learn's KMeans on the same
    vectors find the same separated classes."""
    from fruitflow.quality import evaluate

    features = _features(spark, n_per_class=10, classes=5, dim=64, seed=2)
    result = evaluate(features, 50, k=4, target_variance=None, l2_before=True, l2_after=True, seed=3, starts=3)
    assert result["k"] == 4 and 0 < result["explained_variance"] <= 1
    assert result["ari"] == pytest.approx(1.0) and result["sklearn_ari"] == pytest.approx(1.0)
    assert result["nmi"] == pytest.approx(1.0) and result["purity"] == pytest.approx(1.0)


def test_colour_histogram_joins_the_reduction_with_its_weight(spark):
    """With a `color` column and color_weight > 0 the PCA input is [unit CNN vector, weight x colour]:
    explained variance and projection are scikit-learn's on that concatenation; weight 0 leaves it out."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import normalize

    rng = np.random.default_rng(11)
    n, dim, bins = 90, 40, 12
    x = np.maximum(rng.normal(size=(n, dim)) + 1.0, 0.0)
    colour = normalize(rng.random((n, bins)) ** 3)
    rows = [(f"c{i % 3}/{i}.jpg", f"c{i % 3}", x[i].astype(np.float32).tolist(), colour[i].astype(np.float32).tolist())
            for i in range(n)]
    frame = with_added_columns(spark.createDataFrame(
        rows, "key string, category string, features array<float>, color array<float>"))
    x32, colour32 = x.astype(np.float32).astype(np.float64), colour.astype(np.float32).astype(np.float64)
    for weight in (0.0, 0.7):
        model = pca.fit_pca(frame, 6, None, n_rows=n, l2_normalize=True, color_weight=weight)
        assert pca.color_weight_of(model) == pytest.approx(weight)
        joined = normalize(x32) if weight == 0 else np.hstack([normalize(x32), weight * colour32])
        reference = PCA(6).fit(joined)
        np.testing.assert_allclose(pca.explained_variance(model), reference.explained_variance_ratio_, atol=1e-6)
        ours = np.stack([r["pca"] for r in pca.project(model, frame).orderBy("key").collect()])
        order = np.argsort([r[0] for r in rows])
        np.testing.assert_allclose(np.abs(ours), np.abs(reference.transform(joined)[order]), atol=1e-5)


def test_kmeans_started_from_an_earlier_runs_clusters_keeps_them_and_skips_the_sample_start(spark):
    """An incremental run starts from the centres, in its own space, of the clusters the last run gave the
    photos both runs saw: Lloyd's passes alone, the same partition, the new photos in their classes."""
    features = _features(spark, n_per_class=15)
    reduced = pca.project(pca.fit_pca(features, 5, None, n_rows=60), features).cache()
    earlier = reduced.where(~reduced.key.endswith("/14.jpg"))  # the last run had 14 photos of each class
    model, _ = cluster.fit_kmeans(earlier, 4, seed=1, starts=3)
    clusters = cluster.assign(model, earlier).select("key", "cluster")

    centres = cluster.partition_centres(reduced, clusters, 4)  # 60 photos, under the sample's cap: all of them
    unit = cluster.with_vectors(earlier, True).join(clusters, "key").toPandas()
    for c in range(4):
        members = np.stack([v.toArray() for v in unit[unit["cluster"] == c]["vector"]])
        assert np.allclose(centres[c], members.mean(axis=0))
    warm, fit = cluster.fit_kmeans(reduced, 4, seed=1, starts=3, initial=centres)
    assert fit["start_points"] == 0 and fit["starts"] == 0
    assigned = cluster.assign(warm, reduced)
    assert cluster.scores_from_contingency(cluster.contingency(assigned))["ari"] == pytest.approx(1.0)
    before = dict(clusters.collect())
    assert all(before[r.key] == r.cluster for r in assigned.collect() if r.key in before)  # the same numbers
    # from a sample of the photos, the centres of the same clusters, near the exact ones
    sampled = cluster.partition_centres(reduced, clusters, 4, max_points=24, seed=3, n_rows=60)
    assert sampled.shape == (4, 5) and np.allclose(sampled, centres, atol=0.2)
    assert not np.allclose(sampled, centres, atol=1e-9)  # a sample indeed, not every photo


def test_an_earlier_partition_missing_a_cluster_gives_no_start_and_foreign_numbers_are_left_out(spark):
    """The assignments file was written by Spark nodes: cluster numbers outside 0..k-1 count for nothing,
    and a cluster none of this table's photos is in leaves KMeans to a fresh start."""
    features = _features(spark)
    reduced = pca.project(pca.fit_pca(features, 5, None, n_rows=48), features)
    keys = [r.key for r in reduced.select("key").collect()]
    four = spark.createDataFrame([(key, int(key[1])) for key in keys], "key string, cluster int")
    assert cluster.partition_centres(reduced, four, 4).shape == (4, 5)
    three = four.where("cluster < 3")
    assert cluster.partition_centres(reduced, three, 4) is None
    foreign = three.union(spark.createDataFrame([(keys[-1], 7), (keys[-2], -1)], "key string, cluster int"))
    assert cluster.partition_centres(reduced, foreign, 4) is None


def _view_rows(spark, keys, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    rows = [(key, key.split("/")[0], 0.0, 0.0, rng.normal(size=dim).tolist(), f"pack@{i}")
            for i, key in enumerate(keys)]
    return spark.createDataFrame(rows, "key string, category string, pc1 double, pc2 double, pca array<double>, "
                                       "jpeg string")


def test_the_views_sample_keeps_its_photos_as_the_table_grows(spark):
    """The driver's views draw the same photos run after run: at 200 photos and at 220, the 50 sampled from the
    larger table are those sampled before but for the new photos that took their place, in one fixed order."""
    before_keys = [f"c{i % 4}/{i}.jpg" for i in range(200)]
    grown_keys = before_keys + [f"c{i % 4}/new{i}.jpg" for i in range(20)]
    before = cluster.sample(_view_rows(spark, before_keys).repartition(3), 50, seed=7, n_rows=200)
    grown = cluster.sample(_view_rows(spark, grown_keys).repartition(5), 50, seed=7, n_rows=220)
    assert len(before) == len(grown) == 50
    new = [k for k in grown["key"] if "new" in k]
    assert set(grown["key"]) - set(new) <= set(before["key"])  # nothing but new photos came in
    assert len(new) < 20  # and only those hashing below the photos they displaced
    kept = [k for k in before["key"] if k in set(grown["key"])]
    assert [k for k in grown["key"] if k not in new] == kept  # the same order: the first rows stay first
    every = cluster.sample(_view_rows(spark, before_keys), 500, seed=7, n_rows=200)  # under the cap: all
    assert len(every) == 200 and list(every["key"][:50]) == list(before["key"])


def test_an_earlier_t_sne_view_is_carried_over_and_new_photos_placed_among_their_neighbours():
    """An incremental run keeps the earlier view's places for the photos it had and puts each new one among
    its nearest neighbours; a view holding too few of the photos in view is not carried."""
    rng = np.random.default_rng(4)
    centres = np.eye(4)
    vectors = [centres[i % 4] + rng.normal(0, 0.05, 4) for i in range(100)]
    subset = pd.DataFrame({"key": [f"c{i % 4}/{i}.jpg" for i in range(100)], "pca": vectors})
    places = {0: (0.0, 0.0), 1: (50.0, 0.0), 2: (0.0, 50.0), 3: (50.0, 50.0)}
    kept = pd.DataFrame([(key, *places[i % 4]) for i, key in enumerate(subset["key"]) if i < 90],
                        columns=["key", "tsne1", "tsne2"])
    x = np.stack(vectors)
    view, placed = tsne_view.carried(subset, x, pd.concat([kept, kept.head(3)]))  # repeated keys count once
    assert placed == 10 and len(view) == 100 and list(view["key"]) == list(subset["key"])
    for i, row in view.iterrows():
        assert (row["tsne1"], row["tsne2"]) == places[i % 4]
    assert tsne_view.carried(subset, x, kept.head(70)) is None  # 70 % of the photos: redrawn
    # kept between runs as JSON, read back only as keys and as many finite places
    assert tsne_view.parse(tsne_view.to_json(view)).equals(view[["key", "tsne1", "tsne2"]])
    for planted in ("[]", '{"keys": ["a"], "tsne": [[0, 1], [2, 3]]}', '{"keys": [1], "tsne": [[0, 1]]}',
                    '{"keys": ["a"], "tsne": [[NaN, 1]]}'):
        with pytest.raises(ValueError):
            tsne_view.parse(planted)
