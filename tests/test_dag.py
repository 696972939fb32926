"""DAG integrity (DagBag, as Astronomer's tests do) and the fruit_pipeline structure, Params and templates."""

import copy
import time

import jinja2
import pytest

from tests.conftest import ROOT

DAGS = ROOT / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags["fruit_pipeline"]


def test_every_dag_file_imports(dagbag):
    assert dagbag.import_errors == {}
    assert dagbag.dags, "no DAG found"


@pytest.mark.parametrize("path", sorted(DAGS.glob("*.py")), ids=lambda p: p.name)
def test_dag_file_parses_fast(path):
    from airflow.dag_processing.dagbag import DagBag

    DagBag(dag_folder=str(path))  # warm: Airflow's own imports are not the file's cost
    start = time.perf_counter()
    bag = DagBag(dag_folder=str(path))
    assert time.perf_counter() - start < 2.0
    assert not bag.import_errors


def test_every_dag_has_tags_retries_and_no_catchup(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, dag_id
        assert dag.catchup is False, dag_id
        for task in dag.tasks:
            assert task.retries >= 2, f"{dag_id}.{task.task_id}"
            assert task.execution_timeout is not None, f"{dag_id}.{task.task_id}"


def test_no_heavy_imports_at_dag_top_level():
    text = (DAGS / "fruit_pipeline.py").read_text()
    header = text.split("with DAG(")[0]
    for heavy in ("tensorflow", "keras", "pyspark", "onnxruntime", "cv2", "sklearn", "pandas"):
        assert f"import {heavy}" not in header and f"from {heavy}" not in header


def test_chain_order_and_operators(dag):
    from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    order = ["wait_for_images", "list_new", "preprocess", "featurize", "pca", "cluster", "publish"]
    assert sorted(dag.task_ids) == sorted(order)
    for upstream, downstream in zip(order, order[1:]):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    sensor = dag.get_task("wait_for_images")
    assert isinstance(sensor, S3KeySensor)
    assert sensor.deferrable and sensor.wildcard_match and sensor.poke_interval >= 30 and sensor.timeout > 0
    for step in ("preprocess", "featurize", "pca", "cluster"):
        task = dag.get_task(step)
        assert isinstance(task, SparkSubmitOperator)
        assert task.retry_exponential_backoff and task.retries >= 2
        assert task.application.endswith(f"spark_jobs/{step}.py")
        assert task._py_files.endswith(".zip") if hasattr(task, "_py_files") else task.py_files.endswith(".zip")
    assert dag.max_active_runs == 1
    assert {o.uri for t in dag.tasks for o in getattr(t, "outlets", [])} >= {
        a for a in (o.uri for o in dag.get_task("featurize").outlets)}
    assert dag.get_task("publish").trigger_rule == "none_failed"


@pytest.mark.parametrize("bad", [
    {"pca_k": 0}, {"pca_k": "twenty"}, {"target_variance": 1.5}, {"n_clusters": 1},
    {"batch_size": 0}, {"weights": "http://example.invalid/w.h5"}, {"raw_prefix": "../etc"},
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
    params.update({"pca_k": 50, "target_variance": 0.9, "n_clusters": 20, "weights": "s3a://m/x.keras",
                   "backbone": "efficientnet_lite0", "l2_normalize": False, "color_weight": 0.5})
    params.validate()


class _TI:
    """Template context stand-in: what upstream tasks pushed."""

    def __init__(self, xcoms):
        self.xcoms = xcoms

    def xcom_pull(self, task_ids, key="return_value"):
        return self.xcoms[(task_ids, key)]


def _render(task, params):
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    ti = _TI({
        ("list_new", "new"): {"raw_uri": "s3a://fruitflow-raw/images", "keys_uri": "s3a://f/runs/r/new.jsonl"},
        ("preprocess", "return_value"): {"step_uri": "s3a://fruitflow-preprocessed/runs/r/preprocess"},
        ("pca", "return_value"): {"step_uri": "s3a://fruitflow-features/runs/r/pca"},
    })
    return [env.from_string(a).render(params=params, ti=ti) for a in task.application_args]


def test_rendered_spark_arguments(dag):
    params = {**{k: dag.params[k] for k in dag.params}, "target_variance": None, "n_clusters": None}
    assert _render(dag.get_task("preprocess"), params) == [
        "--raw", "s3a://fruitflow-raw/images", "--keys", "s3a://f/runs/r/new.jsonl"]
    assert _render(dag.get_task("featurize"), params) == [
        "--input", "s3a://fruitflow-preprocessed/runs/r/preprocess", "--backbone", params["backbone"],
        "--weights", params["weights"], "--batch-size", str(params["batch_size"])]
    assert _render(dag.get_task("pca"), {**params, "target_variance": 0.9, "color_weight": 0.5}) == [
        "--k", str(params["pca_k"]), "--target-variance", "0.9", "--color-weight", "0.5", "--l2-normalize"]
    assert _render(dag.get_task("cluster"), {**params, "l2_normalize": False}) == [
        "--input", "s3a://fruitflow-features/runs/r/pca", "--n-clusters", "", "--no-l2-normalize"]


def test_rendered_arguments_parse_in_the_jobs(dag):
    """What the templates render (plus what the operator adds) is accepted by the jobs' own parsers."""
    from fruitflow_airflow.submit import step_args
    from spark_jobs import cluster, featurize, pca, preprocess
    from spark_jobs.common.config import Config

    params = {**{k: dag.params[k] for k in dag.params}, "target_variance": None, "n_clusters": None}
    jobs = {"preprocess": preprocess, "featurize": featurize, "pca": pca, "cluster": cluster}
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
        ["--run-id", "r", *_render(dag.get_task("featurize"), {**params, "backbone": "efficientnet_lite0"})])
    assert args.backbone == "efficientnet_lite0"
