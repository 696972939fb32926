"""Step 4 - cluster: PCA features -> Spark ML KMeans, quality against the folder labels, and a report.

KMeans (k = number of fruit categories unless set) starts from the best of several seeded greedy
k-means++ starts on a capped random sample, then iterates over every vector in Spark. A run whose table
grew little since the last fresh start starts instead from the last cluster step's clusters (their
centres in this run's space), as an incremental run should: its cost is then Lloyd's passes alone. Quality:
silhouette (Spark's ClusteringEvaluator) and, from the category x cluster contingency table (a small
aggregate, so nothing per image reaches the driver), ARI, NMI and purity. The 2-D views (PCA and
t-SNE) are drawn from a capped sample; t-SNE runs on the driver on at most `tsne_max_points` reduced
vectors, with each fresh KMeans start: a run that starts from earlier clusters carries their step's view
over, its new photos placed by their nearest neighbours.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import pandas as pd
from pyspark.ml.clustering import KMeansModel
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import Normalizer
from pyspark.ml.functions import array_to_vector
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

# scikit-learn and SciPy at import time (and `tsne_view` imports the rest), not in the functions: the
# t-SNE view is drawn on a second thread, and two threads importing scikit-learn at once can see it half
# imported (an ImportError)
from scipy.special import comb
from scipy.stats import entropy
from sklearn.cluster import KMeans as SampleKMeans
from sklearn.metrics import mutual_info_score

from spark_jobs import step_cli
from spark_jobs.common import cluster_report, jpeg_packs, report_page, storage, tsne_view
from spark_jobs.common.classifier import require_inside, vouched
from spark_jobs.common.config import Config
from spark_jobs.common.manifest import (
    Timings,
    begin_step,
    newest_matching,
    read_manifest,
    write_manifest,
)
from spark_jobs.common.recognition import unit_rows
from spark_jobs.step_outputs import read_output

STEP = "cluster"
VIEW_FILE = "tsne.json"
MAX_VIEW_BYTES = 64 << 20  # 3000 keys of at most 1024 bytes and their places, with room to spare


# --------------------------------------------------------------------------- transform


def with_vectors(reduced: DataFrame, l2_normalize: bool) -> DataFrame:
    """The clustering space as a `vector` column: the PCA vectors, on the unit sphere when `l2_normalize`
    (Euclidean KMeans there ranks neighbours as cosine similarity does)."""
    frame = reduced.withColumn("vector", array_to_vector("pca"))
    if not l2_normalize:
        return frame
    unit = Normalizer(p=2.0, inputCol="vector", outputCol="unit").transform(frame)
    return unit.drop("vector").withColumnRenamed("unit", "vector")


def fit_kmeans(reduced: DataFrame, k: int, seed: int, starts: int, l2_normalize: bool = True,
               start_max_points: int = 20000, n_rows: int | None = None,
               initial: np.ndarray | None = None) -> tuple[KMeansModel, dict]:
    """KMeans of every vector on the executors, from `initial` centres (k x d) or from a good start found
    on a bounded sample (`sample_start`): Lloyd iterations over all the vectors in Spark (`lloyd`),
    returned as a Spark ML KMeansModel, so transform, save and load are Spark ML's."""
    if initial is None:
        initial, fit = sample_start(reduced, k, seed, starts, start_max_points, n_rows, l2_normalize)
    else:
        fit = {"start_points": 0, "starts": 0}
    refined, cost = lloyd(with_vectors(reduced, l2_normalize).select("vector"), initial, seed)
    return _ml_kmeans_model(reduced.sparkSession, refined, k), {"cost": cost, **fit}


def lloyd(vectors: DataFrame, initial: np.ndarray, seed: int):
    """MLlib's KMeans from the `initial` centres over the `vector` column (the JVM's
    org.apache.spark.mllib.clustering.KMeansModel) and its cost. The vectors reach MLlib as the
    DataFrame's own rows (RowMatrix's RDD, JVM side): PySpark's `KMeans.train` would send every row
    through a Python worker and back, the step's costliest pass (bench/RESULTS.md)."""
    from pyspark.mllib.common import _py2java
    from pyspark.mllib.linalg import DenseVector
    from pyspark.mllib.linalg.distributed import RowMatrix
    from pyspark.mllib.util import MLUtils

    sc = vectors.sparkSession.sparkContext
    mllib = sc._jvm.org.apache.spark.mllib.clustering
    rows = RowMatrix(MLUtils.convertVectorColumnsFromML(vectors, "vector"))._java_matrix_wrapper._java_model.rows()
    rows.cache()
    try:
        start = mllib.KMeansModel(_py2java(sc, [DenseVector(c) for c in initial]))
        refined = (mllib.KMeans().setK(len(initial)).setMaxIterations(100).setEpsilon(1e-6).setSeed(seed)
                   .setInitialModel(start).run(rows))
        return refined, float(refined.computeCost(rows))
    finally:
        rows.unpersist(False)


