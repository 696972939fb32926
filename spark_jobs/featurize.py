"""Step 2 - featurize: preprocessed images -> one feature vector per image (transfer learning):
ResNet50 (2048 floats, the reference) or EfficientNet-Lite0 (1280 floats, ImageNet weights offline).

The driver materialises the model once for the run in the models location and ships it with
`SparkContext.addFile`; an Iterator pandas UDF loads it once per Python worker and runs it on whole
Arrow batches (`batch_size` images per call), one intra-op thread per worker so that the workers
share the cores instead of fighting over them.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark import SparkFiles
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import ArrayType, FloatType

from spark_jobs import step_cli
from spark_jobs.common.config import FEATURE_DIM, Config
from spark_jobs.common.images import COLOR_DESCRIPTOR, STORED_FORMAT
from spark_jobs.common.manifest import Timings, begin_step, read_manifest, write_manifest
from spark_jobs.common.models import materialize
from spark_jobs.quantize import materialize_int8
from spark_jobs.step_outputs import read_output

STEP = "featurize"


def resolve_model_file(model_ref: str) -> str:
    """A local path as is (tests, local mode); otherwise the name of a file shipped with addFile."""
    return model_ref if os.path.isabs(model_ref) and os.path.exists(model_ref) else SparkFiles.get(model_ref)


def featurize_images(images: DataFrame, model_ref: str, engine: str, batch_size: int,
                     threads_per_worker: int = 1, *, backbone: str) -> DataFrame:
    """key, category, etag, image (224x224, `images.STORED_FORMAT`), color, jpeg -> key, category, etag,
    features (float[]), color (float[]: preprocess's colour histogram of the exact pixels) and jpeg (the
    locator of its thumbnail's JPEG, `jpeg_packs`; null in a table made before packs), passed on."""

    @pandas_udf(ArrayType(FloatType()))
    def embed(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        from spark_jobs.common.images import from_stored
        from spark_jobs.common.models import load_featurizer

        model = load_featurizer(resolve_model_file(model_ref), engine, threads_per_worker, backbone=backbone)
        for images_batch in batches:
            rgb = np.stack([from_stored(b) for b in images_batch]).astype(np.float32)
            features = [model(rgb[i:i + batch_size]) for i in range(0, len(rgb), batch_size)]
            yield pd.Series(list(np.concatenate(features).astype(np.float32)))

    return images.select("key", "category", "etag", embed("image").alias("features"), "color", "jpeg")


def partitions_for(n_images: int, parallelism: int, batch_size: int) -> int:
    """A few model batches per partition, and a whole number of waves over the cores (a last wave
    with idle cores costs as much as a full one)."""
    waves = max(1, math.ceil(n_images / (4 * batch_size * parallelism)))
    return parallelism * waves


def incompatible_reason(preprocess_params: dict) -> str | None:
    """Why a preprocessed table cannot be featurized by this code, or None: its images stored in another
    form (a table from an older version would fail on every row) or its colour histogram made another way
    (its features would not be comparable with the rest of the feature table)."""
    for name, ours in (("image_format", STORED_FORMAT), ("color_descriptor", COLOR_DESCRIPTOR)):
        if preprocess_params.get(name) != ours:
            return (f"the preprocessed table has {name} {preprocess_params.get(name)!r}, this version reads "
                    f"{ours!r}: rerun preprocess for this run")
    return None


def run(spark: SparkSession, cfg: Config, *, input_uri: str, out_uri: str) -> dict:
    timings = Timings(spark, STEP)
    upstream = read_manifest(spark, input_uri, cfg)
    if reason := incompatible_reason(upstream.get("params", {})):
        raise SystemExit(reason)  # a refusal: no retry of this step changes the table it reads
    begin_step(spark, out_uri)
    features_uri = f"{out_uri}/features"
    n_expected = upstream["counts"]["n_images"]
    with timings.measure("materialize_model"):
        model = materialize(spark, cfg)
        model_uri = model.uri_for(cfg.engine)
    images = read_output(spark, upstream["outputs"]["images"])
    int8 = None
    if cfg.precision == "int8":  # opt-in: quantized once, calibrated on a bounded sample of these images
        with timings.measure("quantize_int8"):
            int8 = materialize_int8(spark, cfg, model, images)
        model_uri = int8.uri
    spark.sparkContext.addFile(model_uri)
    partitions = partitions_for(n_expected, spark.sparkContext.defaultParallelism, cfg.batch_size)
    started = time.perf_counter()
    with timings.measure("featurize"):
        features = featurize_images(images.repartition(partitions), os.path.basename(model_uri),
                                    cfg.engine, cfg.batch_size, backbone=cfg.backbone)
        features.write.mode("overwrite").parquet(features_uri)
    elapsed = time.perf_counter() - started
    written = spark.read.parquet(features_uri)
    n_images = written.count()
    dims = written.select(F.size("features").alias("d")).distinct().collect()
    if n_images != n_expected:
        raise RuntimeError(f"featurized {n_images} images, expected {n_expected}: outputs left without manifest")
    return write_manifest(
        spark,
        out_uri,
        {
            "step": STEP,
            "inputs": {"preprocess": input_uri, "images": upstream["outputs"]["images"]},
            "outputs": {"features": features_uri, "model": model_uri},
            "counts": {"n_images": n_images, "n_rejected": upstream["counts"]["n_rejected"],
                       "n_input": upstream["counts"]["n_input"]},
            "params": {"backbone": model.backbone, "weights": model.weights, "weights_source": model.source,
                       "model_tag": model.tag,
                       "engine": cfg.engine, "batch_size": cfg.batch_size, "partitions": partitions,
                       "feature_dim": dims[0]["d"] if dims else None, "precision": cfg.precision,
                       "color_descriptor": COLOR_DESCRIPTOR,
                       **({"fp32_model": model.onnx_uri, "int8_calibration_hash": int8.calibration_hash,
                           "int8_calibration_images": int8.n_calibration, "int8_reused": int8.reused}
                          if int8 else {})},
            "metrics": {"images_per_s": round(n_images / elapsed, 2) if elapsed else None},
            "timings_s": dict(timings),
        },
    )


def arg_parser():
    parser = step_cli.parser(__doc__)
    parser.add_argument("--input", required=True, help="URI of the preprocess step (its manifest is read)")
    parser.add_argument("--backbone", choices=sorted(FEATURE_DIM), required=True,
                        help="the pretrained network (the DAG's list_new task chooses it for the run)")
    parser.add_argument("--weights", help="imagenet | random | path or s3a URI of a saved model")
    parser.add_argument("--engine", choices=["onnx", "tensorflow"])
    parser.add_argument("--precision", choices=["fp32", "int8"],
                        help="fp32 (default) | int8: static INT8 ONNX model calibrated on the run's images")
    parser.add_argument("--batch-size", dest="batch_size", type=int)
    parser.add_argument("--seed", type=int)
    return parser


def main(argv: list[str] | None = None) -> int:
    return step_cli.run_step(STEP, arg_parser(), argv, lambda spark, cfg, args, out: run(
        spark, cfg, input_uri=args.input, out_uri=out))


if __name__ == "__main__":
    sys.exit(main())
