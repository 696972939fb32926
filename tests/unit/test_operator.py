"""SparkStepOperator without Spark or S3: a fake S3Hook stands in for the store, and spark-submit itself
is replaced by a recorder, so what the operator hands spark-submit (environment, arguments) and what it
returns (the step's manifest) are checked directly."""

import json
import types

import pytest

from fruitflow_airflow import AWS_CONN_ID
from fruitflow_airflow.operators import SparkStepOperator
from spark_jobs.common import signing
from spark_jobs.common.config import Config


class FakeS3Hook:
    """The S3Hook calls the operator makes, answered from a dict of objects."""

    def __init__(self, aws_conn_id, extra, credentials=None, objects=None, config_endpoint=None):
        self.aws_conn_id = aws_conn_id
        self._extra, self._credentials = extra, credentials
        self.objects = objects if objects is not None else {}
        self.conn_config = types.SimpleNamespace(endpoint_url=config_endpoint)

    def get_connection(self, conn_id):
        assert conn_id == self.aws_conn_id
        return types.SimpleNamespace(extra_dejson=self._extra)

    def get_credentials(self):
        return self._credentials

    def check_for_key(self, key, bucket):
        return (bucket, key) in self.objects

    def read_key(self, key, bucket):
        return self.objects[(bucket, key)]


@pytest.fixture
def submitted(monkeypatch):
    """What spark-submit would have been given: the application, its arguments and extra environment."""
    from airflow.providers.apache.spark.hooks import spark_submit

    calls = []

    def record(hook, application):
        calls.append({"application": application, "args": list(hook._application_args),
                      "env": dict(hook._env_vars or {}), "conf": dict(hook._conf or {})})

    monkeypatch.setattr(spark_submit.SparkSubmitHook, "submit", record)
    return calls


def _use(monkeypatch, fake):
    from airflow.providers.amazon.aws.hooks import s3

    monkeypatch.setattr(s3, "S3Hook", lambda aws_conn_id: fake)


def _manifest_key(step, run_id):
    bucket, _, prefix = Config.from_env().step_uri(run_id, step).removeprefix("s3a://").partition("/")
    return bucket, f"{prefix}/_manifest.json"


def test_the_connections_endpoint_and_keys_reach_spark_submit_and_the_manifest_comes_back(monkeypatch, submitted):
    monkeypatch.setenv("FRUITFLOW_S3_ENDPOINT", "http://stale.example:1")  # the worker's own value loses
    manifest = {"step": "pca", "step_uri": Config.from_env().step_uri("manual__1", "pca"), "counts": {"n_images": 3},
                "metrics": {"explained_variance": 0.5}}
    creds = types.SimpleNamespace(access_key="AK", secret_key="SK", token="TOKEN")
    fake = FakeS3Hook(AWS_CONN_ID, {"endpoint_url": "http://store:8333"}, creds,
                      {_manifest_key("pca", "manual__1"): json.dumps(signing.sign(manifest))}, config_endpoint="http://other:1")
    _use(monkeypatch, fake)
    op = SparkStepOperator(step="pca", application_args=["--k", "5"])

    assert op.execute({"run_id": "manual__1"}) == manifest
    (call,) = submitted
    assert call["application"].endswith("spark_jobs/pca.py")
    assert call["env"] == {"FRUITFLOW_S3_ENDPOINT": "http://store:8333", "AWS_ACCESS_KEY_ID": "AK",
                           "AWS_SECRET_ACCESS_KEY": "SK", "AWS_SESSION_TOKEN": "TOKEN"}
    assert call["args"][:2] == ["--run-id", "manual__1"] and call["args"][-2:] == ["--k", "5"]
    assert call["args"][call["args"].index("--output") + 1] == Config.from_env().step_uri("manual__1", "pca")
    assert not any("endpoint" in key for key in call["conf"])  # one way: the environment, read by the job's Config


