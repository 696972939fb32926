"""The train step's transforms on a local SparkSession, and the Spark-free maths `classify` uses checked
against Spark ML's own transform and probabilities on the same models."""

import numpy as np
import pandas as pd
import pytest
from pyspark.ml.functions import vector_to_array
from pyspark.sql import functions as F

from spark_jobs import pca, train
from spark_jobs.classifier_start import TOL, Start, carried_over, fresh_objective, start_tol, went_wrong
from spark_jobs.common import recognition
from spark_jobs.common.config import Config
from spark_jobs.step_outputs import with_added_columns


def _table(spark, sizes: dict[str, int], dim=24, colours=8, seed=0):
    """A feature table: one well separated centre per class, CNN features and a colour histogram."""
    rng = np.random.default_rng(seed)
    rows = []
    for c, (name, n) in enumerate(sizes.items()):
        centre = rng.normal(0, 5, dim)
        colour = np.abs(rng.normal(0, 1, colours))
        for i in range(n):
            hist = np.abs(colour + rng.normal(0, 0.1, colours))
            rows.append((f"{name}/{i}.jpg", name, (centre + rng.normal(0, 1, dim)).tolist(),
                         (hist / np.linalg.norm(hist)).tolist()))
    return with_added_columns(spark.createDataFrame(
        rows, "key string, category string, features array<float>, color array<float>"))


def _reduced(spark, sizes, k=6, **kw):
    features = _table(spark, sizes, **kw)
    model = pca.fit_pca(features, k, None, features.count(), l2_normalize=True, color_weight=1.0)
    return features, model, pca.project(model, features)


def test_split_holds_out_a_share_of_each_class_and_never_a_lone_image(spark):
    _, _, reduced = _reduced(spark, {"one": 1, "two": 2, "nine": 9, "many": 25})
    split = train.split_held_out(reduced, 0.25, seed=42)
    held = {r["category"]: r["n"] for r in split.filter("held_out").groupBy("category").agg(
        F.count(F.lit(1)).alias("n")).collect()}
    assert held == {"two": 1, "nine": 2, "many": 6}  # floor(n/4), at least one, the lone image trains
    again = train.split_held_out(reduced, 0.25, seed=42).filter("held_out").select("key").collect()
    assert sorted(r.key for r in again) == sorted(r.key for r in split.filter("held_out").select("key").collect())
    other = train.split_held_out(reduced, 0.25, seed=7).filter("held_out").select("key").collect()
    assert {r.key for r in other} != {r.key for r in again}


def test_scores_from_confusion_counts():
    counts = pd.DataFrame([("a", "a", 8), ("a", "b", 2), ("b", "b", 5), ("c", "c", 4), ("c", "a", 1)],
                          columns=["category", "predicted", "count"])
    scores = train.scores(counts)
    assert scores["accuracy"] == pytest.approx(17 / 20)
    assert scores["per_class_recall"] == {"a": 0.8, "b": 1.0, "c": 0.8}
    f1 = [2 * (8 / 9) * 0.8 / (8 / 9 + 0.8), 2 * (5 / 7) * 1.0 / (5 / 7 + 1.0), 2 * 1.0 * 0.8 / 1.8]
    assert scores["macro_f1"] == pytest.approx(np.mean(f1))
    assert scores["confused_pairs"][0] == {"category": "a", "predicted": "b", "count": 2}
    assert train.scores(counts.iloc[:0])["accuracy"] is None


def test_classifier_separates_classes_and_numpy_mirrors_spark(spark):
    features, pca_model, reduced = _reduced(spark, {f"fruit{i}": 12 for i in range(5)})
    split = train.split_held_out(reduced, 0.25, seed=42).cache()
    cfg = Config()
    model = train.fit_classifier(split.filter(~F.col("held_out")), cfg.reg_param, cfg.classifier_max_iter)
    predictions = train.predict(model, split.filter("held_out"))
    scores = train.scores(train.confusion(predictions))
    assert scores["accuracy"] == 1.0 and scores["macro_f1"] == 1.0

    # classify's numpy path: PCA preparation, then the regression's probabilities, as Spark ML computes them
    prep = train.pca_preparation(pca_model)
    assert prep["l2_normalize"] and prep["color_weight"] == 1.0
    rows = features.orderBy("key").toPandas()
    mine = recognition.reduce(np.stack(rows["features"]), np.stack(rows["color"]), l2_normalize=True,
                              color_weight=1.0, mean=prep["mean"], components=prep["components"])
    spark_side = np.stack(reduced.orderBy("key").toPandas()["pca"])
    assert np.abs(mine - spark_side).max() < 1e-9
    regression = model.stages[1]
    scored = regression.transform(train.classifier_vectors(reduced.orderBy("key")))
    spark_probability = np.stack(scored.select(vector_to_array("probability").alias("p")).toPandas()["p"])
    probability = recognition.softmax(mine @ regression.coefficientMatrix.toArray().T
                                      + regression.interceptVector.toArray())
    assert np.abs(probability - spark_probability).max() < 1e-6


