"""`make bench [N=...] [DATA=...]`: featurization side by side, on the same real images, for both
backbones: EfficientNet-Lite0 (what `auto` runs where ResNet50's ImageNet weights cannot be had) and ResNet50
(the reference). Random weights for the speed figures (the same FLOPs as ImageNet's).

Contenders:
  bare        ONNX Runtime in this process on numpy batches (the ceiling for our engine)
  bare-int8   the same with the opt-in static INT8 model (`spark_jobs.quantize`), alternated
              with `bare` in rounds so that both see the same machine load
  openvino, openvino-int8
              OpenVINO's CPU plugin on the same two ONNX files (FP32 held at f32; the INT8 QDQ model
              runs in INT8), in the same rounds: the contender engine, measured when `openvino` is
              installed (`pip install openvino`; not in the pinned set), its fidelity as the cosine of
              its features to ONNX Runtime's on the same model
  ours        the pipeline's featurize UDF on the Spark standalone master, the pipeline's settings
  ours-int8   the same UDF with the INT8 model (what `--precision int8` runs)
  tf-batched  the same UDF with the TensorFlow engine
  original    the original study's UDF: the model rebuilt from broadcast weights on every batch,
              `predict` one image at a time (on at most ORIGINAL_MAX images: it is that slow)
and the machine's FP32 matmul rate (numpy sgemm), so each rate is also a share of the practical limit
(GFLOP_PER_IMAGE). INT8 quality against FP32 on the same images: per-image cosine similarity, and
KMeans (scikit-learn, k = number of classes) assignment agreement (ARI).
The last stdout line is one JSON object: EfficientNet-Lite0's figures under the top-level names
(`img_per_s`, `ratio_ours_vs_bare`, `ratio_ours_vs_original`, `int8_speedup`, ...), and every
backbone's under `backbones`.
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
from fruitflow.bench import ready
from fruitflow.bench.sampler import ProcessSampler, cpu_flags
from fruitflow.paths import SAMPLE_1179

DEFAULT_DATA = SAMPLE_1179
# FLOPs of one 224x224 image (2 x the published multiply-adds): ResNet50 4.1 G, EfficientNet-Lite0 0.4 G
GFLOP_PER_IMAGE = {"resnet50": 8.2, "efficientnet_lite0": 0.8}
BACKBONES = ("efficientnet_lite0", "resnet50")  # the first one's figures are the top-level ones


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


def timed_batches(model, batch: np.ndarray, batch_size: int) -> tuple[float, np.ndarray]:
    """Images per second of `model` (float32 batches in, features out) over `batch` after a warm-up
    call, and the features."""
    model(batch[:2].astype(np.float32))
    start = time.perf_counter()
    features = [model(batch[i:i + batch_size].astype(np.float32)) for i in range(0, len(batch), batch_size)]
    return len(batch) / (time.perf_counter() - start), np.concatenate(features)


def bench_bare(onnx_path: str, batch: np.ndarray, batch_size: int) -> tuple[float, np.ndarray]:
    from spark_jobs.common.models import OnnxFeaturizer

    return timed_batches(OnnxFeaturizer(onnx_path, threads=os.cpu_count() or 2), batch, batch_size)


def openvino_missing() -> str | None:
    """Why the OpenVINO contenders are not measured, or None when they are."""
    import importlib.util

    return None if importlib.util.find_spec("openvino") else "openvino is not installed (pip install openvino)"


def bench_openvino(onnx_path: str, batch: np.ndarray, batch_size: int) -> tuple[float, np.ndarray]:
    """OpenVINO's CPU plugin on the ONNX file, run like `bench_bare`: one synchronous request per batch,
    as many threads as cores, f32 kept (no bf16 downcast) so its fidelity is comparable."""
    import openvino as ov

    threads = os.cpu_count() or 2
    compiled = ov.Core().compile_model(onnx_path, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                          "PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    output = compiled.output(0)
    return timed_batches(lambda x: np.array(request.infer({0: x})[output]), batch, batch_size)


def int8_quality(fp32: np.ndarray, int8: np.ndarray, labels: list[str], held_out: np.ndarray, seed: int) -> dict:
    """Per-image cosine, and KMeans (k = number of classes) on FP32 vs INT8 features.

    `ari`: both fits start from the same k-means++ centres (drawn on the FP32 features), so the
    difference measures the features, not KMeans' choice of local minimum. `ari_independent_fits`:
    each fitted from the same seed on its own, with `fp32_ari_seed_to_seed` (FP32 vs FP32 from another
    seed) as the yardstick for how much KMeans alone moves. `ari_assign`: INT8 features assigned to the
    FP32 centroids."""
    from sklearn.cluster import KMeans, kmeans_plusplus
    from sklearn.metrics import adjusted_rand_score as ari

    from spark_jobs.quantize import cosine_per_row

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


def openvino_fidelity(features: dict) -> dict:
    """Cosine of OpenVINO's features to ONNX Runtime's on the same model file (min over images)."""
    from spark_jobs.quantize import cosine_per_row

    if "openvino" not in features:
        return {}
    return {"openvino_cosine_min": float(cosine_per_row(features["bare"], features["openvino"]).min()),
            "openvino_int8_cosine_min": float(cosine_per_row(features["bare-int8"], features["openvino-int8"]).min())}


def write_table(spark, keys: list[str], batch: np.ndarray, path: str) -> None:
    """The images in their stored form (`images.stored`: the JPEG the featurize step gives the model),
    the same bytes for each Spark contender."""
    from spark_jobs.common import images

    frame = pd.DataFrame({"key": keys, "category": [k.split("/")[0] for k in keys], "etag": ["-"] * len(keys),
                          "image": [images.stored(img) for img in batch],
                          "color": [images.color_histogram(img).tolist() for img in batch]})
    chunks = [frame.iloc[i:i + 256] for i in range(0, len(frame), 256)]
    for i, chunk in enumerate(chunks):
        spark.createDataFrame(chunk).write.mode("overwrite" if i == 0 else "append").parquet(path)


def bench_spark_udf(spark, table: str, model_ref: str, engine: str, cfg, n: int, backbone: str) -> float:
    """The featurize pass's model call (`featurize.Features`, the same object the step runs on each batch's
    stored JPEGs after the sandboxed decode) over Arrow batches of the table's images."""
    from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

    from spark_jobs.featurize import Features, partitions_for

    model = Features(model_ref, engine, backbone, cfg.model_batch_size)

    def featurize(batches):
        for batch in batches:
            yield pd.DataFrame({"key": batch["key"], "features": model(list(batch["image"]))})

    schema = StructType([StructField("key", StringType()), StructField("features", ArrayType(FloatType()))])
    images = spark.read.parquet(table).select("key", "image")
    partitions = partitions_for(n, spark.sparkContext.defaultParallelism, cfg.batch_size)
    out = images.repartition(partitions).mapInPandas(featurize, schema=schema)
    start = time.perf_counter()
    out.write.format("noop").mode("overwrite").save()
    return n / (time.perf_counter() - start)


