"""Steps trust only manifests, so a manifest must describe its own folder: one planted (or copied) into a
run's folder cannot point PCA, cluster or train at data the pipeline never made."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from spark_jobs.common import signing

MODEL = "s3a://fruitflow-models/efficientnet_lite0/imagenet-pypi0.1.0/model.onnx"


def _featurize_manifest(step_uri: str, **outputs) -> dict:
    return {"step": "featurize", "step_uri": step_uri, "params": {"backbone": "efficientnet_lite0"},
            "outputs": {"features": f"{step_uri}/features", "model": MODEL, **outputs}}


def test_a_manifest_that_points_outside_its_folder_is_never_followed(spark, cfg, s3):
    from spark_jobs.common import storage
    from spark_jobs.common.manifest import (
        BadManifest,
        committed_steps,
        manifest_uri,
        read_manifest,
    )

    cfg = cfg.with_overrides(runs_prefix=cfg.table_prefix(f"manifests-{uuid.uuid4().hex[:8]}"))
    good = cfg.step_uri("run-good", "featurize")
    # its thumbnails in its own folder of the preprocessed bucket, where the report reads them
    thumbnails = f"s3a://{cfg.preprocessed_bucket}/{cfg.runs_prefix}/run-good/featurize/jpeg"
    planted = {
        # another bucket's data as "features"
        "run-elsewhere": lambda uri: _featurize_manifest(uri, features="s3a://fruitflow-raw/someone/table"),
        # a good run's manifest copied into another folder
        "run-copied": lambda uri: _featurize_manifest(good),
        # a path that climbs out of the folder
        "run-climbing": lambda uri: _featurize_manifest(uri, features=f"{uri}/../../run-good/featurize/features"),
        # a model file (run by the featurize UDFs) outside the models' folder
        "run-model": lambda uri: _featurize_manifest(uri, model="s3a://fruitflow-raw/uploads/evil.onnx"),
        # thumbnails in another run's folder of the preprocessed bucket
        "run-thumbnails": lambda uri: _featurize_manifest(
            uri, jpeg=f"s3a://{cfg.preprocessed_bucket}/{cfg.runs_prefix}/run-good/featurize/jpeg"),
    }
    try:
        good_manifest = _featurize_manifest(good, jpeg=thumbnails)
        storage.write_text(spark, manifest_uri(good), json.dumps(signing.sign(good_manifest)))
        for run, make in planted.items():
            uri = cfg.step_uri(run, "featurize")
            storage.write_text(spark, manifest_uri(uri), json.dumps(signing.sign(make(uri))))

        assert [m["step_uri"] for m in committed_steps(spark, cfg, "featurize")] == [good]
        assert read_manifest(spark, good, cfg)["outputs"]["model"] == MODEL
        for run in planted:
            with pytest.raises(BadManifest):
                read_manifest(spark, cfg.step_uri(run, "featurize"), cfg)
    finally:
        for bucket in ("fruitflow-features",):
            for obj in s3.list_objects_v2(Bucket=bucket, Prefix=cfg.runs_prefix + "/").get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])


def test_manifests_are_ordered_by_the_stores_clock_not_by_a_date_inside_them(spark, cfg, s3):
    """A manifest that dates itself far in the future (its own folder, valid otherwise) must not define
    the feature table's model nor win its rows over a step the store saw later."""
    from spark_jobs.common import storage
    from spark_jobs.common.manifest import committed_steps, manifest_uri
    from spark_jobs.feature_table import feature_table, same_model

    cfg = cfg.with_overrides(runs_prefix=cfg.table_prefix(f"manifests-{uuid.uuid4().hex[:8]}"))

    def featurize_step(run: str, backbone: str, value: float, **fields) -> str:
        uri = cfg.step_uri(run, "featurize")
        spark.createDataFrame([("Apple/a.jpg", [value])], "key string, features array<float>") \
            .write.mode("overwrite").parquet(f"{uri}/features")
        manifest = {**_featurize_manifest(uri, model=f"s3a://fruitflow-models/{backbone}/imagenet/model.onnx"),
                    "params": {"backbone": backbone, "weights": "imagenet"}, **fields}
        storage.write_text(spark, manifest_uri(uri), json.dumps(signing.sign(manifest)))
        return uri

    try:
        planted = featurize_step("run-planted", "resnet50", 9.0, written_at="9999-12-31T00:00:00+00:00",
                                 stored_ms=99999999999999)
        time.sleep(1.5)  # S3's LastModified counts seconds
        genuine = featurize_step("run-genuine", "efficientnet_lite0", 1.0,
                                 written_at="2026-11-28T00:00:00+00:00")
        committed = committed_steps(spark, cfg, "featurize")
        assert sorted(m["step_uri"] for m in committed) == sorted([planted, genuine])
        kept, left_out = same_model(committed)
        assert [m["step_uri"] for m in kept] == [genuine] and [m["step_uri"] for m in left_out] == [planted]
        assert [list(r["features"]) for r in feature_table(spark, committed).collect()] == [[1.0]]
    finally:
        for obj in s3.list_objects_v2(Bucket="fruitflow-features", Prefix=cfg.runs_prefix + "/").get("Contents", []):
            s3.delete_object(Bucket="fruitflow-features", Key=obj["Key"])


