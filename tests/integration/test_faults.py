"""Faults in the middle of a run, on the real local stack (spark-submit to the standalone master, s3a and
boto3 against the S3 server): two runs at once, the S3 endpoint frozen past two client timeouts, a step
killed half way then rerun under the same run id, and the Spark worker killed (then restarted) during
featurize.

Each test checks the outcome the DAG relies on: a `_manifest.json` only for complete outputs, counts
that add up, and no duplicate keys."""

import io
import os
import re
import signal
import socket
import subprocess
import time
import uuid

import psutil
import pytest

from fruitflow_airflow import SPARK_CONN_ID
from fruitflow_airflow.submit import step_args, submit_kwargs
from fruitflow import stack as local_stack
from fruitflow.stack.environment import pid_dir
from fruitflow.stack.process import http_json, read_pid, wait_until
from fruitflow.stack.services import master_state, service
from fruitflow.package import build_zip
from spark_jobs.common.config import S3_MIN_TIMEOUT_S, split_s3_uri
from tests.helpers import SAMPLE_500, real_images
from tests.helpers import list_keys, read_manifest, stored_jpegs

pytestmark = pytest.mark.slow

PAUSE_S = 2 * S3_MIN_TIMEOUT_S + 5
# the model the featurize submissions run with (the DAG gives every step the backbone list_new chose)
RANDOM_RESNET50 = ("--backbone", "resnet50", "--weights", "random")
_STARTED: list[subprocess.Popen] = []


# --------------------------------------------------------------------------- helpers


def _start(step, cfg, run_id, *extra, log, conf=None):
    """spark-submit of one step, as the DAG's operator builds it, in its own process group."""
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    kwargs = submit_kwargs(step, cfg)
    application = kwargs.pop("application")
    kwargs["conf"] = {**kwargs["conf"], **(conf or {})}
    hook = SparkSubmitHook(conn_id=SPARK_CONN_ID, application_args=[*step_args(step, cfg, run_id), *extra],
                           **kwargs)
    with open(log, "w") as out:
        proc = subprocess.Popen(hook._build_spark_submit_command(application), stdout=out,
                                stderr=subprocess.STDOUT, env=os.environ, start_new_session=True)
    _STARTED.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _no_leftover_submissions():
    """A failing test leaves no spark-submit of its own running (each has its own process group)."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _finish(proc, log, timeout=600):
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return rc, open(log, encoding="utf-8", errors="replace").read()


def _run(step, cfg, run_id, *extra, tmp_path, conf=None):
    log = tmp_path / f"{step}-{run_id}-{uuid.uuid4().hex[:4]}.log"
    rc, text = _finish(_start(step, cfg, run_id, *extra, log=log, conf=conf), log)
    assert rc == 0, text[-3000:]
    return text


def _worker():
    return service("spark-worker")


def _active_apps():
    return master_state()["activeapps"]


def _python_workers_running():
    """True once an executor under the Spark worker runs Python (the step's UDF stage has started)."""
    pid = _worker().pid()
    if not pid:
        return False
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return False
    for child in children:
        try:
            if "pyspark.daemon" in " ".join(child.cmdline()) or "pyspark/daemon" in " ".join(child.cmdline()):
                return True
        except psutil.Error:
            continue
    return False


def _wait_for(check, proc, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the step ended (rc {proc.returncode}) before {what}"
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _busy_executors(ui):
    """The executors (not the driver) running a task now, from the live driver's REST API at `ui`."""
    try:
        app = http_json(f"{ui}/api/v1/applications")[0]["id"]
        return [e["id"] for e in http_json(f"{ui}/api/v1/applications/{app}/executors")
                if e["id"] != "driver" and e["activeTasks"] > 0]
    except (OSError, ValueError, IndexError, KeyError, TypeError):
        return []


def _recorded_tasks(log_text):
    """(stage, task) for every task attempt of every stage attempt of the application whose step log is
    `log_text`, from the Spark history server's REST API once it lists the application as completed."""
    app_id = re.search(r"/history/(app-[0-9-]+)/", log_text).group(1)
    api = f"{os.environ['FRUITFLOW_SPARK_HISTORY_URL'].rstrip('/')}/api/v1/applications/{app_id}"
    wait_until(lambda: http_json(api, timeout=10)["attempts"][0]["completed"], 120, f"{app_id} completed")
    return [(stage, task) for stage in http_json(f"{api}/stages", timeout=10)
            for task in http_json(f"{api}/stages/{stage['stageId']}/{stage['attemptId']}/taskList?length=100000",
                                  timeout=10)]


def _features(s3, manifest):
    """key -> features of a featurize step's output, read back with pyarrow (not Spark)."""
    import pyarrow.parquet as pq

    bucket, _ = split_s3_uri(manifest["outputs"]["features"])
    rows = {}
    keys = []
    for key in list_keys(s3, manifest["outputs"]["features"]):
        if key.endswith(".parquet"):
            table = pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()),
                                  use_threads=False, pre_buffer=False)  # as in test_multihost's FEATURE_KEYS
            for k, f in zip(table.column("key").to_pylist(), table.column("features").to_pylist()):
                keys.append(k)
                rows[k] = f
    return keys, rows


