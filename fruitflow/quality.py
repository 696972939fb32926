"""`make quality`: clustering quality of each available backbone on both shared sets, with the
pipeline's own code (the featurize step's pass with ONNX Runtime, Spark ML PCA and KMeans) on a
local SparkSession.

For each backbone and set it prints the PCA explained variance, and ARI, NMI, silhouette and purity of
the pipeline's KMeans against the folder labels, beside scikit-learn's KMeans (n_init=10) on the very
same reduced vectors, so that Spark ML's KMeans is shown not to be the weak link, and the held-out
accuracy and macro F1 of the train step's classifier (targets with EfficientNet-Lite0, ImageNet weights: accuracy
>= 0.97 on s500 and >= 0.90 on s1179). The last stdout line is
one JSON object: {"<backbone>": {"s500": {...}, "s1179": {...}}}. `--variants` adds the table of
feature / reduction / clustering choices `docs/quality.md` records; `--int8` the same scores with the static
INT8 model the pipeline's `--precision int8` makes (same calibration sample), its per-image cosine to FP32
and whether its ARI stays within 0.01 of FP32's on every set.

This is an evaluation tool: it brings the (small) reduced vectors to the driver for scikit-learn; the
pipeline itself never does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from fruitflow.paths import SAMPLE_500, SAMPLE_1179, SHARED_FRUITS
from fruitflow.stack import settings as stack_settings

SETS = {"s500": SAMPLE_500, "s1179": SAMPLE_1179}


def log(msg: str) -> None:
    print(f"[quality] {msg}", file=sys.stderr, flush=True)


def quality_dir() -> Path:
    """Models and features this command keeps between runs (built once)."""
    return Path(stack_settings().state_dir) / "quality"


def available_models() -> list[tuple[str, str]]:
    from spark_jobs.common.models import resnet50_imagenet_available

    resnet = "imagenet" if resnet50_imagenet_available() else "random"
    if resnet == "random":
        log("ResNet50's ImageNet weights cannot be downloaded here: ResNet50 is measured with random weights")
    return [("resnet50", resnet), ("efficientnet_lite0", "imagenet")]


def onnx_model(backbone: str, weights: str, seed: int) -> str:
    """The model as the pipeline materialises it, kept in .state/quality (built once)."""
    from spark_jobs.common import models

    folder = quality_dir() / "models" / f"{backbone}-{weights}-seed{seed}"
    path = folder / "model.onnx"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        model = models.build_keras_model(backbone, weights, seed)
        models.export_onnx(model, str(folder / "model.tmp.onnx"), backbone)
        os.replace(folder / "model.tmp.onnx", path)
    return str(path)


def candidates(spark, data: Path):
    """Every image of `data` as the featurize step's candidates (a folder read as a manual run reads its
    prefix: `preprocess.read_prefix`)."""
    from spark_jobs import preprocess

    return preprocess.read_prefix(spark, data.resolve().as_uri()).candidates


def int8_model(fp32_path: str, images) -> str:
    """The static INT8 model the pipeline's `--precision int8` would make from this FP32 model, calibrated
    on the same sample of these images (quantize.calibration_sample); built once per sample."""
    from spark_jobs import quantize

    keys, rgb = quantize.calibration_sample(images)
    path = Path(fp32_path).with_name(f"model-int8-{quantize.calibration_hash(fp32_path, keys)}.onnx")
    if not path.exists():
        quantize.quantize_onnx(fp32_path, str(path.with_suffix(".tmp")), rgb)
        os.replace(path.with_suffix(".tmp"), path)
    return str(path)


def featurized(spark, cfg, backbone: str, weights: str, data: Path, precision: str = "fp32"):
    """key, category, features, color of every image of `data`, through the featurize step's own pass."""
    import dataclasses

    from pyspark.sql import functions as F

    from spark_jobs import featurize, preprocess

    photos = candidates(spark, data)
    model = onnx_model(backbone, weights, cfg.seed)
    if precision == "int8":
        model = int8_model(model, featurize.calibration_images(photos, cfg))
    step_cfg = dataclasses.replace(cfg, backbone=backbone, weights=weights, engine="onnx", precision=precision)
    started = time.perf_counter()
    made = featurize.featurize_photos(photos, step_cfg, model).filter(F.col("status") == preprocess.OK)
    out = quality_dir() / "features" / f"{backbone}-{weights}-{precision}-{data.name}.parquet"
    made.select("key", "category", "features", "color", "jpeg").write.mode("overwrite").parquet(str(out))
    features = spark.read.parquet(str(out)).select("key", "category", "features", "color", "jpeg").cache()
    log(f"{backbone} ({weights}, {precision}) on {data.name}: {features.count()} images featurized in "
        f"{time.perf_counter() - started:.0f}s")
    return features


