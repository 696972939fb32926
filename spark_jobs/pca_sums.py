"""PCA's running sums: the row count, the sum of the rows and the sum of their outer products, from which
the mean and the covariance follow, and which add up. Each pca step keeps the sums of the table it fitted
(a file its signed manifest vouches for, with the featurize steps they cover); the next pca step adds the
sums of the featurize steps that are new instead of passing over the whole table again.

The sums carry over only when nothing else changed: the same model and PCA input (normalisation, colour
weight), every featurize step they cover still in the table, and the count of the new table equal to the
count they add up to (a photo featurized again, whose newer row replaces its older one, makes the counts
differ: the whole table is summed again)."""

from __future__ import annotations

import hashlib
import io
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession

from spark_jobs.common import storage
from spark_jobs.common.config import Config
from spark_jobs.common.manifest import STORED_MS, committed_steps, store_order

SUMS_FILE = "sums.npz"
# The sums are d x d float64: 40 MB for ResNet50 with the colour histogram; more is not a sums file
MAX_SUMS_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Sums:
    n: int
    total: np.ndarray  # d
    gram: np.ndarray  # d x d

    def __add__(self, other: Sums | None) -> Sums:
        if other is None:
            return self
        if other.total.shape != self.total.shape:
            raise ValueError(f"sums of {len(other.total)} and {len(self.total)} dimensions do not add up")
        return Sums(self.n + other.n, self.total + other.total, self.gram + other.gram)

    def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        """The mean and the d x d sample covariance."""
        mean = self.total / self.n
        return mean, (self.gram - self.n * np.outer(mean, mean)) / max(self.n - 1, 1)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, n=np.array(self.n, np.int64), total=self.total, gram=self.gram)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Sums:
        """Plain arrays only (no pickle), of consistent shapes and finite."""
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            n, total, gram = int(arrays["n"]), arrays["total"].astype(np.float64), arrays["gram"].astype(np.float64)
        d = total.shape[0] if total.ndim == 1 else -1
        if n < 1 or d < 1 or gram.shape != (d, d) or not (np.isfinite(total).all() and np.isfinite(gram).all()):
            raise ValueError("not the sums of a table")
        return cls(n, total, gram)


def sums_of(frame: DataFrame, column: str) -> Sums | None:
    """The sums of a vector column in one pass over it (None: no rows): each Python worker sums its share of
    the rows and of their outer products with numpy (`partial_sums`: matrix products over Arrow batches),
    and the partial sums are added up in a tree on the executors, so d x d numbers reach the driver whatever
    the number of rows.

    One partition per executor core: each partial sum is d x d (17 MB at d = 1472), so more partitions
    would only move more of them. Spark ML's own route (Summarizer.variance, then Correlation.corr) reads
    the column twice and adds each row's outer product on the JVM's BLAS, a pure-Java fallback wherever
    no native libblas is installed: several times slower (bench/RESULTS.md)."""
    spark = frame.sparkSession
    arrays = frame.select(vector_to_array(column).alias("v")).coalesce(spark.sparkContext.defaultParallelism)
    partials = arrays.mapInArrow(partial_sums, "n long, total binary, gram binary")
    found = partials.rdd.map(_sums_of_row).treeAggregate(None, _add, _add)
    return None if found is None else Sums(found[0], found[1], found[2].reshape(len(found[1]), len(found[1])))


def partial_sums(batches):
    """Arrow batches of a `v` array column -> at most one row: the row count, the sum of the rows and the
    sum of their outer products (d x d), as raw float64 bytes."""
    import pyarrow as pa

    n, total, gram = 0, None, None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        x = batch.column(0).flatten().to_numpy(zero_copy_only=False).reshape(batch.num_rows, -1)
        if gram is None:
            total, gram = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
        n += len(x)
        total += x.sum(axis=0)
        gram += x.T @ x
    if n:
        yield pa.RecordBatch.from_arrays([pa.array([n], pa.int64()), pa.array([total.tobytes()], pa.binary()),
                                          pa.array([gram.tobytes()], pa.binary())], names=["n", "total", "gram"])


