"""SparkSubmitOperator that returns the step's manifest as its XCom.

spark-submit gives nothing back from the driver (apache/airflow#12680), and in cluster deploy mode
the driver does not even run here. Every fruitflow step writes a `_manifest.json` last, so after the
job this operator reads it through the Amazon provider's S3Hook and returns it: the output URIs, the
counts and the metrics then travel by XCom, whatever the deploy mode.
"""

from __future__ import annotations

import json
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

from fruitflow_airflow.submit import safe_run_id, step_args, submit_kwargs
from spark_jobs.common.config import Config, split_s3_uri
from spark_jobs.common.manifest import manifest_uri


class SparkStepOperator(SparkSubmitOperator):
    """Runs one fruitflow Spark step (preprocess, featurize, pca, cluster) and returns its manifest.

    S3 access for the job comes from the AWS connection: its `endpoint_url` extra (an S3-compatible
    server) and, when it holds keys, its credentials, passed to spark-submit's environment at run time
    (never rendered into a template or stored). Without keys, the default AWS chain applies (an EC2
    instance profile on a real cluster).
    """

    ui_color = "#f4a261"

    def __init__(self, *, step: str, aws_conn_id: str = "aws_default", application_args: list[Any] | None = None,
                 **kwargs: Any) -> None:
        self.step = step
        self.aws_conn_id = aws_conn_id
        self._step_cfg = Config.from_env()
        self._explicit_conf = dict(kwargs.get("conf") or {})
        submit = submit_kwargs(step, self._step_cfg)
        submit.update(kwargs)
        submit.setdefault("task_id", step)
        super().__init__(application_args=list(application_args or []), **submit)

    def execute(self, context) -> dict:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        s3 = S3Hook(aws_conn_id=self.aws_conn_id)
        connection = s3.get_connection(self.aws_conn_id)
        endpoint = connection.extra_dejson.get("endpoint_url") or s3.conn_config.endpoint_url
        cfg = self._step_cfg.with_overrides(s3_endpoint=endpoint)
        run_id = safe_run_id(context["run_id"])
        step_uri = cfg.step_uri(run_id, self.step)
        # The connection's endpoint replaces the parse-time one; conf given to the operator wins over both.
        self.conf = {**submit_kwargs(self.step, cfg)["conf"], **self._explicit_conf}
        self.application_args = [*step_args(self.step, cfg, run_id), *map(str, self.application_args or [])]
        credentials = s3.get_credentials()
        env = dict(self.env_vars or {})
        if endpoint:
            env["FRUITFLOW_S3_ENDPOINT"] = endpoint
        if credentials and credentials.access_key:
            env.update({"AWS_ACCESS_KEY_ID": credentials.access_key,
                        "AWS_SECRET_ACCESS_KEY": credentials.secret_key})
            if credentials.token:
                env["AWS_SESSION_TOKEN"] = credentials.token
        self.env_vars = env
        self._hook = None  # rebuilt from the settings above
        super().execute(context)
        bucket, key = split_s3_uri(manifest_uri(step_uri))
        if not s3.check_for_key(key, bucket):
            raise RuntimeError(f"{self.step} finished without writing {manifest_uri(step_uri)}")
        manifest = json.loads(s3.read_key(key, bucket))
        self.log.info("%s manifest: counts %s, metrics %s", self.step, manifest.get("counts"),
                      {k: v for k, v in manifest.get("metrics", {}).items() if not isinstance(v, list)})
        return manifest