def int8_fidelity(fp32, int8) -> dict:
    """Per-image cosine between the FP32 and INT8 features of the same images (driver-side: an
    evaluation of the shared sets, a few MB)."""
    import numpy as np

    from spark_jobs.quantize import cosine_per_row

    pairs = fp32.select("key", "features").join(int8.selectExpr("key", "features AS int8"), "key").toPandas()
    cosine = cosine_per_row(np.stack(pairs["features"].to_numpy()), np.stack(pairs["int8"].to_numpy()))
    return {"cosine_min": round(float(cosine.min()), 5), "cosine_median": round(float(np.median(cosine)), 5)}


def evaluate(features, n_images: int, *, k: int, target_variance: float | None, l2_before: bool,
             l2_after: bool, seed: int, starts: int, algorithm: str = "kmeans", whiten: bool = False,
             start_max_points: int | None = None, start_share: float | None = None,
             color_weight: float = 0.0, classifier: dict | None = None) -> dict:
    """One reduction + clustering choice, scored against the folder labels; with `classifier`
    (test_fraction, reg_param) also the train step's classifier on a held-out split."""
    import numpy as np
    from pyspark.sql import functions as F

    from spark_jobs import cluster, pca

    model = pca.fit_pca(features, k, target_variance, n_images, l2_normalize=l2_before, color_weight=color_weight)
    explained = pca.explained_variance(model)
    reduced = pca.project(model, features)
    if whiten:  # unit variance per component
        scale = F.array(*[F.lit(float(1 / np.sqrt(v))) for v in explained])
        reduced = reduced.withColumn("pca", F.zip_with("pca", scale, lambda x, s: x * s))
    reduced = reduced.cache()
    n_clusters = reduced.select("category").distinct().count()
    if algorithm == "kmeans":
        model_, _ = cluster.fit_kmeans(reduced, n_clusters, seed, starts, l2_after,
                                       int(n_images * start_share) if start_share else start_max_points or n_images,
                                       n_images)
        assigned = cluster.assign(model_, reduced, l2_after)
    else:
        assigned = _other_clustering(reduced, n_clusters, seed, starts, l2_after, algorithm)
    assigned = assigned.cache()
    scores = cluster.scores_from_contingency(cluster.contingency(assigned))
    result = {
        "k": len(explained),
        "explained_variance": round(float(explained.sum()), 4),
        "ari": round(scores["ari"], 4),
        "nmi": round(scores["nmi"], 4),
        "silhouette": round(cluster.silhouette(assigned, l2_after), 4),
        "purity": round(scores["purity"], 4),
    }
    if algorithm in ("kmeans", "kmeans-parallel"):
        result.update(_sklearn_reference(assigned, n_clusters, seed, l2_after))
    if classifier:
        result.update(classification(reduced, seed=seed, **classifier))
    assigned.unpersist()
    reduced.unpersist()
    return result


def classification(reduced, *, test_fraction: float, reg_param: float, max_iter: int, seed: int) -> dict:
    """The train step's split, fit and scores on these reduced vectors."""
    from pyspark.sql import functions as F

    from spark_jobs import train

    split = train.split_held_out(reduced, test_fraction, seed).cache()
    model = train.fit_classifier(split.filter(~F.col("held_out")), reg_param, max_iter)
    scores = train.scores(train.confusion(train.predict(model, split.filter("held_out"))))
    split.unpersist()
    return {"accuracy": round(scores["accuracy"], 4), "macro_f1": round(scores["macro_f1"], 4)}


