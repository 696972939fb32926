"""Step 5 - train: PCA vectors -> a fruit classifier (Spark ML multinomial logistic regression), its
held-out quality, and the small artifacts `fruitflow classify` needs to recognise a photo without Spark.

Split: per fruit class, a fixed-seed `test_fraction` of the images is held out (at least one when the
class has two or more; a class with a single image trains only and is counted). The classifier is fit on
the rest; accuracy, macro F1, per-class recall and the most confused pairs come from the held-out
category x prediction counts (a small aggregate, nothing per image on the driver).

Start: the fit starts from the last train step's classifier made from the same vectors and
regularisation (`classifier_start`): a run that adds a few photos to a big table then runs a few L-BFGS
iterations, each a Spark job over the table, instead of a fit from Spark's own start.

Export (beside the Spark ML model, in the models bucket): the PCA preparation (normalisation, colour
weight, mean, components), the classifier's coefficients, a capped bank of training vectors for the
nearest neighbours, and the distance beyond which a photo is "unknown" (calibrated so that
`unknown_quantile` of the held-out photos of known fruits pass). Arrays go to an .npz read without
pickle, the rest to JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile

import numpy as np
import pandas as pd
from pyspark.ml import PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import Normalizer, StandardScalerModel, StringIndexer
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from spark_jobs import step_cli
from spark_jobs.classifier_start import (
    STARTS_FROM_THE_SAME,
    TOL,
    Start,
    carried_over,
    read_export,
    start_tol,
    went_wrong,
)
from spark_jobs.common import storage
from spark_jobs.common.config import Config
from spark_jobs.common.manifest import (
    Timings,
    begin_step,
    newest_matching,
    read_manifest,
    store_order,
    write_manifest,
)
from spark_jobs.common.recognition import EXPORT_ARRAYS, EXPORT_FORMAT, EXPORT_JSON, unit_rows, unknown_threshold
from spark_jobs.step_outputs import read_output

STEP = "train"


# --------------------------------------------------------------------------- transform


def split_held_out(reduced: DataFrame, test_fraction: float, seed: int) -> DataFrame:
    """Adds `held_out`: per category, the first floor(n * test_fraction) images (at least 1 when n >= 2,
    never all of them) in a seeded hash order of their keys. Deterministic for a given table and seed."""
    per_class = Window.partitionBy("category")
    order = per_class.orderBy(F.xxhash64(F.col("key"), F.lit(seed)), "key")
    n = F.count(F.lit(1)).over(per_class)
    n_test = F.when(n >= 2, F.least(n - 1, F.greatest(F.lit(1), F.floor(n * test_fraction)))).otherwise(0)
    return reduced.withColumn("held_out", F.row_number().over(order) <= n_test)


def classifier_vectors(reduced: DataFrame) -> DataFrame:
    """The classifier's input: the PCA vector as it is (logistic regression standardises it itself)."""
    return reduced.withColumn("vector", array_to_vector("pca"))


def fit_classifier(train: DataFrame, reg_param: float, max_iter: int, start: Start | None = None) -> PipelineModel:
    """StringIndexer (category -> label, most frequent first) + multinomial logistic regression, from
    `start` (an earlier classifier in this run's PCA space) when given, else from Spark's own start."""
    indexer = StringIndexer(inputCol="category", outputCol="label", stringOrderType="frequencyDesc").fit(train)
    regression = LogisticRegression(featuresCol="vector", labelCol="label", family="multinomial",
                                    regParam=reg_param, elasticNetParam=0.0, maxIter=max_iter, tol=TOL)
    if start is not None:
        regression.setTol(start.tol)
        # Spark ML has the initial model on the JVM side only (`setInitialModel`)
        regression._java_obj.setInitialModel(start.java_model(train.sparkSession, list(indexer.labels)))
    fitted = regression.fit(indexer.transform(classifier_vectors(train)))
    return PipelineModel(stages=[indexer, fitted])


def fit_checked(train: DataFrame, cfg: Config, start: Start | None, started: dict) -> tuple[PipelineModel, dict]:
    """`fit_classifier` from `start`, and what the manifest says of the start: a fit that went wrong from it
    (`went_wrong`) is redone from Spark's own start."""
    model = fit_classifier(train, cfg.reg_param, cfg.classifier_max_iter, start)
    if start is None or not (reason := went_wrong(model.stages[1].summary.objectiveHistory, start)):
        return model, started
    print(f"[train] the fit from {started['from']} is redone from Spark's own start: {reason}", file=sys.stderr)
    return (fit_classifier(train, cfg.reg_param, cfg.classifier_max_iter),
            {"from": None, "tol": TOL, "redone": {"from": started["from"], "because": reason}})


