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
    description: str = ""  # what it does, in a sentence (its task's documentation in the Airflow UI)
    # reads `after`'s output, given as `--input <its step URI>` (pca reads the whole feature table instead)
    takes_input: bool = True

    @property
    def application(self) -> str:
        return f"{self.module}.py"


STEPS: tuple[Step, ...] = (
    Step("featurize", "features_bucket", "featurize", None,
         "Reads each new photo, decodes it (bounded, sandboxed), 3x3 blur, 224x224 RGB, and gives its pixels "
         "to the CNN (ONNX Runtime over Arrow batches) in the same pass: its features are appended to the "
         "feature table of this model, its thumbnail kept; undecodable photos go to the rejects list with "
         "their reason.", takes_input=False),
    Step("pca", "features_bucket", "pca", "featurize",
         "Spark ML PCA on the whole feature table of this model, with its explained variance.", takes_input=False),
    Step("cluster", "reports_bucket", "cluster", "pca",
         "Spark ML KMeans on the PCA vectors; quality against the folder labels, figures, categories CSV, the "
         "report page."),
    # the classifier and its exported artifacts live with the models
    Step("train", "models_bucket", "train", "pca",
         "Spark ML logistic regression on a held-out split of the PCA vectors: accuracy, macro F1, the "
         "exported artifacts `make classify` and the UI's Recognise page use."),
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