def bench_original(spark, table: str, keras_path: str, n: int, backbone: str) -> float:
    """The study's approach: a Series->Series UDF, model rebuilt from broadcast weights per batch,
    `predict` per image."""
    import keras
    from pyspark.sql.functions import pandas_udf

    model = keras.saving.load_model(keras_path, compile=False)
    weights = spark.sparkContext.broadcast(model.get_weights())

    @pandas_udf("array<float>")
    def featurize_series(content: pd.Series) -> pd.Series:
        import keras as k

        from spark_jobs.common.images import from_stored
        from spark_jobs.common.models import build_keras_model

        rebuilt = build_keras_model(backbone, "random", 0)  # the architecture; the weights come next
        rebuilt.set_weights(weights.value)
        rows = []
        for raw in content:
            img = from_stored(raw)[np.newaxis].astype(np.float32)
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


def bare_contenders(files: dict, batch: np.ndarray, cfg, rounds: int, labels: list[str],
                    held_out: np.ndarray) -> tuple[dict, dict, dict]:
    """Each backbone's contenders outside Spark: the best rate of each over its rounds (backbone ->
    contender -> img/s), INT8's clustering quality against FP32's, OpenVINO's fidelity to ONNX Runtime."""
    results, quality, fidelity = {}, {}, {}
    for backbone in BACKBONES:
        # calls of the size the pipeline's model calls have: the same work for bare and ours
        results[backbone], features = bare_rounds(files[backbone], batch, cfg.model_batch_size, rounds, backbone)
        quality[backbone] = int8_quality(features["bare"], features["bare-int8"], labels, held_out, cfg.seed)
        fidelity[backbone] = openvino_fidelity(features)
        log(f"{backbone}: INT8 quality {quality[backbone]}")
    return results, quality, fidelity


