"""The featurize step's photo reading: raw fruit photos -> denoised 224x224 RGB pixels, or a reject.

Extract: the objects the DAG's `list_new` listed (`--keys`), read by exact key on the executors
(through Arrow's S3 client when the bytes are the content listed, otherwise through boto3); or,
without `--keys`, every object under the raw prefix (`binaryFile`). Transform: `category`/`key` from
the path; each image read, decoded and preprocessed in one pass through Python on
the executors (`prepare_batches`), where the featurize step's model turns the pixels into features and
the thumbnail is written as a JPEG in its batch's pack; files that cannot be used, and keys that are
unsafe to read ('..', '.', empty segments), become rejects with a reason. Load: the rejects, the keys
the next run reads again and the ignored files (`write_side_outputs`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial
from urllib.parse import unquote

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, BinaryType, FloatType, StringType, StructField, StructType

from spark_jobs.columns import unsafe_key_column
from spark_jobs.common import sandbox, storage
from spark_jobs.common.config import IMAGE_EXTENSIONS, Config, split_s3_uri
from spark_jobs.common.keys import check_location
from spark_jobs.common.manifest import committed_steps
from spark_jobs.feature_table import feature_table, made_with

OK, REJECTED = "ok", "rejected"
# Ends the reason of a reject that may pass (an object unreadable or not found when fetched): the key is
# written to the step's `retry` output, and the next run lists it again whatever its LastModified.
RETRY_NEXT_RUN = "left for the next run"
# S3 error codes that refuse one object, not every read: AccessDenied (a policy or ACL on it),
# InvalidObjectState (archived), InvalidRequest and InvalidArgument (an SSE-C object read without its key,
# or an argument that object does not take: 400). Any other error (the credentials, the bucket, the
# store) fails the task: it would refuse every key alike. A plain GET sends no condition and no range,
# so 412 and 416 cannot come back.
OBJECT_REFUSALS = ("AccessDenied", "403", "InvalidObjectState", "InvalidRequest", "InvalidArgument")


# --------------------------------------------------------------------------- extract


def extract(spark: SparkSession, raw_uri: str) -> DataFrame:
    """Lazy listing of the raw objects; `content` is read only for the rows that need it.

    Spark's file scan skips zero-byte files; they are added back (as empty content) so that every
    object is accounted for. A listed file the scan cannot open (an S3 key whose '.', '..' or empty
    segments Hadoop's Path normalised into another, missing, key; or an object deleted meanwhile) does
    not fail the run: it is added back with a `read_error`, and becomes a reject.
    """
    files = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("ignoreMissingFiles", "true")
        .load(raw_uri)
        .withColumn("read_error", F.lit(None).cast("string"))
    )
    listed = files.inputFiles()  # the driver's file index, which Spark holds anyway
    if len(listed) == files.select("path").count():
        return files
    # inputFiles() gives URL-encoded URIs (file:///a%20b); the scan gives Hadoop paths (file:/a b).
    paths = [unquote(p).replace("file:///", "file:/", 1) for p in listed]
    absent = spark.createDataFrame([(p,) for p in paths], "path string").join(files.select("path"), "path", "left_anti")
    rows = [(r["path"], _read_error(spark, r["path"])) for r in absent.collect()]  # the few zero-byte files
    added = spark.createDataFrame(rows, "path string, read_error string")
    return files.unionByName(
        added.select(
            "path",
            F.lit(None).cast("timestamp").alias("modificationTime"),
            F.lit(0).cast("long").alias("length"),
            F.lit(b"").cast("binary").alias("content"),
            "read_error",
        )
    )


def _read_error(spark: SparkSession, path: str) -> str | None:
    """None for a zero-byte file (decoding rejects it as empty); otherwise why it cannot be read."""
    try:
        fs, hpath = storage._path(spark, path)
        if fs.getFileStatus(hpath).getLen() == 0:
            return None
        return "unreadable: the scan could not open it"
    except Exception as exc:  # noqa: BLE001 - py4j wraps FileNotFoundException
        if "FileNotFoundException" in str(exc):
            return ("unreadable: listed but not found (a key with '.', '..' or empty segments, which Hadoop "
                    "normalises into another key, or an object deleted since the listing)")
        return f"unreadable: {type(exc).__name__}"


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
    unreadable = F.col("read_error").isNotNull() if "read_error" in files.columns else F.lit(False)
    ignored = (
        F.when(relative.isNull(), F.lit("outside the raw prefix"))
        .when(unreadable, F.lit(None))  # a listed key that cannot be read is a candidate, rejected below
        .when(F.size(parts) != 2, F.lit("not at <category>/<file> depth"))
        .when(~extension.isin(*IMAGE_EXTENSIONS), F.lit("not an image extension"))
    )
    unsafe = unsafe_key_column(F.col("relative"))
    if "read_error" in files.columns:
        unsafe = F.coalesce(unsafe, F.col("read_error"))
    return (
        files.withColumn("relative", relative)
        .withColumn("ignored_reason", ignored)
        .withColumn("category", F.when(F.size(parts) == 2, parts.getItem(0)))
        .withColumn("key", F.col("relative"))
        .withColumn("pre_reject", unsafe)
    )


def decode_reason(outcome) -> str | None:
    """A decoding outcome (`sandbox.Outcome`) as the reject reason recorded for its image (None: decoded).
    A bad file never fails the run, whatever its decoder did. A crash or a timeout may be the machine's
    (a busy host, a lost core) rather than the file's: that key is tried again by the next run (a file
    that crashes its decoder every time is given up after `listing.MAX_RETRIES` runs)."""
    if outcome.died == sandbox.MEMORY_ERROR:
        return f"decoder {outcome.died}"
    if outcome.died:
        return f"decoder {outcome.died} ({RETRY_NEXT_RUN})"
    if outcome.error_type == "RejectedImage":
        return outcome.error
    if outcome.error_type is not None:
        return f"decoding failed: {outcome.error_type}: {outcome.error}"
    return None


class StoredImage:
    """What `preprocess_images` makes of each photo's stored image by default: the stored JPEG itself
    (`images.STORED_FORMAT`, the form of the thumbnails and of INT8's calibration images)."""

    name, spark_type = "image", BinaryType()

    def __call__(self, stored: list) -> list:
        return stored


def preprocess_images(candidates: DataFrame, cfg: Config, *, fetch_from: str | None = None,
                      jpeg_uri: str | None = None, made=StoredImage()) -> DataFrame:
    """Candidates -> key, category, etag, status, reason, `made.name` (what `made` makes of the image's
    stored form, `images.stored`: the JPEG itself, or the featurize step's feature vector of its pixels),
    color (the colour histogram of `images.color_histogram`, made here from the exact pixels: the stored
    JPEG's would differ by a little in every bin), jpeg (the locator of the stored JPEG in a pack under
    `jpeg_uri`, `jpeg_packs`: the report's and the Recognise page's thumbnails).

    Files over the byte limit are rejected without reading them (with `binaryFile` the length filter is
    pushed down to the reader). Each other image makes one trip through Python (`prepare_batches`):
    its bytes fetched by key from `fetch_from` (the raw prefix; None: the frame's `content`), decoded and
    preprocessed in the sandbox, stored as a JPEG, with `jpeg_uri` written there in its batch's pack, and
    made into `made`'s value; so every object is read once and its pixels never leave that Python worker.
    """
    columns = ["key", "category", "path", "length", "modificationTime"]
    too_big = (
        candidates.filter(F.col("length") > cfg.max_image_bytes)
        .select(*columns, F.lit(None).cast("string").alias("etag"),
                F.lit(f"file too large: over {cfg.max_image_bytes} bytes").alias("reason"),
                F.lit(None).cast(made.spark_type).alias(made.name), F.lit(None).cast("array<float>").alias("color"),
                F.lit(None).cast("string").alias("jpeg"))
    )
    # the listing's ETag (`listed_files`): the content a key's bytes are checked against when read by Arrow
    listed_etag = F.col("listed_etag") if "listed_etag" in candidates.columns else F.lit(None).cast("string")
    readable = candidates.filter(F.col("length") <= cfg.max_image_bytes).select(
        *columns, "content", "pre_reject", listed_etag.alias("listed_etag"))
    schema = StructType([*(readable.schema[c] for c in columns), StructField("etag", StringType()),
                         StructField("reason", StringType()), StructField(made.name, made.spark_type),
                         StructField("color", ArrayType(FloatType())), StructField("jpeg", StringType())])
    prepare = partial(prepare_batches, cfg=cfg, fetch_from=fetch_from, jpeg_uri=jpeg_uri, made=made)
    decoded = readable.mapInPandas(prepare, schema=schema)
    return too_big.unionByName(decoded).withColumn(
        "status", F.when(F.col("reason").isNull(), F.lit(OK)).otherwise(F.lit(REJECTED))
    )


# Requests to S3 in flight per Python worker: a GET or a PUT mostly waits on the store, and one at a time
# left the worker's core idle for most of each request.
S3_REQUESTS_IN_FLIGHT = 8


def prepare_batches(batches, *, cfg: Config, fetch_from: str | None, jpeg_uri: str | None, made):
    """On the executors: each batch's images read (or taken from `content`), decoded and preprocessed
    in one sandboxed child, stored as JPEGs (`images.stored`), uploaded as one pack and made into `made`'s
    values; `pre_reject` rows are passed on with their reason."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    from spark_jobs.common import images
    from spark_jobs.common import storage as st

    s3 = source = None
    with ThreadPoolExecutor(S3_REQUESTS_IN_FLIGHT) as pool:
        for batch in batches:
            if s3 is None and (fetch_from or jpeg_uri):  # on the first batch: an empty partition needs no client
                s3 = st.client_for(cfg)
                source = split_s3_uri(fetch_from) if fetch_from else None
            reasons = list(batch["pre_reject"])
            if source:
                keys, etags, contents = list(batch["key"]), list(batch["listed_etag"]), [None] * len(batch)
                todo = [i for i, reason in enumerate(reasons) if reason is None]
                fetched = pool.map(lambda i: read_object(s3, cfg, *source, keys[i], etags[i]), todo)
                for i, (content, reason) in zip(todo, fetched):
                    contents[i], reasons[i] = content, reason
            else:
                contents = list(batch["content"])
            pixels = decode_all(contents, reasons, cfg)
            colors = [images.color_histogram(rgb) if rgb is not None else None for rgb in pixels]
            stored = [images.stored(rgb) if rgb is not None else None for rgb in pixels]
            locators = upload_pack(s3, jpeg_uri, stored) if jpeg_uri else [None] * len(stored)
            yield batch.drop(columns=["content", "pre_reject", "listed_etag"]).assign(
                # S3's ETag for single-part uploads
                etag=[hashlib.md5(c).hexdigest() if c is not None else None for c in contents],
                reason=reasons, color=colors, jpeg=locators, **{made.name: made(stored)})


def upload_pack(s3, jpeg_uri: str, stored: list[bytes | None]) -> list[str | None]:
    """The batch's stored JPEGs as one object under `jpeg_uri` (a name of its own: a retried task writes
    another, and only the rows it yields point there); each image's locator."""
    import uuid

    from spark_jobs.common import jpeg_packs

    if all(image is None for image in stored):
        return [None] * len(stored)
    body, spans = jpeg_packs.pack(stored)
    bucket, prefix = split_s3_uri(jpeg_uri)
    key = f"{prefix.strip('/')}/{uuid.uuid4().hex}{jpeg_packs.SUFFIX}"
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/octet-stream")
    return [jpeg_packs.locator(f"s3a://{bucket}/{key}", span) for span in spans]


