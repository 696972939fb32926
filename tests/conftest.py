"""Shared fixtures: the local stack (started here when not already up, one for the whole session), a
local SparkSession with the s3a settings, a fixed-seed random ResNet50 saved to files, and real images.

Tests live by layer: tests/unit (no service, no spark-submit; `make test-unit`), tests/dags (DagBag),
tests/integration (the local stack). Each layer's tests get its marker from their folder.

`make test` runs two pytest-xdist workers: every integration test (the stack's, the namespace
cluster's) in one work unit, in file order, on one worker, since they share one stack; the unit and DAG
tests beside them on the other, which they leave alone (`pytest_xdist_make_scheduler` below).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest

from fruitflow import stack as local_stack
from tests.helpers import SAMPLE_500, real_images

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LAYERS = ("unit", "dags", "integration")
STACK_UNIT = "the local stack"  # the pytest-xdist work unit of the tests that share it
# Fixtures that start a JVM or build a CNN: a test using one is `slow` (`make test-unit` leaves it out).
SLOW_FIXTURES = {"spark", "model_files", "lite0_files", "stack"}


def pytest_configure(config):
    """The environment every test runs with, in place before any test module loads Airflow's config or
    Spark's JVM. The fast unit layer alone (`make test-unit`: tests/unit, not slow) needs no stack:
    nothing is prepared (no credentials written, no jar resolved), Airflow's home is a temporary folder,
    and nothing is written into the state folder (`.state/`). Any other selection gets the local stack's
    environment, prepared here once (credentials, hadoop-aws's jars, connections)."""
    if _fast_unit_layer_only(config):
        # a control key as every other selection has one (the stack's): readers check signatures alike
        unit = local_stack.Prepared("", "", (), control_key="fruitflow-unit-tests",
                                    spark_secret="fruitflow-unit-tests")
        os.environ.update(local_stack.environment(local_stack.settings(), unit))
        home = Path(tempfile.mkdtemp(prefix="fruitflow-unit-airflow-"))
        os.environ.update({"AIRFLOW_HOME": str(home),
                           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}"})
    else:
        os.environ.update(local_stack.prepared_env())


def _fast_unit_layer_only(config) -> bool:
    unit = (Path(str(config.rootpath)) / "tests" / "unit").resolve()
    paths = [Path(str(arg).split("::")[0]).resolve() for arg in config.args]
    return "not slow" in (config.option.markexpr or "") and bool(paths) and all(
        p == unit or unit in p.parents for p in paths)


def pytest_collection_modifyitems(items):
    for item in items:
        layer = Path(str(item.fspath)).parent.name
        if layer in LAYERS:
            item.add_marker(getattr(pytest.mark, layer))
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if "stack" in getattr(item, "fixturenames", ()) and layer != "integration":
            raise pytest.UsageError(f"{item.nodeid} uses the local stack: it belongs in tests/integration")


if importlib.util.find_spec("xdist") is not None:  # the dev extra's; `make test` runs it with -n 2
    @pytest.hookimpl(optionalhook=True)  # xdist installed but not loaded (-p no:xdist): no such hook
    def pytest_xdist_make_scheduler(config, log):
        """The integration tests as one work unit (one stack, on one worker, in file order), every other
        test a unit of its own for whichever worker is free. (pytest-xdist's own `loadgroup` cannot
        regroup under pytest 9, whose node ids it no longer rewrites.)"""
        from xdist.scheduler import LoadScopeScheduling

        class StackScheduling(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return STACK_UNIT if nodeid.startswith("tests/integration/") else nodeid

        return StackScheduling(config, log)


@pytest.fixture(scope="session")
def sample_500() -> Path:
    if not SAMPLE_500.is_dir():
        pytest.skip(f"real images not found at {SAMPLE_500} (../shared is absent on this machine)")
    return SAMPLE_500


@pytest.fixture(scope="session")
def stack():
    """The local stack, healthy. Started (and stopped at the end, pass or fail) when not already up.

    A user's data in the store (a demo's results, say) must survive the tests: every object present when
    the session starts, and one planted like a demo's, are checked unchanged at the end."""
    from tests.helpers import UserData

    started = False
    if not local_stack.all_healthy():
        local_stack.up()
        started = True
    guard = UserData()
    try:
        guard.snapshot()
        yield local_stack.prepared_env()
        changed = guard.changes()
    finally:
        guard.remove_planted()
        if started:
            local_stack.down()
    assert not changed, f"the tests changed data they did not make: {changed[:10]}"


@pytest.fixture(scope="session")
def cfg():
    from spark_jobs.common.config import Config

    base = Config.from_env()
    return base.with_overrides(runs_prefix=base.table_prefix(f"test-{uuid.uuid4().hex[:8]}"))


@pytest.fixture(scope="session")
def spark(cfg):
    from spark_jobs.session import build_session, stop_session

    session = build_session("fruitflow-tests", cfg, master="local[2]")
    yield session
    stop_session(session)


@pytest.fixture(scope="session")
def s3(stack):
    """boto3 with the pipeline's identity (scoped to its buckets), as the demo uses it."""
    from fruitflow import buckets

    return buckets.client()


@pytest.fixture(scope="session")
def model_files(tmp_path_factory):
    """A fixed-seed random ResNet50 (the real architecture; no download possible here), as the
    pipeline materialises it: a Keras file and its ONNX export."""
    from spark_jobs.common import models

    folder = tmp_path_factory.mktemp("model")
    model = models.build_keras_model("resnet50", "random", seed=7)
    model.save(folder / "model.keras")
    models.export_onnx(model, str(folder / "model.onnx"), "resnet50")
    return {"keras": str(folder / "model.keras"), "onnx": str(folder / "model.onnx")}


@pytest.fixture(scope="session")
def lite0_files(tmp_path_factory):
    """EfficientNet-Lite0 with its ImageNet weights (the offline default), saved as the pipeline does."""
    from spark_jobs.common import models

    folder = tmp_path_factory.mktemp("lite0")
    model = models.build_keras_model("efficientnet_lite0", "imagenet", seed=0)
    model.save(folder / "model.keras")
    models.export_onnx(model, str(folder / "model.onnx"), "efficientnet_lite0")
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


@pytest.fixture(scope="session")
def real_jpeg():
    return real_images(SAMPLE_500, 1, 1)[0].read_bytes()


def _preprocessed(paths):
    from spark_jobs.common import images

    return np.stack([images.preprocess(images.decode(p.read_bytes(), 10**7)) for p in paths])


@pytest.fixture(scope="session")
def calibration_and_held_out():
    """32 real images of 8 classes, preprocessed: 16 to calibrate INT8 with, 16 others held out."""
    paths = real_images(SAMPLE_500, 8, 4)
    calibration = [p for i, p in enumerate(paths) if i % 4 < 2]  # 16 images, 2 per class
    held_out = [p for i, p in enumerate(paths) if i % 4 >= 2]  # 16 others, never seen in calibration
    return calibration, _preprocessed(calibration), _preprocessed(held_out)
