"""Steps trust only manifests, so a manifest must describe its own folder: one planted (or copied) into a
run's folder cannot point PCA, cluster or train at data the pipeline never made."""

from __future__ import annotations

import json
import uuid

import pytest

MODEL = "s3a://fruitflow-models/efficientnet_lite0/imagenet-pypi0.1.0/model.onnx"


def _featurize_manifest(step_uri: str, **outputs) -> dict:
    return {"step": "featurize", "step_uri": step_uri, "params": {"backbone": "efficientnet_lite0"},
            "outputs": {"features": f"{step_uri}/features", "model": MODEL, **outputs}}


def test_a_manifest_that_points_outside_its_folder_is_never_followed(spark, cfg, s3):
    from spark_jobs.common import storage
    from spark_jobs.common.manifest import BadManifest, manifest_uri, read_manifest
    from spark_jobs.common.table import committed_featurize_steps

    cfg = cfg.with_overrides(runs_prefix=f"manifests-{uuid.uuid4().hex[:8]}")
    good = cfg.step_uri("run-good", "featurize")
    planted = {
        # another bucket's data as "features"
        "run-elsewhere": lambda uri: _featurize_manifest(uri, features="s3a://fruitflow-raw/someone/table"),
        # a good run's manifest copied into another folder
        "run-copied": lambda uri: _featurize_manifest(good),
        # a path that climbs out of the folder
        "run-climbing": lambda uri: _featurize_manifest(uri, features=f"{uri}/../../run-good/featurize/features"),
        # a model file (run by the featurize UDFs) outside the models' folder
        "run-model": lambda uri: _featurize_manifest(uri, model="s3a://fruitflow-raw/uploads/evil.onnx"),
    }
    try:
        storage.write_text(spark, manifest_uri(good), json.dumps(_featurize_manifest(good)))
        for run, make in planted.items():
            uri = cfg.step_uri(run, "featurize")
            storage.write_text(spark, manifest_uri(uri), json.dumps(make(uri)))

        assert [m["step_uri"] for m in committed_featurize_steps(spark, cfg)] == [good]
        assert read_manifest(spark, good, cfg)["outputs"]["model"] == MODEL
        for run in planted:
            with pytest.raises(BadManifest):
                read_manifest(spark, cfg.step_uri(run, "featurize"), cfg)
    finally:
        for bucket in ("fruitflow-features",):
            for obj in s3.list_objects_v2(Bucket=bucket, Prefix=cfg.runs_prefix + "/").get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