def decode_all(contents: list, reasons: list, cfg: Config) -> list:
    """The preprocessed pixels (224x224 RGB) of each content whose reason is None, decoded and
    preprocessed in one sandboxed child; `reasons` gets each failure's reason (its pixels: None)."""
    from spark_jobs.common import images
    from spark_jobs.common import sandbox as isolated

    max_pixels = cfg.max_image_pixels

    def decode_one(data):
        return images.preprocess(images.decode(data, max_pixels)).tobytes()

    todo = [i for i, reason in enumerate(reasons) if reason is None]
    outcomes = isolated.map_isolated(decode_one, [contents[i] for i in todo], **cfg.decoder_limits)
    pixels = [None] * len(contents)
    for i, outcome in zip(todo, outcomes):
        reasons[i] = decode_reason(outcome)
        if outcome.ok and not images.is_preprocessed(outcome.value):  # a child gone wrong
            reasons[i] = "decoder returned malformed output"
        elif outcome.ok:
            pixels[i] = images.rgb_from_bytes(outcome.value)
    return pixels


def read_object(s3, cfg: Config, bucket: str, prefix: str, key: str, listed_etag: str | None):
    """A listed object's bytes, or why not: through Arrow's client when they are the content listed
    (`storage.read_listed_content`), otherwise, and for every error, through boto3 (`fetch_object`)."""
    if listed_etag:
        content = storage.read_listed_content(storage.arrow_s3_for(cfg), bucket, object_key(prefix, key),
                                              listed_etag, cfg.max_image_bytes)
        if content is not None:
            return content, None
    return fetch_object(s3, bucket, prefix, key, cfg.max_image_bytes)