def sample_start(reduced: DataFrame, k: int, seed: int, starts: int, start_max_points: int,
                 n_rows: int | None, l2_normalize: bool = True) -> tuple[np.ndarray, dict]:
    """Centres to start from: scikit-learn's KMeans (greedy k-means++, best of `starts` seeded starts by
    inertia) on a random sample of at most `start_max_points` vectors (all of them when there are fewer).
    This is the role the local k-means++ plays inside Spark's own k-means||, done better: with ~9 images
    per cluster Spark's initialisation settled in costlier minima (README, "Clustering quality")."""
    n_rows = reduced.count() if n_rows is None else n_rows
    points = clustering_vectors(start_sample(reduced, [], max(start_max_points, 2 * k), seed, n_rows), l2_normalize)
    if len(points) < k:
        raise ValueError(f"the KMeans start sample holds {len(points)} vectors, fewer than k={k}")
    start = SampleKMeans(k, n_init=max(1, starts), random_state=seed).fit(points)
    return start.cluster_centers_, {"start_points": len(points), "starts": max(1, starts)}


def start_sample(reduced: DataFrame, columns: list[str], max_points: int, seed: int, n_rows: int) -> pd.DataFrame:
    """A random sample of at most `max_points` rows for a KMeans start: `columns` and the PCA vector (made
    unit length on the driver, `clustering_vectors`: Spark's Normalizer and vector-to-array conversion
    cost the step over a second on cold executors)."""
    return capped_sample(reduced.select(*columns, "pca"), max_points, seed, n_rows)


def clustering_vectors(points: pd.DataFrame, l2_normalize: bool) -> np.ndarray:
    """Sampled rows' PCA vectors in the space KMeans works in (`with_vectors`' geometry, with numpy)."""
    if not len(points):
        return np.zeros((0, 0))
    x = np.stack(points["pca"].to_numpy()).astype(np.float64)
    return unit_rows(x) if l2_normalize else x


def partition_centres(reduced: DataFrame, clusters: DataFrame, k: int, l2_normalize: bool = True,
                      max_points: int = 20000, seed: int = 0, n_rows: int | None = None) -> np.ndarray | None:
    """The centres, in this run's space, of the clusters `clusters` (key, cluster: an earlier run's
    assignments) gave: the mean of each cluster's vectors as they are now, over a random sample of at most
    `max_points` of this table's photos (as the fresh start's sample; all of them when there are fewer),
    their earlier clusters read for their keys alone (a broadcast join). k x d numbers come out; None when
    one of the k clusters has none of the sampled photos. Cluster numbers outside 0..k-1 are left out: the
    file was written by Spark nodes."""
    n_rows = reduced.count() if n_rows is None else n_rows
    sampled = start_sample(reduced, ["key"], max(max_points, 2 * k), seed, n_rows)
    earlier = (clusters.select(F.col("key").cast("string").alias("key"), F.col("cluster").cast("int").alias("cluster"))
               .where(F.col("cluster").between(0, k - 1)).dropDuplicates(["key"]))
    both = with_clusters(sampled, earlier)
    if both["cluster"].nunique() < k:
        return None
    x = clustering_vectors(both, l2_normalize)
    return np.stack([x[(both["cluster"] == c).to_numpy()].mean(axis=0) for c in range(k)])


def _ml_kmeans_model(spark: SparkSession, parent, k: int) -> KMeansModel:
    """A Spark ML KMeansModel around an MLlib one (JVM side: the ML estimator takes no initial model)."""
    java_model = spark.sparkContext._jvm.org.apache.spark.ml.clustering.KMeansModel(f"KMeansModel_fruitflow_{k}",
                                                                                   parent)
    model = KMeansModel(java_model)
    model._set(k=k, featuresCol="vector", predictionCol="cluster")
    return model


