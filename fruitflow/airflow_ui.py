"""`make airflow-ui`: `airflow standalone` (api-server, scheduler, dag-processor, triggerer) on top of
the local stack, sized for 2 cores. Ctrl-C stops Airflow's whole process group and the stack."""

from __future__ import annotations

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


def airflow_env() -> dict[str, str]:
    e = stack.prepared_env()
    e.update({
        # Two cores: one Spark step at a time is all the machine can run well.
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "2",
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "30",
        "AIRFLOW__API__HOST": stack.settings().host,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
    })
    return e


def password_file() -> Path:
    return Path(stack.settings().state_dir) / "airflow" / "simple_auth_manager_passwords.json.generated"


def url() -> str:
    s = stack.settings()
    return f"http://{s.host}:{s.airflow_port}"


def start(e: dict[str, str]) -> subprocess.Popen:
    s = stack.settings()
    log_dir(s).mkdir(parents=True, exist_ok=True)
    with open(log_dir(s) / "airflow-standalone.log", "ab") as out:
        proc = subprocess.Popen([str(VENV_BIN / "airflow"), "standalone"], env=e, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=ROOT)
    write_pid(pid_dir(s) / "airflow-standalone.pid", proc.pid)
    return proc


def wait_healthy(timeout: float = 180) -> None:
    wait_until(lambda: urllib.request.urlopen(f"{url()}/api/v2/monitor/health", timeout=2).status == 200, timeout,
               "Airflow api-server", log_dir(stack.settings()) / "airflow-standalone.log")


def stop(proc: subprocess.Popen) -> None:
    stop_pid(proc.pid, "airflow standalone", grace=20)  # the whole group: standalone's children too
    (pid_dir(stack.settings()) / "airflow-standalone.pid").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from fruitflow.package import build_zip

    argparse.ArgumentParser(prog="fruitflow airflow-ui", description=__doc__).parse_args(argv)
    stack.up()
    build_zip()
    proc = start(airflow_env())
    try:
        wait_healthy()
        print(f"Airflow UI: {url()}  user 'admin', password in {password_file()}",
              flush=True)
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
