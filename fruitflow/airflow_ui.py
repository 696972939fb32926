"""`make airflow-ui [DATA=folder]`: `airflow standalone` (api-server, scheduler, dag-processor, triggerer)
on top of the local stack, sized for 2 cores. DATA's <fruit>/<image> files go to the raw prefix the DAG
watches; `fruit_pipeline` is unpaused, so its sensor picks them up (or trigger it from the UI). Prints
the URL, the user and where its password is. Ctrl-C stops Airflow's whole process group and the stack."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from fruitflow import stack
from fruitflow.paths import ROOT
from fruitflow.stack.environment import VENV_BIN, log_dir, pid_dir
from fruitflow.stack.process import stop_pid, wait_until, write_pid
from fruitflow_airflow import DAG_ID


def airflow_env() -> dict[str, str]:
    env = stack.prepared_env()
    env.update({
        # Two cores: one Spark step at a time is all the machine can run well.
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "2",
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "30",
        "AIRFLOW__API__HOST": stack.settings().host,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
    })
    return env


def password_file() -> Path:
    return Path(stack.settings().state_dir) / "airflow" / "simple_auth_manager_passwords.json.generated"


def url() -> str:
    stack_settings = stack.settings()
    return f"http://{stack_settings.host}:{stack_settings.airflow_port}"


def start(env: dict[str, str]) -> subprocess.Popen:
    stack_settings = stack.settings()
    log_dir(stack_settings).mkdir(parents=True, exist_ok=True)
    with open(log_dir(stack_settings) / "airflow-standalone.log", "ab") as out:
        proc = subprocess.Popen([str(VENV_BIN / "airflow"), "standalone"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=ROOT)
    write_pid(pid_dir(stack_settings) / "airflow-standalone.pid", proc.pid)
    return proc


def wait_healthy(timeout: float = 180) -> None:
    wait_until(lambda: urllib.request.urlopen(f"{url()}/api/v2/monitor/health", timeout=2).status == 200, timeout,
               "Airflow api-server", log_dir(stack.settings()) / "airflow-standalone.log")


def api(method: str, path: str, token: str | None = None, body: dict | None = None, timeout: float = 30):
    """One call to Airflow's REST API (JSON in, JSON out)."""
    request = urllib.request.Request(url() + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def admin_token(timeout: float = 60) -> str:
    """A JWT for the generated admin password (written by the api-server once it is up)."""
    password = wait_until(lambda: json.loads(password_file().read_text()).get("admin"), timeout,
                          "Airflow's generated admin password")
    return api("POST", "/auth/token", body={"username": "admin", "password": password})["access_token"]


def unpause(token: str, dag_id: str = DAG_ID, timeout: float = 240) -> None:
    """Once the dag-processor has parsed the DAG: unpaused, so that its schedule and sensor run."""
    wait_until(lambda: api("GET", f"/api/v2/dags/{dag_id}", token), timeout, f"DAG {dag_id} parsed")
    api("PATCH", f"/api/v2/dags/{dag_id}", token, {"is_paused": False})


def first_run_note(token: str, since: dt.datetime, wait_s: float = 60) -> str:
    """What unpausing (at `since`) started: with a schedule, Airflow starts the latest interval's run at
    once (catchup off), and that run takes the photos just uploaded; a Trigger after it finds nothing new
    (its Fruit report tab shows the latest report, saying so). Runs of earlier sessions are not it."""
    from spark_jobs.common.config import Config

    if Config.from_env().dag_schedule is None:
        return f"{DAG_ID} is unpaused (FRUITFLOW_SCHEDULE=none): press Trigger on its page to run it."
    runs_path = f"/api/v2/dags/{DAG_ID}/dagRuns?order_by=-run_after&limit=5"
    dag = api("GET", f"/api/v2/dags/{DAG_ID}", token)
    deadline = time.monotonic() + wait_s
    runs = []
    while not runs and time.monotonic() < deadline:
        runs = [r for r in api("GET", runs_path, token).get("dag_runs", [])
                if r.get("queued_at") and dt.datetime.fromisoformat(r["queued_at"]) >= since]
        if not runs:
            time.sleep(2)
    if not runs:
        return (f"{DAG_ID} is unpaused: its next scheduled run ({dag.get('next_dagrun_run_after')}) waits "
                "for photos newer than the last good run; press Trigger to run it now.")
    from fruitflow_airflow.run_report import report_url

    run_id = runs[0]["dag_run_id"]
    return (f"{DAG_ID} is unpaused: its scheduled run {run_id} is processing the photos (Fruit report: "
            f"{report_url(run_id)} once it succeeds). A Trigger now runs on whatever is newer than that run.")


def upload(data: Path) -> str:
    """DATA's files under the raw prefix the DAG watches by default; returns where they went."""
    from fruitflow import buckets
    from spark_jobs.common.config import Config

    cfg = Config.from_env()
    n = buckets.upload_folder(data, cfg.raw_bucket, cfg.raw_prefix)
    return f"{n} files from {data} to s3://{cfg.raw_bucket}/{cfg.raw_prefix}/"


def stop(proc: subprocess.Popen) -> None:
    stop_pid(proc.pid, "airflow standalone", grace=20)  # the whole group: standalone's children too
    (pid_dir(stack.settings()) / "airflow-standalone.pid").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from fruitflow.package import build_zip

    parser = argparse.ArgumentParser(prog="fruitflow airflow-ui", description=__doc__)
    parser.add_argument("--data", type=Path, help="a folder of <fruit>/<image> files to upload first")
    args = parser.parse_args(argv)
    if args.data is not None and not args.data.is_dir():
        print(f"error: {args.data} is not a folder", file=sys.stderr)
        return 2
    env = airflow_env()
    os.environ.update(env)  # the upload's endpoint and identity: the stack's, as Airflow's
    stack.up()
    if args.data is not None:
        print(f"uploaded {upload(args.data)}", flush=True)
    build_zip()
    proc = start(env)
    try:
        wait_healthy()
        token = admin_token()
        unpaused_at = dt.datetime.now(dt.timezone.utc)
        unpause(token)
        print(f"Airflow UI: {url()}  user 'admin', password in {password_file()}", flush=True)
        print(first_run_note(token, unpaused_at), flush=True)
        print("Ctrl-C stops Airflow and the local stack.", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while proc.poll() is None:
            time.sleep(1)
        return proc.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        stop(proc)
        stack.down()


if __name__ == "__main__":
    sys.exit(main())