def test_unknown_threshold_lets_the_quantile_pass():
    rng = np.random.default_rng(0)
    bank = recognition.unit_rows(rng.normal(size=(200, 8)))
    held = recognition.unit_rows(bank[:100] + rng.normal(0, 0.05, (100, 8)))
    threshold = recognition.unknown_threshold(held, bank, 0.95)
    passed = recognition.nearest_distances(held, bank) <= threshold
    assert passed.mean() >= 0.95
    far = recognition.unit_rows(rng.normal(size=(50, 8)) + 10)  # another region of the sphere
    assert (recognition.nearest_distances(far, bank) > threshold).mean() > 0.9
    assert recognition.unknown_threshold(held[:0], bank, 0.95) == float("inf")


def test_model_name_says_what_it_depends_on():
    manifest = {"step_uri": "s3a://fruitflow-features/runs/manual__2026/pca",
                "params": {"backbone": "efficientnet_lite0", "model_tag": "imagenet-pypi1", "k": 20}}
    assert train.model_name(manifest) == "classifier-efficientnet_lite0-imagenet-pypi1-pca20-manual__2026"


def test_a_fruit_the_classifier_never_saw_is_mostly_unknown(spark, lite0_files):
    """Real photos, the offline backbone: trained without one fruit, its photos fall beyond the distance
    that 95 % of the held-out photos of known fruits stay within (calibrated as the train step does)."""
    from spark_jobs.common.images import color_histogram, decode, preprocess
    from spark_jobs.common.models import OnnxFeaturizer
    from tests.helpers import SAMPLE_500, real_images

    paths = real_images(SAMPLE_500, 8, 12)
    rgb = np.stack([preprocess(decode(p.read_bytes(), 10**7)) for p in paths])
    cnn = OnnxFeaturizer(lite0_files["onnx"], threads=2)(rgb.astype(np.float32))
    rows = [(f"{p.parent.name}/{p.name}", p.parent.name, f.tolist(), color_histogram(x).tolist())
            for p, f, x in zip(paths, cnn, rgb)]
    features = with_added_columns(spark.createDataFrame(
        rows, "key string, category string, features array<float>, color array<float>"))
    reduced = pca.project(pca.fit_pca(features, 20, None, len(rows), True, 1.0), features).cache()
    classes = sorted({p.parent.name for p in paths})
    flagged = []
    for unseen in classes[::3]:
        split = train.split_held_out(reduced.filter(F.col("category") != unseen), 0.25, seed=42)
        bank = recognition.unit_rows(np.stack(split.filter(~F.col("held_out")).toPandas()["pca"]))
        held = recognition.unit_rows(np.stack(split.filter("held_out").toPandas()["pca"]))
        threshold = recognition.unknown_threshold(held, bank, 0.95)
        new = recognition.unit_rows(np.stack(reduced.filter(F.col("category") == unseen).toPandas()["pca"]))
        flagged.append(float((recognition.nearest_distances(new, bank) > threshold).mean()))
    assert np.mean(flagged) >= 0.75, dict(zip(classes[::3], flagged))


def test_a_classifier_carried_over_to_another_pca_of_the_same_span_gives_the_same_logits():
    rng = np.random.default_rng(3)
    d, k = 9, 4
    c_old = np.linalg.qr(rng.normal(size=(d, k)))[0]
    rotation = np.linalg.qr(rng.normal(size=(k, k)))[0] @ np.diag([1, -1, 1, -1])  # turned, signs flipped
    m_old = rng.normal(size=d)
    prep = {"components": c_old @ rotation, "mean": m_old + c_old @ rng.normal(size=k)}  # a new mean in the span
    earlier = {"coefficients": rng.normal(size=(3, k)), "intercepts": rng.normal(size=3), "pca_components": c_old,
               "pca_mean": m_old, "classes": np.array(["a", "b", "c"])}
    x = m_old + rng.normal(size=(20, k)) @ c_old.T  # inputs in the span
    coefficients, intercepts = carried_over(earlier, prep)
    before = (x - m_old) @ c_old @ earlier["coefficients"].T + earlier["intercepts"]
    after = (x - prep["mean"]) @ prep["components"] @ coefficients.T + intercepts
    assert np.abs(before - after).max() < 1e-9
    with pytest.raises(ValueError):
        carried_over(earlier, {"components": np.zeros((d + 1, k)), "mean": np.zeros(d + 1)})