def test_kept_pca_sums_are_added_to_only_as_their_signed_manifest_vouches(spark, cfg, s3, monkeypatch):
    """The sums file sits where the Spark nodes can write: one altered after the pca step (or expired, or
    made under other inputs, or covering a step no longer in the table, or too large to be one) is never
    added to."""
    import numpy as np

    from spark_jobs import pca_sums
    from spark_jobs.common import storage
    from spark_jobs.common.manifest import manifest_uri
    from spark_jobs.pca_sums import Sums, keep, last_kept

    cfg = cfg.with_overrides(runs_prefix=cfg.table_prefix(f"sums-{uuid.uuid4().hex[:8]}"))
    step_uri = cfg.step_uri("run-a", "pca")
    featurized = {"step_uri": cfg.step_uri("run-a", "featurize"), "stored_ms": 1_000}
    inputs = {"model": {"backbone": "efficientnet_lite0"}, "column": "unit", "stages": []}
    sums = Sums(5, np.arange(3.0), np.eye(3))
    try:
        sums_uri, kept = keep(spark, step_uri, sums, [featurized], inputs)
        manifest = {"step": "pca", "step_uri": step_uri, "outputs": {"sums": sums_uri}, "sums": kept}
        storage.write_text(spark, manifest_uri(step_uri), json.dumps(signing.sign(manifest)))
        steps = [[1_000, featurized["step_uri"]], [2_000, cfg.step_uri("run-b", "featurize")]]

        found = last_kept(spark, cfg, steps, inputs)
        assert found is not None and found.sums.n == 5 and found.pca_step == step_uri
        assert last_kept(spark, cfg, steps, {**inputs, "column": "joined"}) is None  # other inputs
        assert last_kept(spark, cfg, steps[1:], inputs) is None  # a step it covers is gone from the table
        with monkeypatch.context() as patched:  # refused before it is read
            patched.setattr(pca_sums, "MAX_SUMS_BYTES", len(sums.to_bytes()) - 1)
            assert last_kept(spark, cfg, steps, inputs) is None
        storage.write_bytes(spark, sums_uri, Sums(500, np.arange(3.0), np.eye(3)).to_bytes())  # altered
        assert last_kept(spark, cfg, steps, inputs) is None
        storage.delete(spark, sums_uri)  # expired
        assert last_kept(spark, cfg, steps, inputs) is None
    finally:
        for bucket in cfg.buckets:
            for obj in s3.list_objects_v2(Bucket=bucket, Prefix=cfg.runs_prefix + "/").get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])