def _other_clustering(reduced, n_clusters: int, seed: int, starts: int, l2_after: bool, algorithm: str):
    from pyspark.ml.clustering import BisectingKMeans, GaussianMixture, KMeans

    from spark_jobs import cluster

    vectors = cluster.with_vectors(reduced, l2_after)
    if algorithm == "kmeans-parallel":  # Spark ML's own k-means|| start, best of `starts` by cost
        fits = [KMeans(k=n_clusters, seed=seed + i, maxIter=100, tol=1e-6, featuresCol="vector",
                       predictionCol="cluster").fit(vectors) for i in range(starts)]
        best = min(fits, key=lambda m: m.summary.trainingCost)
        return best.transform(vectors).drop("vector")
    if algorithm == "bisecting":
        estimator = BisectingKMeans(k=n_clusters, seed=seed, featuresCol="vector", predictionCol="cluster")
    elif algorithm == "gmm":
        estimator = GaussianMixture(k=n_clusters, seed=seed, featuresCol="vector", predictionCol="cluster",
                                    maxIter=200)
    elif algorithm == "kmeans-cosine":
        estimator = KMeans(k=n_clusters, seed=seed, featuresCol="vector", predictionCol="cluster",
                           distanceMeasure="cosine", maxIter=100)
    else:
        raise ValueError(algorithm)
    return estimator.fit(vectors).transform(vectors).drop("vector")


def _sklearn_reference(assigned, n_clusters: int, seed: int, l2_after: bool) -> dict:
    """scikit-learn's KMeans (n_init=10) on the same vectors, against the same labels."""
    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    from sklearn.preprocessing import normalize

    rows = assigned.select("category", "pca").toPandas()
    x = np.stack(rows["pca"].to_numpy())
    x = normalize(x) if l2_after else x
    predicted = KMeans(n_clusters, n_init=10, random_state=seed).fit_predict(x)
    return {
        "sklearn_ari": round(float(adjusted_rand_score(rows["category"], predicted)), 4),
        "sklearn_nmi": round(float(normalized_mutual_info_score(rows["category"], predicted)), 4),
    }


# The choices `docs/quality.md`'s table records: (name, evaluate() keyword arguments).
VARIANTS = [
    ("study: PCA-20, KMeans", {"l2_before": False, "l2_after": False, "color_weight": 0.0}),
    ("+ L2 before PCA", {"l2_before": True, "l2_after": False, "color_weight": 0.0}),
    ("+ L2 before PCA, whitening", {"l2_before": True, "l2_after": False, "whiten": True, "color_weight": 0.0}),
    ("+ L2 before and after PCA (cosine)", {"l2_before": True, "l2_after": True, "color_weight": 0.0}),
    ("  same, Spark's own k-means|| start", {"l2_before": True, "l2_after": True, "color_weight": 0.0,
                                             "algorithm": "kmeans-parallel"}),
    ("  same, start found on half of the vectors", {"l2_before": True, "l2_after": True, "color_weight": 0.0,
                                                    "start_share": 0.5}),
    ("  same, KMeans with cosine distance", {"l2_before": True, "l2_after": False, "color_weight": 0.0,
                                             "algorithm": "kmeans-cosine"}),
    ("  same, BisectingKMeans", {"l2_before": True, "l2_after": True, "color_weight": 0.0, "algorithm": "bisecting"}),
    ("  same, GaussianMixture", {"l2_before": True, "l2_after": True, "color_weight": 0.0, "algorithm": "gmm"}),
    ("  same, k by target variance 0.8", {"l2_before": True, "l2_after": True, "color_weight": 0.0,
                                          "target_variance": 0.8}),
    ("+ colour histogram, weight 0.5", {"l2_before": True, "l2_after": True, "color_weight": 0.5}),
    ("+ colour histogram, weight 1 [default]", {"l2_before": True, "l2_after": True, "color_weight": 1.0}),
    ("  same, Spark's own k-means|| start", {"l2_before": True, "l2_after": True, "color_weight": 1.0,
                                             "algorithm": "kmeans-parallel"}),
    ("  same, k by target variance 0.8", {"l2_before": True, "l2_after": True, "color_weight": 1.0,
                                          "target_variance": 0.8}),
]


