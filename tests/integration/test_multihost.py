"""The pipeline on five hosts (network namespaces, `fruitflow.multihost`), with faults: one DAG run, from the
`airflow` host, by the code `make multihost-demo` runs, on a cluster of the tests' own (its own namespaces,
subnet and state, apart from a user's).

While it runs: `worker-2`'s link goes down in the middle of featurize, once it has finished a task of it
(the run must complete on `worker-1`); the S3 service is SIGKILLed at featurize's first job and started
again 5 s later (the run must complete, nothing stored before the kill lost, no partial output read).

Needs root (namespaces): skipped with the reason elsewhere, except where FRUITFLOW_REQUIRE_NAMESPACES is set
(CI), where a cluster that cannot be built fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fruitflow.multihost import network
from fruitflow.multihost.demo import inside_command, run_on_airflow_host, venv_sizes
from fruitflow.multihost.nodes import MultiHost, http_from
from tests.helpers import SAMPLE_500, real_images

REASON = network.unavailable_reason()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(REASON) and not os.environ.get("FRUITFLOW_REQUIRE_NAMESPACES"),
                                                   reason=f"no multi-host cluster here: {REASON}")]
RUN_TIMEOUT_S = 1800


@pytest.fixture(scope="module")
def multihost(tmp_path_factory):
    # Its state under /tmp, which the storage host mounts a /tmp of its own over: the hosts must find what
    # they run from wherever the checkout and its state live (a checkout under /tmp failed to start).
    names = {"FRUITFLOW_MULTIHOST_DIR": tempfile.mkdtemp(prefix="fruitflow-test-cluster-", dir="/tmp"),
             "FRUITFLOW_MULTIHOST_PREFIX": "fft-", "FRUITFLOW_MULTIHOST_SUBNET": "10.231.8"}
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(names)
    built = MultiHost.default()
    try:
        built.up()
        yield built
    finally:
        built.down()
        # its logs kept with pytest's temporary folders (the last three sessions'), the rest removed
        logs = tmp_path_factory.mktemp("cluster-logs")
        for folder in built.base.glob("*/logs"):
            shutil.copytree(folder, logs / folder.parent.name)
        shutil.rmtree(built.base, ignore_errors=True)
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def on_airflow_host(multihost: MultiHost, code: str, *args: str) -> str:
    """Python run on the airflow host with its environment (the pipeline's S3 identity); its stdout."""
    done = network.run_in(multihost.net, "airflow", [sys.executable, "-c", code, *args], env=multihost.airflow_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


LIST_OBJECTS = """
import json
from fruitflow import buckets
from spark_jobs.common.config import Config
s3 = buckets.client()
found = {}
for bucket in Config.from_env().buckets:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            found[bucket + "/" + o["Key"]] = o["ETag"]
print(json.dumps(found))
"""

FEATURE_KEYS = """
import io, json, sys
import pyarrow.parquet as pq
from fruitflow import buckets
from spark_jobs.common.config import split_s3_uri
bucket, prefix = split_s3_uri(sys.argv[1])
s3 = buckets.client()
keys = []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
    for o in page.get("Contents", []):
        if o["Key"].endswith(".parquet"):
            body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            # No Arrow thread pools: a pool still alive at interpreter exit can abort the process after its
            # work is done ("terminate called without an active exception", apache/arrow#34314); seen once.
            table = pq.read_table(io.BytesIO(body), columns=["key"], use_threads=False, pre_buffer=False)
            keys += table.column("key").to_pylist()
print(json.dumps(keys))
"""


def driver_app(multihost: MultiHost, step: str) -> str | None:
    """The id of the running application of `step` (its driver's UI on the airflow host), if any."""
    for port in (4040, 4041):
        for app in driver_json(multihost, f"{port}/api/v1/applications") or []:
            if app["name"].startswith(f"fruitflow-{step}-"):
                return f"{port}/api/v1/applications/{app['id']}"
    return None


def driver_json(multihost: MultiHost, path: str):
    """The driver UI's answer, None until it is up (it says "Spark is starting up" meanwhile)."""
    status, body = http_from(multihost.net, "airflow", f"http://{multihost.net.ip('airflow')}:{path}")
    try:
        return json.loads(body) if status == 200 else None
    except ValueError:
        return None


def wait_for(check, timeout: float, what: str, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {what}"
        value = check()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"no {what} within {timeout:.0f}s")


@pytest.fixture(scope="module")
def faulty_run(multihost, tmp_path_factory):
    data = tmp_path_factory.mktemp("cluster-data")
    for p in real_images(SAMPLE_500, 4, 10):
        (data / p.parent.name).mkdir(exist_ok=True)
        shutil.copy(p, data / p.parent.name / p.name)
    summary_out, out = multihost.home("airflow") / "summary.json", multihost.home("airflow") / "out"
    log = multihost.home("airflow") / "logs" / "run.log"
    with open(log, "wb") as log_file:
        # Small model batches: featurize gets 6 tasks for its 2 cores, so that worker-2 finishes one before
        # its link is cut, with work left for worker-1.
        proc = run_on_airflow_host(multihost, inside_command(data, summary_out, out), {"FRUITFLOW_BATCH_SIZE": "2"},
                                   stdout=log_file, stderr=subprocess.STDOUT)
    events = {}
    try:
        # 1. The S3 service SIGKILLed while featurize lists, reads and writes, back 5 s later.
        app = wait_for(lambda: driver_app(multihost, "featurize"), 900, "featurize application", proc)
        wait_for(lambda: (driver_json(multihost, app + "/jobs") or [None])[0], 300, "featurize job", proc)
        before = json.loads(on_airflow_host(multihost, LIST_OBJECTS))
        multihost.restart_storage(pause_s=5)
        # what the step writes meanwhile (its folder, its thumbnails' folder) is its own to redo
        events["stored_before_kill"] = {k: v for k, v in before.items() if "/featurize/" not in k}
        # 2. worker-2's link down once it has finished a featurize task, with tasks left.
        worker2 = multihost.net.ip("worker-2")

        def worker2_done_one():
            app = driver_app(multihost, "featurize")
            executors = driver_json(multihost, app + "/executors") if app else None
            return any(e["hostPort"].startswith(worker2 + ":") and e["completedTasks"] >= 1 for e in executors or [])

        wait_for(worker2_done_one, 900, "a featurize task done on worker-2", proc)
        network.set_link(multihost.net, "worker-2", up=False)
        events["link_cut_at"] = time.monotonic()
        proc.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        network.set_link(multihost.net, "worker-2", up=True) if network.existing(multihost.net) else None
    assert proc.returncode == 0, log.read_text(errors="replace")[-6000:]
    events["summary"] = json.loads(summary_out.read_text())
    return events


def test_run_completes_on_worker_1_after_worker_2_is_cut_off(multihost, faulty_run):
    summary = faulty_run["summary"]
    assert summary["status"] == "ok" and summary["n_images"] == 40 and summary["n_rejected"] == 0
    keys = json.loads(on_airflow_host(multihost, FEATURE_KEYS, summary["outputs"]["featurize"] + "/table/status=ok"))
    assert len(keys) == len(set(keys)) == summary["n_images"]
    # both workers ran featurize tasks (worker-2 before its cut), as read from the history server
    assert summary["hosts"] == ["worker-1", "worker-2"]


def test_s3_service_killed_mid_step_loses_nothing(multihost, faulty_run):
    after = json.loads(on_airflow_host(multihost, LIST_OBJECTS))
    before = faulty_run["stored_before_kill"]
    assert before, "nothing was stored before the kill"
    lost = {k for k, etag in before.items() if after.get(k) != etag}
    assert not lost, sorted(lost)[:10]
    # still authenticating after its restart
    status, _ = http_from(multihost.net, "airflow", f"http://{multihost.net.ip('storage')}:9000/")
    assert status == 403


def _pyspark_daemon(line: str) -> bool:
    """Whether a listening socket of `ss -p` is PySpark's worker daemon's: it listens on loopback by design
    (its executor's JVM on the same host is its only client), for as long as an executor with Python
    workers lives on the host."""
    pids = re.findall(r"pid=(\d+)", line)
    try:
        return bool(pids) and all(b"pyspark.daemon" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in pids)
    except FileNotFoundError:  # gone since `ss` listed it: an executor's daemon that has just stopped
        return True


def test_no_service_listens_on_loopback(multihost, faulty_run):
    """Every Spark service binds its host's cluster address (a loopback default anywhere would show)."""
    for host in ("master", "worker-1", "worker-2", "airflow"):
        listening = network.run_in(multihost.net, host, ["ss", "-ltnpH"], capture_output=True, text=True,
                                   timeout=30).stdout
        lines = [line for line in listening.splitlines() if line.split() and not _pyspark_daemon(line)]
        local = [line.split()[3] for line in lines]
        assert not [a for a in local if a.startswith(("127.", "[::1]", "*:", "0.0.0.0:", "[::]:"))], (host, lines)


PORT_PROBE = ("import socket, sys\n"
              "for port in sys.argv[2:]:\n"
              "    try:\n"
              "        socket.create_connection((sys.argv[1], int(port)), timeout=5).close()\n"
              "        print(port, 'open')\n"
              "    except OSError as exc:\n"
              "        print(port, type(exc).__name__)\n")


def test_other_hosts_reach_the_stores_s3_port_alone(multihost):
    """The store's filer, volume and master ports (HTTP and gRPC, which takes no authentication without
    mutual TLS) answer the store itself; from a worker only the S3 port connects."""
    from fruitflow.multihost.nodes import S3_PORT
    from fruitflow.stack import seaweed

    internal = sorted(set(seaweed.ports(multihost.storage_settings()).values()) - {S3_PORT})
    store = multihost.net.ip("storage")
    seen = {}
    for host in ("worker-1", "storage"):
        probe = [sys.executable, "-c", PORT_PROBE, store, str(S3_PORT), *map(str, internal)]
        out = network.run_in(multihost.net, host, probe, capture_output=True, text=True, timeout=120).stdout
        seen[host] = dict(line.split() for line in out.splitlines())
    assert seen["worker-1"][str(S3_PORT)] == "open"
    assert {p for p, state in seen["worker-1"].items() if state == "open"} == {str(S3_PORT)}, seen["worker-1"]
    # the store's own services still reach each other (those that listen: webdav and admin are off)
    assert seen["storage"][str(seaweed.ports(multihost.storage_settings())["filer.port.grpc"])] == "open", seen


def test_workers_run_from_the_node_venv_and_cannot_see_the_drivers_files(multihost):
    """An executor's view: its own venv (the spark-node extra) read-only; the driver's venv, work tree and
    state hidden. The worker daemon runs the node venv's Spark."""
    from fruitflow.multihost import node_env
    from fruitflow.paths import ROOT

    worker = next(p for p in network.pids_in(multihost.net.ns("worker-1"))
                  if b"Worker" in Path(f"/proc/{p}/cmdline").read_bytes())
    assert str(node_env.spark_home(multihost.node_venv)) in Path(f"/proc/{worker}/cmdline").read_text()
    probe = ("import importlib.util as u, os, sys; print(*(os.path.exists(p) for p in sys.argv[1:4]), "
             "os.access(sys.prefix, os.W_OK), *(u.find_spec(m) is not None for m in ('airflow', 'tensorflow')))")
    done = subprocess.run(["nsenter", "-t", str(worker), "-m", "-n", str(node_env.python(multihost.node_venv)), "-c",
                           probe, str(ROOT / "dags"), str(ROOT / ".state" / "credentials"), sys.executable],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False"] * 6, done.stderr
    sizes = venv_sizes(multihost)  # as the cluster demo's summary gives them
    assert sizes["node_env_mb"] <= 1200 < sizes["driver_env_mb"], sizes
