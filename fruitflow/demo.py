"""`make demo [DATA=folder]`: the pipeline end to end on the local stack.

Brings the stack up, uploads the images of DATA (default: the Fruits-360 sample beside the checkout,
else generated fruit-like images) to the raw location, runs the `fruit_pipeline` DAG in this process
(`dag.test()`), copies the HTML report to ./out/, brings the stack down (if this command started it),
and prints the run summary as the last line of stdout. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from fruitflow import buckets, stack
from fruitflow.paths import DAGS, OUT, SAMPLE_500
from fruitflow_airflow import DAG_ID
from spark_jobs.common import signing
from spark_jobs.common.pointers import latest_demo_uri

DEFAULT_DATA = SAMPLE_500


def log(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def run_dag(conf: dict, failures: dict[str, str] | None = None):
    """The DAG run (`dag.test()`, task logs on stdout); each task that failed for good is named in
    `failures` with the last line of its error (Airflow's failure callback hands it the exception)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    dag = bag.dags[DAG_ID]
    if failures is not None:
        def record(context) -> None:
            error = str(context.get("exception") or "").strip()
            failures[context["ti"].task_id] = error.splitlines()[-1] if error else "no exception recorded"

        for task in dag.tasks:
            task.on_failure_callback = [*(task.on_failure_callback or []), record]
    return dag.test(run_conf=conf)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="folder of <fruit>/<image> files")
    parser.add_argument("--backbone", help="auto (the DAG's default: docs/models.md) | resnet50 | efficientnet_lite0")
    parser.add_argument("--weights", help="imagenet | random | s3a://<models bucket>/<file>; default: imagenet")
    parser.add_argument("--keep-stack", action="store_true", help="leave the stack running afterwards")
    args = parser.parse_args(argv)

    os.environ.update(stack.prepared_env())
    started = time.monotonic()
    services_up = stack.all_healthy()
    if not services_up:
        log("starting the local stack")
        stack.up()
    try:
        return _demo(args)
    finally:
        if not services_up and not args.keep_stack:
            log("stopping the local stack")
            stack.down()
        log(f"done in {time.monotonic() - started:.0f}s")


def demo_prefixes(cfg, now: dt.datetime | None = None) -> tuple[str, str]:
    """Each demo its own raw prefix and feature table (`runs-demo-<stamp>` beside `runs`), so that it
    reports on its DATA alone whatever earlier demos (or the scheduled pipeline, under `images/` and
    `runs/`) left in the store."""
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%S")
    return f"demo-{stamp}", cfg.table_prefix(f"demo-{stamp}")


def _demo(args) -> int:
    summary = run_demo(args.data, backbone=args.backbone, weights=args.weights)
    if summary is None:
        return 1
    sys.stdout.write(json.dumps(summary, default=str) + "\n")
    return 0


def run_demo(data: Path | None, backbone: str | None = None, weights: str | None = None,
             out: Path = OUT) -> dict | None:
    """Uploads DATA under a demo prefix of its own, runs the DAG on it, records it as the latest demo and
    copies its report into `out`; the run summary, or None when the run failed (logged)."""
    from fruitflow.package import build_zip
    from fruitflow.sample_images import generate
    from spark_jobs.common.config import Config

    base = Config.from_env()
    raw_prefix, runs_prefix = demo_prefixes(base)
    os.environ["FRUITFLOW_RUNS_PREFIX"] = runs_prefix  # read by the DAG file and by every step
    cfg = Config.from_env()
    with tempfile.TemporaryDirectory(prefix="fruitflow-demo-") as tmp:
        if data is None:
            if DEFAULT_DATA.is_dir():
                data = DEFAULT_DATA
            else:
                data = Path(tmp) / "generated"
                n = generate(data)
                log(f"NOTE: {DEFAULT_DATA} not found: using {n} generated fruit-like images instead")
        if not data.is_dir():
            log(f"error: {data} is not a folder")
            return None
        n_files = buckets.upload_folder(data, cfg.raw_bucket, raw_prefix)
        log(f"uploaded {n_files} files from {data} to s3://{cfg.raw_bucket}/{raw_prefix}/")
    conf = {"raw_prefix": raw_prefix, **{k: v for k, v in (("backbone", backbone), ("weights", weights)) if v}}
    build_zip()
    log(f"running DAG {DAG_ID} ({conf}); the model is chosen by the DAG's rule (docs/models.md); "
        f"Spark master {stack.settings().spark_master}")
    failures: dict[str, str] = {}
    dag_run = run_dag(conf, failures)
    state = str(getattr(dag_run, "state", "unknown"))
    log(f"DAG run {dag_run.run_id}: {state}")
    if state != "success":
        for task_id, error in failures.items():
            log(f"task {task_id} failed: {error}")
        log("the run failed" + (f" in {', '.join(failures)}" if failures else "") + "; the task logs are on stdout")
        return None
    summary = read_summary(cfg, dag_run.run_id)
    log(f"model: {summary.get('backbone')} ({summary.get('weights')}); {summary.get('model_choice')}")
    buckets.write_json(latest_demo_uri(base), signing.sign({"raw_prefix": raw_prefix, "runs_prefix": runs_prefix,
                                                          "run_id": dag_run.run_id, "summary": summary["summary"]}))
    if summary.get("report"):  # the cluster step's figures and tables
        buckets.download_prefix(summary["report"].rsplit("/", 1)[0], out / "report")
    if summary.get("report_html"):  # the run's page (everything inline), as the Airflow plugin serves it
        local = out / "report.html"
        local.write_text(buckets.read_text(summary["report_html"]), encoding="utf-8")
        summary["report_local"] = str(local)
        log(f"report: open {local} in a browser (in Airflow: {summary['report_url']})")
    return summary


def read_summary(cfg, run_id: str) -> dict:
    from fruitflow_airflow.run_report import summary_uri

    return signing.loads(buckets.read_text(summary_uri(cfg, run_id)), "run summary")


if __name__ == "__main__":
    sys.exit(main())
