"""DAG integrity (DagBag, as Astronomer's tests do) and the fruit_pipeline structure, Params and templates."""

import copy
import json
import subprocess
import sys

import jinja2
import pytest

from fruitflow_airflow import DAG_ID
from tests.helpers import ROOT

DAGS = ROOT / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags[DAG_ID]


def test_every_dag_file_imports(dagbag):
    assert dagbag.import_errors == {}
    assert dagbag.dags, "no DAG found"


HEAVY = ("pyspark", "tensorflow", "keras", "cv2", "onnxruntime", "onnx", "sklearn", "torch")

# Run in a fresh interpreter: what loading the DagBag imports, and how long parsing the folder takes once
# Airflow itself is loaded (Airflow's own imports are not the DAG files' cost).
_PARSE = """
import json, sys, time
from airflow.dag_processing.dagbag import DagBag
start = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
seconds = time.perf_counter() - start
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2].split(",")))
print(json.dumps({"seconds": seconds, "heavy": heavy, "errors": {k: str(v) for k, v in bag.import_errors.items()},
                  "dags": sorted(bag.dag_ids)}))
"""


def test_parsing_the_dags_imports_nothing_heavy():
    """Airflow parses DAG files every few seconds: the DAG file, the plugin and everything they import
    stay free of pyspark, TensorFlow, OpenCV and ONNX Runtime (the jobs import those, on Spark). What
    keeps parsing fast is this; its time is printed, not judged (a loaded host is no parse failure)."""
    result = subprocess.run([sys.executable, "-c", _PARSE, str(DAGS), ",".join(HEAVY)], capture_output=True,
                            text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    parsed = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"DagBag of {DAGS}: {parsed['seconds']:.2f} s, DAGs {parsed['dags']}")
    assert parsed["errors"] == {} and DAG_ID in parsed["dags"]
    assert parsed["heavy"] == [], f"parsing the DAGs imported {parsed['heavy']}"


def test_the_parse_check_sees_a_heavy_import(tmp_path):
    """The check above can fail: a DAG file importing pyspark at top level is caught."""
    (tmp_path / "heavy_dag.py").write_text("import pyspark  # noqa\nfrom airflow.sdk import DAG\n"
                                           "dag = DAG(dag_id='heavy', schedule=None)\n")
    result = subprocess.run([sys.executable, "-c", _PARSE, str(tmp_path), ",".join(HEAVY)], capture_output=True,
                            text=True, timeout=300, cwd=ROOT)
    assert json.loads(result.stdout.strip().splitlines()[-1])["heavy"] == ["pyspark"]


