"""How one fruitflow step is handed to spark-submit: the same for the DAG and the tests."""

from __future__ import annotations

import re

from spark_jobs.common.config import Config
from spark_jobs.common.session import hadoop_aws_packages, spark_conf

STEPS = ("preprocess", "featurize", "pca", "cluster")


def safe_run_id(run_id: str) -> str:
    """Airflow run ids (manual__2026-01-01T00:00:00+00:00) carry ':' and '+', which Hadoop paths refuse."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", run_id).strip("_")


def submit_kwargs(step: str, cfg: Config) -> dict:
    """Keyword arguments of SparkSubmitOperator / SparkSubmitHook for `step`."""
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}")
    return {
        "application": f"{cfg.jobs_dir.rstrip('/')}/{step}.py",
        "py_files": cfg.py_files,
        "packages": hadoop_aws_packages(cfg),
        "conf": spark_conf(cfg),
        "name": f"fruitflow-{step}",
    }


def step_args(step: str, cfg: Config, run_id: str) -> list[str]:
    """The arguments every step takes: where it writes, under which run."""
    return ["--run-id", run_id, "--runs-prefix", cfg.runs_prefix, "--output", cfg.step_uri(run_id, step)]