def object_key(prefix: str, key: str) -> str:
    """A listed key's object key under the raw prefix."""
    prefix = prefix.strip("/")
    return f"{prefix}/{key}" if prefix else key


def fetch_object(s3, bucket: str, prefix: str, key: str, max_bytes: int) -> tuple[bytes | None, str | None]:
    """An object's bytes by its exact key, or why not. An object gone since the listing or refused by
    itself (OBJECT_REFUSALS) may be passing (a policy being fixed, a store catching up): its key is listed
    again by the next run (RETRY_NEXT_RUN). Other errors (the bucket, the credentials, 5xx after boto3's
    retries) fail the task, which Spark and then Airflow retry."""
    from botocore.exceptions import ClientError

    try:
        obj = s3.get_object(Bucket=bucket, Key=object_key(prefix, key))
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404"):
            return None, f"not found: deleted since list_new listed it ({RETRY_NEXT_RUN})"
        # a refusal of this one object (a policy on it, an archived object, an SSE-C object's 400): the
        # key's own reject, retried by the next runs up to listing.MAX_RETRIES, never the run's failure
        if code in OBJECT_REFUSALS:
            return None, f"unreadable: {code} ({RETRY_NEXT_RUN})"
        raise  # the store, the bucket or the credentials (expired, wrong region): the task fails, retried
    if obj["ContentLength"] > max_bytes:  # grown since the listing
        obj["Body"].close()
        return None, f"file too large: over {max_bytes} bytes"
    return obj["Body"].read(), None


