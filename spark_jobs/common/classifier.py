"""Which fruit is in a photo, without Spark and without a JVM: the classifier the train step exported
beside its Spark ML models (the ONNX backbone, the PCA preparation, the logistic regression's
coefficients, the KMeans centres and a bank of training vectors), read from the store, and each photo
through the pipeline's own decoding and preprocessing code. `fruitflow classify` and the Airflow
plugin's Recognise page both use it."""

from __future__ import annotations

import io
import json
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from . import signing
from .recognition import (
    EXPORT_ARRAYS,
    EXPORT_FORMAT,
    EXPORT_JSON,
    pairwise_distances,
    reduce,
    softmax,
    unit_rows,
)

TOP = 3


class NoModel(RuntimeError):
    """Nothing trained in the store yet; the message says what to run."""


@dataclass
class Classifier:
    meta: dict
    arrays: dict
    centres: np.ndarray | None
    featurizer: object  # spark_jobs.common.models.OnnxFeaturizer
    source: dict  # which run, which manifests
    load_s: float = 0.0

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, summary: str | None = None, cfg=None, threads: int | None = None, client=None) -> Classifier:
        """The classifier of the run whose summary.json is `summary` (default: the latest trained run)."""
        from spark_jobs.common.config import Config

        started = time.perf_counter()
        reader = BucketReader(cfg or Config.from_env(), client)
        summary_doc = read_summary(reader, summary)
        outputs = summary_doc.get("outputs", {})
        if "train" not in outputs:
            raise NoModel(f"the run {summary_doc.get('run_id')} has no trained classifier (it predates the train "
                          "step, or trained nothing): run `make demo` again")
        classifier = cls.from_steps(outputs["train"], outputs.get("cluster"), reader.cfg, threads, reader.client)
        classifier.source["run_id"] = summary_doc.get("run_id")
        classifier.load_s = round(time.perf_counter() - started, 3)
        return classifier

    @classmethod
    def from_steps(cls, train_uri: str, cluster_uri: str | None, cfg, threads: int | None = None,
                   client=None) -> Classifier:
        """The classifier a train step exported, with the centres of a cluster step on the same PCA."""
        started = time.perf_counter()
        reader = BucketReader(cfg, client)
        train = read_manifest(reader, train_uri)
        export = train["outputs"]["export"]
        # inside the folder the manifest was read from, not the folder it names: a planted manifest
        # could name any other
        require_inside(export, train_uri, "the classifier's export")
        digests = train.get("export_sha256") or {}
        meta = json.loads(vouched(reader.get(f"{export}/{EXPORT_JSON}"), digests.get(EXPORT_JSON),
                                   f"the classifier's {EXPORT_JSON}"))
        if meta.get("format") != EXPORT_FORMAT:
            raise NoModel(f"{export} was exported in format {meta.get('format')}, this version reads {EXPORT_FORMAT}: "
                          "run the pipeline again")
        arrays_file = vouched(reader.get(f"{export}/{EXPORT_ARRAYS}"), digests.get(EXPORT_ARRAYS),
                              f"the classifier's {EXPORT_ARRAYS}")
        with np.load(io.BytesIO(arrays_file), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        centres = None
        if cluster_uri:
            cluster = read_manifest(reader, cluster_uri)
            # the clusters only mean something in the space of the same PCA
            if cluster["inputs"]["pca"] == train["inputs"]["pca"] and "centroids" in cluster["outputs"]:
                require_inside(cluster["outputs"]["centroids"], cluster_uri, "the KMeans centres")
                body = vouched(reader.get(cluster["outputs"]["centroids"]), cluster.get("centroids_sha256"),
                               "the KMeans centres")
                centres = np.array(json.loads(body)["centres"])
        featurizer = load_backbone(reader, meta["backbone_model"], threads or os.cpu_count() or 1)
        source = {"train": train["step_uri"], "backbone": meta["backbone"], "weights": meta["weights"],
                  "accuracy_held_out": train["metrics"].get("accuracy")}
        return cls(meta, arrays, centres, featurizer, source, round(time.perf_counter() - started, 3))

    # ------------------------------------------------------------------ the pipeline's features

    def features(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(CNN features, colour histograms) of preprocessed 224x224 RGB images, as the featurize step
        makes them: the CNN's of the stored JPEG (the form the model is given), the histogram of the exact
        pixels."""
        from spark_jobs.common.images import as_stored, color_histogram

        stored = np.stack([as_stored(p) for p in rgb])
        return self.featurizer(stored.astype(np.float32)), np.stack([color_histogram(p) for p in rgb])

    def reduce(self, features: np.ndarray, color: np.ndarray) -> np.ndarray:
        """The PCA step's transform (unit length, weighted colour appended, centred, projected)."""
        return reduce(features, color, l2_normalize=self.meta["pca_l2_normalize"],
                      color_weight=self.meta["color_weight"], mean=self.arrays["pca_mean"],
                      components=self.arrays["pca_components"])

    def jpeg_of(self, key: str) -> str | None:
        """The locator of a bank photo's preprocessed JPEG (`jpeg_packs`), or None (a bank exported before
        packs, a photo without one)."""
        if "bank_jpegs" not in self.arrays:
            return None
        found = np.flatnonzero(self.arrays["bank_keys"] == key)
        if not len(found):
            return None
        return str(self.arrays["bank_jpegs"][found[0]]) or None

    # ------------------------------------------------------------------ prediction

    def predict_reduced(self, reduced: np.ndarray) -> list[dict]:
        a = self.arrays
        classes = a["classes"]
        probabilities = softmax(reduced @ a["coefficients"].T + a["intercepts"])
        space = unit_rows(reduced) if self.meta["l2_normalize"] else reduced
        distances = pairwise_distances(space, a["bank_vectors"].astype(np.float64))
        clusters = (pairwise_distances(space, self.centres).argmin(axis=1) if self.centres is not None
                    else [None] * len(reduced))
        lines = []
        for p, d, c in zip(probabilities, distances, clusters):
            top = np.argsort(-p)[:TOP]
            near = np.argsort(d)[:TOP]
            lines.append({
                "fruit": str(classes[top[0]]),
                "top": [{"fruit": str(classes[i]), "probability": round(float(p[i]), 4)} for i in top],
                "cluster": None if c is None else int(c),
                "neighbours": [{"key": str(a["bank_keys"][i]), "fruit": str(a["bank_fruit"][i]),
                                "distance": round(float(d[i]), 4)} for i in near],
                "distance": round(float(d[near[0]]), 4),
                "unknown": bool(d[near[0]] > self.meta["unknown_threshold"]),
            })
        return lines

    def predict(self, paths, batch_size: int = 16) -> list[dict]:
        """One result per path, in order: a prediction, or {"path", "error"} for a file it cannot use."""
        from spark_jobs.common.config import Config

        cfg = Config.from_env()
        results: list[dict | None] = [None] * len(paths)
        ready: list[tuple[int, np.ndarray]] = []
        for i, outcome in enumerate(load_images([Path(p) for p in paths], cfg)):
            if isinstance(outcome, np.ndarray):
                ready.append((i, outcome))
            else:  # a bad file is a result, never a crash
                results[i] = {"path": str(paths[i]), "error": outcome}
        for start in range(0, len(ready), batch_size):
            chunk = ready[start:start + batch_size]
            rgb = np.stack([image for _, image in chunk])
            lines = self.predict_reduced(self.reduce(*self.features(rgb)))
            for (i, _), line in zip(chunk, lines):
                results[i] = {"path": str(paths[i]), **line}
        return results


def load_images(paths: list[Path], cfg) -> list[np.ndarray | str]:
    """Each file's preprocessed pixels, or why not: decoded in the decoder sandbox the executors use (its
    own process, memory cap and time limit per photo), so that a file that crashes or exhausts the
    decoder costs its own result, never the caller (the Airflow api-server, for the Recognise page)."""
    from spark_jobs.common.images import is_preprocessed, rgb_from_bytes
    from spark_jobs.common.sandbox import map_isolated

    outcomes: list[np.ndarray | str | None] = [None] * len(paths)
    files: dict[int, bytes] = {}
    for i, path in enumerate(paths):
        read = _read_at_most(path, cfg.max_image_bytes)
        if isinstance(read, str):
            outcomes[i] = read
        else:
            files[i] = read
    todo = list(files)
    # fresh: the caller may be the api-server, whose memory holds the keys a decoder turned into code would
    # want; the files are read here, by the caller's user (the decoder's namespace has none of its rights)
    decoded = map_isolated(partial(_preprocessed_bytes, max_pixels=cfg.max_image_pixels),
                           [files[i] for i in todo], **cfg.decoder_limits, fresh=True)
    for i, outcome in zip(todo, decoded):
        if outcome.ok and is_preprocessed(outcome.value):
            outcomes[i] = rgb_from_bytes(outcome.value)
        elif outcome.ok:  # a child gone wrong
            outcomes[i] = "decoder returned malformed output"
        elif outcome.died:
            outcomes[i] = f"decoder {outcome.died}"
        else:
            outcomes[i] = outcome.error if outcome.error_type == "RejectedImage" else \
                f"{outcome.error_type}: {outcome.error}"
    return outcomes


def _read_at_most(path: Path, max_bytes: int) -> bytes | str:
    """The file's bytes, or why not (a file that grows past the limit while read is too large too). Opened
    without blocking and read only when regular: a FIFO or a device among the photos never holds the caller."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "not a regular file"
        try:
            data = file.read(max_bytes + 1)
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"
    if len(data) > max_bytes:
        return f"file too large: over {max_bytes} bytes"
    return data


def _preprocessed_bytes(data: bytes, max_pixels: int) -> bytes:
    """In the sandbox's child: the file's bytes decoded and preprocessed, as raw RGB bytes."""
    from spark_jobs.common.images import decode, preprocess

    return preprocess(decode(data, max_pixels)).tobytes()


# ---------------------------------------------------------------------- the store


@dataclass
class BucketReader:
    """Reads objects of the pipeline's buckets (and of no other) with one S3 client: the pipeline's own
    (storage.client_for: endpoint, region and timeout from the Config) unless one is given (the Airflow
    plugin's S3Hook connection)."""

    cfg: object
    client: object = None

    def __post_init__(self):
        if self.client is None:
            from spark_jobs.common.storage import client_for

            self.client = client_for(self.cfg)

    def get(self, uri: str) -> bytes:
        from spark_jobs.common.config import split_s3_uri

        bucket, key = split_s3_uri(uri)
        if bucket not in self.cfg.buckets:
            raise ValueError(f"{uri} is outside the pipeline's buckets")
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def manifest(self, step_uri: str) -> dict:
        """A step's manifest, with the store's LastModified as its STORED_MS (`parse_manifest`)."""
        from spark_jobs.common.config import split_s3_uri
        from spark_jobs.common.manifest import manifest_uri, parse_manifest

        bucket, key = split_s3_uri(manifest_uri(step_uri))
        if bucket not in self.cfg.buckets:
            raise ValueError(f"{step_uri} is outside the pipeline's buckets")
        obj = self.client.get_object(Bucket=bucket, Key=key)
        return parse_manifest(obj["Body"].read(), int(obj["LastModified"].timestamp() * 1000))


def vouched(body: bytes, expected: str | None, what: str) -> bytes:
    """A file as its step's driver wrote it: its SHA-256 is in the step's (signed) manifest. The steps'
    folders are writable by the Spark nodes' identity; what they replace there is refused."""
    import hashlib

    if not expected or hashlib.sha256(body).hexdigest() != expected:
        raise ValueError(f"{what} is not the one its step wrote "
                         f"({'no digest in the manifest' if not expected else 'its SHA-256 differs'})")
    return body


def require_inside(uri: str, step_uri: str, what: str) -> None:
    """A manifest names files of its own step only: a planted one cannot point elsewhere."""
    inside = uri[len(step_uri.rstrip("/")) + 1:] if uri.startswith(step_uri.rstrip("/") + "/") else ""
    if not inside or any(part in ("", ".", "..") for part in inside.split("/")):
        raise ValueError(f"{what} {uri!r} is not inside its step {step_uri!r}")


def read_manifest(reader: BucketReader, step_uri: str) -> dict:
    from spark_jobs.common.manifest import manifest_uri

    try:
        return signing.loads(reader.get(manifest_uri(step_uri)), "manifest")
    except Exception as exc:
        if "NoSuchKey" in str(exc):
            raise NoModel(f"no manifest at {manifest_uri(step_uri)}: that step did not finish") from exc
        raise


def latest_pointer(reader: BucketReader) -> str | None:
    """The newer of the two "latest trained run" pointers: the pipeline's (publish writes it under the
    configured runs prefix) and the latest `make demo`'s (each demo has a runs prefix of its own)."""
    from spark_jobs.common.config import split_s3_uri
    from spark_jobs.common.pointers import latest_demo_uri, latest_run_uri

    found = []
    for uri in (latest_run_uri(reader.cfg), latest_demo_uri(reader.cfg)):
        bucket, key = split_s3_uri(uri)
        try:
            found.append((reader.client.head_object(Bucket=bucket, Key=key)["LastModified"], uri))
        except Exception as exc:  # noqa: BLE001 - absent (404) is the common case
            if "404" not in str(exc) and "Not Found" not in str(exc):
                raise
    return max(found)[1] if found else None


def read_summary(reader: BucketReader, summary: str | None) -> dict:
    """The given run summary, or the latest trained run's."""
    if summary is None:
        pointer = latest_pointer(reader)
        if pointer is None:
            raise NoModel("no finished pipeline run in the store: run `make demo` first (or the DAG in Airflow)")
        summary = signing.loads(reader.get(pointer), "latest-run pointer")["summary"]
    try:
        return signing.loads(reader.get(summary), "run summary")
    except Exception as exc:
        if "NoSuchKey" in str(exc) or "NoSuchBucket" in str(exc):
            raise NoModel(f"no run summary at {summary}: run `make demo` first") from exc
        raise


def load_backbone(reader: BucketReader, uri: str, threads: int):
    """The ONNX backbone the table's vectors were made with, from a backbone's folder of the models bucket:
    the drivers write there, the Spark nodes' identity cannot (the runs prefixes, which it can, are refused)."""
    from spark_jobs.common.config import FEATURE_DIM, split_s3_uri
    from spark_jobs.common.models import OnnxFeaturizer

    bucket, key = split_s3_uri(uri)
    parts = key.split("/")
    if bucket != reader.cfg.models_bucket or parts[0] not in FEATURE_DIM or not uri.endswith(".onnx") \
            or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"backbone model {uri!r} refused: an .onnx file under a backbone's folder of "
                         f"s3a://{reader.cfg.models_bucket}/ ({', '.join(sorted(FEATURE_DIM))}) is expected")
    with tempfile.TemporaryDirectory(prefix="fruitflow-classify-") as tmp:
        local = os.path.join(tmp, "model.onnx")
        with open(local, "wb") as fh:
            fh.write(reader.get(uri))
        return OnnxFeaturizer(local, threads)  # the session holds the graph: the file may go
