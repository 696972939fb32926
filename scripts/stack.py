"""The local stack on loopback: an S3-compatible server (moto), a Spark standalone master and worker
(from pyspark's own distribution) and Airflow's metadata DB.

    python -m scripts.stack up | status | down | env

Every service has a PID file and a log file under .state/, a health check with a timeout, and is
stopped by its process group so that nothing is left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("FRUITFLOW_STATE_DIR", ROOT / ".state"))
PIDS = STATE / "pids"
LOGS = STATE / "logs"
VENV_BIN = Path(sys.executable).parent

HOST = "127.0.0.1"
S3_PORT = int(os.environ.get("FRUITFLOW_S3_PORT", "9000"))
SPARK_PORT = int(os.environ.get("FRUITFLOW_SPARK_PORT", "7077"))
SPARK_MASTER_UI_PORT = int(os.environ.get("FRUITFLOW_SPARK_MASTER_UI_PORT", "8081"))
SPARK_WORKER_UI_PORT = int(os.environ.get("FRUITFLOW_SPARK_WORKER_UI_PORT", "8082"))
AIRFLOW_PORT = int(os.environ.get("FRUITFLOW_AIRFLOW_PORT", "8080"))
# Sized for a 2-core, 24 GiB machine: the worker offers both cores and leaves room for the driver,
# the Python workers running the model, Airflow and the S3 server.
WORKER_CORES = os.environ.get("FRUITFLOW_WORKER_CORES", str(os.cpu_count() or 2))
WORKER_MEMORY = os.environ.get("FRUITFLOW_WORKER_MEMORY", "8g")

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


def log(msg: str) -> None:
    print(f"[stack] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- environment


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def hadoop_aws_jars() -> list[str]:
    """hadoop-aws and its dependencies as local jars, resolved once from Maven Central with the Ivy
    that pyspark ships, for the class path of the driver and executors (FRUITFLOW_SPARK_JARS): with
    --packages every spark-submit resolves them again and copies the 0.7 GB AWS SDK bundle into the
    application's executor folder. [] (spark-submit falls back to --packages) when they cannot be had."""
    from spark_jobs.common.config import HADOOP_AWS_PACKAGE

    folder = STATE / "jars"
    listing = folder / "resolved.json"
    if listing.exists():
        known = json.loads(listing.read_text())
        if known.get("package") == HADOOP_AWS_PACKAGE and all(Path(j).is_file() for j in known["jars"]):
            return known["jars"]
    group, artifact, version = HADOOP_AWS_PACKAGE.split(":")
    ivy = sorted((spark_home() / "jars").glob("ivy-*.jar"))
    java = Path(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else "java"
    command = [str(java), "-cp", str(ivy[-1]) if ivy else "", "org.apache.ivy.Main",
               "-dependency", group, artifact, version, "-confs", "default", "-types", "jar",
               "-cache", str(STATE / "ivy" / "cache"),
               "-retrieve", str(folder / "[organisation]_[artifact]-[revision](-[classifier]).[ext]"), "-sync"]
    log(f"resolving {HADOOP_AWS_PACKAGE} into {folder} (once)")
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        log(f"could not resolve {HADOOP_AWS_PACKAGE} ({str(detail).strip()[-300:]}); spark-submit will use --packages")
        return []
    jars = sorted(str(j) for j in folder.glob("*.jar"))
    listing.write_text(json.dumps({"package": HADOOP_AWS_PACKAGE, "jars": jars}))
    return jars


def local_credentials() -> dict[str, str]:
    """Throw-away credentials for the local S3 server, made per state dir, never committed."""
    path = STATE / "local-credentials.json"
    if not path.exists():
        STATE.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps({"key": "local-" + secrets.token_hex(6), "secret": secrets.token_urlsafe(24)})
        )
        path.chmod(0o600)
    return json.loads(path.read_text())