def assign(model: KMeansModel, reduced: DataFrame, l2_normalize: bool = True) -> DataFrame:
    """key, category, pca, pc1, pc2 -> the same plus `cluster`."""
    return model.transform(with_vectors(reduced, l2_normalize)).drop("vector")


def contingency(assigned: DataFrame) -> pd.DataFrame:
    """category x cluster counts: at most n_categories x k numbers reach the driver."""
    rows = assigned.groupBy("category", "cluster").count().collect()
    table = pd.DataFrame(rows, columns=["category", "cluster", "count"])
    return table.pivot_table(index="category", columns="cluster", values="count", fill_value=0, aggfunc="sum")


def scores_from_contingency(table: pd.DataFrame) -> dict[str, float]:
    """ARI, NMI (arithmetic normalisation, as scikit-learn's default) and purity from counts alone."""
    counts = table.to_numpy(dtype=np.int64)
    n = counts.sum()
    sum_cells = comb(counts, 2).sum()
    sum_rows = comb(counts.sum(axis=1), 2).sum()
    sum_cols = comb(counts.sum(axis=0), 2).sum()
    expected = sum_rows * sum_cols / comb(n, 2) if n > 1 else 0.0
    maximum = (sum_rows + sum_cols) / 2
    ari = 1.0 if maximum == expected else (sum_cells - expected) / (maximum - expected)
    mi = mutual_info_score(None, None, contingency=counts)
    h_true, h_pred = entropy(counts.sum(axis=1)), entropy(counts.sum(axis=0))
    nmi = 1.0 if h_true == h_pred == 0 else mi / max((h_true + h_pred) / 2, np.finfo(float).eps)
    purity = counts.max(axis=0).sum() / n
    return {"ari": float(ari), "nmi": float(nmi), "purity": float(purity)}


def silhouette(assigned: DataFrame, l2_normalize: bool = True) -> float:
    """In the space KMeans worked in."""
    evaluator = ClusteringEvaluator(featuresCol="vector", predictionCol="cluster", metricName="silhouette")
    return float(evaluator.evaluate(with_vectors(assigned, l2_normalize)))


def capped_sample(frame: DataFrame, max_points: int, seed: int, n_rows: int) -> pd.DataFrame:
    """A random sample of at most `max_points` rows for the driver; everything when it is small."""
    if n_rows > max_points:
        frame = frame.sample(fraction=min(1.0, 1.2 * max_points / n_rows), seed=seed).limit(max_points)
    return frame.toPandas()


def sample(reduced: DataFrame, max_points: int, seed: int, n_rows: int) -> pd.DataFrame:
    """The rows the driver-side views draw (their clusters are added once KMeans has assigned them): the
    `max_points` photos whose keys hash lowest (seeded), in that order, all of them when there are fewer.
    The same photos from run to run as the table grows, new ones coming in at the rate the table grows: a
    t-SNE view kept from an earlier run (`tsne_view.carried`) still covers nearly all of its first rows."""
    rank = F.xxhash64("key", F.lit(seed)).alias("rank")
    ranked = reduced.select("key", "category", "pc1", "pc2", "pca", "jpeg", rank)
    if n_rows > max_points:
        ranked = ranked.orderBy("rank").limit(max_points)  # each partition's lowest, then theirs
    points = ranked.toPandas().sort_values("rank", kind="stable")
    return points.drop(columns="rank").reset_index(drop=True)


def with_clusters(points: pd.DataFrame, assignments: DataFrame) -> pd.DataFrame:
    """The sampled rows with their KMeans clusters, read for their keys alone (a broadcast join)."""
    keys = assignments.sparkSession.createDataFrame(points[["key"]])
    found = assignments.select("key", "cluster").join(F.broadcast(keys), "key").toPandas()
    return points.merge(found, on="key", how="inner")


