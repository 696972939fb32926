"""The local stack's services on loopback: the S3 service (SeaweedFS), a Spark standalone master and
worker (from pyspark's own distribution) and Airflow's metadata DB; `up`, `status` and `down`.

Every service has a PID file and a log file under the state folder, a health check with a timeout, and
is stopped by its process group so that nothing is left behind.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from fruitflow.paths import ROOT
from fruitflow.stack import class_data
from fruitflow.stack.environment import (
    VENV_BIN,
    airflow_environment,
    environment,
    log_dir,
    pid_dir,
    prepare,
    settings,
    spark_conf_dir,
    spark_defaults_file,
    spark_home,
    spark_node_environment,
    state_dir,
    store_credentials,
    worker_environment,
    write_spark_defaults,
)
from fruitflow.stack.node_conf import HISTORY_PORT, worker_dir
from fruitflow.stack.process import http_json, log, port_open, read_pid, spawn, stop_pid, wait_until
from fruitflow.stack.stack_settings import StackSettings
from spark_jobs.common.config import Config

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
HISTORY_CLASS = "org.apache.spark.deploy.history.HistoryServer"


class Service:
    def __init__(self, name: str, port: int, stack: StackSettings):
        self.name, self.port, self.settings = name, port, stack

    @property
    def pidfile(self) -> Path:
        return pid_dir(self.settings) / f"{self.name}.pid"

    @property
    def logfile(self) -> Path:
        return log_dir(self.settings) / f"{self.name}.log"

    def pid(self) -> int | None:
        return read_pid(self.pidfile)

    def healthy(self) -> bool:
        raise NotImplementedError

    def start(self, env: dict[str, str]) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        pid = self.pid()
        if pid:
            stop_pid(pid, self.name)  # a Spark JVM's shutdown hook stops its executors and Python workers
        self.pidfile.unlink(missing_ok=True)


class S3Server(Service):
    """SeaweedFS (`weed mini`), its data under <state>/s3/data: it outlives `stack down` (`make clean`
    removes it). Healthy means answering and refusing an unsigned request (authentication on)."""

    def healthy(self) -> bool:
        if not self.pid():
            return False
        with urllib.request.urlopen(f"http://{self.settings.host}:{self.port}/healthz", timeout=2) as resp:
            if resp.status != 200:
                return False
        return refuses_anonymous(f"http://{self.settings.host}:{self.port}/")

    def start(self, env):
        from fruitflow.stack import seaweed

        credentials = store_credentials(state_dir(self.settings))
        identity_file = seaweed.write_identities(self.settings, credentials, Config.from_env(env))
        busy = [p for p in seaweed.ports(self.settings).values() if port_open(self.settings.host, p)]
        if busy:
            raise RuntimeError(f"ports {busy} for the S3 service are taken by another program")
        seaweed.prepare_start(self.settings)
        spawn(seaweed.command(self.settings, identity_file), seaweed.environment(env, self.settings), self.logfile,
              self.pidfile, ROOT)
        wait_until(self.healthy, 60, "S3 service (SeaweedFS)", self.logfile)
        create_buckets(env, credentials["admin"])


class SparkDaemon(Service):
    klass: str = ""

    @property
    def pidfile(self) -> Path:
        # spark-daemon.sh names the PID file itself.
        user = os.environ.get("USER") or os.environ.get("LOGNAME") or _whoami()
        return pid_dir(self.settings) / f"spark-{user}-{self.klass}-1.pid"

    @property
    def logfile(self) -> Path:
        matches = sorted(log_dir(self.settings).glob(f"spark-*-{self.klass}-1-*.out"))
        return matches[-1] if matches else log_dir(self.settings) / f"spark-{self.klass}.out"

    def pid(self) -> int | None:
        return read_pid(self.pidfile, command=self.klass)

    def daemon(self, action: str, args: list[str], env: dict[str, str]) -> None:
        if action == "start":  # the stack's properties; its SPARK_CONF_DIR stays empty (environment.py)
            args = [*args, "--properties-file", str(spark_defaults_file(self.settings))]
        cmd = [str(spark_home() / "sbin" / "spark-daemon.sh"), action, self.klass, "1", *args]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)


class SparkMaster(SparkDaemon):
    klass = MASTER_CLASS

    def state(self) -> dict:
        return http_json(f"http://{self.settings.host}:{self.settings.spark_master_ui_port}/json/")

    def healthy(self) -> bool:
        return bool(self.pid()) and self.state().get("status") == "ALIVE"

    def start(self, env):
        self.daemon("start", ["--host", self.settings.host, "--port", str(self.port),
                              "--webui-port", str(self.settings.spark_master_ui_port)], env)
        wait_until(self.healthy, 60, "Spark master", self.logfile)


class SparkWorker(SparkDaemon):
    klass = WORKER_CLASS

    def healthy(self) -> bool:
        if not self.pid():
            return False
        workers = SparkMaster("spark-master", self.settings.spark_port, self.settings).state().get("workers", [])
        return any(w.get("state") == "ALIVE" for w in workers)

    def start(self, env):
        env = worker_environment(env, spark_node_environment(state_dir(self.settings), Config.from_env(env).s3_region))
        # cores, memory, folders and web UI port: the node's spark-env (environment.local_node)
        self.daemon("start", [self.settings.spark_master, "--host", self.settings.host], env)
        wait_until(self.healthy, 60, "Spark worker", self.logfile)


class SparkHistory(SparkDaemon):
    """The Spark history server over the stack's event logs: every step's stages after it has ended."""

    klass = HISTORY_CLASS

    def healthy(self) -> bool:
        return bool(self.pid()) and isinstance(
            http_json(f"http://{self.settings.host}:{self.port}/api/v1/applications?limit=1"), list)

    def start(self, env):
        self.daemon("start", [], env)
        wait_until(self.healthy, 60, "Spark history server", self.logfile)


class AirflowMetadata(Service):
    """Airflow's SQLite metadata DB, migrated. DAG runs happen in-process (`dag.test()`);
    `make airflow-ui` starts the long-running Airflow services on top of it."""

    def pid(self) -> int | None:
        return None

    def healthy(self, env: dict[str, str] | None = None) -> bool:
        result = subprocess.run([str(VENV_BIN / "airflow"), "db", "check-migrations", "-t", "0"],
                                env=env or {**os.environ, **airflow_environment(self.settings)}, capture_output=True,
                                text=True, timeout=120)
        return result.returncode == 0

    def start(self, env):
        Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
        with open(self.logfile, "ab") as out:
            subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], env=env, stdout=out,
                           stderr=subprocess.STDOUT, check=True, timeout=600)
        wait_until(lambda: self.healthy(env), 60, "Airflow metadata DB", self.logfile)

    def stop(self) -> None:
        pass  # a file, not a process


def services(stack: StackSettings | None = None) -> list[Service]:
    stack = stack or settings()
    return [
        S3Server("s3", stack.s3_port, stack),
        SparkMaster("spark-master", stack.spark_port, stack),
        SparkWorker("spark-worker", stack.spark_worker_ui_port, stack),
        SparkHistory("spark-history", HISTORY_PORT, stack),
        AirflowMetadata("airflow-db", 0, stack),
    ]


def all_healthy(stack: StackSettings | None = None) -> bool:
    """True when every service of the stack answers its health check (no exception escapes)."""
    for svc in services(stack):
        try:
            if not svc.healthy():
                return False
        except Exception:  # noqa: BLE001 - unreachable means unhealthy
            return False
    return True


def refuses_anonymous(url: str) -> bool:
    """True when an unsigned request gets 403: a store restarted without its identities would be open."""
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except urllib.error.HTTPError as exc:
        return exc.code == 403
    return False


def create_buckets(env: dict[str, str], admin: dict[str, str]) -> None:
    """The pipeline's buckets, made with the admin identity (the pipeline's own key may not)."""
    import boto3
    from botocore.config import Config as BotoConfig

    cfg = Config.from_env(env)
    s3 = boto3.client("s3", endpoint_url=env["FRUITFLOW_S3_ENDPOINT"], region_name=env["AWS_DEFAULT_REGION"],
                      aws_access_key_id=admin["key"], aws_secret_access_key=admin["secret"],
                      config=BotoConfig(s3={"addressing_style": "path"}))
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in cfg.buckets:
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)
    log(f"buckets ready: {', '.join(cfg.buckets)}")


def _whoami() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _ports(stack: StackSettings) -> list[int]:
    from fruitflow.stack import seaweed

    return [*seaweed.ports(stack).values(), stack.spark_port, stack.spark_master_ui_port, stack.spark_worker_ui_port,
            HISTORY_PORT, stack.airflow_port]


def up(stack: StackSettings | None = None) -> None:
    stack = stack or settings()
    prepared = prepare(stack)
    env = environment(stack, prepared)
    for svc in services(stack):
        try:
            if svc.healthy():
                log(f"{svc.name}: already healthy")
                continue
        except Exception:  # noqa: BLE001 - not reachable means not running
            pass
        if svc.pid():
            raise RuntimeError(f"{svc.name} runs (pid {svc.pid()}) but is not healthy; run `make stack-down`")
        if svc.port and port_open(stack.host, svc.port):
            raise RuntimeError(f"port {svc.port} for {svc.name} is taken by another program")
        log(f"{svc.name}: starting")
        svc.start(env)
        log(f"{svc.name}: healthy")
    if archive := class_data.ensure(state_dir(stack), spark_conf_dir(stack), env):
        write_spark_defaults(stack, secret=prepared.spark_secret, class_data_archive=archive)


def status(stack: StackSettings | None = None) -> bool:
    all_ok = True
    for svc in services(stack):
        try:
            ok = svc.healthy()
            detail = ""
        except Exception as exc:  # noqa: BLE001
            ok, detail = False, f" ({type(exc).__name__}: {exc})"
        all_ok &= ok
        where = f" port {svc.port}" if svc.port else ""
        print(f"{svc.name:13s} {'healthy' if ok else 'DOWN':8s}{where}  log: {svc.logfile}{detail}")
    return all_ok


def down(stack: StackSettings | None = None) -> None:
    stack = stack or settings()
    standalone_pidfile = pid_dir(stack) / "airflow-standalone.pid"  # `make airflow-ui`, if still running
    if standalone := read_pid(standalone_pidfile):
        stop_pid(standalone, "airflow standalone", grace=20)
    standalone_pidfile.unlink(missing_ok=True)
    for svc in reversed(services(stack)):
        svc.stop()
    busy = [p for p in _ports(stack) if port_open(stack.host, p)]
    deadline = time.monotonic() + 10
    while busy and time.monotonic() < deadline:
        time.sleep(0.5)
        busy = [p for p in busy if port_open(stack.host, p)]
    if busy:
        raise RuntimeError(f"ports still listening after stack-down: {busy}")
    freed = drop_executor_jars(state_dir(stack))
    log(f"stack down{f' (removed {freed / 2**30:.1f} GiB of executor jar copies; logs kept)' if freed else ''}")


def drop_executor_jars(state: Path) -> int:
    """The jar copies in the worker's application folders (its logs stay for post-mortems)."""
    freed = 0
    for jar in worker_dir(state).glob("app-*/*/*.jar"):
        try:
            freed += jar.stat().st_size
            jar.unlink()
        except OSError:
            pass
    return freed


def service(name: str, stack: StackSettings | None = None) -> Service:
    """One of the stack's services by name (s3, spark-master, spark-worker, spark-history, airflow-db)."""
    return {svc.name: svc for svc in services(stack)}[name]


def master_state(stack: StackSettings | None = None) -> dict:
    """The Spark master's JSON status: workers, their cores and state, active applications."""
    return service("spark-master", stack).state()
