"""SparkSubmitOperator that returns the step's manifest as its XCom.

spark-submit gives nothing back from the driver (apache/airflow#12680). Every fruitflow step writes a
`_manifest.json` last, so after the job this operator reads it through the Amazon provider's S3Hook and
returns it: the output URIs, the counts and the metrics then travel by XCom. The driver runs here, in
client deploy mode (Spark's standalone master runs Python applications in client mode only).
"""

from __future__ import annotations

import collections
import re
from typing import Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

from fruitflow_airflow import AWS_CONN_ID
from fruitflow_airflow.submit import safe_run_id, step_args, submit_kwargs
from spark_jobs.common.steps import NOT_RETRYABLE_EXIT_CODES
from spark_jobs.common.steps import step as registered_step
from spark_jobs.common import signing
from spark_jobs.common.config import Config, split_s3_uri
from spark_jobs.common.manifest import manifest_uri, other_folder_reason


class SparkStepOperator(SparkSubmitOperator):
    """Runs one fruitflow Spark step (featurize, pca, cluster, train) and returns its manifest.

    S3 access for the job comes from the AWS connection, the one source of it: its `endpoint_url`
    extra (an S3-compatible server; FRUITFLOW_S3_ENDPOINT for the driver, whose Config hands it to
    s3a and to the executors' UDFs) and, when it holds keys, its credentials, passed to spark-submit's
    environment at run time (never rendered into a template or stored). Without keys, the default AWS
    chain applies (an EC2 instance profile on a real cluster).
    """

    ui_color = "#f4a261"

    def __init__(self, *, step: str, aws_conn_id: str = AWS_CONN_ID, application_args: list[Any] | None = None,
                 **kwargs: Any) -> None:
        self.step = step
        self.aws_conn_id = aws_conn_id
        self._step_cfg = Config.from_env()
        submit = submit_kwargs(step, self._step_cfg)
        # conf given to the operator adds to (and wins over) the launch settings, never replaces them
        submit["conf"] = {**submit["conf"], **(kwargs.pop("conf", None) or {})}
        submit.update(kwargs)
        submit.setdefault("task_id", step)
        super().__init__(application_args=list(application_args or []), **submit)

    def execute(self, context) -> dict:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        self._skip_without_new_images(context)
        s3 = S3Hook(aws_conn_id=self.aws_conn_id)
        run_id = safe_run_id(context["run_id"])
        step_uri = self._step_cfg.step_uri(run_id, self.step)
        self.application_args = [*step_args(self.step, self._step_cfg, run_id),
                                 *map(str, self.application_args or [])]
        self.env_vars = {**(self.env_vars or {}), **s3_environment(s3)}
        self._hook = None  # rebuilt from the settings above
        try:
            super().execute(context)
        except AirflowException as exc:
            code = getattr(getattr(self._hook, "_submit_sp", None), "returncode", None)
            said = job_error(getattr(self, "_output", ()), self.step) or "see the job's output above"
            if code in NOT_RETRYABLE_EXIT_CODES:  # retrying cannot help
                raise AirflowFailException(f"{self.step} refused its input or arguments (exit code {code}), "
                                           f"not retried: {said}") from exc
            raise AirflowException(f"{self.step} failed (exit code {code}): {said}") from exc
        bucket, key = split_s3_uri(manifest_uri(step_uri))
        if not s3.check_for_key(key, bucket):
            raise RuntimeError(f"{self.step} finished without writing {manifest_uri(step_uri)}")
        manifest = signing.loads(s3.read_key(key, bucket), f"{self.step}'s manifest")
        # signed, but this step's? (retried: the job writes its own again). What it points to is checked
        # where it is followed.
        if reason := other_folder_reason(manifest, step_uri):
            raise RuntimeError(f"{self.step}'s manifest {manifest_uri(step_uri)} refused: {reason}")
        extra = asset_extra(manifest)
        self.log.info("%s manifest: %s", self.step, extra)
        for outlet in self.outlets or []:  # shown with the asset event in Airflow's Assets view
            context["outlet_events"][outlet].extra.update(extra)
        return manifest

    def _get_hook(self):
        """The provider's hook, which logs spark-submit's output line by line; the last lines are kept
        here too, so that a failure names the job's own error rather than only its exit code."""
        hook = super()._get_hook()
        process, kept = hook._process_spark_submit_log, collections.deque(maxlen=OUTPUT_LINES_KEPT)
        self._output = kept
        hook._process_spark_submit_log = lambda lines: process(kept.append(line) or line for line in lines)
        return hook

    def _skip_without_new_images(self, context) -> None:
        """A step after one that made no image (featurize, when every listed photo was already featurized,
        rejected or ignored) has nothing to add to the table: it and the steps after it are skipped, and
        `publish` says what the run found."""
        upstream, ti = registered_step(self.step).after, context.get("ti")
        if upstream is None or ti is None:
            return
        counts = (ti.xcom_pull(task_ids=upstream) or {}).get("counts", {})
        if counts.get("n_images") == 0:
            raise AirflowSkipException(f"{upstream} made no new image ({counts}): nothing for {self.step} to do")


OUTPUT_LINES_KEPT = 200
# What a step prints last when it fails: Python's line for the exception, or a refusal ("featurize: ...").
ERROR_LINE = re.compile(r"^[\w.]+(Error|Exception|Exit): ")


def job_error(output, step: str) -> str | None:
    """The line of the job's output that says why it failed: the last exception or refusal line."""
    for line in reversed([line.strip() for line in output]):
        if line.startswith(f"{step}: ") or ERROR_LINE.match(line):
            return line
    return None


def asset_extra(manifest: dict) -> dict:
    """The few figures of a step's manifest worth seeing beside its asset event: where the output is, the
    model, the counts and the scalar metrics (lists and tables stay in the manifest)."""
    params = manifest.get("params", {})
    extra: dict = {"step_uri": manifest.get("step_uri")}
    extra.update({k: params[k] for k in ("backbone", "weights", "k", "n_clusters") if k in params})
    for group in ("counts", "metrics"):
        extra.update({k: v for k, v in manifest.get(group, {}).items() if isinstance(v, (int, float, str, bool))})
    return extra


def s3_environment(s3) -> dict[str, str]:
    """spark-submit's S3 settings from the AWS connection behind `s3` (an S3Hook): the endpoint (empty
    for real AWS, so that no stale value from the worker's environment applies) and, when the
    connection holds keys, the credentials."""
    connection = s3.get_connection(s3.aws_conn_id)
    endpoint = connection.extra_dejson.get("endpoint_url") or s3.conn_config.endpoint_url or ""
    env = {"FRUITFLOW_S3_ENDPOINT": endpoint}
    credentials = s3.get_credentials()
    if credentials and credentials.access_key:
        env.update({"AWS_ACCESS_KEY_ID": credentials.access_key, "AWS_SECRET_ACCESS_KEY": credentials.secret_key})
        if credentials.token:
            env["AWS_SESSION_TOKEN"] = credentials.token
    return env