def test_kmeans_starts_from_the_newest_matching_cluster_step_while_the_table_grew_little(spark, cfg, s3):
    """The cluster step an incremental run starts from: the newest with the same k, geometry and model,
    while the table is at most `kmeans_warm_start_growth` larger than at its last fresh start; its
    assignments, where the Spark nodes write, expired or gone, mean a fresh start."""
    from spark_jobs import cluster
    from spark_jobs.common import storage
    from spark_jobs.common.manifest import manifest_uri

    cfg = cfg.with_overrides(runs_prefix=cfg.table_prefix(f"kmeans-{uuid.uuid4().hex[:8]}"))
    rows = [(f"c{c}/{i}.jpg", f"c{c}", [float(c == 0), float(c == 1), 0.1 * i]) for c in range(2) for i in range(5)]
    reduced = spark.createDataFrame(rows, "key string, category string, pca array<double>")
    upstream = {"params": {"backbone": "efficientnet_lite0", "weights": "imagenet"}}
    params = {"n_clusters": 2, "l2_normalize": True, **upstream["params"]}

    def plant(run: str, fresh_rows: int, **changed) -> str:
        step_uri = cfg.step_uri(run, "cluster")
        assignments = f"{step_uri}/assignments"
        spark.createDataFrame([(key, int(key[1])) for key, _, _ in rows], "key string, cluster int") \
            .write.mode("overwrite").parquet(assignments)
        manifest = {"step": "cluster", "step_uri": step_uri, "outputs": {"assignments": assignments},
                    "params": {**params, **changed}, "start": {"from": None, "fresh_start_rows": fresh_rows}}
        storage.write_text(spark, manifest_uri(step_uri), json.dumps(signing.sign(manifest)))
        time.sleep(1.1)  # the store's time orders the manifests, in whole seconds
        return step_uri

    afresh = (None, {"from": None, "fresh_start_rows": 10})
    try:
        assert cluster.warm_start(spark, cfg, reduced, 2, upstream, 10) == afresh
        first = plant("run-a", 9)
        plant("run-b", 9, n_clusters=3)  # newer, another k: not this run's
        centres, start = cluster.warm_start(spark, cfg, reduced, 2, upstream, 10)
        assert start == {"from": first, "fresh_start_rows": 9} and centres.shape == (2, 3)
        assert cluster.warm_start(spark, cfg, reduced, 2, upstream, 12)[1]["from"] is None  # grown by a third
        assert cluster.warm_start(spark, cfg.with_overrides(kmeans_warm_start_growth=0.0), reduced, 2, upstream,
                                  10)[1]["from"] is None
        assert cluster.warm_start(spark, cfg.with_overrides(l2_normalize=False), reduced, 2, upstream,
                                  10)[1]["from"] is None
        storage.delete(spark, f"{first}/assignments")  # expired
        assert cluster.warm_start(spark, cfg, reduced, 2, upstream, 10) == afresh
    finally:
        for bucket in cfg.buckets:
            for obj in s3.list_objects_v2(Bucket=bucket, Prefix=cfg.runs_prefix + "/").get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])


def test_the_t_sne_view_is_carried_over_from_the_step_kmeans_started_from_as_its_manifest_vouches(spark, cfg, s3):
    """An incremental run's t-SNE view is the one the cluster step it started from kept, read only as that
    step's signed manifest vouches for it (the Spark nodes can write in its folder); else drawn afresh."""
    import hashlib

    import pandas as pd

    from spark_jobs import cluster
    from spark_jobs.common import storage, tsne_view
    from spark_jobs.common.manifest import manifest_uri

    cfg = cfg.with_overrides(runs_prefix=cfg.table_prefix(f"view-{uuid.uuid4().hex[:8]}"))
    points = pd.DataFrame({"key": [f"c{i % 2}/{i}.jpg" for i in range(12)],
                           "pca": [[float(i % 2), float(1 - i % 2), 0.01 * i] for i in range(12)]})
    kept = points.head(11).assign(tsne1=[float(i) for i in range(11)], tsne2=0.0)

    def plant(run: str, view: str, **outputs) -> str:
        step_uri = cfg.step_uri(run, "cluster")
        storage.write_text(spark, f"{step_uri}/{cluster.VIEW_FILE}", view)
        manifest = {"step": "cluster", "step_uri": step_uri,
                    "outputs": {"tsne": f"{step_uri}/{cluster.VIEW_FILE}", **outputs},
                    "tsne_sha256": hashlib.sha256(view.encode()).hexdigest()}
        storage.write_text(spark, manifest_uri(step_uri), json.dumps(signing.sign(manifest)))
        return step_uri

    try:
        first = plant("run-a", tsne_view.to_json(kept))
        view, drawn = cluster.view_2d(spark, cfg, points, {"from": first})
        assert drawn == {"from": first, "placed": 1, "points": 12}
        assert list(view["tsne1"][:11]) == list(kept["tsne1"])
        assert cluster.view_2d(spark, cfg, points, {"from": None})[1]["from"] is None  # a fresh KMeans start
        storage.write_text(spark, f"{first}/{cluster.VIEW_FILE}", tsne_view.to_json(kept.assign(tsne2=1.0)))
        assert cluster.view_2d(spark, cfg, points, {"from": first})[1]["from"] is None  # altered by a Spark node
        elsewhere = plant("run-b", "[]")  # malformed, however vouched for
        assert cluster.view_2d(spark, cfg, points, {"from": elsewhere})[1]["from"] is None
        assert cluster.view_2d(spark, cfg, points, {"from": cfg.step_uri("run-c", "cluster")})[1]["from"] is None
    finally:
        for bucket in cfg.buckets:
            for obj in s3.list_objects_v2(Bucket=bucket, Prefix=cfg.runs_prefix + "/").get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])