@pytest.fixture(scope="module")
def prepared(stack, s3, cfg, tmp_path_factory):
    """3 classes x 3 real images under a fresh raw prefix, featurized once under a runs prefix of its own."""
    build_zip()
    cfg = cfg.with_overrides(runs_prefix=cfg.table_prefix(f"faults-{uuid.uuid4().hex[:6]}"), batch_size=4)
    prefix = f"faults-raw-{uuid.uuid4().hex[:6]}"
    for path in real_images(SAMPLE_500, 3, 3):
        s3.upload_file(str(path), cfg.raw_bucket, f"{prefix}/{path.parent.name}/{path.name}")
    raw_uri = f"s3a://{cfg.raw_bucket}/{prefix}"
    run_id = f"ref-{uuid.uuid4().hex[:6]}"
    _run("featurize", cfg, run_id, "--raw", raw_uri, *RANDOM_RESNET50, tmp_path=tmp_path_factory.mktemp("ref"))
    featurized = read_manifest(s3, cfg.step_uri(run_id, "featurize"))
    assert featurized["counts"]["n_images"] == 9
    return {"cfg": cfg, "raw_uri": raw_uri, "pre": featurized}


@pytest.fixture(scope="module")
def prepared_for_featurize(stack, s3, prepared):
    """400 real images (20 fruits x 20) under a raw prefix of their own: a featurize step that runs for
    tens of seconds on the local worker, so that a fault aimed at a running task has a window far wider
    than the REST API's delay in reporting it (9 images gave a few seconds, and the kill sometimes came
    after them)."""
    cfg = prepared["cfg"]
    prefix = f"faults-raw-many-{uuid.uuid4().hex[:6]}"
    for path in real_images(SAMPLE_500, 20, 20):
        s3.upload_file(str(path), cfg.raw_bucket, f"{prefix}/{path.parent.name}/{path.name}")
    return {"raw_uri": f"s3a://{cfg.raw_bucket}/{prefix}", "n_images": 400}


@pytest.fixture
def healthy_stack_after():
    """Whatever a fault test did, the stack is healthy for the next test (S3 resumed, worker back)."""
    yield
    s3_pid = read_pid(pid_dir(local_stack.settings()) / "s3.pid")
    if s3_pid:
        os.killpg(s3_pid, signal.SIGCONT)
    if not _worker().pid():
        _worker().start(local_stack.prepared_env())
    wait_until(local_stack.all_healthy, 60, "the local stack")


# --------------------------------------------------------------------------- tests


def test_two_runs_at_once_do_not_touch_each_other(s3, prepared, tmp_path):
    cfg, pre = prepared["cfg"], prepared["pre"]
    run_ids = [f"twin{i}-{uuid.uuid4().hex[:6]}" for i in (1, 2)]
    # One core each, so that the two applications really run side by side on the 2-core worker.
    procs = [(_start("featurize", cfg, r, "--raw", prepared["raw_uri"], *RANDOM_RESNET50, log=tmp_path / f"{r}.log",
                     conf={"spark.cores.max": "1"}), tmp_path / f"{r}.log") for r in run_ids]
    _wait_for(lambda: len(_active_apps()) >= 2, procs[0][0], 120, "both applications to be running")
    for proc, log in procs:
        rc, text = _finish(proc, log)
        assert rc == 0, text[-3000:]
    for run_id in run_ids:
        twin = read_manifest(s3, cfg.step_uri(run_id, "featurize"))
        assert twin["counts"] == pre["counts"]
        assert twin["step_uri"].endswith(f"/{run_id}/featurize")
        _, jpeg_prefix = split_s3_uri(twin["outputs"]["jpeg"])
        jpegs = stored_jpegs(s3, twin)  # each in a pack of its own run's folder
        assert len(jpegs) == twin["counts"]["n_images"]
        assert all(pack.startswith(jpeg_prefix + "/") for pack, _ in jpegs.values())


def test_s3_frozen_past_client_timeouts_mid_step(s3, prepared, tmp_path, monkeypatch, healthy_stack_after):
    cfg, pre = prepared["cfg"], prepared["pre"]
    # The shortest timeout s3a allows: the freeze outlasts it twice, so a request sent during the freeze
    # times out and is sent again, and the step completes on a retry.
    monkeypatch.setenv("FRUITFLOW_S3_TIMEOUT_S", str(S3_MIN_TIMEOUT_S))
    run_id = f"frozen-{uuid.uuid4().hex[:6]}"
    s3_pid = read_pid(pid_dir(local_stack.settings()) / "s3.pid")
    assert s3_pid
    log = tmp_path / "frozen.log"
    started = time.monotonic()
    proc = _start("featurize", cfg, run_id, "--raw", prepared["raw_uri"], *RANDOM_RESNET50, log=log)
    # Registered with the master: the driver is up and about to list, read and write S3.
    _wait_for(lambda: bool(_active_apps()), proc, 120, "the application to register")
    os.killpg(s3_pid, signal.SIGSTOP)
    try:
        time.sleep(PAUSE_S)
        assert proc.poll() is None, "the step ended while S3 was frozen"
    finally:
        os.killpg(s3_pid, signal.SIGCONT)
    rc, text = _finish(proc, log)
    assert rc == 0, text[-3000:]
    assert time.monotonic() - started > PAUSE_S
    frozen = read_manifest(s3, cfg.step_uri(run_id, "featurize"))
    assert frozen["driver_s3"]["retries"] >= 1, frozen["driver_s3"]  # a timed-out request, sent again
    assert frozen["counts"] == pre["counts"]
    assert len(stored_jpegs(s3, frozen)) == pre["counts"]["n_images"]


