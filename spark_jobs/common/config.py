"""The one place for fruitflow's configuration.

Defaults live here; environment variables (``FRUITFLOW_*``) override them, and the Spark jobs'
command-line arguments (filled from DAG Params) override the environment. Nothing here holds a
credential: S3 access comes from the standard AWS chain (environment, Airflow connection, instance
profile).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .steps import step as registered_step

ENV_PREFIX = "FRUITFLOW_"
_JOBS_DIR = Path(__file__).resolve().parent.parent

# Spark 4.2 ships Hadoop 3.5.0 client jars; hadoop-aws must be the very same version.
HADOOP_AWS_PACKAGE = "org.apache.hadoop:hadoop-aws:3.5.0"
# Spark's binding to the S3A committers (PathOutputCommitProtocol, BindingParquetOutputCommitter): not in
# pyspark's jars, and Maven Central has no 4.2.0 of it. 4.0.0's two classes work with Spark 4.2
# (`test_dag_e2e` reads the committer's own report). One jar, resolved without its dependencies (Spark's own).
HADOOP_CLOUD_PACKAGE = "org.apache.spark:spark-hadoop-cloud_2.13:4.0.0"

# s3a's floor for its network timeouts (Hadoop's MINIMUM_NETWORK_OPERATION_DURATION)
S3_MIN_TIMEOUT_S = 15

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")
WEIGHTS_EXTENSIONS = ("keras", "onnx", "pth")
IMAGE_SIZE = 224
FEATURE_DIM = {"resnet50": 2048, "efficientnet_lite0": 1280}
# The default backbone: the DAG's list_new task picks one for the run (fruitflow_airflow.tasks.choose_model,
# docs/models.md); a step is always given the one it runs with.
AUTO = "auto"


@dataclass(frozen=True)
class Config:
    """Pipeline settings. Field names map to ``FRUITFLOW_<NAME>`` environment variables."""

    # S3: None means real AWS; a URL points every client (s3a, boto3) at an S3-compatible server.
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    # How long any S3 client (s3a, boto3) waits for a connection or for the next bytes of a response
    # before it gives the request up and retries it: a store that stalls is retried, not waited on for
    # s3a's 200 s. s3a raises anything under 15 s to 15 s, so that is the floor here too.
    s3_timeout_s: int = 60
    raw_bucket: str = "fruitflow-raw"
    raw_prefix: str = "images"
    # Step outputs go to <bucket>/<runs_prefix>/<run_id>/<step>/; one prefix is one feature table.
    runs_prefix: str = "runs"
    preprocessed_bucket: str = "fruitflow-preprocessed"
    features_bucket: str = "fruitflow-features"
    models_bucket: str = "fruitflow-models"
    reports_bucket: str = "fruitflow-reports"

    # Spark (the master is the Airflow connection `spark_default`). jobs_dir and py_files default to this
    # checkout (spark_jobs/ and dist/fruitflow_jobs.zip): the driver runs beside Airflow (client mode).
    jobs_dir: str = str(_JOBS_DIR)
    py_files: str = str(_JOBS_DIR.parent / "dist" / "fruitflow_jobs.zip")
    ivy_dir: str = ""  # empty: Spark's default (~/.ivy2.5.2)
    # hadoop-aws and its dependencies as jar files present at the same paths on every Spark node
    # (comma-separated); they go on the driver's and executors' class path. Empty: spark-submit
    # resolves HADOOP_AWS_PACKAGE from Maven and ships it with each application (~0.7 GB each time).
    spark_jars: str = ""
    # The executors' Python (spark.pyspark.python) where the nodes' default is not the one with the
    # pinned set; the driver keeps the interpreter that submits (spark.pyspark.driver.python). Empty:
    # the nodes' PYSPARK_PYTHON (the local stack's workers get the venv's).
    pyspark_python: str = ""
    # spark-submit's --properties-file: the Spark properties to start with instead of
    # $SPARK_CONF_DIR/spark-defaults.conf (the local stack keeps its SPARK_CONF_DIR empty). Empty: Spark's.
    spark_properties_file: str = ""
    # How Parquet output is committed to S3: "magic" (the S3A magic committer: files are uploaded as
    # pending multipart uploads and made visible at job commit, no copy) needs HADOOP_CLOUD_PACKAGE on the
    # class path (in spark_jars); "classic" is Hadoop's FileOutputCommitter, which renames, i.e. copies
    # every file on an object store.
    s3a_committer: str = "classic"
    shuffle_partitions: int = 8
    # The Spark history server's address (http://host:18080): each step prints its application's page there.
    spark_history_url: str = ""
    executor_memory: str = "2g"  # JVM heap per executor (Spark's default, 1g, is too small: bench/RESULTS.md)
    # The JVM heap of a session that is its own executor (local[N]: `make quality`, the tests), where
    # the executors' work and the driver's share one heap; a step under spark-submit keeps Spark's.
    local_memory: str = "4g"

    # Featurization
    backbone: str = AUTO  # or one of FEATURE_DIM
    weights: str = "imagenet"  # imagenet | random | path or s3a URI of a saved model
    engine: str = "onnx"  # onnx | tensorflow
    precision: str = "fp32"  # fp32 | int8 (opt-in: ONNX model statically quantized on the run's images)
    # Photos per Arrow batch: what one call of the featurize pass handles (one sandboxed decoder child,
    # whose start and copied pages cost ~0.4 ms a photo at 64 and ~0.25 at 128, and one pack of
    # thumbnails); the batch's raw photos are in the Python worker's memory together
    batch_size: int = 128
    # Photos per call of the CNN within a batch: small calls keep its activations in the CPU's caches
    # (Lite0 costs ~15 % more per photo in calls of 64; bench/RESULTS.md)
    model_batch_size: int = 16
    seed: int = 42

    # Reduction and clustering
    pca_k: int = 20
    target_variance: float | None = None  # when set, the smallest k reaching it wins over pca_k
    # Cosine geometry: L2-normalise the features before PCA and the reduced vectors before KMeans.
    l2_normalize: bool = True
    # The colour histogram (featurize's `color` column) appended to the unit-length CNN features before
    # PCA, with this weight; 0 leaves it out (README, "Clustering quality").
    color_weight: float = 1.0
    n_clusters: int | None = None  # None: the number of distinct categories, up to max_clusters
    # KMeans' k at most (its starts are fitted on the driver): a bucket of thousands of one-photo folders
    # would otherwise cost every later run a k-means++ over thousands of centres on the Airflow host.
    max_clusters: int = 200
    # KMeans starts from the best of `kmeans_starts` greedy k-means++ starts on a random sample of at most
    # `kmeans_start_max_points` vectors (driver), then iterates over all of them in Spark.
    kmeans_starts: int = 20
    kmeans_start_max_points: int = 20000
    # A run starts KMeans from the last cluster step's clusters instead (the same k, geometry and model)
    # while its table has at most this share more photos than at the last fresh start; 0: always afresh.
    kmeans_warm_start_growth: float = 0.25
    tsne_max_points: int = 3000
    plot_max_points: int = 20000

    # The classifier (train step): the share of each class held out for its quality figures, the
    # logistic regression's L2 regularisation, the cap on training vectors exported for the nearest
    # neighbours, and the share of held-out photos of known fruits that must pass the "unknown" distance.
    test_fraction: float = 0.25
    reg_param: float = 1e-4
    # L-BFGS iterations at most (each one a Spark job over the training vectors): 100 and Spark's
    # tolerance give the held-out scores that 300 at 1e-7 gave, in half the time (docs/quality.md).
    classifier_max_iter: int = 100
    neighbour_bank_max: int = 20000
    unknown_quantile: float = 0.95

    # Airflow: the DAG's schedule ("none": manual and API runs only), and how far below the last
    # successful listing's newest LastModified an object is still compared by ETag (uploads that land
    # after their LastModified: plugins/fruitflow_airflow/listing.py).
    schedule: str = "@daily"
    listing_overlap_s: int = 3600

    # Guards against hostile or broken input
    max_image_bytes: int = 64 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    # Images are decoded in a forked child (spark_jobs.common.sandbox) that may allocate this much beyond
    # the Python worker's own memory and take this long per image: a decoder that crashes, runs away or
    # hangs costs its own image (a reject with the reason), never the task, the run or the next runs.
    decoder_memory_mb: int = 1024
    decoder_timeout_s: int = 30

    buckets: tuple[str, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "buckets",
            (
                self.raw_bucket,
                self.preprocessed_bucket,
                self.features_bucket,
                self.models_bucket,
                self.reports_bucket,
            ),
        )
        if self.backbone not in (AUTO, *FEATURE_DIM):
            raise ValueError(f"unknown backbone {self.backbone!r}; choose {AUTO} or one of {sorted(FEATURE_DIM)}")
        # The S3 identities may write the keys that start with the runs prefix (fruitflow.access): that
        # must never include the backbone models' folders, which only the drivers write.
        if not self.runs_prefix or any(name.startswith(self.runs_prefix) for name in FEATURE_DIM):
            raise ValueError(f"runs_prefix {self.runs_prefix!r} would take in a backbone's folder of the models bucket")
        if self.engine not in ("onnx", "tensorflow"):
            raise ValueError(f"unknown engine {self.engine!r}; choose onnx or tensorflow")
        if self.s3a_committer not in ("classic", "magic"):
            raise ValueError(f"unknown s3a_committer {self.s3a_committer!r}; choose classic or magic")
        if self.precision not in ("fp32", "int8"):
            raise ValueError(f"unknown precision {self.precision!r}; choose fp32 or int8")
        if self.precision == "int8" and self.engine != "onnx":
            raise ValueError("precision int8 needs the onnx engine")
        if self.pca_k < 1:
            raise ValueError("pca_k must be >= 1")
        if self.target_variance is not None and not 0 < self.target_variance <= 1:
            raise ValueError("target_variance must be in (0, 1]")
        if self.s3_timeout_s < S3_MIN_TIMEOUT_S:
            raise ValueError(f"s3_timeout_s must be >= {S3_MIN_TIMEOUT_S} (s3a's minimum)")
        if self.batch_size < 1 or self.model_batch_size < 1:
            raise ValueError("batch_size and model_batch_size must be >= 1")
        if not 0 < self.test_fraction < 1:
            raise ValueError("test_fraction must be in (0, 1)")
        if not 0 < self.unknown_quantile <= 1:
            raise ValueError("unknown_quantile must be in (0, 1]")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "Config":
        """Defaults, then ``FRUITFLOW_*`` variables, then explicit overrides (None means 'not given')."""
        return cls(**{**env_values(cls, environ), **{k: v for k, v in overrides.items() if v is not None}})

    def with_overrides(self, **overrides) -> "Config":
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def decoder_limits(self) -> dict[str, int]:
        """The decoder sandbox's limits, as `sandbox.map_isolated` and `report_page.thumbnails` take them."""
        return {"memory_bytes": self.decoder_memory_mb * 1024 * 1024, "timeout_s": self.decoder_timeout_s}

    def table_prefix(self, label: str) -> str:
        """The runs prefix of a feature table of its own (a demo's, a test's, a benchmark's):
        `<runs_prefix>-<label>`, beside the configured table, and like it inside the prefixes the S3
        identities may write (fruitflow.access: keys that start with the runs prefix)."""
        return f"{self.runs_prefix}-{label}"

    # Locations.
    @property
    def raw_uri(self) -> str:
        return s3a_uri(self.raw_bucket, self.raw_prefix)

    @property
    def dag_schedule(self) -> str | None:
        return None if self.schedule.lower() == "none" else self.schedule

    def step_uri(self, run_id: str, step: str) -> str:
        check_run_id(run_id)
        bucket = getattr(self, registered_step(step).bucket_field)
        return s3a_uri(bucket, self.runs_prefix, run_id, step)

    def manifests_glob(self, step: str) -> str:
        """Every run's manifest of one step: the featurize ones together make the feature table, the
        newest pca one holds the sums the next pca step adds to, the newest cluster one the clusters the
        next cluster step may start from."""
        bucket = getattr(self, registered_step(step).bucket_field)
        return s3a_uri(bucket, self.runs_prefix, "*", step, "_manifest.json")

    @property
    def models_uri(self) -> str:
        """The backbone's folder of the models bucket: for a chosen backbone only (never `auto`)."""
        if self.backbone == AUTO:
            raise ValueError(f"backbone {AUTO!r} has no models folder: the DAG's list_new task chooses one "
                             f"for the run; a step or a tool is given one of {sorted(FEATURE_DIM)}")
        return s3a_uri(self.models_bucket, self.backbone)