def test_a_start_near_the_optimum_stops_where_sparks_own_start_stops():
    counts = {"a": 30, "b": 30, "c": 30, "d": 30}
    assert fresh_objective(np.array(list(counts.values()))) == pytest.approx(np.log(4))
    tol = start_tol(0.05, counts, ["d", "c", "b", "a"])
    assert tol == pytest.approx(TOL * np.log(4) / 0.05)  # the same absolute stop: tol x the start's objective
    assert start_tol(0.05, {**counts, "e": 3}, list(counts)) == TOL  # a new fruit: a farther start
    assert start_tol(float("nan"), counts, list(counts)) == TOL


def test_a_fit_from_the_last_runs_classifier_ends_where_a_fresh_fit_ends_in_fewer_iterations(spark):
    """The next run's table: the same photos and a tenth more, and a PCA fit again on it. Started from the
    first run's classifier (carried over to the new PCA), the fit predicts what a fresh fit predicts."""
    cfg = Config()
    features, first_pca, reduced = _reduced(spark, {f"fruit{i}": 40 for i in range(6)}, k=8)
    first = train.fit_classifier(train.split_held_out(reduced, 0.25, seed=42).filter("not held_out"),
                                 cfg.reg_param, cfg.classifier_max_iter)
    grown = features.unionByName(features.sample(0.1, seed=1).withColumn("key", F.concat(F.lit("new/"), "key")))
    second_pca = pca.fit_pca(grown, 8, None, grown.count(), l2_normalize=True, color_weight=1.0)
    split = train.split_held_out(pca.project(second_pca, grown), 0.25, seed=42).cache()
    rows = split.filter("not held_out")
    counts = {r.category: r["count"] for r in rows.groupBy("category").count().collect()}

    regression = first.stages[1]
    prep = train.pca_preparation(first_pca)
    earlier = {"coefficients": regression.coefficientMatrix.toArray(), "classes": np.array(train.classes_of(first)),
               "intercepts": regression.interceptVector.toArray(), "pca_mean": prep["mean"],
               "pca_components": prep["components"]}
    coefficients, intercepts = carried_over(earlier, train.pca_preparation(second_pca))
    classes = train.classes_of(first)
    tol = start_tol(regression.summary.objectiveHistory[-1], counts, classes)
    start = Start(classes, coefficients, intercepts, tol, regression.summary.objectiveHistory[-1])
    fresh = train.fit_classifier(rows, cfg.reg_param, cfg.classifier_max_iter)
    warm = train.fit_classifier(rows, cfg.reg_param, cfg.classifier_max_iter, start)

    fresh_history, warm_history = fresh.stages[1].summary.objectiveHistory, warm.stages[1].summary.objectiveHistory
    assert warm_history[0] < fresh_history[0] / 5  # it started near the optimum
    assert warm.stages[1].summary.totalIterations < fresh.stages[1].summary.totalIterations
    assert warm_history[-1] <= fresh_history[-1] + TOL * fresh_history[0]
    predicted = [train.predict(model, split.filter("held_out")).orderBy("key").select("predicted").collect()
                 for model in (fresh, warm)]
    assert predicted[0] == predicted[1]


def test_a_start_that_leaves_a_photo_no_chance_or_starts_far_is_redone_from_sparks_own_start(spark):
    """An earlier classifier fit on a handful of photos can give a new photo no chance at all: the
    objective at its start is infinite and L-BFGS returns it unmoved (held-out accuracy 0 in a real run).
    One whose start is far from the last run's end had its stop scaled for a near start."""
    cfg = Config()
    _, _, reduced = _reduced(spark, {f"fruit{i}": 12 for i in range(3)}, k=4)
    rows = train.split_held_out(reduced, 0.25, seed=42).filter("not held_out").cache()
    classes = [f"fruit{i}" for i in range(3)]
    fresh = train.fit_classifier(rows, cfg.reg_param, cfg.classifier_max_iter)
    hopeless = Start(classes, np.full((3, 4), 1e300) * [[1], [-1], [0]], np.zeros(3), TOL, 0.01)
    model, started = train.fit_checked(rows, cfg, hopeless, {"from": "s3a://b/runs/r0/train", "tol": TOL})
    assert started == {"from": None, "tol": TOL, "redone": {"from": "s3a://b/runs/r0/train",
                                                             "because": "its objective is not finite"}}
    history = model.stages[1].summary.objectiveHistory
    assert history == fresh.stages[1].summary.objectiveHistory and np.isfinite(history[-1])

    far = Start(classes, np.ones((3, 4)), np.zeros(3), 1e-3, 1e-4)  # a loose stop meant for a near start
    assert went_wrong([5.0, 0.5], far).startswith("it started at 5")
    assert went_wrong([1.2e-4, 1e-4], far) is None and went_wrong([5.0, 0.5], Start(classes, far.coefficients,
                                                                                   far.intercepts, TOL, 1e-4)) is None
