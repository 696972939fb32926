"""`make bench [N=...] [DATA=...]`: ResNet50 featurization side by side, on the same real images.

Contenders:
  bare        ONNX Runtime in this process on numpy batches (the ceiling for our engine)
  ours        the pipeline's featurize UDF on the Spark standalone master, the pipeline's settings
  tf-batched  the same UDF with the TensorFlow engine
  original    the original study's UDF: ResNet50 rebuilt from broadcast weights on every batch,
              `predict` one image at a time (on at most ORIGINAL_MAX images: it is that slow)
and the machine's FP32 matmul rate (numpy sgemm), so each rate is also a share of the practical limit
(ResNet50 = 8.2 GFLOP per 224x224 image). The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

from scripts import stack  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "fruits360" / "data_sample_009"
GFLOP_PER_IMAGE = 8.2


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class PeakRss:
    """Polls process trees for peak resident memory: the driver (this process and its JVM) and the
    Python workers (pyspark daemons and their workers)."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self.psutil = psutil
        self.interval = interval
        self.peaks = {"driver_mb": 0.0, "python_workers_mb": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = self.psutil.Process()
        while not self._stop.is_set():
            driver = workers = 0
            for proc in self.psutil.process_iter(["pid", "cmdline", "memory_info"]):
                try:
                    cmd = " ".join(proc.info["cmdline"] or [])
                    rss = proc.info["memory_info"].rss
                except (self.psutil.NoSuchProcess, self.psutil.AccessDenied, TypeError):
                    continue
                if proc.pid == me.pid or ("SparkSubmit" in cmd and "pyspark-shell" in cmd):
                    driver += rss
                elif "pyspark.daemon" in cmd or "pyspark/daemon" in cmd or "pyspark.worker" in cmd:
                    workers += rss
            self.peaks["driver_mb"] = max(self.peaks["driver_mb"], driver / 2**20)
            self.peaks["python_workers_mb"] = max(self.peaks["python_workers_mb"], workers / 2**20)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


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


def bench_bare(onnx_path: str, batch: np.ndarray, batch_size: int) -> float:
    from spark_jobs.common.models import OnnxFeaturizer

    model = OnnxFeaturizer(onnx_path, threads=os.cpu_count() or 2)
    model(batch[:2].astype(np.float32))
    start = time.perf_counter()
    for i in range(0, len(batch), batch_size):
        model(batch[i:i + batch_size].astype(np.float32))
    return len(batch) / (time.perf_counter() - start)


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=None, help="number of images (cycled if more than the folder)")
    parser.add_argument("--original-max", type=int, default=128)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        log(f"no images at {args.data}: pass DATA=<folder of <fruit>/<image>.jpg>")
        return 2

    os.environ.update(stack.env())
    from spark_jobs.common import models
    from spark_jobs.common.config import Config
    from spark_jobs.common.session import build_session

    cfg = Config.from_env(weights="random")
    keys, batch = load_images(args.data, args.n)
    n = len(keys)
    log(f"{n} images from {args.data}")
    gflops = sgemm_gflops()
    log(f"sgemm: {gflops:.1f} GFLOP/s")
    results: dict[str, float] = {}
    rss: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="fruitflow-bench-") as tmp:
        model = models.build_keras_model(cfg.backbone, "random", cfg.seed)
        keras_path, onnx_path = f"{tmp}/model.keras", f"{tmp}/model.onnx"
        model.save(keras_path)
        models.export_onnx(model, onnx_path)
        del model
        results["bare"] = bench_bare(onnx_path, batch, cfg.batch_size)
        log(f"bare: {results['bare']:.1f} img/s")

        started_stack = not stack.all_healthy()
        if started_stack:
            stack.up()
        try:
            spark = build_session("fruitflow-bench", cfg, master=os.environ["FRUITFLOW_SPARK_MASTER"])
            settings = {k: spark.conf.get(k) for k in (
                "spark.sql.execution.arrow.maxRecordsPerBatch", "spark.sql.shuffle.partitions")}
            settings.update({"default_parallelism": spark.sparkContext.defaultParallelism,
                             "threads_per_python_worker": 1, "workers": 1,
                             "worker_cores": stack.WORKER_CORES})
            log(f"Spark settings: {settings}")
            table = f"file://{tmp}/images.parquet"
            write_table(spark, keys, batch, table)
            for name, engine, path in (("ours", "onnx", onnx_path), ("tf-batched", "tensorflow", keras_path)):
                bench_spark_udf(spark, table, path, engine, cfg, min(n, 2 * cfg.batch_size))  # warm workers
                with PeakRss() as peak:
                    results[name] = bench_spark_udf(spark, table, path, engine, cfg, n)
                rss[name] = {k: round(v) for k, v in peak.peaks.items()}
                log(f"{name}: {results[name]:.1f} img/s, peak RSS {rss[name]}")
            n_original = min(n, args.original_max)
            with PeakRss() as peak:
                results["original"] = bench_original(spark, table, keras_path, n_original)
            rss["original"] = {k: round(v) for k, v in peak.peaks.items()}
            log(f"original ({n_original} images): {results['original']:.2f} img/s, peak RSS {rss['original']}")
            spark.stop()
        finally:
            if started_stack:
                stack.down()

    limit = gflops / GFLOP_PER_IMAGE
    print(f"{'contender':12s} {'img/s':>8s} {'% of sgemm limit':>17s}")
    for name, rate in results.items():
        print(f"{name:12s} {rate:8.2f} {100 * rate / limit:16.1f}%")
    print(f"sgemm {gflops:.1f} GFLOP/s -> limit {limit:.1f} img/s at {GFLOP_PER_IMAGE} GFLOP/image")
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
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