def classes_of(model: PipelineModel) -> list[str]:
    return list(model.stages[0].labels)


def predict(model: PipelineModel, frame: DataFrame) -> DataFrame:
    """key, category, ... -> the same plus `predicted` (a category name) and `confidence`."""
    classes = F.array(*[F.lit(c) for c in classes_of(model)])
    scored = model.stages[1].transform(classifier_vectors(frame))
    probability = vector_to_array("probability")
    return scored.select(
        *frame.columns,
        F.element_at(classes, F.col("prediction").cast("int") + 1).alias("predicted"),
        F.array_max(probability).alias("confidence"),
    )


def confusion(predictions: DataFrame) -> pd.DataFrame:
    """category, predicted, count: at most n_classes^2 rows reach the driver."""
    rows = predictions.groupBy("category", "predicted").count().collect()
    return pd.DataFrame([r.asDict() for r in rows], columns=["category", "predicted", "count"])


def scores(counts: pd.DataFrame, top_pairs: int = 10) -> dict:
    """Accuracy, macro F1 and per-class recall over the classes held out, and the most confused pairs,
    from the confusion counts (scikit-learn's metrics, each count a sample weight)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    if counts.empty:
        return {"accuracy": None, "macro_f1": None, "per_class_recall": {}, "confused_pairs": []}
    truth, predicted, weight = counts["category"], counts["predicted"], counts["count"].to_numpy()
    labels = sorted(truth.unique())
    _, recall, f1, _ = precision_recall_fscore_support(truth, predicted, labels=labels, sample_weight=weight,
                                                       zero_division=0)
    wrong = counts[truth != predicted].sort_values(["count", "category", "predicted"],
                                                   ascending=[False, True, True]).head(top_pairs)
    return {
        "accuracy": float(accuracy_score(truth, predicted, sample_weight=weight)),
        "macro_f1": float(np.mean(f1)),
        "per_class_recall": {label: round(float(r), 4) for label, r in zip(labels, recall)},
        "confused_pairs": [{"category": r.category, "predicted": r.predicted, "count": int(r.count)}
                           for r in wrong.itertuples()],
    }


def pca_preparation(model: PipelineModel) -> dict:
    """What the PCA step's PipelineModel does to a (features, color) pair, as plain arrays: [unit length],
    [colour histogram times its weight appended], minus the mean, times the components."""
    from spark_jobs.pca import color_weight_of

    scaler = next(stage for stage in model.stages if isinstance(stage, StandardScalerModel))
    return {"l2_normalize": any(isinstance(stage, Normalizer) for stage in model.stages),
            "color_weight": color_weight_of(model), "mean": scaler.mean.toArray(),
            "components": model.stages[-1].pc.toArray()}  # the PCAModel is the last stage (pca.fit_pca)


def to_unit_if(vectors: np.ndarray, l2_normalize: bool) -> np.ndarray:
    """The clustering geometry: unit length under cosine geometry."""
    return unit_rows(vectors) if l2_normalize else vectors


# --------------------------------------------------------------------------- load


def run(spark: SparkSession, cfg, *, input_uri: str, out_uri: str) -> dict:
    timings = Timings(spark, STEP)
    upstream = read_manifest(spark, input_uri, cfg)
    begin_step(spark, out_uri)
    reduced = read_output(spark, upstream["outputs"]["reduced"])
    # One partition per executor core, not the window's shuffle partitions: every L-BFGS iteration is a
    # Spark job over this table, mostly task scheduling on small tables (bench/RESULTS.md).
    cores = spark.sparkContext.defaultParallelism
    split = split_held_out(reduced, cfg.test_fraction, cfg.seed).coalesce(cores).cache()
    n_images = split.count()
    per_class = {row["category"]: (row["n"], row["n_test"]) for row in split.groupBy("category").agg(
        F.count(F.lit(1)).alias("n"), F.sum(F.col("held_out").cast("int")).alias("n_test")).collect()}
    n_test = sum(held for _, held in per_class.values())
    train, test = split.filter(~F.col("held_out")), split.filter(F.col("held_out"))
    if len(per_class) < 2:  # every class keeps at least one training image (split_held_out)
        raise SystemExit(f"cannot train a classifier on {len(per_class)} fruit class(es): need at least 2")
    with timings.measure("fit"):
        prep = pca_preparation(PipelineModel.load(upstream["outputs"]["model"]))  # the warm start's and export's
        start, started = warm_start(spark, cfg, upstream, prep, {c: n - held for c, (n, held) in per_class.items()})
        model, started = fit_checked(train, cfg, start, started)
    predictions_uri = f"{out_uri}/held_out_predictions"
    with timings.measure("evaluate"):
        predict(model, test).drop("pca", "held_out").write.mode("overwrite").parquet(predictions_uri)
        quality = scores(confusion(spark.read.parquet(predictions_uri)))
    name = model_name(upstream)
    model_uri = f"{out_uri}/{name}"
    with timings.measure("export"):
        model.write().overwrite().save(model_uri)
        bank, bank_vectors, threshold = neighbour_bank(train, test, n_images - n_test, n_test, cfg)
        export, export_sha256 = export_artifacts(spark, out_uri, upstream, prep, model, bank, bank_vectors, threshold,
                                                 cfg)
    split.unpersist()
    summary = model.stages[1].summary
    return write_manifest(
        spark,
        out_uri,
        {
            "step": STEP,
            "inputs": {"pca": input_uri, "reduced": upstream["outputs"]["reduced"]},
            "outputs": {"model": model_uri, "held_out_predictions": predictions_uri, **export},
            "export_sha256": export_sha256,  # the signed manifest vouches for the files the driver wrote
            # the classifier the fit started from (None: Spark's own start) and the tolerance it stopped at
            "start": started,
            "counts": {"n_images": n_images, "n_train": n_images - n_test,
                       "n_held_out": n_test, "n_classes": len(per_class),
                       "n_single_image_classes": sum(1 for n, _ in per_class.values() if n == 1),
                       "n_neighbour_bank": len(bank)},
            "params": {"classifier": "multinomial logistic regression (Spark ML)", "reg_param": cfg.reg_param,
                       "max_iter": cfg.classifier_max_iter, "test_fraction": cfg.test_fraction, "seed": cfg.seed,
                       "pca_k": upstream["params"]["k"],
                       "l2_normalize": cfg.l2_normalize, "unknown_quantile": cfg.unknown_quantile,
                       "unknown_threshold": threshold, "model_name": name,
                       **{k: upstream["params"].get(k) for k in STARTS_FROM_THE_SAME}},
            # a manifest is JSON: an objective that is not finite (a fit gone wrong) is said as null
            "metrics": {**quality, "iterations": summary.totalIterations,
                        "objective": objective if math.isfinite(objective := summary.objectiveHistory[-1]) else None},
            "timings_s": dict(timings),
        },
    )


def warm_start(spark: SparkSession, cfg: Config, upstream: dict, prep: dict, counts: dict[str, int]
               ) -> tuple[Start | None, dict]:
    """The newest train step's classifier made with the same model and regularisation, carried over to this
    run's PCA (`carried_over`), and what the manifest says of the start (`start`); None: Spark's own start
    (no such step, or its export gone, altered or made from another PCA input). The objective is convex:
    where the fit starts changes how long it runs, not where it ends."""
    fresh = {"from": None, "tol": TOL}
    wanted = {"reg_param": cfg.reg_param, **{name: upstream["params"].get(name) for name in STARTS_FROM_THE_SAME}}
    last = newest_matching(spark, cfg, STEP, wanted)
    if last is None:
        return None, fresh
    try:
        earlier, meta = read_export(spark, last)
        if (meta.get("pca_l2_normalize"), meta.get("color_weight")) != (prep["l2_normalize"], prep["color_weight"]):
            raise ValueError("its PCA input was made another way")
        coefficients, intercepts = carried_over(earlier, prep)
        objective = float(last["metrics"]["objective"])
    except Exception as exc:  # noqa: BLE001 - gone (expired), altered or from an older version: Spark's start
        print(f"[train] not starting from {last['step_uri']}: {str(exc)[:300]}", file=sys.stderr)
        return None, fresh
    classes = [str(c) for c in earlier["classes"]]
    tol = start_tol(objective, counts, classes)
    return Start(classes, coefficients, intercepts, tol, objective), {"from": last["step_uri"], "tol": tol}


def neighbour_bank(train: DataFrame, test: DataFrame, n_train: int, n_test: int, cfg: Config
                   ) -> tuple[pd.DataFrame, np.ndarray, float]:
    """The Recognise page's neighbours, a capped sample of the training rows (key, category, pca, jpeg),
    their vectors, and the distance beyond which a photo is unknown, calibrated on the held-out rows."""
    from spark_jobs.cluster import capped_sample

    bank = capped_sample(train.select("key", "category", "pca", "jpeg"), cfg.neighbour_bank_max, cfg.seed, n_train)
    held = capped_sample(test.select("pca"), cfg.neighbour_bank_max, cfg.seed, n_test)
    bank_vectors = to_unit_if(np.stack(bank["pca"].to_numpy()).astype(np.float64), cfg.l2_normalize)
    held_vectors = (to_unit_if(np.stack(held["pca"].to_numpy()).astype(np.float64), cfg.l2_normalize)
                    if len(held) else np.zeros((0, bank_vectors.shape[1])))
    return bank, bank_vectors, unknown_threshold(held_vectors, bank_vectors, cfg.unknown_quantile)


def model_name(pca_manifest: dict) -> str:
    """Names what the classifier depends on: backbone, weights (their tag) and the PCA step's run."""
    params = pca_manifest["params"]
    pca_run = pca_manifest["step_uri"].rstrip("/").split("/")[-2]
    return f"classifier-{params.get('backbone')}-{params.get('model_tag')}-pca{params['k']}-{pca_run}"