def test_train_starts_from_the_newest_classifier_made_from_the_same_vectors_as_its_manifest_vouches(spark, cfg, s3):
    """The train step an incremental run starts from: the newest with the same model and regularisation,
    read from its export only as its manifest vouches for it (the Spark nodes can write in its folder)."""
    import hashlib
    import io

    import numpy as np

    from spark_jobs import classifier_start, train
    from spark_jobs.common import storage
    from spark_jobs.common.manifest import manifest_uri
    from spark_jobs.common.recognition import EXPORT_ARRAYS, EXPORT_FORMAT, EXPORT_JSON

    cfg = cfg.with_overrides(runs_prefix=cfg.table_prefix(f"train-{uuid.uuid4().hex[:8]}"))
    upstream = {"params": {"backbone": "efficientnet_lite0", "weights": "imagenet", "model_tag": "imagenet-pypi0.1.0",
                           "precision": "fp32"}}
    prep = {"l2_normalize": True, "color_weight": 1.0, "mean": np.zeros(4), "components": np.eye(4)[:, :2]}
    counts = {"a": 30, "b": 30}

    def plant(run: str, objective: float | None = 0.05, **changed) -> str:
        step_uri = cfg.step_uri(run, "train")
        arrays = io.BytesIO()
        np.savez(arrays, pca_mean=prep["mean"], pca_components=prep["components"], coefficients=np.ones((2, 2)),
                 intercepts=np.array([0.5, -0.5]), classes=np.array(["a", "b"]))
        files = {EXPORT_ARRAYS: arrays.getvalue(), EXPORT_JSON: json.dumps(
            {"format": EXPORT_FORMAT, "pca_l2_normalize": True, "color_weight": 1.0}).encode()}
        for name, body in files.items():
            storage.write_bytes(spark, f"{step_uri}/export/{name}", body)
        manifest = {"step": "train", "step_uri": step_uri,
                    "outputs": {"export": f"{step_uri}/export", "backbone_model": MODEL},
                    "export_sha256": {name: hashlib.sha256(body).hexdigest() for name, body in files.items()},
                    "params": {"reg_param": cfg.reg_param, **upstream["params"], **changed},
                    "metrics": {} if objective is None else {"objective": objective}}
        storage.write_text(spark, manifest_uri(step_uri), json.dumps(signing.sign(manifest)))
        time.sleep(1.1)  # the store's time orders the manifests, in whole seconds
        return step_uri

    fresh = (None, {"from": None, "tol": classifier_start.TOL})
    try:
        assert train.warm_start(spark, cfg, upstream, prep, counts) == fresh
        first = plant("run-a")
        plant("run-b", backbone="resnet50")  # newer, other vectors: not this run's
        start, started = train.warm_start(spark, cfg, upstream, prep, counts)
        assert started == {"from": first, "tol": start.tol} and start.tol > classifier_start.TOL
        assert start.classes == ["a", "b"] and np.allclose(start.coefficients, 1.0)
        assert train.warm_start(spark, cfg.with_overrides(reg_param=0.1), upstream, prep, counts) == fresh
        assert train.warm_start(spark, cfg, upstream, {**prep, "color_weight": 0.5}, counts) == fresh
        storage.write_bytes(spark, f"{first}/export/{EXPORT_ARRAYS}", b"planted by a Spark node")
        assert train.warm_start(spark, cfg, upstream, prep, counts) == fresh
        plant("run-c", objective=None)  # from before the objective was recorded
        assert train.warm_start(spark, cfg, upstream, prep, counts) == fresh
    finally:
        for bucket in cfg.buckets:
            for obj in s3.list_objects_v2(Bucket=bucket, Prefix=cfg.runs_prefix + "/").get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
