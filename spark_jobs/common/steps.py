"""The pipeline's Spark steps, in order: the one list that the DAG, the operator, the config, the
run summary and the benchmarks read. Pure Python: the DAG file imports it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    name: str
    bucket_field: str  # the Config field naming the bucket its outputs go to
    module: str  # the entry module under spark_jobs/ that spark-submit runs
    after: str | None  # the step whose output it reads (None: the DAG's listing of new images)

    @property
    def application(self) -> str:
        return f"{self.module}.py"


STEPS: tuple[Step, ...] = (
    Step("preprocess", "preprocessed_bucket", "preprocess", None),
    Step("featurize", "features_bucket", "featurize", "preprocess"),
    Step("pca", "features_bucket", "pca", "featurize"),
    Step("cluster", "reports_bucket", "cluster", "pca"),
    # the classifier and its exported artifacts live with the models
    Step("train", "models_bucket", "train", "pca"),
)
STEP_NAMES: tuple[str, ...] = tuple(s.name for s in STEPS)
# the steps no other step reads: the run summary waits for them
FINAL_STEPS: tuple[str, ...] = tuple(s.name for s in STEPS if all(o.after != s.name for o in STEPS))


# A step's exit codes that no retry can fix: argparse's (2) and a refusal with a message (bad input, a
# missing upstream manifest, weights that cannot be had). The operator fails such a task at once.
NOT_RETRYABLE = 65
NOT_RETRYABLE_EXIT_CODES = (2, NOT_RETRYABLE)


def step(name: str) -> Step:
    for s in STEPS:
        if s.name == name:
            return s
    raise ValueError(f"unknown step {name!r}; the steps are {', '.join(STEP_NAMES)}")