def score_set(spark, cfg, backbone: str, weights: str, set_name: str, folder: Path, args, rows: list) -> dict:
    """One backbone on one image set: the pipeline's settings, then the variants and INT8 when asked;
    each scored choice is appended to `rows` (the printed table)."""
    features = featurized(spark, cfg, backbone, weights, folder)
    n = features.count()
    settings = {"k": cfg.pca_k, "target_variance": cfg.target_variance, "seed": cfg.seed,
                "starts": cfg.kmeans_starts, "start_max_points": cfg.kmeans_start_max_points,
                "color_weight": cfg.color_weight}
    as_pipeline = {**settings, "l2_before": cfg.l2_normalize, "l2_after": cfg.l2_normalize,
                   "classifier": {"test_fraction": cfg.test_fraction, "reg_param": cfg.reg_param,
                                  "max_iter": cfg.classifier_max_iter}}
    pipeline = evaluate(features, n, **as_pipeline)
    result = {"n_images": n, **pipeline}
    rows.append((backbone, weights, set_name, "pipeline settings", pipeline))
    if args.variants:
        for name, choice in VARIANTS:
            rows.append((backbone, weights, set_name, name, evaluate(features, n, **{**settings, **choice})))
    if args.int8:
        int8 = featurized(spark, cfg, backbone, weights, folder, "int8")
        scores = evaluate(int8, n, **as_pipeline)
        scores.update(int8_fidelity(features, int8), ari_minus_fp32=round(scores["ari"] - pipeline["ari"], 4))
        result["int8"] = scores
        rows.append((backbone, weights, set_name, "INT8 (static, QDQ), pipeline settings", scores))
        int8.unpersist()
    features.unpersist()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", action="store_true", help="also score the table of alternative choices")
    parser.add_argument("--target-variance", type=float, default=None,
                        help="pick PCA's k by explained variance instead of the configured k")
    parser.add_argument("--backbone", action="append", help="only these backbones (repeatable)")
    parser.add_argument("--data", type=Path, action="append",
                        help="a <fruit>/<photo> folder to score instead of the shared sets (repeatable)")
    parser.add_argument("--int8", action="store_true",
                        help="also the static INT8 model (--precision int8): its scores, its cosine to FP32, and "
                             "whether its ARI stays within 0.01 of FP32's on every set")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Local-mode Python workers: this interpreter (the project is installed in it).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from spark_jobs.common.config import Config
    from spark_jobs.session import build_session, stop_session

    sets = {path.name: path for path in args.data} if args.data else {
        name: path for name, path in SETS.items() if path.is_dir()}
    if not sets:
        log(f"the shared image sets are not beside the checkout ({SHARED_FRUITS}): nothing to measure")
        return 2
    cfg = Config.from_env(target_variance=args.target_variance)
    spark = build_session("fruitflow-quality", cfg, master="local[2]")
    results: dict = {}
    rows = []
    try:
        for backbone, weights in available_models():
            if args.backbone and backbone not in args.backbone:
                continue
            results[backbone] = {"weights": weights}
            for set_name, folder in sets.items():
                results[backbone][set_name] = score_set(spark, cfg, backbone, weights, set_name, folder, args, rows)
            if args.int8:  # the quality half of the rule for INT8 as the default precision (issue #18)
                deltas = [results[backbone][s]["int8"]["ari_minus_fp32"] for s in sets]
                results[backbone]["int8_ari_within_0.01"] = all(abs(d) <= 0.01 for d in deltas)
    finally:
        stop_session(spark)
    _print_table(rows)
    sys.stdout.write(json.dumps(results, sort_keys=True) + "\n")
    return 0


def _print_table(rows) -> None:
    header = (f"{'backbone':<19}{'weights':<9}{'set':<7}{'choice':<48}{'k':>4}{'EV':>7}{'ARI':>7}{'NMI':>7}"
              f"{'silh.':>7}{'purity':>7}{'skl ARI':>9}{'|dARI|':>8}{'acc.':>7}{'F1':>7}")
    print(header)
    print("-" * len(header))
    for backbone, weights, set_name, choice, r in rows:
        sk = r.get("sklearn_ari")
        delta = f"{abs(r['ari'] - sk):8.3f}" if sk is not None else f"{'':8}"
        sk_text = f"{sk:9.3f}" if sk is not None else f"{'':9}"
        print(f"{backbone:<19}{weights:<9}{set_name:<7}{choice:<48}{r['k']:>4}{r['explained_variance']:7.3f}"
              f"{r['ari']:7.3f}{r['nmi']:7.3f}{r['silhouette']:7.3f}{r['purity']:7.3f}{sk_text}{delta}"
              + (f"{r['accuracy']:7.3f}{r['macro_f1']:7.3f}" if "accuracy" in r else ""))
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