def env_values(cls, environ: Mapping[str, str] | None = None) -> dict:
    """The ``FRUITFLOW_<FIELD>`` variables set (non-empty) in `environ`, parsed by each field's type."""
    environ = os.environ if environ is None else environ
    values = {}
    for f in dataclasses.fields(cls):
        raw = environ.get(ENV_PREFIX + f.name.upper()) if f.init else None
        if raw is not None and raw != "":
            values[f.name] = _parse(f.type, raw)
    return values


def check_weights(weights: str, cfg: "Config") -> str:
    """Weights a run may ask for (a DAG Param, a job argument): imagenet, random, or a model file in the
    models bucket with a known extension, outside the runs prefix (where the Spark nodes may write: a
    node could plant a model there that the next runs would ship to every executor). A local path only
    when it is the one the operator configured (FRUITFLOW_WEIGHTS, i.e. `cfg.weights` from the
    environment): a Param never names a driver's file."""
    if weights in ("imagenet", "random") or (weights == cfg.weights and weights.startswith("/")):
        known = weights in ("imagenet", "random") or weights.rsplit(".", 1)[-1] in WEIGHTS_EXTENSIONS
        if known:
            return weights
    if weights.startswith(("s3://", "s3a://")) and weights.rsplit(".", 1)[-1] in WEIGHTS_EXTENSIONS:
        bucket, key = split_s3_uri(weights)
        if bucket == cfg.models_bucket and not key.startswith(cfg.runs_prefix) and \
                all(part not in ("", ".", "..") for part in key.split("/")):
            return weights
    raise ValueError(f"weights {weights!r} refused: imagenet, random, or a .keras, .onnx or .pth file in "
                     f"s3a://{cfg.models_bucket}/ outside {cfg.runs_prefix}* (a local file only as the "
                     "operator's FRUITFLOW_WEIGHTS)")


