"""The configuration of one Spark standalone node: its `spark-defaults.conf` and `spark-env.sh`.

One renderer for every place a node is set up: the EC2 node script (`deploy/ec2/spark-node.sh` runs
`python -m fruitflow.stack.node_conf`), the multi-host cluster on network namespaces (`make multihost-demo`,
its tests) and the local stack's single host. A node has one or more roles:
- `master`: the standalone master (worker loss noticed after `failure_timeout_s`);
- `worker`: a worker offering `cores` and `memory`, its work and scratch folders under `home`;
- `client`: where spark-submit runs the driver (the Airflow host): the driver binds and advertises the
  node's address (executors on other hosts connect back to it) and writes event logs;
- `history`: the Spark history server, reading those event logs.

A client on a small host (a laptop, the namespaces cluster: two cores shared by every JVM) sets
`quick_start_jvm`: its drivers live for one step and do little work of their own, and on two cores the C2
JIT and G1's threads weigh on a short application's wall time (`docs/benchmarks.md`): the drivers run C1
only, drivers and executors the serial collector. Executors keep C2, which pays back within a step once
the table has tens of thousands of rows. A real cluster keeps the JVM's defaults. Such a client may also name a
class-data archive (`fruitflow.stack.class_data`) that its drivers and executors map at start.

Every node shares the cluster's RPC secret (spark.authenticate); the REST submission server is off (it
accepts unauthenticated submissions) and so are the UIs' kill links. Both files hold the secret or
point at it: write them mode 0600.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

ROLES = ("master", "worker", "client", "history")
# Spark's own default ports, kept by every cluster node (each listens on its own address) and rendered
# into its spark-env.sh; the local stack's one host moves the web UIs off Airflow's 8080 (StackSettings).
MASTER_PORT, MASTER_UI_PORT, WORKER_UI_PORT, HISTORY_PORT = 7077, 8080, 8081, 18080
# Short-lived drivers on few cores: the client compiler only (no C2 compile threads competing with the
# start) and the serial collector (small heaps, no parallel GC threads).
QUICK_START_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
# Executors keep C2: the JVM's passes over a table (the classifier's L-BFGS, KMeans, the projections) run
# several times slower on C1 alone once the table has tens of thousands of rows. C2 waits for ten times
# the JVM's default counts, so that it compiles those loops and not what a short step runs once
# (bench/RESULTS.md).
QUICK_START_EXECUTOR_JAVA_OPTIONS = ("-XX:+UseSerialGC -XX:Tier4InvocationThreshold=50000 "
                                     "-XX:Tier4MinInvocationThreshold=6000 -XX:Tier4CompileThreshold=150000 "
                                     "-XX:Tier4BackEdgeThreshold=400000")
# A worker drops finished applications' folders (executor logs, shipped files) after 10 minutes.
WORKER_OPTS = ("-Dspark.worker.cleanup.enabled=true -Dspark.worker.cleanup.interval=120 "
               "-Dspark.worker.cleanup.appDataTtl=600")


@dataclass(frozen=True)
class Node:
    roles: tuple[str, ...]
    ip: str  # the address this node binds and is reached at (never a loopback one on a real cluster)
    home: str  # this node's own folder: logs, PID files, work and scratch folders
    secret: str  # the cluster's shared RPC secret
    python: str  # the interpreter with the pinned set, at the same path on every node
    event_log_dir: str = ""  # client and history: where applications' event logs go (empty: none)
    cores: int = 1
    memory: str = "2g"
    # How long a silent worker or executor is given before it is written off: Spark's own defaults
    # (60 s for workers, 120 s for the network) keep a dead worker's tasks waiting for minutes.
    failure_timeout_s: int = 60
    quick_start_jvm: bool = False  # client: C1 only for its drivers, the serial GC for them and their executors
    # client with quick_start_jvm: a JVM class-data archive (CDS) made on the class path its drivers and
    # executors share, at this path on every node; empty: none
    class_data_archive: str = ""
    worker_ui_port: int = WORKER_UI_PORT

    def __post_init__(self) -> None:
        unknown = set(self.roles) - set(ROLES)
        if unknown or not self.roles:
            raise ValueError(f"roles must be among {ROLES}, not {self.roles}")
        if not self.ip or not self.home or not self.secret or not self.python:
            raise ValueError("a node needs ip, home, secret and python")

    @property
    def event_log_uri(self) -> str:
        return self.event_log_dir if "://" in self.event_log_dir else f"file:{self.event_log_dir}"


def quick_start_java_options(role: str, class_data_archive: str = "") -> str:
    """The JVM options of a quick-start client's drivers or executors (`role`). A JVM that cannot map the
    archive (another class path, another Java) starts without it (-Xshare:auto, Java's default)."""
    options = {"driver": QUICK_START_JAVA_OPTIONS, "executor": QUICK_START_EXECUTOR_JAVA_OPTIONS}[role]
    return f"{options} -XX:SharedArchiveFile={class_data_archive}" if class_data_archive else options


def spark_defaults(node: Node) -> dict[str, str]:
    conf = {
        "spark.authenticate": "true",
        "spark.authenticate.secret": node.secret,
        # what the secret authenticates is encrypted too (AES): RPC, shuffle and block transfers
        "spark.network.crypto.enabled": "true",
        "spark.master.rest.enabled": "false",
        "spark.ui.killEnabled": "false",
        "spark.pyspark.python": node.python,
    }
    if "client" in node.roles:
        conf.update({
            "spark.driver.host": node.ip,
            "spark.driver.bindAddress": node.ip,
            "spark.network.timeout": f"{max(node.failure_timeout_s, 10)}s",
            # how often the driver looks for silent executors: must not exceed spark.network.timeout
            "spark.network.timeoutInterval": f"{max(node.failure_timeout_s // 2, 5)}s",
            "spark.executor.heartbeatInterval": f"{max(min(node.failure_timeout_s // 6, 10), 1)}s",
        })
        if node.quick_start_jvm:
            # the site defaults a job's own extraJavaOptions are added to (never replaced by)
            conf.update({f"spark.{role}.defaultJavaOptions": quick_start_java_options(role, node.class_data_archive)
                         for role in ("driver", "executor")})
        if node.event_log_dir:
            conf.update({"spark.eventLog.enabled": "true", "spark.eventLog.dir": node.event_log_uri})
    if "history" in node.roles and node.event_log_dir:
        conf.update({"spark.history.fs.logDirectory": node.event_log_uri,
                     "spark.history.ui.port": str(HISTORY_PORT)})
    return conf


def log_dir(home: str | Path) -> Path:
    return Path(home) / "logs"


def pid_dir(home: str | Path) -> Path:
    return Path(home) / "pids"


def master_url(host: str, port: int = MASTER_PORT) -> str:
    """What workers and spark-submit are given to reach the master."""
    return f"spark://{host}:{port}"


def worker_dir(home: str | Path) -> Path:
    """A worker's applications' folders: executors' logs and the files shipped to them."""
    return Path(home) / "work"


def scratch_dir(home: str | Path) -> Path:
    return Path(home) / "scratch"


def spark_env(node: Node) -> dict[str, str]:
    env = {
        "SPARK_LOCAL_IP": node.ip,
        "SPARK_PUBLIC_DNS": node.ip,  # links in the web UIs name this address, not the machine's hostname
        "SPARK_LOG_DIR": str(log_dir(node.home)),
        "SPARK_PID_DIR": str(pid_dir(node.home)),
        "PYSPARK_PYTHON": node.python,
    }
    if "master" in node.roles:
        env.update({"SPARK_MASTER_PORT": str(MASTER_PORT), "SPARK_MASTER_WEBUI_PORT": str(MASTER_UI_PORT),
                    "SPARK_MASTER_OPTS": f"-Dspark.worker.timeout={node.failure_timeout_s}"})
    if "worker" in node.roles:
        env.update({
            "SPARK_WORKER_DIR": str(worker_dir(node.home)),
            "SPARK_LOCAL_DIRS": str(scratch_dir(node.home)),
            "SPARK_WORKER_CORES": str(node.cores),
            "SPARK_WORKER_MEMORY": node.memory,
            "SPARK_WORKER_WEBUI_PORT": str(node.worker_ui_port),
            "SPARK_WORKER_OPTS": WORKER_OPTS,
        })
    return env


def folders(node: Node) -> list[Path]:
    """The folders the node's processes write into (made by `write`)."""
    found = [log_dir(node.home), pid_dir(node.home)]
    if "worker" in node.roles:
        found += [worker_dir(node.home), scratch_dir(node.home)]
    if node.event_log_dir and "://" not in node.event_log_dir:
        found.append(Path(node.event_log_dir))
    return found


def render_defaults(node: Node) -> str:
    return "".join(f"{key} {value}\n" for key, value in spark_defaults(node).items())


def render_env(node: Node) -> str:
    lines = [f"export {key}={shlex.quote(value)}\n" for key, value in spark_env(node).items()]
    return "# written by fruitflow.stack.node_conf\n" + "".join(lines)


def write(node: Node, conf_dir: Path) -> Path:
    """spark-defaults.conf and spark-env.sh (mode 0600; the EC2 script opens a client's to its drivers'
    user) in `conf_dir`, the node's SPARK_CONF_DIR."""
    from fruitflow.stack.process import write_private

    for folder in folders(node):
        folder.mkdir(parents=True, exist_ok=True)
    write_private(conf_dir / "spark-defaults.conf", render_defaults(node))
    write_private(conf_dir / "spark-env.sh", render_env(node))
    return conf_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fruitflow.stack.node_conf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--roles", required=True, help=f"comma-separated, among {', '.join(ROLES)}")
    p.add_argument("--ip", required=True)
    p.add_argument("--home", required=True)
    p.add_argument("--secret-file", required=True, type=Path, help="holds the cluster's shared RPC secret")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--event-log-dir", default="")
    p.add_argument("--cores", type=int, default=1)
    p.add_argument("--memory", default="2g")
    p.add_argument("--failure-timeout", type=int, default=60, dest="failure_timeout_s")
    p.add_argument("--quick-start-jvm", action="store_true",
                   help="client on a small host: C1 only and the serial GC for drivers and executors")
    p.add_argument("--out", required=True, type=Path, help="the node's SPARK_CONF_DIR")
    args = p.parse_args(argv)
    try:
        node = Node(roles=tuple(r for r in args.roles.split(",") if r), ip=args.ip, home=args.home,
                    secret=args.secret_file.read_text().strip(), python=args.python,
                    event_log_dir=args.event_log_dir, cores=args.cores, memory=args.memory,
                    failure_timeout_s=args.failure_timeout_s, quick_start_jvm=args.quick_start_jvm)
    except (OSError, ValueError) as exc:
        print(f"node_conf: {exc}", file=sys.stderr)
        return 2
    print(write(node, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