def spark_contenders(cfg, keys: list[str], batch: np.ndarray, files: dict, table: str, n_original: int,
                     rounds: int, results: dict, rss: dict) -> dict:
    """The Spark contenders of each backbone on the stack's master, over the images written as a Parquet
    `table`: their rates go into `results`, their peak RSS into `rss`; returns the Spark settings used."""
    from spark_jobs.session import build_session, stop_session

    spark = build_session("fruitflow-bench", cfg, master=stack.settings().spark_master)
    try:
        settings = {k: spark.conf.get(k) for k in (
            "spark.sql.execution.arrow.maxRecordsPerBatch", "spark.sql.shuffle.partitions")}
        settings.update({"default_parallelism": spark.sparkContext.defaultParallelism,
                         "threads_per_python_worker": 1, "workers": 1,
                         "worker_cores": stack.settings().worker_cores})
        log(f"Spark settings: {settings}")
        write_table(spark, keys, batch, table)
        for backbone in BACKBONES:
            rates, rss[backbone] = spark_rounds(spark, table, files[backbone], cfg, len(keys), n_original, rounds,
                                                backbone)
            results[backbone].update(rates)
    finally:
        stop_session(spark)
    return settings


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=None, help="number of images (cycled if more than the folder)")
    parser.add_argument("--original-max", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of bare / bare-int8")
    parser.add_argument("--calibration", type=int, default=256, help="INT8 calibration images (every k-th)")
    return parser


def main(argv=None) -> int:
    args = arg_parser().parse_args(argv)
    if not ready(args.data, log):
        return 2
    from spark_jobs.common.config import Config

    cfg = Config.from_env(weights="random")
    keys, batch = load_images(args.data, args.n)
    n = len(keys)
    labels = [k.split("/")[0] for k in keys]
    log(f"{n} images from {args.data}")
    gflops = sgemm_gflops()
    log(f"sgemm: {gflops:.1f} GFLOP/s")
    calibration_idx = np.arange(0, n, max(1, n // args.calibration))[:args.calibration]
    held_out = np.ones(n, bool)
    held_out[calibration_idx] = False
    rss: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="fruitflow-bench-") as tmp:
        files = {b: model_files(b, f"{tmp}/{b}", batch[calibration_idx], cfg.seed) for b in BACKBONES}
        load_avg = {"bare_rounds_start": [round(v, 2) for v in os.getloadavg()]}
        results, quality, fidelity = bare_contenders(files, batch, cfg, args.rounds, labels, held_out)
        load_avg["bare_rounds_end"] = [round(v, 2) for v in os.getloadavg()]

        started_stack = not stack.all_healthy()
        if started_stack:
            stack.up()
        try:
            n_original = min(n, args.original_max)
            settings = spark_contenders(cfg, keys, batch, files, f"file://{tmp}/images.parquet", n_original,
                                        args.rounds, results, rss)
            load_avg["spark_end"] = [round(v, 2) for v in os.getloadavg()]
            classify = bench_classify([args.data / k for k in keys])
        finally:
            if started_stack:
                stack.down()

    per_backbone = {b: figures(results[b], quality[b], files[b]["int8_info"], gflops, GFLOP_PER_IMAGE[b],
                               fidelity[b]) for b in BACKBONES}
    for backbone in BACKBONES:
        print_table(backbone, results[backbone], per_backbone[backbone], quality[backbone], gflops)
    print(f"classify (no Spark, latest demo's models): {classify}")
    print(f"load average (1/5/15 min): {load_avg}")
    summary = {
        "n_images": n,
        "backbone": BACKBONES[0],  # the top-level figures are this backbone's (what `auto` runs offline)
        **per_backbone[BACKBONES[0]],
        "backbones": per_backbone,
        "sgemm_gflops": round(gflops, 1),
        "peak_rss_mb": rss[BACKBONES[0]],
        "spark_settings": settings,
        "n_original": n_original,
        "classify": classify,
        "load_avg": load_avg,
        "cpu_flags": cpu_flags(),
    }
    print(json.dumps(summary))
    return 0


def model_files(backbone: str, folder: str, calibration: np.ndarray, seed: int) -> dict:
    """The backbone (random weights) as the pipeline ships it: Keras file, ONNX export, static INT8 model."""
    from spark_jobs import quantize
    from spark_jobs.common import models

    os.makedirs(folder)
    model = models.build_keras_model(backbone, "random", seed)
    paths = {"keras": f"{folder}/model.keras", "onnx": f"{folder}/model.onnx", "int8": f"{folder}/model-int8.onnx"}
    model.save(paths["keras"])
    models.export_onnx(model, paths["onnx"], backbone)
    del model
    paths["int8_info"] = quantize.quantize_onnx(paths["onnx"], paths["int8"], calibration)
    log(f"{backbone}: INT8 model {paths['int8_info']}")
    return paths


def bare_rounds(files: dict, batch: np.ndarray, batch_size: int, rounds: int, backbone: str):
    """FP32 and INT8 in one process (and OpenVINO's when installed), alternated round by round so that
    all see the same load."""
    rates: dict[str, float] = {}
    features = {}
    contenders = [("bare", bench_bare, files["onnx"]), ("bare-int8", bench_bare, files["int8"])]
    if not openvino_missing():
        contenders += [("openvino", bench_openvino, files["onnx"]), ("openvino-int8", bench_openvino, files["int8"])]
    for round_ in range(rounds):
        for name, bench, path in contenders:
            rate, features[name] = bench(path, batch, batch_size)
            rates[name] = max(rates.get(name, 0.0), rate)
            log(f"{backbone} round {round_}: {name} {rate:.1f} img/s (load {os.getloadavg()[0]:.2f})")
    return rates, features


def spark_rounds(spark, table: str, files: dict, cfg, n: int, n_original: int, rounds: int, backbone: str):
    """The pipeline's UDF (ONNX FP32 and INT8 alternated, then TensorFlow), then the original study's."""
    rates: dict[str, float] = {}
    peaks: dict[str, dict] = {}
    contenders = [("ours", "onnx", files["onnx"]), ("ours-int8", "onnx", files["int8"])] * rounds
    for name, engine, path in contenders + [("tf-batched", "tensorflow", files["keras"])]:
        bench_spark_udf(spark, table, path, engine, cfg, min(n, 2 * cfg.batch_size), backbone)  # warm workers
        with PeakRss() as peak:
            rate = bench_spark_udf(spark, table, path, engine, cfg, n, backbone)
        rates[name] = max(rates.get(name, 0.0), rate)
        peaks[name] = {k: max(round(v), peaks.get(name, {}).get(k, 0)) for k, v in peak.peaks.items()}
        log(f"{backbone} {name}: {rate:.1f} img/s, peak RSS {peaks[name]} (load {os.getloadavg()[0]:.2f})")
    with PeakRss() as peak:
        rates["original"] = bench_original(spark, table, files["keras"], n_original, backbone)
    peaks["original"] = {k: round(v) for k, v in peak.peaks.items()}
    log(f"{backbone} original ({n_original} images): {rates['original']:.2f} img/s, peak RSS {peaks['original']}")
    return rates, peaks


def figures(rates: dict, quality: dict, int8_info: dict, gflops: float, gflop_per_image: float,
            openvino: dict) -> dict:
    """One backbone's keys of the JSON line."""
    limit = gflops / gflop_per_image
    return {
        "img_per_s": {k: round(v, 2) for k, v in rates.items()},
        "ratio_ours_vs_original": round(rates["ours"] / rates["original"], 2),
        "ratio_ours_vs_bare": round(rates["ours"] / rates["bare"], 3),
        "share_of_sgemm_limit": {k: round(v / limit, 3) for k, v in rates.items()},
        "int8_speedup": round(rates["bare-int8"] / rates["bare"], 2),
        "int8_speedup_ours": round(rates["ours-int8"] / rates["ours"], 2),
        "int8_cosine_min": round(quality["cosine_min"], 6),
        "int8_ari": round(quality["ari"], 4),
        "int8_quality": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in quality.items()},
        "int8_settings": {k: v for k, v in int8_info.items() if k != "seconds"},
        "int8_quantize_s": int8_info["seconds"],
        "openvino": openvino_figures(rates, openvino),
    }


def openvino_figures(rates: dict, fidelity: dict) -> dict:
    """OpenVINO against ONNX Runtime, each precision against its own: the engine rule of issue #18 is
    a speedup >= 1.2 at a cosine to ONNX Runtime's features of >= 0.9999."""
    if "openvino" not in rates:
        return {"skipped": openvino_missing()}
    return {
        "speedup_fp32": round(rates["openvino"] / rates["bare"], 3),
        "speedup_int8": round(rates["openvino-int8"] / rates["bare-int8"], 3),
        "cosine_min_fp32": round(fidelity["openvino_cosine_min"], 6),
        "cosine_min_int8": round(fidelity["openvino_int8_cosine_min"], 6),
    }


def print_table(backbone: str, rates: dict, fig: dict, quality: dict, gflops: float) -> None:
    limit = gflops / GFLOP_PER_IMAGE[backbone]
    print(f"== {backbone}: {'contender':12s} {'img/s':>8s} {'% of sgemm limit':>17s}")
    for name, rate in rates.items():
        print(f"   {name:12s} {rate:8.2f} {100 * rate / limit:16.1f}%")
    print(f"   sgemm {gflops:.1f} GFLOP/s -> limit {limit:.1f} img/s at {GFLOP_PER_IMAGE[backbone]} GFLOP/image "
          "(FP32; INT8 shares are against the same FP32 limit)")
    print(f"   INT8 vs FP32: bare x{fig['int8_speedup']:.2f}, ours x{fig['int8_speedup_ours']:.2f}; cosine min "
          f"{quality['cosine_min']:.5f} (median {quality['cosine_median']:.5f}, held-out min "
          f"{quality['cosine_min_held_out']:.5f}); KMeans k={quality['k']} ARI FP32 vs INT8 {quality['ari']:.3f} "
          f"(same start), {quality['ari_independent_fits']:.3f} (independent fits; FP32 vs FP32 other seed "
          f"{quality['fp32_ari_seed_to_seed']:.3f}), {quality['ari_assign']:.3f} (INT8 on FP32 centroids)")


if __name__ == "__main__":
    sys.exit(main())
