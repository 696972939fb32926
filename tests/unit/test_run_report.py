"""The run's report page as the plugin finds it (plugins/fruitflow_airflow/run_report.py)."""

import hashlib
import io
import json
import os
import signal

from PIL import Image

from fruitflow_airflow import run_report
from spark_jobs.common import report_page, signing
from spark_jobs.common.config import Config, split_s3_uri


class _Pages:
    def __init__(self, objects):
        self.objects = objects

    def check_for_key(self, key, bucket):
        return (bucket, key) in self.objects

    def read_key(self, key, bucket):
        return self.objects[(bucket, key)]


def _published(cfg, run_id, folder, page) -> dict:
    """A page and its run's signed summary, as the publish task leaves them in `folder`."""
    summary = signing.sign({"run_id": run_id, "report_sha256": hashlib.sha256(page.encode()).hexdigest()})
    return {split_s3_uri(run_report.report_html_uri(cfg, run_id, folder)): page,
            split_s3_uri(run_report.summary_uri(cfg, run_id, folder)): json.dumps(summary)}


def test_a_run_from_before_hashed_folder_names_keeps_its_page():
    """Run ids with ':' now get a hashed folder; a run made before keeps its page under the old name."""
    cfg = Config.from_env()
    run_id = "manual__2026-11-30T10:00:00+00:00"
    old = _published(cfg, run_id, "manual__2026-11-30T10_00_00_00_00", "<html>old page</html>")
    assert run_report.read(_Pages(old), cfg, run_id) == "<html>old page</html>"
    pages = _Pages({**old, **_published(cfg, run_id, None, "<html>new page</html>")})
    assert run_report.read(pages, cfg, run_id) == "<html>new page</html>"
    assert run_report.read(_Pages({}), cfg, run_id) is None


def test_a_page_replaced_after_its_run_published_it_is_not_served():
    """The reports' runs prefix is writable by the Spark nodes' identity: a page they replace (or plant,
    with a summary of their own) no longer matches the digest the signed summary holds."""
    cfg = Config.from_env()
    objects = _published(cfg, "r1", None, "<html>the run's page</html>")
    page = split_s3_uri(run_report.report_html_uri(cfg, "r1"))
    assert run_report.read(_Pages(objects), cfg, "r1") == "<html>the run's page</html>"
    assert run_report.read(_Pages({**objects, page: "<html><script>evil()</script></html>"}), cfg, "r1") is None
    summary = split_s3_uri(run_report.summary_uri(cfg, "r1"))
    forged = {"run_id": "r1", "report_sha256": hashlib.sha256(b"<html>planted</html>").hexdigest()}
    planted = {page: "<html>planted</html>", summary: json.dumps(forged)}
    assert run_report.read(_Pages(planted), cfg, "r1") is None


def test_another_runs_signed_summary_and_page_copied_under_this_run_are_not_served():
    """Both objects are signed, byte for byte the other run's: a Spark node may copy them (the reports'
    runs prefix is writable by its identity), but they do not describe this run."""
    cfg = Config.from_env()
    other = _published(cfg, "r-other", None, "<html>another run's page</html>")
    copied = {split_s3_uri(run_report.report_html_uri(cfg, "r1")):
              other[split_s3_uri(run_report.report_html_uri(cfg, "r-other"))],
              split_s3_uri(run_report.summary_uri(cfg, "r1")): other[split_s3_uri(run_report.summary_uri(cfg, "r-other"))]}
    assert run_report.read(_Pages(other), cfg, "r-other") == "<html>another run's page</html>"
    assert run_report.read(_Pages(copied), cfg, "r1") is None


def test_the_nothing_new_line_says_below_only_when_a_page_is_there():
    summary = {"n_new": 2, "n_already_featurized": 2}
    assert "Below: the report of run r1" in run_report.nothing_new_notice("r2", summary, "r1", True)
    assert "r1, left no report page" in run_report.nothing_new_notice("r2", summary, "r1", False)
    assert "No run has trained yet" in run_report.nothing_new_notice("r2", summary, None, False)


