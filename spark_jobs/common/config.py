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

ENV_PREFIX = "FRUITFLOW_"
_PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent

# Spark 4.3 ships Hadoop 3.5.0 client jars; hadoop-aws must be the very same version.
HADOOP_AWS_PACKAGE = "org.apache.hadoop:hadoop-aws:3.5.0"

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")
IMAGE_SIZE = 224
FEATURE_DIM = {"resnet50": 2048, "efficientnet_lite0": 1280}


@dataclass(frozen=True)
class Config:
    """Pipeline settings. Field names map to ``FRUITFLOW_<NAME>`` environment variables."""

    # S3: None means real AWS; a URL points every client (s3a, boto3) at an S3-compatible server.
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    raw_bucket: str = "fruitflow-raw"
    raw_prefix: str = "images"
    # Step outputs go to <bucket>/<runs_prefix>/<run_id>/<step>/; one prefix is one feature table.
    runs_prefix: str = "runs"
    preprocessed_bucket: str = "fruitflow-preprocessed"
    features_bucket: str = "fruitflow-features"
    models_bucket: str = "fruitflow-models"
    reports_bucket: str = "fruitflow-reports"

    # Spark. jobs_dir and py_files default to this checkout (spark_jobs/ and dist/fruitflow_jobs.zip);
    # on a cluster in cluster deploy mode point them at a location every node can read.
    spark_master: str = "spark://127.0.0.1:7077"
    jobs_dir: str = str(_PROJECT_ROOT / "spark_jobs")
    py_files: str = str(_PROJECT_ROOT / "dist" / "fruitflow_jobs.zip")
    ivy_dir: str = ""  # empty: Spark's default (~/.ivy2.5.2)
    # hadoop-aws and its dependencies as jar files present at the same paths on every Spark node
    # (comma-separated); they go on the driver's and executors' class path. Empty: spark-submit
    # resolves HADOOP_AWS_PACKAGE from Maven and ships it with each application (~0.7 GB each time).
    spark_jars: str = ""
    shuffle_partitions: int = 8
    executor_memory: str = "2g"  # JVM heap per executor (Spark's default, 1g, ran out at 4716 images)

    # Featurization
    backbone: str = "resnet50"
    weights: str = "imagenet"  # imagenet | random | path or s3a URI of a saved model
    engine: str = "onnx"  # onnx | tensorflow
    precision: str = "fp32"  # fp32 | int8 (opt-in: ONNX model statically quantized on the run's images)
    batch_size: int = 64
    seed: int = 42

    # Reduction and clustering
    pca_k: int = 20
    target_variance: float | None = None  # when set, the smallest k reaching it wins over pca_k
    # Cosine geometry: L2-normalise the features before PCA and the reduced vectors before KMeans.
    l2_normalize: bool = True
    # The colour histogram (featurize's `color` column) appended to the unit-length CNN features before
    # PCA, with this weight; 0 leaves it out (README, "Clustering quality").
    color_weight: float = 1.0
    n_clusters: int | None = None  # None: the number of distinct categories
    # KMeans starts from the best of `kmeans_starts` greedy k-means++ starts on a random sample of at most
    # `kmeans_start_max_points` vectors (driver), then iterates over all of them in Spark.
    kmeans_starts: int = 20
    kmeans_start_max_points: int = 20000
    tsne_max_points: int = 3000
    plot_max_points: int = 20000

    # Guards against hostile or broken input
    max_image_bytes: int = 64 * 1024 * 1024
    max_image_pixels: int = 40_000_000

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
        if self.backbone not in FEATURE_DIM:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {sorted(FEATURE_DIM)}")
        if self.engine not in ("onnx", "tensorflow"):
            raise ValueError(f"unknown engine {self.engine!r}; choose onnx or tensorflow")
        if self.precision not in ("fp32", "int8"):
            raise ValueError(f"unknown precision {self.precision!r}; choose fp32 or int8")
        if self.precision == "int8" and self.engine != "onnx":
            raise ValueError("precision int8 needs the onnx engine")
        if self.pca_k < 1:
            raise ValueError("pca_k must be >= 1")
        if self.target_variance is not None and not 0 < self.target_variance <= 1:
            raise ValueError("target_variance must be in (0, 1]")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "Config":
        """Defaults, then ``FRUITFLOW_*`` variables, then explicit overrides (None means 'not given')."""
        environ = os.environ if environ is None else environ
        values: dict = {}
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_overrides(self, **overrides) -> "Config":
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    # Locations.
    @property
    def raw_uri(self) -> str:
        return s3a_uri(self.raw_bucket, self.raw_prefix)

    def step_uri(self, run_id: str, step: str) -> str:
        bucket = {
            "preprocess": self.preprocessed_bucket,
            "featurize": self.features_bucket,
            "pca": self.features_bucket,
            "cluster": self.reports_bucket,
        }[step]
        return s3a_uri(bucket, self.runs_prefix, run_id, step)

    @property
    def featurize_manifests_glob(self) -> str:
        """Every run's featurize manifest: together they make the feature table."""
        return s3a_uri(self.features_bucket, self.runs_prefix, "*", "featurize", "_manifest.json")

    @property
    def models_uri(self) -> str:
        return s3a_uri(self.models_bucket, self.backbone)


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
