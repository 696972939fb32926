"""
### fruit_pipeline

New fruit photos in the raw bucket -> CNN features (ResNet50 or EfficientNet-Lite0) of each photo,
preprocessed in the same pass -> PCA -> KMeans report and classifier.

`wait_for_images` (deferrable: an image newer than the last successful run listed) -> `list_new`
(what the raw prefix's listing state does not hold; nothing new skips the Spark steps) -> `featurize`
(read, decode, 3x3 blur, 224x224 RGB and the CNN, one pass a photo) -> `pca` -> `cluster` and `train`
(Spark jobs on the standalone master, each returning its manifest as XCom) -> `publish` (the run summary).

featurize sees only new photos; PCA adds their sums to those it kept; KMeans and the classifier refit on
the whole feature table.
Params (validated before anything runs): raw prefix, k or target variance, clusters, batch size, backbone,
weights, cosine geometry (l2_normalize), the colour histogram's weight (color_weight).
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Asset, Param, chain, task

from fruitflow_airflow import AWS_CONN_ID, DAG_ID
from fruitflow_airflow.operators import SparkStepOperator
from fruitflow_airflow.sensors import NewImagesSensor
from spark_jobs.common.config import AUTO, FEATURE_DIM, Config, weights_param_pattern
from spark_jobs.common.steps import FINAL_STEPS, STEP_NAMES, STEPS, Step

CFG = Config.from_env()
FEATURE_TABLE = Asset(f"s3://{CFG.features_bucket}/{CFG.runs_prefix}/feature-table")
PCA_OUTPUT = Asset(f"s3://{CFG.features_bucket}/{CFG.runs_prefix}/pca")
REPORT = Asset(f"s3://{CFG.reports_bucket}/{CFG.runs_prefix}/report")
CLASSIFIER = Asset(f"s3://{CFG.models_bucket}/{CFG.runs_prefix}/classifier")


L2_NORMALIZE = "{{ '--l2-normalize' if params.l2_normalize else '--no-l2-normalize' }}"
# the model list_new chose for the run (Param `backbone`: auto, or one named)
BACKBONE = "{{ ti.xcom_pull(task_ids='list_new', key='new')['model']['backbone'] }}"
WEIGHTS = "{{ ti.xcom_pull(task_ids='list_new', key='new')['model']['weights'] }}"


def xcom(task_id: str, field: str) -> str:
    return f"{{{{ ti.xcom_pull(task_ids='{task_id}')['{field}'] }}}}"


# Each Spark step's own arguments, rendered from the run's Params and upstream XComs (the operator adds
# where the step writes, under which run; `arguments` adds the upstream step's output it reads).
STEP_ARGUMENTS = {
    "featurize": ["--raw", "{{ ti.xcom_pull(task_ids='list_new', key='new')['raw_uri'] }}",
                  "--keys", "{{ ti.xcom_pull(task_ids='list_new', key='new')['keys_uri'] }}",
                  "--backbone", BACKBONE, "--weights", WEIGHTS, "--batch-size", "{{ params.batch_size }}"],
    "pca": ["--k", "{{ params.pca_k }}", "--target-variance", "{{ params.target_variance or '' }}",
            "--color-weight", "{{ params.color_weight }}", L2_NORMALIZE],
    "cluster": ["--n-clusters", "{{ params.n_clusters or '' }}", L2_NORMALIZE],
    "train": [L2_NORMALIZE],
}


def arguments(step: Step) -> list[str]:
    return (["--input", xcom(step.after, "step_uri")] if step.takes_input else []) + STEP_ARGUMENTS[step.name]


STEP_OUTLETS = {"featurize": [FEATURE_TABLE], "pca": [PCA_OUTPUT], "train": [CLASSIFIER]}


with DAG(
    dag_id=DAG_ID,
    schedule=CFG.dag_schedule,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["fruitflow", "spark", "s3", "ml"],
    doc_md=__doc__,
    default_args={
        "retries": 2,
        "retry_delay": dt.timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "max_retry_delay": dt.timedelta(minutes=10),
        "execution_timeout": dt.timedelta(hours=2),
    },
    params={
        "raw_prefix": Param(CFG.raw_prefix, type="string", description="prefix of <fruit>/<image> objects",
                            pattern=r"^(?!(.*/)?\.\.?(/|$))[A-Za-z0-9._ -]+(/[A-Za-z0-9._ -]+)*$"),
        "pca_k": Param(CFG.pca_k, type="integer", minimum=1, maximum=2048, description="PCA components"),
        "target_variance": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=1,
                                 description="if set, the smallest k reaching this explained variance"),
        "n_clusters": Param(None, type=["null", "integer"], minimum=2, maximum=CFG.max_clusters,
                            description="KMeans k; empty: the number of fruit categories "
                                        f"(at most {CFG.max_clusters})"),
        "batch_size": Param(CFG.batch_size, type="integer", minimum=1, maximum=1024),
        "backbone": Param(CFG.backbone, type="string", enum=[AUTO, *sorted(FEATURE_DIM)],
                          description="auto: the run's list_new task picks one (docs/models.md) | resnet50 "
                                      "(2048 floats) | efficientnet_lite0 (1280)"),
        "weights": Param(CFG.weights, type="string", pattern=weights_param_pattern(CFG),
                         description=f"imagenet | random | s3a://{CFG.models_bucket}/<file>.keras, .onnx or .pth"),
        "l2_normalize": Param(CFG.l2_normalize, type="boolean",
                              description="cosine geometry for PCA and KMeans (unit-length vectors)"),
        "color_weight": Param(CFG.color_weight, type="number", minimum=0, maximum=10,
                              description="weight of the colour histogram beside the CNN features in PCA (0: none)"),
    },
) as dag:
    wait_for_images = NewImagesSensor(
        task_id="wait_for_images",
        bucket=CFG.raw_bucket,
        raw_prefix="{{ params.raw_prefix }}",
        deferrable=True,
        poke_interval=60,
        timeout=dt.timedelta(hours=6).total_seconds(),
        soft_fail=True,  # nothing new for 6 hours: the run is skipped, not failed
        execution_timeout=dt.timedelta(hours=7),
        doc_md="Waits (deferred, in the triggerer) for a `<fruit>/<image>` object under the raw prefix modified "
               "after the newest one the last successful run listed; a manual run takes any image.",
    )

    @task.short_circuit(ignore_downstream_trigger_rules=False, execution_timeout=dt.timedelta(minutes=30),
                        doc_md="Lists the objects the raw prefix's listing state does not hold (newer than the "
                               "last successful run's newest, or late uploads compared by ETag) to a JSON-lines "
                               "file (unsafe keys marked refused) and chooses the model; nothing new skips the "
                               "Spark steps.")
    def list_new(params=None, run_id=None, ti=None):
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from fruitflow_airflow.tasks import choose_model, list_new_images
        from spark_jobs.common.config import split_s3_uri

        hook = S3Hook(aws_conn_id=AWS_CONN_ID)
        found = list_new_images(hook, CFG, params["raw_prefix"], run_id)
        found["model"] = choose_model(params["backbone"], params["weights"], CFG,
                                      lambda uri: hook.check_for_key(split_s3_uri(uri)[1], split_s3_uri(uri)[0]))
        ti.xcom_push(key="new", value=found)
        return found if found["n_new"] else None

    new_images = list_new()
    # One task per step of the step list, after the step whose output it reads (spark_jobs.common.steps)
    spark_steps = {s.name: SparkStepOperator(step=s.name, application_args=arguments(s),
                                             outlets=STEP_OUTLETS.get(s.name, []), doc_md=s.description)
                   for s in STEPS}
    for s in STEPS:
        (spark_steps[s.after] if s.after else new_images) >> spark_steps[s.name]

    @task(trigger_rule="none_failed", execution_timeout=dt.timedelta(minutes=5), outlets=[REPORT],
          doc_md="The run summary (XCom and summary.json) and the run's report page, served in the run's "
                 "**Fruit report** tab.")
    def publish(params=None, run_id=None, ti=None, outlet_events=None):
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from fruitflow_airflow import listing
        from fruitflow_airflow.tasks import publish_summary, run_asset_extra

        hook = S3Hook(aws_conn_id=AWS_CONN_ID)
        manifests = {step: ti.xcom_pull(task_ids=step) for step in STEP_NAMES}
        new = ti.xcom_pull(task_ids="list_new", key="new")
        summary = publish_summary(hook, CFG, run_id, new, manifests)
        # the run succeeded: what it listed is done but for the keys it could not read yet (a failed run
        # never gets here: all it listed is listed again next time). No listing (the sensor gave up after
        # hours of nothing new, skipping list_new): nothing to promote.
        if new:
            featurized = manifests["featurize"]
            retry = listing.retry_keys(hook, featurized["outputs"]["retry"]) if featurized else set()
            listing.promote(hook, CFG, new["listing_state"], params["raw_prefix"], retry)
        outlet_events[REPORT].extra.update(run_asset_extra(summary))
        return summary

    chain(wait_for_images, new_images)
    [spark_steps[name] for name in FINAL_STEPS] >> publish()