def test_the_summary_and_the_page_name_ignored_files_with_their_reasons():
    """A folder `$\\evil$` arrives in SeaweedFS as `$/evil$/`: its photos are a folder too deep and ignored.
    The counts said so; the summary, the nothing-new line and the report now also say which and why."""
    from fruitflow_airflow.tasks import build_summary

    sample = [{"key": "$/evil$/a.jpg", "reason": "not at <category>/<file> depth"}]
    featurized = {"step_uri": "s3a://f/runs/r/featurize", "counts": {"n_input": 0, "n_images": 0, "n_ignored": 1},
                  "outputs": {"rejects": "s3a://f/runs/r/featurize/rejects",
                              "ignored": "s3a://f/runs/r/featurize/ignored"},
                  "samples": {"ignored": sample}}
    summary = build_summary({"n_new": 1}, {"featurize": featurized, "pca": None})
    assert summary["status"] == "nothing new"
    assert summary["ignored_sample"] == sample and summary["ignored"] == featurized["outputs"]["ignored"]
    line = run_report.nothing_new_notice("r2", summary, None, False)
    assert "1 ignored (e.g. $/evil$/a.jpg: not at <category>/<file> depth)" in line
    assert run_report.ignored_line(summary) == "1: $/evil$/a.jpg (not at <category>/<file> depth)"


class _Store:
    """The S3Hook calls `render` makes: get_key(key, bucket).get()["Body"].read(). Nothing else: the page
    is made of the cluster step's files, and reads no photo of its own."""

    def __init__(self, objects):
        self.objects = objects

    def get_key(self, key, bucket):
        data = self.objects[(bucket, key)]
        return type("Object", (), {"get": lambda _self: {"Body": io.BytesIO(data)}})()


def _png(colour) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, format="PNG")
    return out.getvalue()


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (224, 224), (200, 30, 30)).save(out, format="JPEG")
    return out.getvalue()


def _cluster_step(cfg):
    """A cluster step's report folder and its manifest (with the digests it signs): two member photos, one
    of which its decoder sandbox could not make a thumbnail of."""
    folder = f"s3a://{cfg.features_bucket}/runs/r1/cluster/report"
    document = {"clusters": [{"cluster": 0, "size": 2, "purity": 0.5, "top_fruits": [["Apple", 1]],
                              "thumbnails": ["Apple/a.jpg", "Kiwi/b.jpg"]}],
                "figures": [["scree.png", "explained variance"], ["tsne.png", "t-SNE"]]}
    thumbnails = report_page.thumbnails_json({"Apple/a.jpg": report_page.thumbnail(_jpeg())})
    files = {"clusters.json": json.dumps(document).encode(), "scree.png": _png("blue"), "tsne.png": _png("green"),
             report_page.THUMBNAILS_FILE: thumbnails.encode()}
    objects = {split_s3_uri(f"{folder}/{name}"): data for name, data in files.items()}
    manifest = {"outputs": {"report_folder": folder},
                "report_sha256": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}}
    return objects, manifest, folder


def test_the_page_shows_the_cluster_steps_files_and_thumbnails_as_it_wrote_them():
    """Figures, clusters and the thumbnails the cluster step made: the publish task reads those files
    alone (it used to read every member photo again from its pack, and decode it)."""
    cfg = Config.from_env()
    objects, manifest, _ = _cluster_step(cfg)
    page = run_report.render(_Store(objects), cfg, {"run_id": "r1"}, {"cluster": manifest})
    assert page.count("data:image/png;base64,") == 2 and 'class="cluster"' in page
    # the photo without a thumbnail is left out; the other one is there
    assert page.count("data:image/jpeg;base64,") == 1


REAL_THUMBNAIL = report_page.thumbnail


