"""The pipeline's Spark steps, in order: the one list that the DAG, the operator, the config, the
run summary and the benchmarks read. Pure Python: the DAG file imports it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    name: str
    bucket_field: str  # the Config field naming the bucket its outputs go to
    module: str  # the entry module under spark_jobs/ that spark-submit runs

    @property
    def application(self) -> str:
        return f"{self.module}.py"


STEPS: tuple[Step, ...] = (
    Step("preprocess", "preprocessed_bucket", "preprocess"),
    Step("featurize", "features_bucket", "featurize"),
    Step("pca", "features_bucket", "pca"),
    Step("cluster", "reports_bucket", "cluster"),
)
STEP_NAMES: tuple[str, ...] = tuple(s.name for s in STEPS)


def step(name: str) -> Step:
    for s in STEPS:
        if s.name == name:
            return s
    raise ValueError(f"unknown step {name!r}; the steps are {', '.join(STEP_NAMES)}")
