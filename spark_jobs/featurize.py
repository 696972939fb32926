"""Step 1 - featurize: new fruit photos -> one feature vector per photo, in one pass over each photo:
ResNet50 (2048 floats, the reference) or EfficientNet-Lite0 (1280 floats, ImageNet weights offline).

Each listed photo is read by key, decoded and preprocessed in the sandbox (3x3 blur, 224x224 RGB,
`preprocess`), stored as a JPEG (its thumbnail, in its batch's pack in the preprocessed bucket), and the
model is given that JPEG's pixels in the same Python worker: nothing is written between the two, and
only its vector crosses back to the JVM. Its colour histogram is of the exact pixels.

The driver materialises the model once for the run in the models location and ships it with
`SparkContext.addFile`; each Python worker loads it once and runs it on each Arrow batch of `batch_size`
photos, `model_batch_size` photos a call, one intra-op thread per worker so that the workers share the
cores instead of fighting over them. Outputs: the feature vectors (appended to this model's feature
table), the rejects with their reasons, the keys the next run reads again, the ignored files and the
step's manifest, last.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
from pyspark import SparkFiles
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType

from spark_jobs import preprocess, step_cli
from spark_jobs.common import storage
from spark_jobs.common.config import FEATURE_DIM, Config, s3a_uri, split_s3_uri
from spark_jobs.common.images import COLOR_DESCRIPTOR, STORED_FORMAT
from spark_jobs.common.manifest import Timings, begin_step, write_manifest
from spark_jobs.common.models import materialize
from spark_jobs.quantize import materialize_int8
from spark_jobs.step_outputs import read_output

STEP = "featurize"
# What a photo's row holds in the features output: the feature table's columns
FEATURE_COLUMNS = ("key", "category", "etag", "features", "color", "jpeg")


def resolve_model_file(model_ref: str) -> str:
    """A local path as is (tests, local mode); otherwise the name of a file shipped with addFile."""
    return model_ref if os.path.isabs(model_ref) and os.path.exists(model_ref) else SparkFiles.get(model_ref)


@dataclass(frozen=True)
class Features:
    """What the featurize pass makes of a batch of stored images (`preprocess.preprocess_images`'s `made`):
    the model's feature vectors of their pixels (`images.from_stored`: what `make classify` gives the model
    too), `model_batch_size` photos a model call, None for a photo without one (a reject). The model is
    loaded once per Python worker (`models.load_featurizer`)."""

    model_ref: str
    engine: str
    backbone: str
    model_batch_size: int
    threads_per_worker: int = 1
    name = "features"
    spark_type = ArrayType(FloatType())

    def __call__(self, stored: list) -> list:
        from spark_jobs.common.images import from_stored
        from spark_jobs.common.models import load_featurizer

        todo = [i for i, image in enumerate(stored) if image is not None]
        out = [None] * len(stored)
        if not todo:
            return out
        model = load_featurizer(resolve_model_file(self.model_ref), self.engine, self.threads_per_worker,
                                backbone=self.backbone)
        rgb = np.stack([from_stored(stored[i]) for i in todo])
        size = self.model_batch_size  # float32 a call at a time: 600 KB a photo, against 150 KB as bytes
        features = np.concatenate([model(rgb[j:j + size].astype(np.float32)) for j in range(0, len(rgb), size)])
        for i, vector in zip(todo, features.astype(np.float32)):
            out[i] = vector
        return out


def featurize_photos(candidates: DataFrame, cfg: Config, model_ref: str, *, fetch_from: str | None = None,
                     jpeg_uri: str | None = None) -> DataFrame:
    """Candidate photos (`preprocess.read_listed` / `read_prefix`) -> key, category, etag, status, reason,
    features, color, jpeg: each photo read, preprocessed and featurized in one pass."""
    made = Features(model_ref, cfg.engine, cfg.backbone, cfg.model_batch_size)
    return preprocess.preprocess_images(candidates, cfg, fetch_from=fetch_from, jpeg_uri=jpeg_uri, made=made)


def partitions_for(n_images: int, parallelism: int, batch_size: int) -> int:
    """A few model batches per partition, and a whole number of waves over the cores (a last wave
    with idle cores costs as much as a full one)."""
    waves = max(1, math.ceil(n_images / (4 * batch_size * parallelism)))
    return parallelism * waves


def thumbnails_uri(cfg: Config, out_uri: str) -> str:
    """Where the step's thumbnail packs go: its own run folder, in the preprocessed bucket (the bucket
    the report and the Recognise page read thumbnails from, and only from)."""
    if not out_uri.startswith(("s3a://", "s3://")):  # a local output (tests): beside it
        return f"{out_uri}/jpeg"
    _, path = split_s3_uri(out_uri)
    return s3a_uri(cfg.preprocessed_bucket, path, "jpeg")


def calibration_images(candidates: DataFrame, cfg: Config, fetch_from: str | None = None) -> DataFrame:
    """INT8's calibration photos: a bounded sample of the run's candidates by key hash (the same photos
    give the same sample), chosen on the key column alone, then preprocessed before the pass (key, etag,
    image)."""
    from spark_jobs.quantize import CALIBRATION_IMAGES

    chosen = candidates.select("key").orderBy(F.xxhash64("key"), "key").limit(CALIBRATION_IMAGES)
    sample = candidates.join(F.broadcast(chosen), "key")
    prepared = preprocess.preprocess_images(sample, cfg, fetch_from=fetch_from)
    return prepared.filter(F.col("status") == preprocess.OK).select("key", "etag", "image")


def run(spark: SparkSession, cfg: Config, *, raw_uri: str, out_uri: str, keys_uri: str | None = None) -> dict:
    timings = Timings(spark, STEP)
    preprocess.check_raw_uri(raw_uri)
    begin_step(spark, out_uri)
    jpeg_uri, table_uri = thumbnails_uri(cfg, out_uri), f"{out_uri}/table"
    storage.delete(spark, jpeg_uri)  # a rerun's packs replace the last attempt's
    with timings.measure("list"):
        found = (preprocess.read_listed(spark, cfg, raw_uri, keys_uri) if keys_uri
                 else preprocess.read_prefix(spark, raw_uri))
    if found.n_files == 0:
        raise SystemExit(f"no input: nothing under {raw_uri}; upload images as <category>/<file>.jpg first")
    with timings.measure("materialize_model"):
        model = materialize(spark, cfg)
        model_uri = model.uri_for(cfg.engine)
    int8 = None
    if cfg.precision == "int8":  # opt-in: quantized once, calibrated on a bounded sample of these photos
        with timings.measure("quantize_int8"):
            int8 = materialize_int8(spark, cfg, model, calibration_images(found.candidates, cfg, found.fetch_from))
        model_uri = int8.uri
    spark.sparkContext.addFile(model_uri)
    candidates = found.candidates
    if found.fetch_from:  # rows of keys (the bytes are fetched in the pass): spread over a few batches a core
        candidates = candidates.repartition(partitions_for(found.n_files, spark.sparkContext.defaultParallelism,
                                                           cfg.batch_size))
    started = time.perf_counter()
    with timings.measure("featurize"):
        made = featurize_photos(candidates, cfg, os.path.basename(model_uri), fetch_from=found.fetch_from,
                                jpeg_uri=jpeg_uri).select(*FEATURE_COLUMNS, "reason", "status")
        made.write.mode("overwrite").partitionBy("status").parquet(table_uri)
    elapsed = time.perf_counter() - started
    with timings.measure("summarise"):
        counts, ignored_sample = summarise(spark, found, table_uri, out_uri, made.schema)
        dims = read_output(spark, f"{table_uri}/status={preprocess.OK}").select(F.size("features")).first()
    return write_manifest(spark, out_uri, {
        "step": STEP,
        "inputs": {"raw": raw_uri, **({"keys": keys_uri} if keys_uri else {})},
        "outputs": outputs(table_uri, jpeg_uri, out_uri, model_uri),
        "counts": {**counts, "n_already_featurized": found.n_already},
        "samples": {"ignored": ignored_sample},
        "params": params(cfg, model, dims[0] if dims else None, int8),
        "metrics": {"images_per_s": round(counts["n_images"] / elapsed, 2) if elapsed else None},
        "timings_s": dict(timings),
    })


def outputs(table_uri: str, jpeg_uri: str, out_uri: str, model_uri: str) -> dict:
    return {
        "features": f"{table_uri}/status={preprocess.OK}",
        "table": table_uri,
        "jpeg": jpeg_uri,
        "rejects": f"{out_uri}/rejects",
        "ignored": f"{out_uri}/ignored",
        "retry": f"{out_uri}/retry",  # keys the next run lists again (list_new's listing state)
        "model": model_uri,
    }


def summarise(spark: SparkSession, found: preprocess.Input, table_uri: str, out_uri: str, schema) -> tuple:
    """The side outputs and the counts, from what was written (the pass runs once). With its schema: when
    no photo was decoded the table has no file Spark could infer one from; the features output then
    reads as an empty table, as every output does."""
    table = spark.read.schema(schema).parquet(table_uri)
    counts, ignored_sample = preprocess.write_side_outputs(
        spark, table, found.listing, f"{out_uri}/rejects", f"{out_uri}/retry", f"{out_uri}/ignored")
    if not counts["n_images"]:
        table.filter(F.lit(False)).drop("status").write.mode("overwrite").parquet(f"{table_uri}/status={preprocess.OK}")
    return {"n_input": counts["n_images"] + counts["n_rejected"], **counts}, ignored_sample


def params(cfg: Config, model, feature_dim: int | None, int8) -> dict:
    return {"backbone": model.backbone, "weights": model.weights, "weights_source": model.source,
            "model_tag": model.tag, "engine": cfg.engine, "batch_size": cfg.batch_size,
            "model_batch_size": cfg.model_batch_size,
            "feature_dim": feature_dim, "precision": cfg.precision,
            "color_descriptor": COLOR_DESCRIPTOR, "image_format": STORED_FORMAT,
            "image_size": 224, "max_image_bytes": cfg.max_image_bytes, "max_image_pixels": cfg.max_image_pixels,
            **({"fp32_model": model.onnx_uri, "int8_calibration_hash": int8.calibration_hash,
                "int8_calibration_images": int8.n_calibration, "int8_reused": int8.reused} if int8 else {})}


def arg_parser():
    parser = step_cli.parser(__doc__)
    parser.add_argument("--raw", help="raw images URI (default: from config)")
    parser.add_argument("--keys", help="JSON-lines URI of the keys to process (incremental runs)")
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
        spark, cfg, raw_uri=args.raw or cfg.raw_uri, out_uri=out, keys_uri=args.keys))


if __name__ == "__main__":
    sys.exit(main())