def test_step_killed_half_way_leaves_no_manifest_and_reruns_clean(s3, spark, prepared, tmp_path):
    from spark_jobs.common.manifest import committed_steps

    cfg, pre = prepared["cfg"], prepared["pre"]
    run_id = f"killed-{uuid.uuid4().hex[:6]}"
    step_uri = cfg.step_uri(run_id, "featurize")
    log = tmp_path / "killed.log"
    proc = _start("featurize", cfg, run_id, "--raw", prepared["raw_uri"], *RANDOM_RESNET50, log=log)
    _wait_for(_python_workers_running, proc, 300, "the featurize UDF stage")
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and spark-submit, as a lost Airflow worker would
    proc.wait(timeout=60)
    bucket, key = split_s3_uri(step_uri + "/_manifest.json")
    assert s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) == 0
    # Readers of the feature table go by manifests: the killed attempt is invisible to them.
    assert all(run_id not in m["step_uri"] for m in committed_steps(spark, cfg, "featurize"))
    wait_until(lambda: not _active_apps(), 60, "the killed application to be gone")

    # The retry (same run id) starts from a clean prefix and commits complete outputs.
    _run("featurize", cfg, run_id, "--raw", prepared["raw_uri"], *RANDOM_RESNET50, tmp_path=tmp_path)
    first = read_manifest(s3, step_uri)
    keys, features = _features(s3, first)
    assert first["counts"]["n_images"] == pre["counts"]["n_images"] == len(keys) == len(set(keys))
    assert any(run_id in m["step_uri"] for m in committed_steps(spark, cfg, "featurize"))

    # Rerunning the same run id again: the same outputs and counts.
    _run("featurize", cfg, run_id, "--raw", prepared["raw_uri"], *RANDOM_RESNET50, tmp_path=tmp_path)
    again = read_manifest(s3, step_uri)
    keys_again, features_again = _features(s3, again)
    assert again["counts"] == first["counts"] and sorted(keys_again) == sorted(keys)
    for key in keys:
        assert features_again[key] == pytest.approx(features[key], abs=1e-5)
    assert again["written_at"] >= first["written_at"]


def test_worker_killed_during_featurize(s3, prepared, prepared_for_featurize, tmp_path, healthy_stack_after):
    cfg, many = prepared["cfg"], prepared_for_featurize
    run_id = f"workerkill-{uuid.uuid4().hex[:6]}"
    step_uri = cfg.step_uri(run_id, "featurize")
    log = tmp_path / "workerkill.log"
    ui_port = _free_port()  # the driver's own UI: which executor runs a task right now
    proc = _start("featurize", cfg, run_id, "--raw", many["raw_uri"], *RANDOM_RESNET50, log=log,
                  conf={"spark.ui.port": str(ui_port)})
    # Killed while a featurize task runs on it (seen through the driver's REST API), with most of the
    # stage's tasks still to run: the executor is lost with work in hand, not between jobs.
    _wait_for(lambda: _python_workers_running() and _busy_executors(f"http://127.0.0.1:{ui_port}"), proc, 300,
              "a featurize task running on the executor")
    worker = psutil.Process(_worker().pid())
    victims = [worker, *worker.children(recursive=True)]  # the worker JVM, its executor, the Python workers
    for victim in victims:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=30)
    assert proc.poll() is None, "featurize ended before the worker was lost"
    _worker().start(local_stack.prepared_env())  # a new worker registers; the master gives the app executors on it
    rc, text = _finish(proc, log)
    tasks = _recorded_tasks(text)
    # Spark's own record: a task failed because its executor was lost mid-stage.
    assert any("ExecutorLostFailure" in (task.get("errorMessage") or "") for _, task in tasks), \
        sorted({(s["stageId"], s["attemptId"], t["attempt"], t["status"]) for s, t in tasks})
    if rc != 0:  # Spark gave up: the Airflow task retry resubmits the same run id
        print("featurize failed after the worker loss; resubmitting the run id as the Airflow retry does")
        _run("featurize", cfg, run_id, "--raw", many["raw_uri"], *RANDOM_RESNET50, tmp_path=tmp_path)
    else:  # Spark carried the step: the lost work ran again, as a task's next attempt or its stage's
        print("Spark rescheduled the lost tasks on the restarted worker")
        assert max(max(stage["attemptId"], task["attempt"]) for stage, task in tasks) > 0
    featurized = read_manifest(s3, step_uri)
    keys, _ = _features(s3, featurized)
    assert featurized["counts"]["n_images"] == many["n_images"] == len(keys) == len(set(keys))
