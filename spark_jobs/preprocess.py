"""Step 1 - preprocess: raw fruit photos -> denoised 224x224 RGB images.

Extract: every object under the raw prefix (`binaryFile`). Transform: `category`/`key` from the path,
decoding and preprocessing in a pandas UDF; files that cannot be used become rejects with a reason.
Load: the executors write each preprocessed image to S3 as a JPEG under its key, and the step writes a
Parquet table (raw RGB bytes, for the featurizer), the rejects, the ignored files and its manifest.
"""

from __future__ import annotations

import argparse
import sys
from urllib.parse import unquote

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import BinaryType, StringType, StructField, StructType

from spark_jobs.common import cli, storage
from spark_jobs.common.config import IMAGE_EXTENSIONS, Config, split_s3_uri
from spark_jobs.common.table import committed_featurize_steps, feature_table
from spark_jobs.common.manifest import Timings, begin_step, write_manifest

STEP = "preprocess"
OK, REJECTED = "ok", "rejected"


# --------------------------------------------------------------------------- extract


def extract(spark: SparkSession, raw_uri: str) -> DataFrame:
    """Lazy listing of the raw objects; `content` is read only for the rows that need it.

    Spark's file scan skips zero-byte files; they are added back (as empty content) so that every
    object is accounted for.
    """
    files = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(raw_uri)
    listed = files.inputFiles()  # the driver's file index, which Spark holds anyway
    if len(listed) == files.select("path").count():
        return files
    # inputFiles() gives URL-encoded URIs (file:///a%20b); the scan gives Hadoop paths (file:/a b).
    paths = [unquote(p).replace("file:///", "file:/", 1) for p in listed]
    empty = spark.createDataFrame([(p,) for p in paths], "path string").join(files.select("path"), "path", "left_anti")
    return files.unionByName(
        empty.select(
            "path",
            F.lit(None).cast("timestamp").alias("modificationTime"),
            F.lit(0).cast("long").alias("length"),
            F.lit(b"").cast("binary").alias("content"),
        )
    )


# --------------------------------------------------------------------------- transform


def with_keys(files: DataFrame, raw_uri: str) -> DataFrame:
    """Adds `key` (category/file), `category`, `etag` and why a file is ignored or pre-rejected.

    Only `<raw prefix>/<category>/<file>.<jpg|jpeg|png>` are candidate images; anything else is
    ignored (counted and named, never decoded). A candidate with an unsafe key is rejected.
    """
    # Hadoop writes local paths as file:/x, not file:///x.
    prefix = raw_uri.replace("file:///", "file:/", 1).rstrip("/") + "/"
    path = F.col("path")
    relative = F.when(path.startswith(prefix), F.expr(f"substring(path, {len(prefix) + 1})"))
    parts = F.split(relative, "/")
    extension = F.lower(F.regexp_extract(relative, r"\.([^./]+)$", 1))
    ignored = (
        F.when(relative.isNull(), F.lit("outside the raw prefix"))
        .when(F.size(parts) != 2, F.lit("not at <category>/<file> depth"))
        .when(~extension.isin(*IMAGE_EXTENSIONS), F.lit("not an image extension"))
    )
    unsafe = (
        F.when(F.exists(parts, lambda p: p.isin("", ".", "..")), F.lit("unsafe key: empty, '.' or '..' segment"))
        .when(F.col("relative").rlike(r"[\x00-\x1f]"), F.lit("unsafe key: control character"))
    )
    return (
        files.withColumn("relative", relative)
        .withColumn("ignored_reason", ignored)
        .withColumn("category", F.when(F.size(parts) == 2, parts.getItem(0)))
        .withColumn("key", F.col("relative"))
        .withColumn("pre_reject", unsafe)
    )


def preprocess_images(candidates: DataFrame, cfg: Config) -> DataFrame:
    """Candidates (with `content`) -> key, category, etag, status, reason, image (raw RGB bytes).

    Files over the byte limit are rejected without reading them (the length filter is pushed down to
    the binaryFile reader); the others are decoded in a pandas UDF.
    """
    max_pixels = cfg.max_image_pixels
    schema = StructType([StructField("image", BinaryType()), StructField("reason", StringType())])

    @pandas_udf(schema)
    def decode_and_preprocess(content: pd.Series) -> pd.DataFrame:
        from spark_jobs.common import images

        out_images, reasons = [], []
        for data in content:
            try:
                rgb = images.preprocess(images.decode(data, max_pixels))
                out_images.append(rgb.tobytes())
                reasons.append(None)
            except images.RejectedImage as exc:
                out_images.append(None)
                reasons.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - a bad file never fails the run
                out_images.append(None)
                reasons.append(f"decoding failed: {type(exc).__name__}: {exc}")
        return pd.DataFrame({"image": out_images, "reason": reasons})

    columns = ["key", "category", "path", "length", "modificationTime"]
    too_big = (
        candidates.filter(F.col("length") > cfg.max_image_bytes)
        .select(*columns, F.lit(None).cast("string").alias("etag"),
                F.lit(f"file too large: over {cfg.max_image_bytes} bytes").alias("reason"),
                F.lit(None).cast("binary").alias("image"))
    )
    readable = candidates.filter(F.col("length") <= cfg.max_image_bytes)
    decoded = (
        readable.withColumn("etag", F.md5("content"))  # S3's ETag for single-part uploads
        .withColumn("_p", F.when(F.col("pre_reject").isNull(), decode_and_preprocess("content")))
        .select(*columns, "etag",
                F.coalesce("pre_reject", "_p.reason").alias("reason"),
                F.col("_p.image").alias("image"))
    )
    return too_big.unionByName(decoded).withColumn(
        "status", F.when(F.col("reason").isNull(), F.lit(OK)).otherwise(F.lit(REJECTED))
    )


