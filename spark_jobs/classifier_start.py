"""Where the train step's logistic regression starts: from the last run's classifier, when one was made
from the same vectors and regularisation. Its coefficients are carried over to this run's PCA (`carried_over`),
and Spark's stop is scaled so that the fit stops where a fit from Spark's own start stops (`start_tol`).
The objective is convex: the start changes how many L-BFGS iterations run, each a Spark job over the
table, not the classifier they reach."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass

import numpy as np
from pyspark.sql import SparkSession

from spark_jobs.common import storage
from spark_jobs.common.classifier import require_inside, vouched
from spark_jobs.common.recognition import EXPORT_ARRAYS, EXPORT_FORMAT, EXPORT_JSON

# Spark ML's LogisticRegression `tol`: the fit stops once its objective moved less than this share of the
# objective it started from
TOL = 1e-6
# What made the vectors a classifier was fit on: an earlier step's is a start only when they are the same
STARTS_FROM_THE_SAME = ("backbone", "weights", "model_tag", "precision")
# A start whose objective is more than this times the earlier classifier's end is not the near start its
# scaled `tol` was meant for
FARTHER = 1.5
# classify.npz as train writes it is a few MB (20 000 bank vectors and their keys); more is not one
MAX_EXPORT_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Start:
    """An earlier run's classifier to start the logistic regression from: its coefficients and intercepts
    over this run's PCA components (`carried_over`), by class name, and the `tol` that stops the fit
    where a fit from Spark's own start stops."""

    classes: list[str]
    coefficients: np.ndarray  # classes x this run's k
    intercepts: np.ndarray
    tol: float
    expected: float  # the objective it should start at: the earlier classifier's at its end

    def java_model(self, spark: SparkSession, labels: list[str]):
        """Spark ML's LogisticRegressionModel (JVM side) with a row per label, in order: a class the earlier
        classifier did not know starts at zero coefficients and the mean intercept."""
        from pyspark.ml.common import _py2java
        from pyspark.ml.linalg import DenseMatrix, DenseVector

        row = {name: i for i, name in enumerate(self.classes)}
        k = self.coefficients.shape[1]
        coefficients = np.array([self.coefficients[row[c]] if c in row else np.zeros(k) for c in labels])
        intercepts = [float(self.intercepts[row[c]]) if c in row else float(self.intercepts.mean()) for c in labels]
        sc = spark.sparkContext
        matrix = DenseMatrix(len(labels), k, coefficients.T.ravel().tolist())  # column-major
        return sc._jvm.org.apache.spark.ml.classification.LogisticRegressionModel(
            "fruitflow-start", _py2java(sc, matrix), _py2java(sc, DenseVector(intercepts)), len(labels), True)


def carried_over(earlier: dict, prep: dict) -> tuple[np.ndarray, np.ndarray]:
    """An exported classifier's coefficients and intercepts over this run's PCA (`prep`): the same logits
    for any input in both PCAs' span. With z = (x - mean) @ components in each run,
    z_earlier = z @ C_new.T @ C_earlier + (mean_new - mean_earlier) @ C_earlier."""
    w, b = earlier["coefficients"], earlier["intercepts"]
    c_old, c_new, m_old, m_new = earlier["pca_components"], prep["components"], earlier["pca_mean"], prep["mean"]
    d, k_old = c_old.shape
    if c_new.shape[0] != d or m_old.shape != (d,) or m_new.shape != (d,) or w.ndim != 2 or w.shape[1] != k_old \
            or b.shape != (w.shape[0],) or earlier["classes"].shape != (w.shape[0],):
        raise ValueError("the earlier classifier's arrays do not fit this run's PCA")
    coefficients, intercepts = w @ c_old.T @ c_new, b + w @ (c_old.T @ (m_new - m_old))
    if not (np.isfinite(coefficients).all() and np.isfinite(intercepts).all()):
        raise ValueError("the earlier classifier's numbers are not finite")
    return coefficients, intercepts


def fresh_objective(counts: np.ndarray) -> float:
    """The objective at Spark's own start (zero coefficients, intercepts log(1 + n) per class): the training
    labels' cross-entropy under the softmax of those intercepts."""
    intercepts = np.log1p(counts.astype(np.float64))
    top = intercepts.max()
    return float(top + np.log(np.exp(intercepts - top).sum()) - counts @ intercepts / counts.sum())


def went_wrong(history: list[float], start: Start) -> str | None:
    """Why a fit from `start` (its objective at each iteration) must be redone, or None. A start whose
    objective is not finite (an earlier classifier that leaves some photo no chance at all, such as one
    fit on a handful of photos) is where L-BFGS cannot move from; one farther from the optimum than the
    earlier classifier's end has a `tol` scaled for a nearer start, so it may have stopped early."""
    if not (math.isfinite(history[0]) and math.isfinite(history[-1])):
        return "its objective is not finite"
    if start.tol > TOL and history[0] > FARTHER * start.expected:
        return f"it started at {history[0]:.6g}, not near {start.expected:.6g}"
    return None


def start_tol(earlier_objective: float, counts: dict[str, int], classes: list[str]) -> float:
    """Spark's fit stops once its objective moves by less than `tol` times the objective it started from.
    From a classifier near the optimum that start is many times smaller than Spark's own, so the same `tol`
    would run on long after a fresh fit stops (bench/RESULTS.md). Scaled by the two starts' objectives the
    stop is a fresh fit's; with other classes than the earlier classifier's, the start is farther and `tol`
    stays."""
    if set(classes) != set(counts) or not math.isfinite(earlier_objective) or earlier_objective <= 0:
        return TOL
    return max(TOL, TOL * fresh_objective(np.array(list(counts.values()))) / earlier_objective)


def read_export(spark: SparkSession, manifest: dict) -> tuple[dict, dict]:
    """A train step's exported classifier (its arrays, as float64 but the class names) and description, as
    its (signed) manifest vouches for them: the Spark nodes can write in the step's folder."""
    export, digests = manifest["outputs"]["export"], manifest.get("export_sha256") or {}
    require_inside(export, manifest["step_uri"], "the classifier's export")
    body = {name: vouched(storage.read_bytes(spark, f"{export}/{name}", MAX_EXPORT_BYTES), digests.get(name),
                           f"the classifier's {name}")
            for name in (EXPORT_JSON, EXPORT_ARRAYS)}
    meta = json.loads(body[EXPORT_JSON])
    if meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"exported in format {meta.get('format')}, this version writes {EXPORT_FORMAT}")
    with np.load(io.BytesIO(body[EXPORT_ARRAYS]), allow_pickle=False) as npz:
        arrays = {name: npz[name].astype(np.float64) for name in ("pca_mean", "pca_components", "coefficients",
                                                                   "intercepts")}
        arrays["classes"] = npz["classes"]
    return arrays, meta