def backbone_model_uri(spark: SparkSession, pca_manifest: dict, cfg: Config) -> str:
    """The ONNX file that made the table's vectors: the newest featurize step's model (all the table's
    steps were made with the same model, `table.same_model`)."""
    inputs = pca_manifest["inputs"]
    # a pca manifest from before `featurize_steps` named each step's features as `<step>/features`
    step_uris = inputs.get("featurize_steps") or [uri.rsplit("/", 1)[0] for uri in inputs["features"]]
    steps = [read_manifest(spark, uri, cfg) for uri in step_uris]
    return max(steps, key=store_order)["outputs"]["model"]


def export_artifacts(spark: SparkSession, out_uri: str, pca_manifest: dict, prep: dict, model: PipelineModel,
                     bank: pd.DataFrame, bank_vectors: np.ndarray, threshold: float, cfg) -> tuple[dict, dict]:
    """classify.npz (arrays, no pickle) and classify.json (what they mean), uploaded under export/; their
    outputs and the SHA-256 of each file. `prep`: the PCA step's preparation (`pca_preparation`)."""
    regression = model.stages[1]
    arrays = {
        "pca_mean": prep["mean"], "pca_components": prep["components"],
        "coefficients": regression.coefficientMatrix.toArray(), "intercepts": regression.interceptVector.toArray(),
        "classes": np.array(classes_of(model), dtype=str),
        "bank_vectors": bank_vectors.astype(np.float32),
        "bank_keys": np.array(bank["key"].tolist(), dtype=str),
        "bank_fruit": np.array(bank["category"].tolist(), dtype=str),
        # where each bank photo's thumbnail is (`jpeg_packs`; "" when it has none)
        "bank_jpegs": np.array([j if isinstance(j, str) else "" for j in bank["jpeg"]], dtype=str),
    }
    params = pca_manifest["params"]
    meta = {
        "format": EXPORT_FORMAT, "backbone": params.get("backbone"), "weights": params.get("weights"),
        "model_tag": params.get("model_tag"), "precision": params.get("precision"),
        "color_descriptor": params.get("color_descriptor"),
        "backbone_model": backbone_model_uri(spark, pca_manifest, cfg),
        "pca_step": pca_manifest["step_uri"], "pca_l2_normalize": prep["l2_normalize"],
        "color_weight": prep["color_weight"],
        # neighbours, clusters and the unknown threshold live in the clustering geometry
        "l2_normalize": cfg.l2_normalize, "unknown_threshold": threshold, "unknown_quantile": cfg.unknown_quantile,
        "arrays": EXPORT_ARRAYS,
    }
    export_uri = f"{out_uri}/export"
    with tempfile.TemporaryDirectory(prefix="fruitflow-train-") as tmp:
        np.savez(os.path.join(tmp, EXPORT_ARRAYS), **arrays)
        with open(os.path.join(tmp, EXPORT_JSON), "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2)
        digests = {}
        for name in (EXPORT_ARRAYS, EXPORT_JSON):
            with open(os.path.join(tmp, name), "rb") as fh:
                digests[name] = hashlib.sha256(fh.read()).hexdigest()
            storage.upload_file(spark, os.path.join(tmp, name), f"{export_uri}/{name}")
    return {"export": export_uri, "backbone_model": meta["backbone_model"]}, digests


def arg_parser():
    parser = step_cli.after_pca_parser(__doc__)
    parser.add_argument("--test-fraction", dest="test_fraction", type=step_cli.optional(float),
                        help="share of each class held out for the quality figures (default 0.25)")
    parser.add_argument("--reg-param", dest="reg_param", type=step_cli.optional(float),
                        help="L2 regularisation of the logistic regression")
    return parser


def main(argv: list[str] | None = None) -> int:
    return step_cli.run_after_pca(STEP, arg_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