def env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every process of the local stack (Spark, Airflow, tests, demo) runs with."""
    e = dict(os.environ if base is None else base)
    creds = local_credentials()
    endpoint = f"http://{HOST}:{S3_PORT}"
    master = f"spark://{HOST}:{SPARK_PORT}"
    e.update(
        {
            "AWS_ACCESS_KEY_ID": creds["key"],
            "AWS_SECRET_ACCESS_KEY": creds["secret"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": endpoint,
            "FRUITFLOW_S3_ENDPOINT": endpoint,
            "FRUITFLOW_SPARK_MASTER": master,
            "FRUITFLOW_IVY_DIR": str(STATE / "ivy"),
            "FRUITFLOW_SPARK_JARS": ",".join(hadoop_aws_jars()),
            "SPARK_HOME": str(spark_home()),
            "SPARK_LOCAL_IP": HOST,
            "SPARK_PID_DIR": str(PIDS),
            "SPARK_LOG_DIR": str(LOGS),
            "SPARK_WORKER_DIR": str(STATE / "spark-work"),
            # Without FRUITFLOW_SPARK_JARS every application's executor gets its own copy of the
            # --packages jars (~0.7 GB): the worker drops finished applications' folders after 10 min.
            "SPARK_WORKER_OPTS": "-Dspark.worker.cleanup.enabled=true -Dspark.worker.cleanup.interval=120 "
                                 "-Dspark.worker.cleanup.appDataTtl=600",
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "PATH": f"{VENV_BIN}{os.pathsep}{e.get('PATH', '')}",
            "AIRFLOW_HOME": str(STATE / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": e.get("AIRFLOW__CORE__UNIT_TEST_MODE", "False"),
            "AIRFLOW__API__PORT": str(AIRFLOW_PORT),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{STATE / 'airflow' / 'airflow.db'}",
            # Connections come from the environment only: nothing is stored in a file or the DB.
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
                {
                    "conn_type": "aws",
                    "login": creds["key"],
                    "password": creds["secret"],
                    "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
                }
            ),
            "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps(
                {
                    "conn_type": "spark",
                    "host": f"spark://{HOST}",
                    "port": SPARK_PORT,
                    "extra": {"deploy-mode": "client", "spark-binary": "spark-submit"},
                }
            ),
        }
    )
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), e.get("PYTHONPATH", "")) if p)
    return e


# --------------------------------------------------------------------------- helpers


def http_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body = resp.read()
    return json.loads(body) if body.strip().startswith((b"{", b"[")) else body


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def read_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def wait_until(check, timeout: float, what: str, logfile: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not healthy yet"
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    hint = f"; see {logfile}" if logfile else ""
    raise RuntimeError(f"{what} not healthy after {timeout:.0f}s ({last_error or 'check returned false'}){hint}")


def stop_pid(pid: int, name: str, grace: float = 15.0) -> None:
    """SIGTERM the process group (or the process), then SIGKILL whatever is left after `grace`."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    own_group = pgid == pid
    sender = (lambda sig: os.killpg(pgid, sig)) if own_group else (lambda sig: os.kill(pid, sig))
    try:
        sender(signal.SIGCONT)  # a paused (SIGSTOP) process cannot act on SIGTERM
        sender(signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    log(f"{name} (pid {pid}) ignored SIGTERM for {grace:.0f}s; killing it")
    try:
        sender(signal.SIGKILL)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------- services


@dataclass
class Service:
    name: str
    port: int

    @property
    def pidfile(self) -> Path:
        return PIDS / f"{self.name}.pid"

    @property
    def logfile(self) -> Path:
        return LOGS / f"{self.name}.log"

    def pid(self) -> int | None:
        return read_pid(self.pidfile)

    def healthy(self) -> bool:
        raise NotImplementedError

    def start(self, e: dict[str, str]) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        pid = self.pid()
        if pid:
            stop_pid(pid, self.name)
        self.pidfile.unlink(missing_ok=True)

    def spawn(self, argv: list[str], e: dict[str, str]) -> None:
        """Start argv in its own session (so its whole process group can be stopped), logging to file."""
        with open(self.logfile, "ab") as out:
            proc = subprocess.Popen(
                argv, env=e, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=ROOT,
            )
        self.pidfile.write_text(str(proc.pid))


class S3Server(Service):
    def healthy(self) -> bool:
        if not self.pid():
            return False
        with urllib.request.urlopen(f"http://{HOST}:{self.port}/moto-api/", timeout=2) as resp:
            return resp.status == 200

    def start(self, e):
        self.spawn([str(VENV_BIN / "moto_server"), "-H", HOST, "-p", str(self.port)], e)
        wait_until(self.healthy, 30, "S3 server (moto)", self.logfile)
        create_buckets(e)


class SparkDaemon(Service):
    klass: str = ""

    @property
    def pidfile(self) -> Path:
        # spark-daemon.sh names the PID file itself.
        user = os.environ.get("USER") or os.environ.get("LOGNAME") or _whoami()
        return PIDS / f"spark-{user}-{self.klass}-1.pid"

    @property
    def logfile(self) -> Path:
        matches = sorted(LOGS.glob(f"spark-*-{self.klass}-1-*.out"))
        return matches[-1] if matches else LOGS / f"spark-{self.klass}.out"

    def daemon(self, action: str, args: list[str], e: dict[str, str]) -> None:
        cmd = [str(spark_home() / "sbin" / "spark-daemon.sh"), action, self.klass, "1", *args]
        subprocess.run(cmd, env=e, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)

    def stop(self) -> None:
        pid = self.pid()
        if pid:
            stop_pid(pid, self.name)  # the JVM's shutdown hook stops its executors and Python workers
        self.pidfile.unlink(missing_ok=True)


class SparkMaster(SparkDaemon):
    klass = MASTER_CLASS

    def state(self) -> dict:
        return http_json(f"http://{HOST}:{SPARK_MASTER_UI_PORT}/json/")

    def healthy(self) -> bool:
        return bool(self.pid()) and self.state().get("status") == "ALIVE"

    def start(self, e):
        self.daemon(
            "start",
            ["--host", HOST, "--port", str(self.port), "--webui-port", str(SPARK_MASTER_UI_PORT)],
            e,
        )
        wait_until(self.healthy, 60, "Spark master", self.logfile)


class SparkWorker(SparkDaemon):
    klass = WORKER_CLASS

    def healthy(self) -> bool:
        if not self.pid():
            return False
        workers = SparkMaster("spark-master", SPARK_PORT).state().get("workers", [])
        return any(w.get("state") == "ALIVE" for w in workers)

    def start(self, e):
        self.daemon(
            "start",
            [
                f"spark://{HOST}:{SPARK_PORT}", "--host", HOST, "--cores", WORKER_CORES,
                "--memory", WORKER_MEMORY, "--webui-port", str(self.port),
                "--work-dir", e["SPARK_WORKER_DIR"],
            ],
            e,
        )
        wait_until(self.healthy, 60, "Spark worker", self.logfile)


class AirflowMetadata(Service):
    """Airflow's SQLite metadata DB, migrated. DAG runs happen in-process (`airflow dags test`);
    `make airflow-ui` starts the long-running Airflow services on top of it."""

    def pid(self) -> int | None:
        return None

    def healthy(self, e: dict[str, str] | None = None) -> bool:
        result = subprocess.run(
            [str(VENV_BIN / "airflow"), "db", "check-migrations", "-t", "0"],
            env=e or env(), capture_output=True, text=True, timeout=120,
        )
        return result.returncode == 0

    def start(self, e):
        Path(e["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
        with open(self.logfile, "ab") as out:
            subprocess.run(
                [str(VENV_BIN / "airflow"), "db", "migrate"], env=e, stdout=out,
                stderr=subprocess.STDOUT, check=True, timeout=600,
            )
        wait_until(lambda: self.healthy(e), 60, "Airflow metadata DB", self.logfile)

    def stop(self) -> None:
        pass  # a file, not a process


def services() -> list[Service]:
    return [
        S3Server("s3", S3_PORT),
        SparkMaster("spark-master", SPARK_PORT),
        SparkWorker("spark-worker", SPARK_WORKER_UI_PORT),
        AirflowMetadata("airflow-db", 0),
    ]


def all_healthy() -> bool:
    """True when every service of the stack answers its health check (no exception escapes)."""
    for svc in services():
        try:
            if not svc.healthy():
                return False
        except Exception:  # noqa: BLE001 - unreachable means unhealthy
            return False
    return True


def create_buckets(e: dict[str, str]) -> None:
    import boto3

    sys.path.insert(0, str(ROOT))
    from spark_jobs.common.config import Config

    cfg = Config.from_env(e)
    s3 = boto3.client(
        "s3", endpoint_url=e["FRUITFLOW_S3_ENDPOINT"], region_name=e["AWS_DEFAULT_REGION"],
        aws_access_key_id=e["AWS_ACCESS_KEY_ID"], aws_secret_access_key=e["AWS_SECRET_ACCESS_KEY"],
    )
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in cfg.buckets:
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)
    log(f"buckets ready: {', '.join(cfg.buckets)}")


def _whoami() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


# --------------------------------------------------------------------------- commands


def up() -> None:
    for d in (PIDS, LOGS, STATE / "spark-work", STATE / "ivy"):
        d.mkdir(parents=True, exist_ok=True)
    e = env()
    for svc in services():
        try:
            if svc.healthy():
                log(f"{svc.name}: already healthy")
                continue
        except Exception:  # noqa: BLE001 - not reachable means not running
            pass
        if svc.pid():
            raise RuntimeError(f"{svc.name} runs (pid {svc.pid()}) but is not healthy; run `make stack-down`")
        if svc.port and port_open(svc.port):
            raise RuntimeError(f"port {svc.port} for {svc.name} is taken by another program")
        log(f"{svc.name}: starting")
        svc.start(e)
        log(f"{svc.name}: healthy")


def status() -> bool:
    all_ok = True
    for svc in services():
        try:
            ok = svc.healthy()
            detail = ""
        except Exception as exc:  # noqa: BLE001
            ok, detail = False, f" ({type(exc).__name__}: {exc})"
        all_ok &= ok
        where = f" port {svc.port}" if svc.port else ""
        print(f"{svc.name:13s} {'healthy' if ok else 'DOWN':8s}{where}  log: {svc.logfile}{detail}")
    return all_ok


def down() -> None:
    standalone = read_pid(PIDS / "airflow-standalone.pid")  # `make airflow-ui`, if still running
    if standalone:
        stop_pid(standalone, "airflow standalone", grace=20)
    (PIDS / "airflow-standalone.pid").unlink(missing_ok=True)
    for svc in reversed(services()):
        svc.stop()
    busy = [p for p in (S3_PORT, SPARK_PORT, SPARK_MASTER_UI_PORT, SPARK_WORKER_UI_PORT, AIRFLOW_PORT) if port_open(p)]
    deadline = time.monotonic() + 10
    while busy and time.monotonic() < deadline:
        time.sleep(0.5)
        busy = [p for p in busy if port_open(p)]
    if busy:
        raise RuntimeError(f"ports still listening after stack-down: {busy}")
    freed = drop_executor_jars()
    log(f"stack down{f' (removed {freed / 2**30:.1f} GiB of executor jar copies; logs kept)' if freed else ''}")


def drop_executor_jars() -> int:
    """The jar copies in the worker's application folders (its logs stay for post-mortems)."""
    freed = 0
    for jar in (STATE / "spark-work").glob("app-*/*/*.jar"):
        try:
            freed += jar.stat().st_size
            jar.unlink()
        except OSError:
            pass
    return freed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "status", "down", "env"])
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            up()
            return 0 if status() else 1
        if args.command == "status":
            return 0 if status() else 1
        if args.command == "down":
            down()
            return 0
        for k, v in sorted(env({}).items()):
            if k.startswith(("FRUITFLOW_", "SPARK_", "AIRFLOW", "AWS_ENDPOINT", "PYSPARK")):
                print(f"export {k}={shlex.quote(v)}")
        return 0
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
