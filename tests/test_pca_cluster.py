"""PCA (k and target variance) and clustering metrics on a local SparkSession."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from spark_jobs import cluster, pca


def _features(spark, n_per_class=12, classes=4, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (classes, dim))
    rows = []
    for c in range(classes):
        for i in range(n_per_class):
            rows.append((f"c{c}/{i}.jpg", f"c{c}", (centres[c] + rng.normal(0, 1, dim)).astype(float).tolist()))
    return spark.createDataFrame(rows, "key string, category string, features array<float>")


def test_choose_k():
    explained = np.array([0.5, 0.3, 0.1, 0.05, 0.05])
    assert pca.choose_k(explained, 3, None) == 3
    assert pca.choose_k(explained, 3, 0.8) == 2
    assert pca.choose_k(explained, 3, 0.95) == 4
    assert pca.choose_k(explained, 3, 1.0) == 5


def test_pca_k_and_target_variance(spark):
    features = _features(spark)
    model = pca.fit_pca(features, 5, None, n_rows=48)
    assert model.getK() == 5
    explained = model.explainedVariance.toArray()
    assert 0 < explained.sum() <= 1 + 1e-9 and np.all(np.diff(explained) <= 1e-12)
    by_target = pca.fit_pca(features, 20, 0.9, n_rows=48)
    cumulative = np.cumsum(by_target.explainedVariance.toArray())
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
    model, costs = cluster.fit_kmeans(reduced, 4, seed=1, starts=3)
    assert len(costs) == 3
    assigned = cluster.assign(model, reduced)
    scores = cluster.scores_from_contingency(cluster.contingency(assigned))
    assert scores["ari"] == pytest.approx(1.0) and scores["purity"] == pytest.approx(1.0)
    assert 0 < cluster.silhouette(assigned) <= 1