def new_keys(spark: SparkSession, keys_uri: str, featurized: list[dict]) -> DataFrame:
    """key, etag, refused from the DAG's listing, flagged `already` when that exact content was featurized.

    `refused` is the reason list_new would not let a key be read (outside the prefix, '..' segments).
    """
    listed = (
        spark.read.schema("key string, etag string, size long, refused string").json(keys_uri)
        .dropDuplicates(["key"])
    )
    if not featurized:
        return listed.withColumn("already", F.lit(False))
    done = feature_table(spark, featurized).select("key", "etag").withColumn("already", F.lit(True))
    return listed.join(done, ["key", "etag"], "left").fillna({"already": False})


# --------------------------------------------------------------------------- load


def listed_files(wanted: DataFrame, raw_uri: str) -> DataFrame:
    """The DAG's listing (key, etag, size, refused, already) in the shape `extract` gives, without
    listing S3 again: Hadoop would normalise '.', '..' and empty key segments (reading another object,
    or failing the whole listing when the key climbs out of the prefix), so keys stay keys. A key
    list_new refused carries its reason as `read_error`; `content` is fetched later, by key, and checked
    against the ETag listed for it (`listed_etag`)."""
    base = raw_uri.rstrip("/")
    return wanted.select(
        F.concat(F.lit(base + "/"), "key").alias("path"),
        F.lit(None).cast("timestamp").alias("modificationTime"),
        F.coalesce(F.col("size"), F.lit(0)).cast("long").alias("length"),
        F.lit(None).cast("binary").alias("content"),
        F.col("refused").alias("read_error"),
        F.col("etag").alias("listed_etag"),
        "already",
    )