def weights_param_pattern(cfg: "Config") -> str:
    """check_weights as the DAG Param's JSON-schema pattern, for the trigger form: an ECMA regex too
    (the UI checks it in the browser), so only syntax characters are escaped."""
    import re

    def escape(text: str) -> str:
        return re.sub(r"([.*+?^${}()|\[\]\\/])", r"\\\1", text)

    extensions = "|".join(WEIGHTS_EXTENSIONS)
    # not under the runs prefix (the Spark nodes write there); no empty, '.' or '..' segment
    key = f"(?!{escape(cfg.runs_prefix)})" + r"(?!(\S*/)?\.{0,2}(/|$))\S+\." + f"({extensions})"
    choices = ["imagenet", "random", rf"s3a?://{escape(cfg.models_bucket)}/{key}"]
    if cfg.weights.startswith("/"):
        choices.append(escape(cfg.weights))
    return "^(" + "|".join(choices) + ")$"


def check_run_id(run_id: str) -> str:
    """A run id names one folder of its own under the runs prefix: not empty, not made of dots (Hadoop
    paths would normalise it into the prefix itself or its parent), no '/'."""
    if not run_id or not run_id.strip(".") or "/" in run_id:
        raise ValueError(f"unusable run id {run_id!r}: it must name one folder of its own")
    return run_id


def s3a_uri(bucket: str, *parts: str) -> str:
    path = "/".join(p.strip("/") for p in parts if p)
    return f"s3a://{bucket}/{path}" if path else f"s3a://{bucket}"


def split_s3_uri(uri: str) -> tuple[str, str]:
    """'s3a://bucket/a/b' -> ('bucket', 'a/b'); accepts s3:// and s3a://."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in ("s3", "s3a"):
        raise ValueError(f"not an S3 URI: {uri!r}")
    bucket, _, key = rest.partition("/")
    return bucket, key


def _parse(kind, raw: str):
    kind = str(kind)
    if kind.startswith("bool"):
        if raw.strip().lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(f"not a boolean: {raw!r}")
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if kind.startswith("int"):
        return int(raw)
    if kind.startswith("float"):
        return float(raw)
    return raw
