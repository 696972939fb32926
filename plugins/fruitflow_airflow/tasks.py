"""The logic of the DAG's Python tasks: what is new in the raw bucket, and the run summary."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile

from fruitflow_airflow.submit import safe_run_id
from spark_jobs.common.config import IMAGE_EXTENSIONS, Config, s3a_uri, split_s3_uri
from spark_jobs.common.keys import check_location, unsafe_key_reason
from spark_jobs.common.steps import STEP_NAMES

log = logging.getLogger(__name__)


def list_new_images(s3_hook, cfg: Config, raw_prefix: str, run_id: str, since: dt.datetime | None) -> dict:
    """Objects (key, ETag, size) under the raw prefix modified after `since` (the last successful
    run's start), streamed page by page to a JSON-lines object that the preprocess step reads by key.
    `n_new` counts the image candidates among them (none: the Spark steps are skipped).

    Keys that are not safe to read (`unsafe_key_reason`) are written with a `refused` reason instead:
    the preprocess step records them as rejects, and a few are named here and in the task log.
    Only counts stay in memory: the listing goes to a temporary file, then to S3.
    """
    client = s3_hook.get_conn()
    prefix = raw_prefix.strip("/") + "/"
    check_location(raw_prefix)
    keys_uri = s3a_uri(cfg.features_bucket, cfg.runs_prefix, safe_run_id(run_id), "new_images.jsonl")
    n_new = n_listed = n_refused = 0
    refused_sample: list[dict] = []
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as out:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=cfg.raw_bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                n_listed += 1
                if since is not None and obj["LastModified"] <= since:
                    continue
                relative = obj["Key"][len(prefix):]
                line = {"key": relative, "etag": obj["ETag"].strip('"'), "size": obj["Size"]}
                refused = unsafe_key_reason(obj["Key"], prefix)
                if refused:
                    line["refused"] = refused
                    n_refused += 1
                    if len(refused_sample) < 20:
                        refused_sample.append({"key": obj["Key"], "reason": refused})
                # Every new object goes to the list: preprocess reads by key (never re-listing) and
                # counts what is not a candidate image as ignored.
                out.write(json.dumps(line) + "\n")
                if relative.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS:
                    n_new += 1
        local = out.name
    if n_refused:
        log.warning("refusing %d unsafe keys under %s (recorded as rejects by preprocess), e.g. %s",
                    n_refused, prefix, refused_sample)
    try:
        bucket, key = split_s3_uri(keys_uri)
        s3_hook.load_file(local, key=key, bucket_name=bucket, replace=True)
    finally:
        os.unlink(local)
    return {
        "raw_uri": s3a_uri(cfg.raw_bucket, raw_prefix),
        "keys_uri": keys_uri,
        "n_new": n_new,
        "n_listed": n_listed,
        "n_refused": n_refused,
        "refused_sample": refused_sample,
        "since": since.isoformat() if since else None,
    }


def build_summary(new: dict | None, manifests: dict[str, dict | None]) -> dict:
    """One flat JSON object for the run: counts, variance, quality, and every step's output URI."""
    pre, feat, pca, clu = (manifests.get(s) for s in STEP_NAMES)
    if not pre:
        return {"status": "nothing new", "n_input": 0, "n_images": 0, "n_rejected": 0,
                "n_new": (new or {}).get("n_new", 0), "outputs": {}}
    metrics = (clu or {}).get("metrics", {})
    return {
        "status": "ok",
        "n_new": (new or {}).get("n_new"),
        "n_input": pre["counts"]["n_input"],
        "n_images": feat["counts"]["n_images"],
        "n_rejected": pre["counts"]["n_rejected"],
        "n_ignored": pre["counts"].get("n_ignored", 0),
        "n_table": pca["counts"]["n_images"],
        "backbone": feat["params"]["backbone"],
        "weights": feat["params"]["weights"],
        "weights_source": feat["params"].get("weights_source"),
        "precision": feat["params"].get("precision", "fp32"),
        "l2_normalize": pca["params"].get("l2_normalize"),
        "color_weight": pca["params"].get("color_weight", 0.0),
        "explained_variance": pca["metrics"]["explained_variance"],
        "explained_variance_per_component": pca["metrics"]["explained_variance_per_component"],
        "k": pca["params"]["k"],
        "n_clusters": clu["params"]["n_clusters"],
        "ari": metrics.get("ari"),
        "nmi": metrics.get("nmi"),
        "silhouette": metrics.get("silhouette"),
        "purity": metrics.get("purity"),
        "outputs": {step: m["step_uri"] for step, m in manifests.items() if m},
        "rejects": pre["outputs"]["rejects"],
        "report": clu["outputs"]["report"],
        "timings_s": {step: m.get("timings_s") for step, m in manifests.items() if m},
    }


def summary_uri(cfg: Config, run_id: str) -> str:
    return s3a_uri(cfg.reports_bucket, cfg.runs_prefix, safe_run_id(run_id), "summary.json")


def publish_summary(s3_hook, cfg: Config, run_id: str, new: dict | None, manifests: dict[str, dict | None]) -> dict:
    """The run summary, returned as XCom and kept beside the reports as summary.json."""
    summary = {**build_summary(new, manifests), "run_id": run_id, "summary": summary_uri(cfg, run_id)}
    bucket, key = split_s3_uri(summary["summary"])
    s3_hook.load_string(json.dumps(summary, indent=2, default=str), key=key, bucket_name=bucket, replace=True)
    return summary
