"""The run's report page: rendered by `publish` from what the steps stored (the cluster step's figures,
clusters.json and thumbnails, the train step's metrics, the run summary), kept as report.html beside summary.json,
and served by the plugin (`ui_plugin.py`). Small objects only, read through the S3Hook."""

from __future__ import annotations

import hashlib
import json
import logging
from urllib.parse import quote

from fruitflow_airflow.submit import legacy_run_folder, safe_run_id
from spark_jobs.common import report_page, signing
from spark_jobs.common.config import Config, s3a_uri, split_s3_uri
from spark_jobs.common.pointers import latest_run_uri

log = logging.getLogger(__name__)
PLUGIN_PREFIX = "/fruitflow"  # where the plugin's FastAPI app is mounted on the api-server
# The most of one report file this host reads: the Spark nodes may write any size where the cluster step
# wrote its files, and the digest check comes after the read. The step's own are far smaller (the
# thumbnails of max_clusters x 4 photos, a few MB; a figure, well under one).
REPORT_FILE_MAX_BYTES = 32 << 20


def report_html_uri(cfg: Config, run_id: str, folder: str | None = None) -> str:
    return s3a_uri(cfg.reports_bucket, cfg.runs_prefix, folder or safe_run_id(run_id), "report.html")


def summary_uri(cfg: Config, run_id: str, folder: str | None = None) -> str:
    return s3a_uri(cfg.reports_bucket, cfg.runs_prefix, folder or safe_run_id(run_id), "summary.json")


def report_url(run_id: str) -> str:
    """The page's HTTP address on the Airflow api-server ([api] base_url)."""
    from airflow.configuration import conf

    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    return f"{base}{PLUGIN_PREFIX}/runs/{quote(run_id, safe='')}/report"


def read_bytes(s3_hook, cfg: Config, uri: str, max_bytes: int = REPORT_FILE_MAX_BYTES) -> bytes:
    """One object of the pipeline's buckets (a stored file names no other place), up to `max_bytes`: a
    ValueError for a larger one, after reading no more than that."""
    bucket, key = split_s3_uri(uri)
    if bucket not in cfg.buckets or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"refusing to read {uri!r}: not an object of the pipeline's buckets")
    body = s3_hook.get_key(key, bucket).get()["Body"]
    try:
        data = body.read(max_bytes + 1)
    finally:
        body.close()
    if len(data) > max_bytes:
        raise ValueError(f"refusing {uri!r}: over {max_bytes} bytes")
    return data


def render(s3_hook, cfg: Config, summary: dict, manifests: dict[str, dict | None]) -> str | None:
    """The page for a run that clustered (None otherwise)."""
    cluster = manifests.get("cluster")
    if not cluster:
        return None
    folder, digests = cluster["outputs"]["report_folder"], cluster.get("report_sha256") or {}
    clusters_json = vouched_file(s3_hook, cfg, folder, "clusters.json", digests)
    document = json.loads(clusters_json) if clusters_json else {"clusters": [], "figures": []}
    figures = [(caption, data) for name, caption in document["figures"]
               if (data := vouched_file(s3_hook, cfg, folder, name, digests))]
    train = manifests.get("train")
    quality = {k: summary.get(k) for k in ("ari", "nmi", "silhouette", "purity", "explained_variance")}
    context = {
        "images in the table": summary.get("n_table"), "new images": summary.get("n_images"),
        "rejected": summary.get("n_rejected"), "ignored": ignored_line(summary),
        "backbone": summary.get("backbone"),
        "weights": summary.get("weights"), "weights source": summary.get("weights_source"),
        "precision": summary.get("precision"), "PCA components": summary.get("k"),
        "colour weight": summary.get("color_weight"), "clusters": summary.get("n_clusters"),
        "timings (s)": {step: round(sum(v for v in (t or {}).values() if isinstance(v, (int, float))), 1)
                        for step, t in (summary.get("timings_s") or {}).items()},
        "rejects": summary.get("rejects"), "summary": summary.get("summary"),
    }
    return report_page.render(quality=quality, clusters=document["clusters"], figures=figures, context=context,
                              thumbnails=vouched_thumbnails(s3_hook, cfg, folder, digests),
                              classifier=(train or {}).get("metrics"),
                              run_id=summary.get("run_id"))


def vouched_file(s3_hook, cfg: Config, folder: str, name: str, digests: dict[str, str]) -> bytes | None:
    """A file of the cluster step's report folder as the step wrote it (its digest in the step's signed
    manifest), or None, with a warning, when it is gone, or was replaced or planted since: the Spark nodes
    may write there, and the page shows what the pipeline made or leaves it out."""
    try:
        data = read_bytes(s3_hook, cfg, f"{folder}/{name}")
    except Exception as exc:  # noqa: BLE001 - gone or unreadable: left out, the run goes on
        log.warning("report file %s/%s left out: %s", folder, name, exc)
        return None
    if digests.get(name) != hashlib.sha256(data).hexdigest():
        log.warning("report file %s/%s left out: not as the cluster step wrote it", folder, name)
        return None
    return data