def new_keys(spark: SparkSession, keys_uri: str, featurized: list[dict]) -> DataFrame:
    """key, etag from the DAG's listing, flagged `already` when that exact content was featurized."""
    listed = spark.read.schema("key string, etag string").json(keys_uri).dropDuplicates(["key"])
    if not featurized:
        return listed.withColumn("already", F.lit(False))
    done = feature_table(spark, featurized).select("key", "etag").withColumn("already", F.lit(True))
    return listed.join(done, ["key", "etag"], "left").fillna({"already": False})


# --------------------------------------------------------------------------- load


def upload_jpegs(processed: DataFrame, jpeg_uri: str, endpoint: str | None) -> DataFrame:
    """Pass-through that writes each accepted image as a JPEG object, on the executors."""
    bucket, prefix = split_s3_uri(jpeg_uri)

    def upload(batches):
        from spark_jobs.common import images, storage as st

        s3 = st.s3_client(endpoint)
        for batch in batches:
            for key, image in zip(batch["key"], batch["image"]):
                if image is not None:
                    body = images.to_jpeg(images.rgb_from_bytes(image))
                    s3.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=body, ContentType="image/jpeg")
            yield batch

    return processed.mapInPandas(upload, schema=processed.schema)


def run(spark: SparkSession, cfg: Config, raw_uri: str, out_uri: str, keys_uri: str | None = None) -> dict:
    timings = Timings()
    begin_step(spark, out_uri)
    table_uri, jpeg_uri = f"{out_uri}/images", f"{out_uri}/jpeg"
    rejects_uri, ignored_uri = f"{out_uri}/rejects", f"{out_uri}/ignored"

    listing = with_keys(extract(spark, raw_uri), raw_uri)
    with timings.measure("list"):
        n_files = len(listing.inputFiles())  # Spark's file index, listed once by extract()
    if n_files == 0:
        raise SystemExit(f"no input: nothing under {raw_uri}; upload images as <category>/<file>.jpg first")
    candidates = listing.filter(F.col("ignored_reason").isNull())
    n_already = 0
    if keys_uri:  # incremental runs: only the keys the DAG listed, less those featurized with that ETag
        wanted = new_keys(spark, keys_uri, committed_featurize_steps(spark, cfg)).cache()  # counted, then joined
        n_already = wanted.filter("already").count()
        candidates = candidates.join(wanted.filter("not already").select("key"), "key", "left_semi")
    with timings.measure("preprocess"):
        processed = upload_jpegs(preprocess_images(candidates, cfg), jpeg_uri, cfg.s3_endpoint)
        processed.write.mode("overwrite").partitionBy("status").parquet(table_uri)

    with timings.measure("summarise"):
        table = spark.read.parquet(table_uri)
        counts = {row["status"]: row["count"] for row in table.groupBy("status").count().collect()}
        table.filter(F.col("status") == REJECTED).select("key", "reason").write.mode("overwrite").json(rejects_uri)
        ignored = listing.filter(F.col("ignored_reason").isNotNull()).select("path", "ignored_reason")
        ignored.write.mode("overwrite").json(ignored_uri)
        ignored = spark.read.schema("path string, ignored_reason string").json(ignored_uri)
        n_ignored = ignored.count()
        ignored_sample = [r["path"] for r in ignored.limit(20).collect()]
        n_categories = table.filter(F.col("status") == OK).select("category").distinct().count()
    n_ok, n_rejected = counts.get(OK, 0), counts.get(REJECTED, 0)
    if n_ignored:
        print(f"[preprocess] ignored {n_ignored} non-candidate files, e.g. {ignored_sample}", file=sys.stderr)
    return write_manifest(
        spark,
        out_uri,
        {
            "step": STEP,
            "inputs": {"raw": raw_uri, **({"keys": keys_uri} if keys_uri else {})},
            "outputs": {
                "images": f"{table_uri}/status={OK}",
                "table": table_uri,
                "jpeg": jpeg_uri,
                "rejects": rejects_uri,
                "ignored": ignored_uri,
            },
            "counts": {
                "n_input": n_ok + n_rejected,
                "n_images": n_ok,
                "n_rejected": n_rejected,
                "n_ignored": n_ignored,
                "n_already_featurized": n_already,
                "n_categories": n_categories,
            },
            "params": {"image_size": 224, "max_image_bytes": cfg.max_image_bytes,
                       "max_image_pixels": cfg.max_image_pixels},
            "timings_s": dict(timings),
        },
    )


def arg_parser():
    parser = cli.parser(__doc__)
    parser.add_argument("--raw", help="raw images URI (default: from config)")
    parser.add_argument("--keys", help="JSON-lines URI of the keys to process (incremental runs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return cli.run_step(
        STEP, arg_parser(), argv, lambda spark, cfg, args, out: run(spark, cfg, args.raw or cfg.raw_uri, out, args.keys)
    )


if __name__ == "__main__":
    sys.exit(main())