def view_2d(spark: SparkSession, cfg: Config, points: pd.DataFrame, start: dict) -> tuple[pd.DataFrame, dict]:
    """The t-SNE view of the first `tsne_max_points` sampled photos, and what the manifest says of it: drawn
    afresh with each fresh KMeans start; carried over from the cluster step KMeans started from otherwise
    (`tsne_view.carried`), as its clusters are, so an incremental run does not pay for a t-SNE of the table."""
    subset = points.head(cfg.tsne_max_points)
    x = clustering_vectors(subset, cfg.l2_normalize)
    if start.get("from"):
        try:
            carried = tsne_view.carried(subset, x, read_view(spark, read_manifest(spark, start["from"], cfg)))
        except Exception as exc:  # noqa: BLE001 - gone, altered or unreadable: drawn afresh
            print(f"[cluster] not carrying the t-SNE view of {start['from']}: {str(exc)[:300]}", file=sys.stderr)
            carried = None
        if carried is not None:
            return carried[0], {"from": start["from"], "placed": carried[1], "points": len(subset)}
    return tsne_view.drawn(subset, x, cfg.seed), {"from": None, "placed": 0, "points": len(subset)}


def read_view(spark: SparkSession, manifest: dict) -> pd.DataFrame:
    """An earlier cluster step's t-SNE view (key, tsne1, tsne2), as its (signed) manifest vouches for it:
    the Spark nodes can write in the step's folder. A ValueError for one too large, altered or malformed."""
    uri = (manifest.get("outputs") or {}).get("tsne")
    if not isinstance(uri, str):
        raise ValueError("the step kept no t-SNE view")
    require_inside(uri, manifest["step_uri"], "the t-SNE view")
    return tsne_view.parse(vouched(storage.read_bytes(spark, uri, MAX_VIEW_BYTES), manifest.get("tsne_sha256"),
                                   "the t-SNE view"))


def jpeg_fetcher(cfg: Config):
    """{key: locator} -> {key: (locator, bytes)} of the preprocessed JPEGs read (`jpeg_packs.read_all`: a
    locator refused or a read failed is left out, with a line in the log), through boto3 as the Recognise
    page reads them: S3A's reads of more than ~8 KB each waited ~40 ms on this stack (bench/RESULTS.md).
    The report's thumbnails are made of them here, once: the run report embeds those (`report_page`)."""
    get_range = jpeg_packs.s3_range(storage.client_for(cfg))

    def left_out(key: str, exc: Exception) -> None:
        print(f"cluster: no thumbnail for {key!r}: {exc}", file=sys.stderr)

    def fetch(locators: dict[str, str]) -> dict:
        found = jpeg_packs.read_all(locators, cfg.preprocessed_bucket, get_range, left_out)
        return {key: (locators[key], data) for key, data in found.items()}

    return fetch


# --------------------------------------------------------------------------- load


def choose_k(cfg: Config, n_images: int, n_categories: int) -> tuple[int, int]:
    """KMeans' k and the k wanted (the Param, else one cluster per category): at most one per image and
    `max_clusters`; fewer than 2 is refused."""
    wanted = cfg.n_clusters or n_categories
    k = min(wanted, n_images, cfg.max_clusters)
    if k < wanted:
        print(f"[cluster] {k} clusters, not {wanted}: at most one per image and max_clusters "
              f"({cfg.max_clusters})", file=sys.stderr)
    if k < 2:
        raise SystemExit(f"cannot cluster {n_images} images into {k} clusters: need at least 2 of each")
    return k, wanted


def warm_start(spark: SparkSession, cfg: Config, reduced: DataFrame, k: int, upstream: dict,
               n_images: int) -> tuple[np.ndarray | None, dict]:
    """Centres to start KMeans from, and what the manifest says of the start (`start`): those of the newest
    cluster step with the same k, geometry, backbone and weights (`partition_centres`), while the table has
    grown by at most `kmeans_warm_start_growth` since the fresh start its clusters go back to; else None
    (a fresh start on a sample). Refitting from fresh starts past that growth keeps a chain of warm starts
    from drifting away from what a fresh fit of the whole table finds."""
    fresh = {"from": None, "fresh_start_rows": n_images}
    if cfg.kmeans_warm_start_growth <= 0:
        return None, fresh
    wanted = {"n_clusters": k, "l2_normalize": cfg.l2_normalize, "backbone": upstream["params"].get("backbone"),
              "weights": upstream["params"].get("weights")}
    last = newest_matching(spark, cfg, STEP, wanted)
    if last is None:
        return None, fresh
    fresh_rows = (last.get("start") or {}).get("fresh_start_rows")  # none before warm starts: afresh
    if not isinstance(fresh_rows, int) or n_images > fresh_rows * (1 + cfg.kmeans_warm_start_growth):
        print(f"[cluster] {n_images} photos, {fresh_rows} at the last fresh start ({last['step_uri']}): "
              f"starting afresh", file=sys.stderr)
        return None, fresh
    try:
        centres = partition_centres(reduced, spark.read.parquet(last["outputs"]["assignments"]), k, cfg.l2_normalize,
                                    cfg.kmeans_start_max_points, cfg.seed, n_images)
    except Exception as exc:  # noqa: BLE001 - gone (expired), altered or unreadable: a fresh start
        print(f"[cluster] not starting from {last['step_uri']}: {str(exc)[:300]}", file=sys.stderr)
        return None, fresh
    if centres is None:
        print(f"[cluster] a cluster of {last['step_uri']} has none of the sampled photos: starting afresh",
              file=sys.stderr)
        return None, fresh
    return centres, {"from": last["step_uri"], "fresh_start_rows": fresh_rows}


