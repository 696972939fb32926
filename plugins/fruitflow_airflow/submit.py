"""How one fruitflow step is handed to spark-submit: the same for the DAG and the tests."""

from __future__ import annotations

import hashlib
import re

from spark_jobs.common.config import Config, check_run_id
from spark_jobs.common.spark_conf import hadoop_aws_packages, launch_conf
from spark_jobs.common.steps import step as registered_step


# The end of a folder name that `safe_run_id` made from an id it had to clean.
_HASHED = re.compile(r"\.h[0-9a-f]{12}$")


def safe_run_id(run_id: str) -> str:
    """A run's folder name. Airflow run ids (manual__2026-01-01T00:00:00+00:00) carry ':' and '+', which
    Hadoop paths refuse: such an id is cleaned and gets a short hash of itself, so that two ids never name
    one folder (a step deletes its folder before writing it: one run would erase the other's outputs).
    An id that needs no cleaning is its own name, unless it ends like a hashed one. One that is empty or
    only dots once cleaned is refused (ValueError)."""
    cleaned = re.sub(r"[^A-Za-z0-9._=-]+", "_", run_id).strip("_")
    if not cleaned.strip("."):
        return check_run_id(cleaned)
    if cleaned != run_id or _HASHED.search(run_id):
        cleaned = f"{cleaned}.h{hashlib.sha256(run_id.encode()).hexdigest()[:12]}"
    return check_run_id(cleaned)


def legacy_run_folder(run_id: str) -> str | None:
    """The folder a run made before folder names were hashed (its id cleaned alone), when that differs:
    read-only, for the pages of those runs; nothing is ever written or deleted by it."""
    cleaned = re.sub(r"[^A-Za-z0-9._=-]+", "_", run_id).strip("_")
    return cleaned if cleaned.strip(".") and cleaned != safe_run_id(run_id) else None


def submit_kwargs(step: str, cfg: Config) -> dict:
    """Keyword arguments of SparkSubmitOperator / SparkSubmitHook for `step`: what spark-submit needs
    before the driver starts. The job sets the rest of its Spark settings itself, from its Config."""
    return {
        "application": f"{cfg.jobs_dir.rstrip('/')}/{registered_step(step).application}",
        "py_files": cfg.py_files,
        "packages": hadoop_aws_packages(cfg),
        "conf": launch_conf(cfg),
        "properties_file": cfg.spark_properties_file or None,
        "name": f"fruitflow-{step}",
    }


def step_args(step: str, cfg: Config, run_id: str) -> list[str]:
    """The arguments every step takes: where it writes, under which run."""
    return ["--run-id", run_id, "--runs-prefix", cfg.runs_prefix, "--output", cfg.step_uri(run_id, step)]
