"""The local stack's settings (`fruitflow stack up`): where its services listen and keep their state.
They belong to the tooling: the Spark jobs and the Airflow plugin never read them (the jobs' zip that
executors get holds none of this)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from fruitflow.paths import ROOT
from fruitflow.stack.node_conf import MASTER_PORT, master_url
from spark_jobs.common.config import env_values


@dataclass(frozen=True)
class StackSettings:
    """Field names map to ``FRUITFLOW_<NAME>`` environment variables, like Config's."""

    state_dir: str = str(ROOT / ".state")
    host: str = "127.0.0.1"
    # Where the S3 service and the Spark master are reached when they run on other hosts than this one
    # (the multi-host cluster); empty: on `host`.
    s3_host: str = ""
    spark_host: str = ""
    s3_port: int = 9000
    s3_port_base: int = 18000  # the S3 service's internal ports: base + 2, 333, 334, 340, 341, 646, 733, 888, 889
    spark_port: int = MASTER_PORT
    # The web UIs move off Airflow's 8080 (Spark's own default for the master's UI).
    spark_master_ui_port: int = 8081
    spark_worker_ui_port: int = 8082
    airflow_port: int = 8080
    # The worker offers every core and leaves room for the driver, the Python workers running the model,
    # Airflow and the S3 server.
    worker_cores: int = os.cpu_count() or 2
    worker_memory: str = "8g"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "StackSettings":
        return cls(**env_values(cls, environ))

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.s3_host or self.host}:{self.s3_port}"

    @property
    def spark_master(self) -> str:
        return master_url(self.spark_host or self.host, self.spark_port)