def write_report(spark: SparkSession, cfg: Config, upstream: dict, points: pd.DataFrame, embedded: pd.DataFrame,
                 table, metrics: dict, context: dict, report_uri: str) -> dict[str, str]:
    """The report folder (index.html and its figures) from a bounded sample of the assigned vectors and
    its t-SNE; the SHA-256 of each file written, by name (the manifest vouches for them: the Spark nodes
    may write there)."""
    with tempfile.TemporaryDirectory(prefix="fruitflow-report-") as tmp:
        cluster_report.build(tmp, points=points, embedded=embedded, table=table,
                             metrics={name: round(v, 4) for name, v in metrics.items()},
                             context={**context, "points_plotted": len(points), "tsne_points": len(embedded)},
                             explained=upstream["metrics"]["explained_variance_per_component"],
                             fetch_jpegs=jpeg_fetcher(cfg), seed=cfg.seed,
                             make_thumbnails=partial(report_page.thumbnails, **cfg.decoder_limits))
        digests = {}
        for name in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, name), "rb") as written:
                digests[name] = hashlib.sha256(written.read()).hexdigest()
            storage.upload_file(spark, os.path.join(tmp, name), f"{report_uri}/{name}")
        return digests


def run(spark: SparkSession, cfg: Config, *, input_uri: str, out_uri: str) -> dict:
    timings = Timings(spark, STEP)
    upstream = read_manifest(spark, input_uri, cfg)
    begin_step(spark, out_uri)
    reduced = read_output(spark, upstream["outputs"]["reduced"]).cache()
    n_images = reduced.count()
    n_categories = reduced.select("category").distinct().count()
    k, wanted = choose_k(cfg, n_images, n_categories)
    with timings.measure("sample"):
        points = sample(reduced, cfg.plot_max_points, cfg.seed, n_images)
    # The t-SNE view needs the sampled vectors only: it runs on the driver while the executors fit KMeans
    with ThreadPoolExecutor(max_workers=1) as background:
        with timings.measure("kmeans"):
            initial, start = warm_start(spark, cfg, reduced, k, upstream, n_images)
            embedding = background.submit(view_2d, spark, cfg, points, start)
            model, fit = fit_kmeans(reduced, k, cfg.seed, cfg.kmeans_starts, cfg.l2_normalize,
                                    cfg.kmeans_start_max_points, n_images, initial)
        with timings.measure("write"):
            outputs, centres = write_model(spark, cfg, model, reduced, out_uri)
        assignments = spark.read.parquet(outputs["assignments"])
        with timings.measure("metrics"):
            assigned = reduced.join(assignments.select("key", "cluster"), "key")
            table = contingency(assigned)
            metrics = {"silhouette": silhouette(assigned, cfg.l2_normalize), **scores_from_contingency(table)}
        with timings.measure("report"):
            view, drawn = embedding.result()
            view_text = tsne_view.to_json(view)
            storage.write_text(spark, outputs["tsne"], view_text)
            context = report_context(upstream, input_uri, cfg, n_images, n_categories, k, fit, start, drawn)
            points = with_clusters(points, assignments)
            embedded = view.merge(points[["key", "cluster"]], on="key")
            report_files = write_report(spark, cfg, upstream, points, embedded, table, metrics, context,
                                        outputs["report_folder"])
    reduced.unpersist()
    return write_manifest(
        spark,
        out_uri,
        {
            "step": STEP,
            "inputs": {"pca": input_uri, "reduced": upstream["outputs"]["reduced"]},
            "outputs": outputs,
            # the centres as written: the (signed) manifest vouches for them where the Spark nodes may write
            "centroids_sha256": hashlib.sha256(centres.encode("utf-8")).hexdigest(),
            "report_sha256": report_files,
            "tsne_sha256": hashlib.sha256(view_text.encode("utf-8")).hexdigest(),
            # the clusters this run started from (None: a fresh start) and the table at the last fresh start
            "start": start,
            # the t-SNE view: drawn afresh (from None) or carried over from that step, with new photos placed
            "view": drawn,
            "counts": {"n_images": n_images, "n_categories": n_categories},
            "params": step_params(cfg, upstream, k, wanted),
            "metrics": {**{k_: round(v, 6) for k_, v in metrics.items()}, "kmeans_cost": fit["cost"],
                        "kmeans_start_points": fit["start_points"]},
            "timings_s": dict(timings),
        },
    )


