"""Shared fixtures: the real images, the local stack (started here when not already up), a local
SparkSession with the s3a settings, and a fixed-seed random ResNet50 saved to files."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from scripts import stack as local_stack

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "fruits360"
SAMPLE_500 = SHARED / "data_sample_025_020"
SAMPLE_1179 = SHARED / "data_sample_009"

# The stack's environment (endpoint, throw-away local credentials, AIRFLOW_HOME, connections) must be in
# place before Spark's JVM or Airflow's config are loaded by any test module.
os.environ.update(local_stack.env())
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def real_images(root: Path, classes: int, per_class: int) -> list[Path]:
    if not root.is_dir():
        pytest.skip(f"real images not found at {root} (../shared is absent on this machine)")
    picked = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir())[:classes]:
        picked += sorted(folder.glob("*.jpg"))[:per_class]
    return picked


@pytest.fixture(scope="session")
def sample_500() -> Path:
    if not SAMPLE_500.is_dir():
        pytest.skip(f"real images not found at {SAMPLE_500} (../shared is absent on this machine)")
    return SAMPLE_500


@pytest.fixture(scope="session")
def stack():
    """The local stack, healthy. Started (and stopped at the end, pass or fail) when not already up."""
    started = False
    if not local_stack.all_healthy():
        local_stack.up()
        started = True
    try:
        yield local_stack.env()
    finally:
        if started:
            local_stack.down()


@pytest.fixture(scope="session")
def cfg():
    from spark_jobs.common.config import Config

    return Config.from_env(runs_prefix=f"test-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
def spark(cfg):
    from spark_jobs.common.session import build_session

    session = build_session("fruitflow-tests", cfg, master="local[2]")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def s3(stack):
    import boto3

    return boto3.client("s3", endpoint_url=stack["FRUITFLOW_S3_ENDPOINT"])


@pytest.fixture(scope="session")
def model_files(tmp_path_factory):
    """A fixed-seed random ResNet50 (the real architecture; no download possible here), as the
    pipeline materialises it: a Keras file and its ONNX export."""
    from spark_jobs.common import models

    folder = tmp_path_factory.mktemp("model")
    model = models.build_keras_model("resnet50", "random", seed=7)
    model.save(folder / "model.keras")
    models.export_onnx(model, str(folder / "model.onnx"))
    return {"keras": str(folder / "model.keras"), "onnx": str(folder / "model.onnx")}


@pytest.fixture
def upload_folder(s3):
    """Uploads a local <category>/<file> tree under a fresh raw prefix; returns the s3a URI."""

    def _upload(local: Path, bucket: str) -> str:
        prefix = f"test-raw-{uuid.uuid4().hex[:8]}"
        for path in sorted(local.rglob("*")):
            if path.is_file():
                s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")
        return f"s3a://{bucket}/{prefix}"

    return _upload


@pytest.fixture
def image_tree(tmp_path):
    """Builds a <category>/<file> tree from real image paths (copied into the test's tmp dir)."""

    def _tree(paths: list[Path]) -> Path:
        root = tmp_path / "raw"
        for p in paths:
            dest = root / p.parent.name / p.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, dest)
        return root

    return _tree