def _sums_of_row(row) -> tuple[int, np.ndarray, np.ndarray]:
    return row["n"], np.frombuffer(row["total"]), np.frombuffer(row["gram"])


def _add(a, b):
    if a is None or b is None:
        return b if a is None else a
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


# ---------------------------------------------------------------------- kept from run to run


def step_id(manifest: dict) -> list:
    """A featurize step as the sums name it: its folder and when the store saw its manifest (a step run
    again in the same folder is another step)."""
    return [manifest[STORED_MS], manifest["step_uri"]]


@dataclass(frozen=True)
class Kept:
    sums: Sums
    covers: list[list]  # step_id of each featurize step the sums cover
    pca_step: str


def last_kept(spark: SparkSession, cfg: Config, steps: list[list], inputs: dict) -> Kept | None:
    """The newest pca step's sums that this run can add to: made from the same `inputs`, covering only
    featurize steps still in the table (`steps`), and the file its manifest vouches for."""
    wanted = {tuple(s) for s in steps}
    manifests = [m for m in committed_steps(spark, cfg, "pca") if isinstance(m.get("sums"), dict)]
    for manifest in sorted(manifests, key=store_order, reverse=True):
        kept = manifest["sums"]
        try:
            covers = [list(s) for s in kept.get("covers") or []]
            if kept.get("inputs") != inputs or not {tuple(s) for s in covers} <= wanted:
                continue
            body = storage.read_bytes(spark, manifest["outputs"]["sums"], MAX_SUMS_BYTES)
            if hashlib.sha256(body).hexdigest() != kept.get("sha256"):
                raise ValueError("the file is not the one its manifest vouches for")
            return Kept(Sums.from_bytes(body), covers, manifest["step_uri"])
        except Exception as exc:  # noqa: BLE001 - gone (expired), altered or unreadable: the table is summed
            print(f"[pca] not adding to the sums of {manifest.get('step_uri')}: {str(exc)[:300]}", file=sys.stderr)
    return None


def running_sums(kept: Kept | None, manifests: list[dict], table_of: Callable[[list[dict]], DataFrame],
                 column: str, n_rows: int) -> tuple[Sums, dict]:
    """The sums of the table the featurize steps `manifests` make (`n_rows` rows): the kept ones plus those
    of the steps they do not cover, or, when the counts do not add up, those of the whole table.
    `table_of(steps)`: the table of some of the steps, or of all (`manifests` itself), with the PCA input
    as `column`."""
    if kept is not None:
        covered = {tuple(s) for s in kept.covers}
        new = [m for m in manifests if tuple(step_id(m)) not in covered]
        added = kept.sums + (sums_of(table_of(new), column) if new else None)
        if added.n == n_rows:
            return added, {"from": kept.pca_step, "featurize_steps_summed": len(new)}
        print(f"[pca] the sums of {kept.pca_step} and of {len(new)} new step(s) count {added.n} rows, the table "
              f"{n_rows} (photos featurized again): summing the whole table", file=sys.stderr)
    whole = sums_of(table_of(manifests), column)
    if whole is None:
        raise ValueError("no rows in the feature table: a covariance needs at least one")
    return whole, {"from": None, "featurize_steps_summed": len(manifests)}


def keep(spark: SparkSession, out_uri: str, sums: Sums, manifests: list[dict], inputs: dict) -> tuple[str, dict]:
    """Writes the sums into the step's folder: their URI, and what the manifest says of them (`sums`),
    with the digest the next step checks."""
    body = sums.to_bytes()
    uri = f"{out_uri}/{SUMS_FILE}"
    storage.write_bytes(spark, uri, body)
    return uri, {"sha256": hashlib.sha256(body).hexdigest(), "inputs": inputs,
                 "covers": [step_id(m) for m in manifests]}