def step_params(cfg: Config, upstream: dict, k: int, wanted: int) -> dict:
    """What the manifest says the step ran with (the next run's warm start matches on some of them)."""
    return {"n_clusters": k, "n_clusters_wanted": wanted, "max_clusters": cfg.max_clusters,
            "starts": cfg.kmeans_starts, "start_max_points": cfg.kmeans_start_max_points,
            "warm_start_growth": cfg.kmeans_warm_start_growth, "seed": cfg.seed, "l2_normalize": cfg.l2_normalize,
            "backbone": upstream["params"].get("backbone"), "weights": upstream["params"].get("weights"),
            "tsne_max_points": cfg.tsne_max_points, "plot_max_points": cfg.plot_max_points}


def write_model(spark: SparkSession, cfg: Config, model: KMeansModel, reduced: DataFrame,
                out_uri: str) -> tuple[dict, str]:
    """Every vector's cluster, the Spark ML model and its centres as plain numbers (for `fruitflow
    classify`: no Spark there); the step's outputs and the centres' JSON."""
    outputs = {"assignments": f"{out_uri}/assignments", "model": f"{out_uri}/model",
               "centroids": f"{out_uri}/centroids.json", "tsne": f"{out_uri}/{VIEW_FILE}",
               "report": f"{out_uri}/report/index.html",
               "report_folder": f"{out_uri}/report"}
    assign(model, reduced, cfg.l2_normalize).drop("pca").write.mode("overwrite").parquet(outputs["assignments"])
    model.write().overwrite().save(outputs["model"])
    centres = json.dumps({"l2_normalize": cfg.l2_normalize, "centres": [c.tolist() for c in model.clusterCenters()]})
    storage.write_text(spark, outputs["centroids"], centres)
    return outputs, centres


def report_context(upstream: dict, input_uri: str, cfg: Config, n_images: int, n_categories: int, k: int,
                   fit: dict, start: dict, drawn: dict) -> dict:
    """What the report says of the run beside its figures."""
    return {
        "images": n_images, "categories": n_categories, "clusters": k,
        "backbone": upstream["params"].get("backbone"), "weights": upstream["params"].get("weights"),
        "l2_normalize": cfg.l2_normalize, "pca_k": upstream["params"]["k"],
        "explained_variance": upstream["metrics"]["explained_variance"],
        "kmeans_cost": round(fit["cost"], 4), "kmeans_start_points": fit["start_points"],
        "kmeans_starts": fit["starts"], "kmeans_started_from": start["from"] or "a fresh start",
        "tsne_view": (f"carried over from {drawn['from']}, {drawn['placed']} new photos placed by their "
                      f"{tsne_view.NEIGHBOURS} nearest" if drawn["from"] else "drawn afresh"),
        "pca_step": input_uri,
    }


def arg_parser():
    parser = step_cli.after_pca_parser(__doc__)
    parser.add_argument("--n-clusters", dest="n_clusters", type=step_cli.optional(int),
                        help="default: number of categories")
    return parser


def main(argv: list[str] | None = None) -> int:
    return step_cli.run_after_pca(STEP, arg_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