def test_real_aws_sets_no_endpoint_and_leaves_credentials_to_the_default_chain(monkeypatch, submitted):
    monkeypatch.setenv("FRUITFLOW_S3_ENDPOINT", "http://stale.example:1")
    fake = FakeS3Hook(AWS_CONN_ID, {}, None, {_manifest_key("featurize", "r2"): json.dumps(signing.sign(
        {"step_uri": Config.from_env().step_uri("r2", "featurize")}))})
    _use(monkeypatch, fake)
    SparkStepOperator(step="featurize").execute({"run_id": "r2"})
    assert submitted[0]["env"] == {"FRUITFLOW_S3_ENDPOINT": ""}  # empty: Config reads it as "real AWS"
    assert Config.from_env({"FRUITFLOW_S3_ENDPOINT": ""}).s3_endpoint is None


def test_a_step_that_wrote_no_manifest_fails_the_task(monkeypatch, submitted):
    _use(monkeypatch, FakeS3Hook(AWS_CONN_ID, {"endpoint_url": "http://store:8333"}))
    with pytest.raises(RuntimeError, match="without writing"):
        SparkStepOperator(step="cluster").execute({"run_id": "r3"})
    assert len(submitted) == 1


def test_another_runs_signed_manifest_copied_into_the_steps_folder_is_refused(monkeypatch, submitted):
    """Signed by the Airflow host, but written for another run: a Spark node may copy it there."""
    other = {"step": "pca", "step_uri": Config.from_env().step_uri("r-other", "pca"), "counts": {"n_images": 9}}
    _use(monkeypatch, FakeS3Hook(AWS_CONN_ID, {}, None, {_manifest_key("pca", "r6"): json.dumps(signing.sign(other))}))
    with pytest.raises(RuntimeError, match="names another folder"):
        SparkStepOperator(step="pca").execute({"run_id": "r6"})


def test_an_unknown_step_is_refused_when_the_dag_is_parsed():
    with pytest.raises(ValueError, match="unknown step"):
        SparkStepOperator(step="train-everything")


def test_a_step_after_one_that_made_no_image_is_skipped_without_submitting(monkeypatch, submitted):
    """Every listed photo already featurized (or rejected, or ignored): featurize added nothing to the
    table, so pca and the steps after it are skipped, and no application is submitted."""
    from airflow.sdk.exceptions import AirflowSkipException

    made = {"featurize": {"counts": {"n_images": 0, "n_already_featurized": 3}}}
    ti = types.SimpleNamespace(xcom_pull=lambda task_ids: made.get(task_ids))
    _use(monkeypatch, FakeS3Hook(AWS_CONN_ID, {}))
    with pytest.raises(AirflowSkipException, match="featurize made no new image"):
        SparkStepOperator(step="pca").execute({"run_id": "r4", "ti": ti})
    assert submitted == []


def test_a_failed_job_names_its_own_error_not_only_its_exit_code(monkeypatch):
    """spark-submit's output goes to the task log line by line; the task's failure says the job's last
    exception line (Spark's message), where it said "Error code is: 1" alone."""
    from airflow.providers.apache.spark.hooks import spark_submit
    from airflow.sdk.exceptions import AirflowException

    output = ["25/12/06 WARN NativeCodeLoader: Unable to load native-hadoop library",
              "Traceback (most recent call last):", '  File "pca.py", line 3, in <module>',
              "spark_jobs.step_cli.SparkError: AnalysisException: [UNABLE_TO_INFER_SCHEMA] Unable to infer "
              "schema for Parquet.", "25/12/06 INFO ShutdownHookManager: Shutdown hook called"]

    def fail(hook, application):
        hook._process_spark_submit_log(iter(output))
        hook._submit_sp = types.SimpleNamespace(returncode=1)
        raise AirflowException("Cannot execute: spark-submit ... Error code is: 1.")

    monkeypatch.setattr(spark_submit.SparkSubmitHook, "submit", fail)
    _use(monkeypatch, FakeS3Hook(AWS_CONN_ID, {}))
    with pytest.raises(AirflowException, match=r"pca failed \(exit code 1\): spark_jobs.step_cli.SparkError: "
                                                r"AnalysisException: \[UNABLE_TO_INFER_SCHEMA\]"):
        SparkStepOperator(step="pca").execute({"run_id": "r5"})
