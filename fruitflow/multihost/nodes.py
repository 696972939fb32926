"""The multi-host cluster on this machine: five hosts on network namespaces (see `network`), each running
what its EC2 counterpart runs, configured by the same renderer as the EC2 node script (`node_conf`):

    storage    SeaweedFS (S3 on :9000), authentication on, its own /tmp
    master     Spark standalone master (:7077, web UI :8080)
    worker-1   Spark worker, 1 core (web UI :8081)   } their own mount namespace: the driver's work tree,
    worker-2   Spark worker, 1 core (web UI :8081)   } state and venv hidden; the node venv read-only
    airflow    the DAG (`dag.test()`), spark-submit in client mode, the Spark history server (:18080)

The master and the workers run from the Spark nodes' venv (`node_env`: the `spark-node` extra alone), which is
also their executors' Python; the airflow host runs the driver's. Every service binds its host's cluster
address; nothing is reached through 127.0.0.1. The cluster's state
(SeaweedFS data, credentials, logs, event logs) lives under `<state>/multihost/`, apart from the local stack's.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fruitflow.multihost import network, node_env
from fruitflow.paths import ROOT
from fruitflow.stack import seaweed
from fruitflow.stack.environment import (
    Prepared,
    environment,
    hadoop_aws_jars,
    local_credentials,
    prepare,
    settings,
    spark_home,
    spark_node_environment,
    store_credentials,
    worker_environment,
)
from fruitflow.stack.node_conf import HISTORY_PORT, MASTER_PORT, MASTER_UI_PORT, Node, master_url, write
from fruitflow.stack.process import log
from fruitflow.stack.services import HISTORY_CLASS, MASTER_CLASS, WORKER_CLASS
from fruitflow.stack.stack_settings import StackSettings

NET = network.Network(prefix="ff-", subnet="10.231.7",
                      hosts={"storage": 2, "master": 3, "worker-1": 11, "worker-2": 12, "airflow": 20})
WORKERS = ("worker-1", "worker-2")
S3_PORT = 9000
STAGE = Path("/run/fruitflow-stage")  # an empty mount point outside every hidden folder


@dataclass(frozen=True)
class MultiHost:
    net: network.Network
    base: Path  # <state>/multihost
    local_state: Path  # the local stack's state folder: hadoop-aws is resolved there once
    failure_timeout_s: int = 15  # how fast a lost worker is written off (node_conf)

    @classmethod
    def default(cls) -> "MultiHost":
        """The cluster beside the local stack's state. FRUITFLOW_MULTIHOST_DIR, _PREFIX and _SUBNET name
        another one (the tests' own), and tell the airflow host which cluster it is part of."""
        local = Path(settings().state_dir)
        net = network.Network(prefix=os.environ.get("FRUITFLOW_MULTIHOST_PREFIX") or NET.prefix,
                              subnet=os.environ.get("FRUITFLOW_MULTIHOST_SUBNET") or NET.subnet, hosts=NET.hosts)
        return cls(net, Path(os.environ.get("FRUITFLOW_MULTIHOST_DIR") or local / "multihost"), local)

    def home(self, host: str) -> Path:
        return self.base / host

    def conf_dir(self, host: str) -> Path:
        return self.home(host) / "spark-conf"

    def log(self, host: str, name: str) -> Path:
        return self.home(host) / "logs" / f"{name}.log"

    @property
    def event_logs(self) -> Path:
        return self.home("airflow") / "spark-events"

    @property
    def master_url(self) -> str:
        return master_url(self.net.ip("master"))

    @property
    def history_url(self) -> str:
        return f"http://{self.net.ip('airflow')}:{HISTORY_PORT}"

    def storage_settings(self) -> StackSettings:
        """SeaweedFS's settings on the storage host (its data under <cluster>/storage/s3)."""
        return StackSettings(state_dir=str(self.home("storage")), host=self.net.ip("storage"), s3_port=S3_PORT)

    def airflow_settings(self) -> StackSettings:
        """The local stack's settings as seen from the airflow host: S3 and Spark on their own hosts."""
        return StackSettings(state_dir=str(self.home("airflow")), host=self.net.ip("airflow"),
                             s3_host=self.net.ip("storage"), spark_host=self.net.ip("master"),
                             s3_port=S3_PORT, spark_port=MASTER_PORT)

    def credentials(self, identity: str) -> dict[str, str]:
        return local_credentials(self.base, identity)

    @property
    def node_venv(self) -> Path:
        """The Spark nodes' venv (made by `write_configuration`), at one path on every host."""
        return self.local_state / "node-venv"

    def spark_home(self, host: str) -> Path:
        return spark_home() if host == "airflow" else node_env.spark_home(self.node_venv)

    def node(self, host: str, roles: tuple[str, ...]) -> Node:
        return Node(roles=roles, ip=self.net.ip(host), home=str(self.home(host)),
                    secret=self.credentials("spark")["secret"], python=str(node_env.python(self.node_venv)),
                    event_log_dir=str(self.event_logs) if host == "airflow" else "",
                    cores=1, memory="3g", failure_timeout_s=self.failure_timeout_s,
                    quick_start_jvm=True)  # five hosts on two shared cores

    def nodes(self) -> dict[str, Node]:
        return {"master": self.node("master", ("master",)),
                **{w: self.node(w, ("worker",)) for w in WORKERS},
                "airflow": self.node("airflow", ("client", "history"))}

    def jars(self) -> list[str]:
        """hadoop-aws on every Spark host at the same path (resolved once into the state folder)."""
        return hadoop_aws_jars(self.local_state)

    def airflow_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """What the airflow host's processes (the DAG, spark-submit, the history server) run with."""
        pipeline = self.credentials("pipeline")
        stack = self.airflow_settings()
        env = environment(stack, Prepared(pipeline["key"], pipeline["secret"], tuple(self.jars()),
                                    self.credentials("control")["secret"], self.credentials("spark")["secret"]), base)
        env.update({
            "FRUITFLOW_STATE_DIR": str(self.home("airflow")),
            "FRUITFLOW_MULTIHOST_DIR": str(self.base),
            "FRUITFLOW_MULTIHOST_PREFIX": self.net.prefix, "FRUITFLOW_MULTIHOST_SUBNET": self.net.subnet,
            "FRUITFLOW_HOST": stack.host, "FRUITFLOW_S3_HOST": stack.s3_host, "FRUITFLOW_SPARK_HOST": stack.spark_host,
            "FRUITFLOW_SPARK_HISTORY_URL": self.history_url,
            "FRUITFLOW_PYSPARK_PYTHON": str(node_env.python(self.node_venv)),  # the executors'
        })
        return env

    def spark_env(self, host: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_", "FRUITFLOW_", "PYSPARK"))}
        # The worker host's own S3 identity (`spark-node`), as an EC2 worker has its instance profile; no
        # host gets the Airflow host's connections or identity from this process's environment.
        node = spark_node_environment(self.base, self._region()) if host in WORKERS else {}
        return worker_environment(env, {**node, "SPARK_HOME": str(self.spark_home(host)),
                                      "SPARK_CONF_DIR": str(self.conf_dir(host))})

    def _region(self) -> str:
        from spark_jobs.common.config import Config

        return Config.from_env().s3_region

    # Building and starting.
    def write_configuration(self) -> None:
        prepare()  # the local state folder, hadoop-aws resolved once
        node_env.ensure(self.local_state)
        for host, node in self.nodes().items():
            write(node, self.conf_dir(host))

    def start_storage(self) -> None:
        stack = self.storage_settings()
        identity_file = seaweed.write_identities(stack, store_credentials(self.base), self._config())
        seaweed.prepare_start(stack)
        # its own /tmp, with what it runs from bound back wherever the checkout lives (under /tmp too)
        keep = [(Path(sys.prefix), True), (self.home("storage"), False)]
        argv = [*network.private_mounts(hide=[Path("/tmp")], keep=keep, stage=STAGE),
                *seaweed.command(stack, identity_file)]
        network.spawn_in(self.net, "storage", argv, seaweed.environment(dict(os.environ), stack),
                         self.log("storage", "seaweedfs"), cwd=self.home("storage"))

    def start_master(self) -> None:
        ip = self.net.ip("master")
        self._spark("master", [MASTER_CLASS, "--host", ip], "master")  # its ports: in its spark-env.sh

    def start_worker(self, host: str) -> None:
        hide = [ROOT, *([ROOT.parent / "shared"] if (ROOT.parent / "shared").is_dir() else [])]
        driver_venv = Path(sys.prefix)  # hidden too, wherever it lives
        hide += [] if any(driver_venv.is_relative_to(h) for h in hide) else [driver_venv]
        keep = [(self.node_venv, True), *((Path(j).parent, True) for j in self.jars()[:1]),
                (self.home(host), False)]
        prefix = network.private_mounts(hide=hide, keep=keep, stage=STAGE)
        self._spark(host, [WORKER_CLASS, self.master_url, "--host", self.net.ip(host)], "worker", prefix)

    def start_history(self) -> None:
        self._spark("airflow", [HISTORY_CLASS], "history-server")

    def _spark(self, host: str, args: list[str], name: str, prefix: list[str] | None = None) -> None:
        argv = [*(prefix or []), str(self.spark_home(host) / "bin" / "spark-class"), *args]
        network.spawn_in(self.net, host, argv, self.spark_env(host), self.log(host, name), cwd=self.home(host))

    def _config(self):
        from spark_jobs.common.config import Config

        return Config.from_env({})

    def up(self) -> None:
        """The namespaces, every node's configuration and services, and Airflow's metadata DB; returns once
        the store refuses anonymous requests, both workers are alive and the history server answers."""
        reason = network.unavailable_reason()
        if reason:
            raise RuntimeError(f"cannot build the cluster here: {reason}")
        started = time.monotonic()
        network.teardown(self.net)  # what a killed earlier run left
        STAGE.mkdir(parents=True, exist_ok=True)
        self.write_configuration()
        network.build(self.net)
        # the store's filer, volume and master ports (gRPC among them, which has no authentication without
        # mutual TLS) serve the store itself: the other hosts reach its S3 port only
        network.accept_only(self.net, "storage", [S3_PORT])
        self.start_storage()
        self.start_master()
        for worker in WORKERS:
            self.start_worker(worker)
        self.start_history()
        migrate = network.spawn_in(self.net, "airflow", [sys.executable, "-m", "airflow", "db", "migrate"],
                                   self.airflow_env(), self.log("airflow", "airflow-db"), cwd=ROOT)
        self.wait_healthy()
        if migrate.wait(timeout=600) != 0:
            raise RuntimeError(f"airflow db migrate failed: see {self.log('airflow', 'airflow-db')}")
        log(f"cluster up in {time.monotonic() - started:.0f}s: " +
            ", ".join(f"{h} {self.net.ip(h)}" for h in self.net.hosts))

    def wait_healthy(self, timeout: float = 120) -> None:
        """Polled from the airflow host, by address, as the pipeline reaches the services."""
        checks = {
            "S3 service": (f"http://{self.net.ip('storage')}:{S3_PORT}/", self.log("storage", "seaweedfs"),
                           lambda status, body: status == 403),
            "Spark master and both workers": (f"http://{self.net.ip('master')}:{MASTER_UI_PORT}/json/",
                                              self.log("master", "master"),
                                              lambda status, body: status == 200 and sum(
                                                  w.get("state") == "ALIVE" for w in json.loads(body)["workers"])
                                              == len(WORKERS)),
            "Spark history server": (f"{self.history_url}/api/v1/applications", self.log("airflow", "history-server"),
                                     lambda status, body: status == 200),
        }
        deadline = time.monotonic() + timeout
        for what, (url, logfile, ok) in checks.items():
            while True:
                status, body = http_from(self.net, "airflow", url)
                try:
                    if ok(status, body):
                        break
                except (ValueError, KeyError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what} not ready after {timeout:.0f}s ({url} answered {status}); "
                                       f"see {logfile}")
                time.sleep(1)

    def restart_storage(self, kill_signal: int | None = None, pause_s: float = 5.0) -> None:
        """Kills the S3 service (SIGKILL by default: no chance to flush) and starts it again after `pause_s`."""
        import signal

        for pid in network.pids_in(self.net.ns("storage")):
            os.kill(pid, kill_signal or signal.SIGKILL)
        time.sleep(pause_s)
        network.stop_processes(self.net.ns("storage"), grace=5)
        self.start_storage()
        self.wait_healthy()

    def down(self) -> None:
        network.teardown(self.net)
        for host in self.net.hosts:  # keep logs and event logs; the rest is scratch
            for scratch in ("work", "scratch"):
                _remove(self.home(host) / scratch)
        log("cluster down (logs kept under " + str(self.base) + ")")


def http_from(net: network.Network, host: str, url: str, timeout: float = 5) -> tuple[int, str]:
    """(status, body) of a GET of `url` from `host` (0 when unreachable)."""
    out = network.run_in(net, host, [sys.executable, "-m", "fruitflow.multihost.probe", url, str(timeout)],
                         capture_output=True, timeout=timeout + 30)
    status, _, body = out.stdout.partition(b"\n")
    return int(status or 0), body.decode(errors="replace")


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
