"""`make bench [N=...] [DATA=...]`: ResNet50 featurization side by side, on the same real images.

Contenders:
  bare        ONNX Runtime in this process on numpy batches (the ceiling for our engine)
  bare-int8   the same with the opt-in static INT8 model (`spark_jobs.common.quantize`), alternated
              with `bare` in rounds so that both see the same machine load
  ours        the pipeline's featurize UDF on the Spark standalone master, the pipeline's settings
  ours-int8   the same UDF with the INT8 model (what `--precision int8` runs)
  tf-batched  the same UDF with the TensorFlow engine
  original    the original study's UDF: ResNet50 rebuilt from broadcast weights on every batch,
              `predict` one image at a time (on at most ORIGINAL_MAX images: it is that slow)
and the machine's FP32 matmul rate (numpy sgemm), so each rate is also a share of the practical limit
(ResNet50 = 8.2 GFLOP per 224x224 image). INT8 quality against FP32 on the same images: per-image
cosine similarity, and KMeans (scikit-learn, k = number of classes) assignment agreement (ARI).
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fruitflow import stack
from fruitflow.bench.sampler import ProcessSampler, cpu_flags
from fruitflow.paths import SAMPLE_1179

DEFAULT_DATA = SAMPLE_1179
GFLOP_PER_IMAGE = 8.2


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class PeakRss(ProcessSampler):
    """Peak resident memory of the driver (this process and its JVM) and of the Python workers
    (pyspark daemons and their workers)."""

    def __init__(self, interval: float = 0.2):
        super().__init__(interval)
        self.peaks = {"driver_mb": 0.0, "python_workers_mb": 0.0}
        self._me = os.getpid()

    def sample(self, processes):
        driver = sum(rss for pid, cmd, rss in processes
                     if pid == self._me or ("SparkSubmit" in cmd and "pyspark-shell" in cmd))
        workers = sum(rss for pid, cmd, rss in processes
                      if pid != self._me and ("pyspark.daemon" in cmd or "pyspark/daemon" in cmd
                                              or "pyspark.worker" in cmd))
        self.peaks["driver_mb"] = max(self.peaks["driver_mb"], driver)
        self.peaks["python_workers_mb"] = max(self.peaks["python_workers_mb"], workers)


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def load_images(folder: Path, n: int | None) -> tuple[list[str], np.ndarray]:
    from spark_jobs.common import images

    paths = sorted(folder.glob("*/*.jpg"))
    if n:
        paths = (paths * (n // max(1, len(paths)) + 1))[:n]
    keys = [f"{p.parent.name}/{p.name}" for p in paths]
    arr = np.stack([images.preprocess(images.decode(p.read_bytes(), 10**8)) for p in paths])
    return keys, arr


def bench_bare(onnx_path: str, batch: np.ndarray, batch_size: int) -> tuple[float, np.ndarray]:
    from spark_jobs.common.models import OnnxFeaturizer

    model = OnnxFeaturizer(onnx_path, threads=os.cpu_count() or 2)
    model(batch[:2].astype(np.float32))
    start = time.perf_counter()
    features = [model(batch[i:i + batch_size].astype(np.float32)) for i in range(0, len(batch), batch_size)]
    return len(batch) / (time.perf_counter() - start), np.concatenate(features)


def int8_quality(fp32: np.ndarray, int8: np.ndarray, labels: list[str], held_out: np.ndarray, seed: int) -> dict:
    """Per-image cosine, and KMeans (k = number of classes) on FP32 vs INT8 features.

    `ari`: both fits start from the same k-means++ centres (drawn on the FP32 features), so the
    difference measures the features, not KMeans' choice of local minimum. `ari_independent_fits`:
    each fitted from the same seed on its own, with `fp32_ari_seed_to_seed` (FP32 vs FP32 from another
    seed) as the yardstick for how much KMeans alone moves. `ari_assign`: INT8 features assigned to the
    FP32 centroids."""
    from sklearn.cluster import KMeans, kmeans_plusplus
    from sklearn.metrics import adjusted_rand_score as ari

    from spark_jobs.common.quantize import cosine_per_row

    cos = cosine_per_row(fp32, int8)
    k = len(set(labels))
    x, y = fp32.astype(np.float64), int8.astype(np.float64)
    init, _ = kmeans_plusplus(x, k, random_state=seed)
    same_a = KMeans(k, init=init, n_init=1, random_state=seed).fit(x)
    same_b = KMeans(k, init=init, n_init=1, random_state=seed).fit(y)
    ind_a = KMeans(k, n_init=4, random_state=seed).fit(x)
    ind_b = KMeans(k, n_init=4, random_state=seed).fit(y)
    ind_c = KMeans(k, n_init=4, random_state=seed + 1).fit(x)
    squared = (x * x).sum(1)
    distances = squared[:, None] + squared[None, :] - 2 * x @ x.T  # n x n: fine for a few thousand images
    np.fill_diagonal(distances, np.inf)
    nn = np.maximum(distances.min(1), 0)
    return {
        "cosine_min": float(cos.min()), "cosine_median": float(np.median(cos)),
        "cosine_min_held_out": float(cos[held_out].min()) if held_out.any() else None,
        "ari": float(ari(same_a.labels_, same_b.labels_)),
        "ari_independent_fits": float(ari(ind_a.labels_, ind_b.labels_)),
        "fp32_ari_seed_to_seed": float(ari(ind_a.labels_, ind_c.labels_)),
        "ari_assign": float(ari(same_a.labels_, same_a.predict(y))),
        "ari_labels_fp32": float(ari(labels, same_a.labels_)), "ari_labels_int8": float(ari(labels, same_b.labels_)),
        "error_over_nn_distance": float(np.median(np.linalg.norm(x - y, axis=1)) / np.median(np.sqrt(nn))),
        "k": k,
    }


def write_table(spark, keys: list[str], batch: np.ndarray, path: str) -> None:
    import pandas as pd

    frame = pd.DataFrame({"key": keys, "category": [k.split("/")[0] for k in keys],
                          "etag": ["-"] * len(keys), "image": [img.tobytes() for img in batch]})
    chunks = [frame.iloc[i:i + 256] for i in range(0, len(frame), 256)]
    for i, chunk in enumerate(chunks):
        spark.createDataFrame(chunk).write.mode("overwrite" if i == 0 else "append").parquet(path)


def bench_spark_udf(spark, table: str, model_ref: str, engine: str, cfg, n: int) -> float:
    from spark_jobs.featurize import featurize_images, partitions_for

    images = spark.read.parquet(table)
    partitions = partitions_for(n, spark.sparkContext.defaultParallelism, cfg.batch_size)
    out = featurize_images(images.repartition(partitions), model_ref, engine, cfg.batch_size)
    start = time.perf_counter()
    out.write.format("noop").mode("overwrite").save()
    return n / (time.perf_counter() - start)


def bench_original(spark, table: str, keras_path: str, n: int) -> float:
    """The study's approach: a Series->Series UDF, model rebuilt from broadcast weights per batch,
    `predict` per image."""
    import keras
    from pyspark.sql.functions import pandas_udf

    model = keras.saving.load_model(keras_path, compile=False)
    weights = spark.sparkContext.broadcast(model.get_weights())

    @pandas_udf("array<float>")
    def featurize_series(content: pd.Series) -> pd.Series:
        import keras as k
        from keras.applications.resnet50 import ResNet50

        rebuilt = ResNet50(weights=None, include_top=False, pooling="avg", input_shape=(224, 224, 3))
        rebuilt.set_weights(weights.value)
        rows = []
        for raw in content:
            img = np.frombuffer(raw, np.uint8).reshape(1, 224, 224, 3).astype(np.float32)
            rows.append(rebuilt.predict(img, verbose=0)[0])
        k.backend.clear_session()
        return pd.Series(rows)

    images = spark.read.parquet(table).limit(n)
    start = time.perf_counter()
    images.select(featurize_series("image")).write.format("noop").mode("overwrite").save()
    return n / (time.perf_counter() - start)


def bench_classify(paths: list[Path]) -> dict:
    """`fruitflow classify` as the app would use it: model load time, then photos/s from the files
    (decode, preprocess, backbone, PCA, classifier, neighbours); the models of the latest demo."""
    from fruitflow.classify import Classifier, NoModel

    try:
        classifier = Classifier.load()
    except NoModel as exc:
        log(f"classify not measured: {exc}")
        return {"skipped": str(exc)}
    classifier.predict(paths[:16])  # warm up
    started = time.perf_counter()
    results = classifier.predict(paths)
    seconds = time.perf_counter() - started
    return {"load_s": classifier.load_s, "img_per_s": round(len(results) / seconds, 2), "n": len(results),
            "backbone": classifier.meta["backbone"], "threads": os.cpu_count()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=None, help="number of images (cycled if more than the folder)")
    parser.add_argument("--original-max", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of bare / bare-int8")
    parser.add_argument("--calibration", type=int, default=256, help="INT8 calibration images (every k-th)")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        log(f"no images at {args.data}: pass DATA=<folder of <fruit>/<image>.jpg>")
        return 2

    os.environ.update(stack.prepared_env())
    from spark_jobs.common import models
    from spark_jobs.common.config import Config
    from spark_jobs.common.session import build_session, stop_session

    cfg = Config.from_env(weights="random")
    keys, batch = load_images(args.data, args.n)
    n = len(keys)
    log(f"{n} images from {args.data}")
    gflops = sgemm_gflops()
    log(f"sgemm: {gflops:.1f} GFLOP/s")
    results: dict[str, float] = {}  # contenders run several times keep their best rate
    rss: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="fruitflow-bench-") as tmp:
        model = models.build_keras_model(cfg.backbone, "random", cfg.seed)
        keras_path, onnx_path = f"{tmp}/model.keras", f"{tmp}/model.onnx"
        model.save(keras_path)
        models.export_onnx(model, onnx_path)
        del model
        from spark_jobs.common import quantize

        int8_path = f"{tmp}/model-int8.onnx"
        calibration_idx = np.arange(0, n, max(1, n // args.calibration))[:args.calibration]
        calibration = batch[calibration_idx]
        held_out = np.ones(n, bool)
        held_out[calibration_idx] = False
        info = quantize.quantize_onnx(onnx_path, int8_path, calibration)
        log(f"INT8 model: {info}")
        features = {}
        load_at_start = os.getloadavg()
        for round_ in range(args.rounds):  # alternate, so that both see the same load
            for name, path in (("bare", onnx_path), ("bare-int8", int8_path)):
                rate, features[name] = bench_bare(path, batch, cfg.batch_size)
                results[name] = max(results.get(name, 0.0), rate)
                log(f"round {round_}: {name} {rate:.1f} img/s (load {os.getloadavg()[0]:.2f})")
        load_avg = {"bare_rounds_start": [round(v, 2) for v in load_at_start],
                    "bare_rounds_end": [round(v, 2) for v in os.getloadavg()]}
        labels = [k.split("/")[0] for k in keys]
        quality = int8_quality(features["bare"], features["bare-int8"], labels, held_out, cfg.seed)
        log(f"INT8 quality: {quality}")

        started_stack = not stack.all_healthy()
        if started_stack:
            stack.up()
        try:
            spark = build_session("fruitflow-bench", cfg, master=stack.settings().spark_master)
            settings = {k: spark.conf.get(k) for k in (
                "spark.sql.execution.arrow.maxRecordsPerBatch", "spark.sql.shuffle.partitions")}
            settings.update({"default_parallelism": spark.sparkContext.defaultParallelism,
                             "threads_per_python_worker": 1, "workers": 1,
                             "worker_cores": stack.settings().worker_cores})
            log(f"Spark settings: {settings}")
            table = f"file://{tmp}/images.parquet"
            write_table(spark, keys, batch, table)
            spark_contenders = [("ours", "onnx", onnx_path), ("ours-int8", "onnx", int8_path)] * args.rounds
            for name, engine, path in spark_contenders + [("tf-batched", "tensorflow", keras_path)]:
                bench_spark_udf(spark, table, path, engine, cfg, min(n, 2 * cfg.batch_size))  # warm workers
                with PeakRss() as peak:
                    rate = bench_spark_udf(spark, table, path, engine, cfg, n)
                results[name] = max(results.get(name, 0.0), rate)
                rss[name] = {k: max(round(v), rss.get(name, {}).get(k, 0)) for k, v in peak.peaks.items()}
                log(f"{name}: {rate:.1f} img/s, peak RSS {rss[name]} (load {os.getloadavg()[0]:.2f})")
            load_avg["spark_end"] = [round(v, 2) for v in os.getloadavg()]
            n_original = min(n, args.original_max)
            with PeakRss() as peak:
                results["original"] = bench_original(spark, table, keras_path, n_original)
            rss["original"] = {k: round(v) for k, v in peak.peaks.items()}
            log(f"original ({n_original} images): {results['original']:.2f} img/s, peak RSS {rss['original']}")
            stop_session(spark)
            classify = bench_classify([args.data / k for k in keys])
        finally:
            if started_stack:
                stack.down()

    limit = gflops / GFLOP_PER_IMAGE
    print(f"{'contender':12s} {'img/s':>8s} {'% of sgemm limit':>17s}")
    for name, rate in results.items():
        print(f"{name:12s} {rate:8.2f} {100 * rate / limit:16.1f}%")
    print(f"sgemm {gflops:.1f} GFLOP/s -> limit {limit:.1f} img/s at {GFLOP_PER_IMAGE} GFLOP/image "
          "(FP32; INT8 shares are against the same FP32 limit)")
    print(f"INT8 vs FP32: bare x{results['bare-int8'] / results['bare']:.2f}, "
          f"ours x{results['ours-int8'] / results['ours']:.2f}; cosine min {quality['cosine_min']:.5f} "
          f"(median {quality['cosine_median']:.5f}, held-out min {quality['cosine_min_held_out']:.5f}); "
          f"KMeans k={quality['k']} ARI FP32 vs INT8 {quality['ari']:.3f} (same start), "
          f"{quality['ari_independent_fits']:.3f} (independent fits; FP32 vs FP32 other seed "
          f"{quality['fp32_ari_seed_to_seed']:.3f}), {quality['ari_assign']:.3f} (INT8 on FP32 centroids)")
    print(f"classify (no Spark, latest demo's models): {classify}")
    print(f"load average (1/5/15 min): {load_avg}")
    summary = {
        "n_images": n,
        "img_per_s": {k: round(v, 2) for k, v in results.items()},
        "ratio_ours_vs_original": round(results["ours"] / results["original"], 2),
        "ratio_ours_vs_bare": round(results["ours"] / results["bare"], 3),
        "sgemm_gflops": round(gflops, 1),
        "share_of_sgemm_limit": {k: round(v / limit, 3) for k, v in results.items()},
        "peak_rss_mb": rss,
        "spark_settings": settings,
        "n_original": n_original,
        "int8_speedup": round(results["bare-int8"] / results["bare"], 2),
        "int8_speedup_ours": round(results["ours-int8"] / results["ours"], 2),
        "int8_cosine_min": round(quality["cosine_min"], 6),
        "int8_ari": round(quality["ari"], 4),
        "int8_quality": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in quality.items()},
        "int8_settings": {k: v for k, v in info.items() if k != "seconds"},
        "int8_quantize_s": info["seconds"],
        "classify": classify,
        "load_avg": load_avg,
        "cpu_flags": cpu_flags(),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
