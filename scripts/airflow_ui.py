"""`make airflow-ui`: `airflow standalone` (api-server, scheduler, dag-processor, triggerer) on top of
the local stack, sized for 2 cores. Ctrl-C stops Airflow's whole process group and the stack."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from scripts import stack


def airflow_env() -> dict[str, str]:
    e = stack.env()
    e.update({
        # Two cores: one Spark step at a time is all the machine can run well.
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "2",
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "30",
        "AIRFLOW__API__HOST": stack.HOST,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
    })
    return e


def password_file() -> Path:
    return Path(stack.env()["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"


def start(e: dict[str, str]) -> subprocess.Popen:
    log = stack.LOGS / "airflow-standalone.log"
    stack.LOGS.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(stack.VENV_BIN / "airflow"), "standalone"], env=e, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=stack.ROOT)
    (stack.PIDS / "airflow-standalone.pid").write_text(str(proc.pid))
    return proc


def wait_healthy(timeout: float = 180) -> None:
    url = f"http://{stack.HOST}:{stack.AIRFLOW_PORT}/api/v2/monitor/health"
    stack.wait_until(lambda: urllib.request.urlopen(url, timeout=2).status == 200, timeout,
                     "Airflow api-server", stack.LOGS / "airflow-standalone.log")


def stop(proc: subprocess.Popen) -> None:
    stack.stop_pid(proc.pid, "airflow standalone", grace=20)  # the whole group: standalone's children too
    (stack.PIDS / "airflow-standalone.pid").unlink(missing_ok=True)


def main() -> int:
    from scripts.package import build_zip

    stack.up()
    build_zip()
    proc = start(airflow_env())
    try:
        wait_healthy()
        print(f"Airflow UI: http://{stack.HOST}:{stack.AIRFLOW_PORT}  user 'admin', password in {password_file()}",
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