def check_raw_uri(raw_uri: str) -> None:
    try:
        check_location(raw_uri)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc


@dataclass
class Input:
    listing: DataFrame  # every object considered, with its key, category and `ignored_reason`
    candidates: DataFrame  # the images to decode
    n_files: int
    n_already: int = 0  # listed images already featurized with the same ETag (not read again)
    fetch_from: str | None = None  # where the candidates' bytes are read by key (None: in `content`)


def read_listed(spark: SparkSession, cfg: Config, raw_uri: str, keys_uri: str) -> Input:
    """Incremental runs: the objects the DAG listed, less the images this run's model featurized with
    that ETag, each read by its exact key."""
    featurized = made_with(committed_steps(spark, cfg, "featurize"), cfg)
    wanted = new_keys(spark, keys_uri, featurized).cache()  # counted, then read
    listing = with_keys(listed_files(wanted, raw_uri), raw_uri)
    n_files = wanted.count()
    candidates = listing.filter(F.col("ignored_reason").isNull())
    n_already = candidates.filter("already").count()
    return Input(listing, candidates.filter("not already").drop("already"), n_files, n_already, fetch_from=raw_uri)


def read_prefix(spark: SparkSession, raw_uri: str) -> Input:
    """A manual run without a listing: every object under the prefix, listed by Spark's file index once."""
    listing = with_keys(extract(spark, raw_uri), raw_uri)
    return Input(listing, listing.filter(F.col("ignored_reason").isNull()), len(listing.inputFiles()))


def write_side_outputs(spark: SparkSession, table: DataFrame, listing: DataFrame, rejects_uri: str, retry_uri: str,
                       ignored_uri: str) -> tuple[dict[str, int], list[dict]]:
    """The rejects (key, reason), the keys the next run lists again and the ignored files (path, key,
    reason), each written and counted from what was written: the counts, and a sample of the ignored
    files with their reasons (the run summary and the report name them)."""
    counts = {row["status"]: row["count"] for row in table.groupBy("status").count().collect()}
    rejects = table.filter(F.col("status") == REJECTED).select("key", "reason")
    rejects.write.mode("overwrite").json(rejects_uri)
    retry = spark.read.schema("key string, reason string").json(rejects_uri) \
        .filter(F.col("reason").endswith(f"({RETRY_NEXT_RUN})")).select("key")
    retry.write.mode("overwrite").json(retry_uri)
    ignored = listing.filter(F.col("ignored_reason").isNotNull()) \
        .select("path", F.coalesce(F.col("key"), F.col("path")).alias("key"), "ignored_reason")
    ignored.write.mode("overwrite").json(ignored_uri)
    ignored = spark.read.schema("path string, key string, ignored_reason string").json(ignored_uri)
    n_ignored = ignored.count()
    sample = [{"key": r["key"], "reason": r["ignored_reason"]} for r in ignored.limit(20).collect()]
    if n_ignored:
        print(f"[featurize] ignored {n_ignored} non-candidate files, e.g. {sample}", file=sys.stderr)
    counts = {"n_images": counts.get(OK, 0), "n_rejected": counts.get(REJECTED, 0), "n_ignored": n_ignored,
              "n_retry_next_run": spark.read.schema("key string").json(retry_uri).count(),
              "n_categories": table.filter(F.col("status") == OK).select("category").distinct().count()}
    return counts, sample