def test_every_dag_has_tags_retries_and_no_catchup(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, dag_id
        assert dag.catchup is False, dag_id
        for task in dag.tasks:
            assert task.retries >= 2, f"{dag_id}.{task.task_id}"
            assert task.execution_timeout is not None, f"{dag_id}.{task.task_id}"


def test_chain_order_and_operators(dag):
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    from fruitflow_airflow.sensors import NewImagesSensor
    from spark_jobs.common.steps import FINAL_STEPS, STEP_NAMES, STEPS

    assert sorted(dag.task_ids) == sorted(["wait_for_images", "list_new", *STEP_NAMES, "publish"])
    assert dag.get_task("list_new").upstream_task_ids == {"wait_for_images"}
    for step in STEPS:  # each step after the one whose output it reads, as the registry says
        assert dag.get_task(step.name).upstream_task_ids == {step.after or "list_new"}, step.name
        assert step.after or not step.takes_input, f"{step.name} takes the output of no step"
    assert FINAL_STEPS == ("cluster", "train")
    assert dag.get_task("publish").upstream_task_ids == set(FINAL_STEPS)
    sensor = dag.get_task("wait_for_images")
    assert isinstance(sensor, NewImagesSensor) and sensor.bucket == "fruitflow-raw"
    assert sensor.deferrable and sensor.soft_fail and sensor.poke_interval >= 30 and sensor.timeout > 0
    for step in STEP_NAMES:
        task = dag.get_task(step)
        assert isinstance(task, SparkSubmitOperator)
        assert task.retry_exponential_backoff and task.retries >= 2
        assert task.application.endswith(f"spark_jobs/{step}.py")
        assert task._py_files.endswith(".zip") if hasattr(task, "_py_files") else task.py_files.endswith(".zip")
    assert dag.max_active_runs == 1
    outlets = {t.task_id: [o.uri for o in getattr(t, "outlets", [])] for t in dag.tasks}
    assert outlets["featurize"] == ["s3://fruitflow-features/runs/feature-table"]
    assert outlets["pca"] == ["s3://fruitflow-features/runs/pca"]
    assert outlets["train"] == ["s3://fruitflow-models/runs/classifier"]
    # the report's event comes from publish, which knows the page's URL and the run's figures
    assert outlets["publish"] == ["s3://fruitflow-reports/runs/report"] and outlets["cluster"] == []
    assert dag.get_task("publish").trigger_rule == "none_failed"
    undocumented = [t.task_id for t in dag.tasks if not (t.doc_md or "").strip()]
    assert not undocumented, f"tasks without doc_md (shown on the task's page in the UI): {undocumented}"


@pytest.mark.parametrize("bad", [
    {"pca_k": 0}, {"pca_k": "twenty"}, {"target_variance": 1.5}, {"n_clusters": 1}, {"n_clusters": 10**6},
    {"batch_size": 0}, {"weights": "http://example.invalid/w.h5"}, {"raw_prefix": "../etc"},
    {"weights": "s3a://someone-elses-bucket/evil.pth"}, {"weights": "/etc/passwd"}, {"weights": "/tmp/evil.pth"},
    {"weights": "s3a://fruitflow-models/a/../../other/evil.pth"}, {"weights": "s3a://fruitflow-models/../x.onnx"},
    {"weights": "s3a://fruitflow-models//x.onnx"}, {"weights": "s3a://fruitflow-models/model.pkl"},
    {"weights": "s3a://fruitflow-models/runs/r1/train/planted.onnx"}, {"weights": "s3a://fruitflow-models/runs-x/m.onnx"},
    {"backbone": "vgg16"}, {"l2_normalize": "yes"}, {"color_weight": -1}, {"color_weight": "lots"},
])
def test_bad_params_are_refused(dag, bad):
    from airflow.sdk.definitions.param import ParamValidationError

    params = copy.deepcopy(dag.params)
    with pytest.raises(ParamValidationError):
        params.update(bad)
        params.validate()


def test_good_params_pass(dag):
    params = copy.deepcopy(dag.params)
    params.update({"pca_k": 50, "target_variance": 0.9, "n_clusters": 20, "weights": "s3a://fruitflow-models/resnet50/x.keras",
                   "backbone": "efficientnet_lite0", "l2_normalize": False, "color_weight": 0.5})
    params.validate()


class _TI:
    """Template context stand-in: what upstream tasks pushed."""

    def __init__(self, xcoms):
        self.xcoms = xcoms

    def xcom_pull(self, task_ids, key="return_value"):
        return self.xcoms[(task_ids, key)]


CHOSEN = {"backbone": "efficientnet_lite0", "weights": "imagenet", "reason": "auto: ..."}


def _render(task, params, model=CHOSEN):
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    ti = _TI({
        ("list_new", "new"): {"raw_uri": "s3a://fruitflow-raw/images", "keys_uri": "s3a://f/runs/r/new.jsonl",
                              "model": model},
        ("pca", "return_value"): {"step_uri": "s3a://fruitflow-features/runs/r/pca"},
    })
    return [env.from_string(a).render(params=params, ti=ti) for a in task.application_args]


def test_rendered_spark_arguments(dag):
    params = {**{k: dag.params[k] for k in dag.params}, "target_variance": None, "n_clusters": None}
    assert params["backbone"] == "auto"  # decided where the DAG runs, by list_new
    assert _render(dag.get_task("featurize"), params) == [
        "--raw", "s3a://fruitflow-raw/images", "--keys", "s3a://f/runs/r/new.jsonl",
        "--backbone", "efficientnet_lite0", "--weights", "imagenet", "--batch-size", str(params["batch_size"])]
    assert _render(dag.get_task("pca"), {**params, "target_variance": 0.9, "color_weight": 0.5}) == [
        "--k", str(params["pca_k"]), "--target-variance", "0.9", "--color-weight", "0.5", "--l2-normalize"]
    assert _render(dag.get_task("cluster"), {**params, "l2_normalize": False}) == [
        "--input", "s3a://fruitflow-features/runs/r/pca", "--n-clusters", "", "--no-l2-normalize"]
    assert _render(dag.get_task("train"), params) == ["--input", "s3a://fruitflow-features/runs/r/pca", "--l2-normalize"]


def test_rendered_arguments_parse_in_the_jobs(dag):
    """What the templates render (plus what the operator adds) is accepted by the jobs' own parsers."""
    from fruitflow_airflow.submit import step_args
    from spark_jobs.common.steps import STEP_NAMES
    from spark_jobs import cluster, featurize, pca, train
    from spark_jobs.common.config import Config

    params = {**{k: dag.params[k] for k in dag.params}, "target_variance": None, "n_clusters": None}
    jobs = {"featurize": featurize, "pca": pca, "cluster": cluster, "train": train}
    assert set(jobs) == set(STEP_NAMES)
    for step, job in jobs.items():
        argv = [*step_args(step, Config.from_env(), "r1"), *_render(dag.get_task(step), params)]
        args = job.arg_parser().parse_args(argv)
        assert args.run_id == "r1"
    args = pca.arg_parser().parse_args(["--run-id", "r", *_render(dag.get_task("pca"), params)])
    assert args.pca_k == params["pca_k"] and args.target_variance is None and args.l2_normalize is True
    assert args.color_weight == params["color_weight"] == 1.0
    args = pca.arg_parser().parse_args(["--run-id", "r", *_render(dag.get_task("pca"), {**params, "color_weight": 0})])
    assert args.color_weight == 0.0
    args = cluster.arg_parser().parse_args(
        ["--run-id", "r", *_render(dag.get_task("cluster"), {**params, "l2_normalize": False})])
    assert args.l2_normalize is False
    args = featurize.arg_parser().parse_args(
        ["--run-id", "r", *_render(dag.get_task("featurize"), params, {"backbone": "resnet50", "weights": "random"})])
    assert args.backbone == "resnet50" and args.weights == "random"