def crashing_thumbnail(jpeg: bytes) -> bytes:
    """A decoder that crashes on one photo (loaded by name in the sandbox's fresh interpreter)."""
    if jpeg.startswith(b"\xff\xd8 not"):
        os.kill(os.getpid(), signal.SIGSEGV)  # what a decoder's invalid read ends in
    return REAL_THUMBNAIL(jpeg)


def test_thumbnails_are_made_in_the_decoder_sandbox(monkeypatch):
    """A member photo that crashes the decoder costs its thumbnail, not the step that makes them."""
    monkeypatch.setattr(report_page, "thumbnail", crashing_thumbnail)
    cfg = Config.from_env()
    made = report_page.thumbnails({"Apple/a.jpg": _jpeg(), "Kiwi/b.jpg": b"\xff\xd8 not a jpeg"},
                                  **cfg.decoder_limits)
    assert list(made) == ["Apple/a.jpg"] and made["Apple/a.jpg"].startswith(b"\xff\xd8")


def test_report_files_gone_since_are_left_out():
    cfg = Config.from_env()
    objects, manifest, folder = _cluster_step(cfg)
    del objects[split_s3_uri(f"{folder}/scree.png")]
    del objects[split_s3_uri(f"{folder}/{report_page.THUMBNAILS_FILE}")]
    page = run_report.render(_Store(objects), cfg, {"run_id": "r1"}, {"cluster": manifest})
    assert page.count("data:image/png;base64,") == 1 and page.count("data:image/jpeg;base64,") == 0


class _EndlessBody:
    """An object a Spark node planted that never ends: bytes for every read, and a record of reads that
    asked for all of it (which would take the publish task's memory)."""

    def __init__(self):
        self.unbounded_reads = 0

    def read(self, amt=None):
        if amt is None or amt < 0:
            self.unbounded_reads += 1
            return b"{}"  # what a whole read would hold, had it ended
        return b" " * amt

    def close(self):
        pass


def test_a_report_file_grown_past_its_bound_is_left_out_without_reading_it_whole():
    """A compromised executor can write a report file of any size where the cluster step wrote it: the
    Airflow host reads a bounded part, never the whole object, and the page goes on without it."""
    cfg = Config.from_env()
    objects, manifest, folder = _cluster_step(cfg)
    endless = _EndlessBody()
    store = _Store(objects)
    real_get_key = store.get_key
    store.get_key = lambda key, bucket: (type("Object", (), {"get": lambda _self: {"Body": endless}})()
                                         if key.endswith(report_page.THUMBNAILS_FILE) else real_get_key(key, bucket))
    page = run_report.render(store, cfg, {"run_id": "r1"}, {"cluster": manifest})
    assert endless.unbounded_reads == 0
    assert page.count("data:image/png;base64,") == 2 and page.count("data:image/jpeg;base64,") == 0


def test_report_files_replaced_after_the_cluster_step_are_left_out():
    """The report folder is where the Spark nodes may write: a figure or clusters.json replaced there (a
    planted page element, thumbnails from elsewhere) does not reach the page."""
    cfg = Config.from_env()
    objects, manifest, folder = _cluster_step(cfg)
    objects[split_s3_uri(f"{folder}/tsne.png")] = _png("red")
    objects[split_s3_uri(f"{folder}/{report_page.THUMBNAILS_FILE}")] = report_page.thumbnails_json(
        {"Apple/a.jpg": _png("red")}).encode()
    page = run_report.render(_Store(objects), cfg, {"run_id": "r1"}, {"cluster": manifest})
    assert page.count("data:image/png;base64,") == 1 and page.count("data:image/jpeg;base64,") == 0
    planted = {"clusters": [{"cluster": 9, "size": 1, "purity": 1.0, "top_fruits": [["Planted", 1]],
                             "thumbnails": []}], "figures": []}
    objects[split_s3_uri(f"{folder}/clusters.json")] = json.dumps(planted).encode()
    page = run_report.render(_Store(objects), cfg, {"run_id": "r1"}, {"cluster": manifest})
    assert "Planted" not in page and 'class="cluster"' not in page