def vouched_thumbnails(s3_hook, cfg: Config, folder: str, digests: dict[str, str]) -> dict[str, bytes]:
    """The member photos' thumbnails as the cluster step made them, in its decoder sandbox from the packs the
    Spark nodes write, and as its signed manifest vouches for them (`vouched_file`): this host decodes no
    photo and follows no locator. None, or a file that does not parse: a page without thumbnails."""
    data = vouched_file(s3_hook, cfg, folder, report_page.THUMBNAILS_FILE, digests)
    try:
        return report_page.parse_thumbnails(data) if data else {}
    except ValueError as exc:
        log.warning("thumbnails left out: %s", exc)
        return {}


def publish(s3_hook, cfg: Config, run_id: str, summary: dict, manifests: dict[str, dict | None]) -> dict:
    """Writes report.html; returns the summary's report fields (the page's store and HTTP addresses). A run
    that found nothing new to cluster shows the latest trained run's page, under a line saying so."""
    fields = {}
    page = render(s3_hook, cfg, summary, manifests)
    if page is None:
        latest = latest_trained_run(s3_hook, cfg)
        shown = read(s3_hook, cfg, latest) if latest else None
        page = report_page.with_notice(shown, nothing_new_notice(run_id, summary, latest, shown is not None))
        fields["latest_trained_run"] = latest
    uri = report_html_uri(cfg, run_id)
    bucket, key = split_s3_uri(uri)
    s3_hook.load_string(page, key=key, bucket_name=bucket, replace=True)
    # the (signed) summary vouches for the page: the reports' runs prefix is writable by the Spark nodes
    return {**fields, "report_html": uri, "report_url": report_url(run_id),
            "report_sha256": hashlib.sha256(page.encode("utf-8")).hexdigest()}


def ignored_line(summary: dict) -> str:
    """How many files were ignored, and a few of them with their reasons."""
    sample = ", ".join(f"{r['key']} ({r['reason']})" for r in (summary.get("ignored_sample") or [])[:5])
    return f"{summary.get('n_ignored') or 0}: {sample}" if sample else str(summary.get("n_ignored") or 0)


def nothing_new_notice(run_id: str, summary: dict, latest: str | None, shown: bool) -> str:
    found = (f"{summary.get('n_new') or 0} new photos listed, {summary.get('n_already_featurized') or 0} of them "
             f"already featurized, {summary.get('n_rejected') or 0} rejected, {summary.get('n_ignored') or 0} "
             f"ignored")
    if summary.get("ignored_sample"):
        first = summary["ignored_sample"][0]
        found += f" (e.g. {first['key']}: {first['reason']})"
    if latest is None:
        below = "No run has trained yet: upload photos as <fruit>/<photo>.jpg under the raw prefix."
    elif shown:
        below = f"Below: the report of run {latest}, the latest run that trained."
    else:
        below = f"The latest run that trained, {latest}, left no report page."
    return f"Run {run_id} found nothing new to cluster or train on ({found}). {below}"


def latest_trained_run(s3_hook, cfg: Config) -> str | None:
    bucket, key = split_s3_uri(latest_run_uri(cfg))
    if not s3_hook.check_for_key(key, bucket):
        return None
    try:
        return signing.loads(s3_hook.read_key(key, bucket), "latest-run pointer").get("run_id")
    except signing.Unsigned as exc:
        log.warning("%s", exc)  # planted or edited: no run is named from it
        return None


def read(s3_hook, cfg: Config, run_id: str) -> str | None:
    """The stored page of a run, as its publish task wrote it (the digest in the run's signed summary), or
    None when the run wrote none or the page was replaced since; a run from before folder names were
    hashed has its page under its old folder name."""
    for folder in (safe_run_id(run_id), legacy_run_folder(run_id)):
        if folder is None:
            continue
        bucket, key = split_s3_uri(report_html_uri(cfg, run_id, folder))
        if s3_hook.check_for_key(key, bucket):
            return vouched_page(s3_hook, cfg, run_id, folder, s3_hook.read_key(key, bucket))
    return None


def vouched_page(s3_hook, cfg: Config, run_id: str, folder: str, page: str) -> str | None:
    bucket, key = split_s3_uri(summary_uri(cfg, run_id, folder))
    try:
        summary = signing.loads(s3_hook.read_key(key, bucket), "run summary") \
            if s3_hook.check_for_key(key, bucket) else {}
    except signing.Unsigned as exc:
        log.warning("report of %s not shown: %s", run_id, exc)
        return None
    if summary.get("run_id") != run_id:  # another run's signed summary (and page) copied here
        log.warning("report of %s not shown: its summary is run %r's", run_id, summary.get("run_id"))
        return None
    if summary.get("report_sha256") != hashlib.sha256(page.encode("utf-8")).hexdigest():
        log.warning("report of %s not shown: not the page its publish task wrote", run_id)
        return None
    return page
