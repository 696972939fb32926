"""The local stack's settings and the environment its processes run with.

`settings()` only reads (``FRUITFLOW_*`` variables over the defaults in `spark_jobs.common.config`);
`prepare()` is the one step that writes: the state folders, the throw-away credentials, and the
hadoop-aws jars resolved once. `environment()` turns both into the variables that Spark, Airflow,
the demo and the tests run with, without touching anything.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fruitflow_airflow import AWS_CONN_ID, SPARK_CONN_ID, connection_variable

from fruitflow.paths import DAGS, spark_home
from fruitflow.stack import class_data, node_conf
from fruitflow.stack.node_conf import HISTORY_PORT, Node, folders, render_defaults, spark_env
from fruitflow.stack.process import log, write_private
from fruitflow.stack.stack_settings import StackSettings
from spark_jobs.common import signing
from spark_jobs.common.config import HADOOP_AWS_PACKAGE, HADOOP_CLOUD_PACKAGE, Config

VENV_BIN = Path(sys.executable).parent


def settings() -> StackSettings:
    return StackSettings.from_env()


def state_dir(stack: StackSettings) -> Path:
    return Path(stack.state_dir)


def pid_dir(stack: StackSettings) -> Path:
    return node_conf.pid_dir(state_dir(stack))


def log_dir(stack: StackSettings) -> Path:
    return node_conf.log_dir(state_dir(stack))


@dataclass(frozen=True)
class Prepared:
    """What `prepare()` made: the local S3 credentials and the hadoop-aws jars ([] when unresolvable)."""

    access_key: str
    secret_key: str
    jars: tuple[str, ...]
    control_key: str = ""  # signs the control objects (spark_jobs.common.signing); the Airflow host's alone
    spark_secret: str = ""  # the Spark daemons' and applications' shared RPC secret


def prepare(stack: StackSettings | None = None) -> Prepared:
    """Creates the state folders and the local credentials, and resolves the jars (each once)."""
    stack = stack or settings()
    for d in (state_dir(stack) / "ivy", plugins_dir(stack)):
        d.mkdir(parents=True, exist_ok=True)
    creds = store_credentials(state_dir(stack))["pipeline"]
    jars = tuple(hadoop_aws_jars(state_dir(stack)))
    spark_secret = local_credentials(state_dir(stack), "spark")["secret"]
    write_spark_defaults(stack, secret=spark_secret,
                         class_data_archive=class_data.existing(state_dir(stack), spark_conf_dir(stack), jars))
    return Prepared(creds["key"], creds["secret"], jars, local_credentials(state_dir(stack), "control")["secret"],
                    spark_secret)


def spark_conf_dir(stack: StackSettings) -> Path:
    """SPARK_CONF_DIR of every Spark process of the stack, kept empty: Spark puts it on each JVM's class
    path, and Java maps a class-data archive only over a class path whose folders are empty. The
    properties go by `--properties-file` instead (`spark_defaults_file`)."""
    return state_dir(stack) / "spark-conf-dir"


def spark_defaults_file(stack: StackSettings) -> Path:
    return state_dir(stack) / "spark-conf" / "spark-defaults.conf"


def plugins_dir(stack: StackSettings) -> Path:
    """Airflow's plugins folder, kept empty: fruitflow's plugin comes from its package's `airflow.plugins`
    entry point, as in any venv fruitflow is pip-installed into (in the folder too, it would be
    registered twice: Airflow lists the second as an import error)."""
    return state_dir(stack) / "airflow-plugins"


def event_log_dir(stack: StackSettings) -> Path:
    return state_dir(stack) / "spark-events"


def local_node(stack: StackSettings, secret: str, class_data_archive: str = "") -> Node:
    """The local stack's one host as a Spark node: its worker, the client that submits (client mode)
    and the history server (its master keeps Spark's defaults). Spark's own network timeouts are kept
    (failure_timeout_s=120): a busy 2-core laptop is no cluster; its drivers and executors start the
    quick way (node_conf's quick_start_jvm), from the stack's class-data archive once there is one."""
    return Node(roles=("worker", "client", "history"), ip=stack.host, home=str(state_dir(stack)), secret=secret,
                python=sys.executable, event_log_dir=str(event_log_dir(stack)), cores=stack.worker_cores,
                memory=stack.worker_memory, failure_timeout_s=120, quick_start_jvm=True,
                class_data_archive=class_data_archive, worker_ui_port=stack.spark_worker_ui_port)


def write_spark_defaults(stack: StackSettings, *, secret: str, class_data_archive: str) -> Path:
    """spark-defaults.conf (mode 0600), the `--properties-file` of the master, the worker, the history
    server, spark-submit and pyspark alike; executors get the secret from their worker. Rendered by
    node_conf, as every cluster node's is; the stack passes its spark-env.sh as variables
    (`environment`), and makes the node's folders."""
    node = local_node(stack, secret, class_data_archive)
    for folder in (*folders(node), spark_conf_dir(stack)):
        folder.mkdir(parents=True, exist_ok=True)
    path = spark_defaults_file(stack)
    write_private(path, render_defaults(node))
    return path


def local_credentials(state: Path, identity: str) -> dict[str, str]:
    """Credentials of one identity (`admin`, `pipeline` or `spark-node` of the S3 service, `spark`),
    generated once per state folder into `credentials/<identity>.json`, mode 0600 from creation; never
    committed."""
    path = state / "credentials" / f"{identity}.json"
    if not path.exists():
        write_private(path, json.dumps({"key": f"{identity}-" + secrets.token_hex(6),
                                        "secret": secrets.token_urlsafe(24)}))
    return json.loads(path.read_text())


def store_credentials(state: Path) -> dict[str, dict[str, str]]:
    """Every S3 identity's credentials: the store's identity file is written from them."""
    from fruitflow.access import LOCAL_IDENTITIES

    return {name: local_credentials(state, name) for name in ("admin", *LOCAL_IDENTITIES)}


def worker_environment(env: dict[str, str], node: dict[str, str]) -> dict[str, str]:
    """What the Spark worker, and the executors it starts, run with: the stack's environment without the
    Airflow host's connections, settings and S3 identity, plus the node's own (`node`). A compromised
    executor holds the spark-node identity only."""
    host_only = ("AWS_", "AIRFLOW_CONN_", "AIRFLOW__", "AIRFLOW_HOME", signing.KEY_VARIABLE)
    return {**{k: v for k, v in env.items() if not k.startswith(host_only)}, **node}


def spark_node_environment(state: Path, region: str) -> dict[str, str]:
    """A Spark worker's S3 identity, in the variables s3a's and boto3's default chains read: its
    executors inherit them, as executors on EC2 find their node's instance profile. The driver ships
    no credentials, so executors never act with the Airflow host's."""
    node = local_credentials(state, "spark-node")
    return {"AWS_ACCESS_KEY_ID": node["key"], "AWS_SECRET_ACCESS_KEY": node["secret"], "AWS_DEFAULT_REGION": region}


def hadoop_aws_jars(state: Path) -> list[str]:
    """hadoop-aws and its dependencies, and Spark's S3A committer binding, as local jars, resolved once
    from Maven Central with the Ivy that pyspark ships, for the class path of the driver and executors
    (FRUITFLOW_SPARK_JARS): with --packages every spark-submit resolves them again and copies the 0.7 GB
    AWS SDK bundle into the application's executor folder. [] (spark-submit falls back to --packages,
    the classic committer) when they cannot be had."""
    folder = state / "jars"
    listing = folder / "resolved.json"
    packages = [HADOOP_AWS_PACKAGE, HADOOP_CLOUD_PACKAGE]
    if listing.exists():
        known = json.loads(listing.read_text())
        if known.get("packages") == packages and all(Path(j).is_file() for j in known["jars"]):
            return known["jars"]
    log(f"resolving {', '.join(packages)} into {folder} (once)")
    try:
        ivy_retrieve(state, HADOOP_AWS_PACKAGE, folder, sync=True)
        ivy_retrieve(state, HADOOP_CLOUD_PACKAGE, folder, sync=False, transitive=False)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        log(f"could not resolve them ({str(detail).strip()[-300:]}); spark-submit will use --packages")
        return []
    jars = sorted(str(j) for j in folder.glob("*.jar"))
    listing.write_text(json.dumps({"packages": packages, "jars": jars}))
    return jars


def ivy_retrieve(state: Path, package: str, folder: Path, sync: bool, transitive: bool = True) -> None:
    group, artifact, version = package.split(":")
    ivy = sorted((spark_home() / "jars").glob("ivy-*.jar"))
    java = Path(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else "java"
    command = [str(java), "-cp", str(ivy[-1]) if ivy else "", "org.apache.ivy.Main",
               "-dependency", group, artifact, version, "-confs", "default", "-types", "jar",
               "-cache", str(state / "ivy" / "cache"),
               "-retrieve", str(folder / "[organisation]_[artifact]-[revision](-[classifier]).[ext]"),
               *(["-sync"] if sync else []), *([] if transitive else ["-notransitive"])]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=900)


def environment(stack: StackSettings, prepared: Prepared, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every process of the local stack (Spark, Airflow, tests, demo) runs with."""
    env = dict(os.environ if base is None else base)
    state = state_dir(stack)
    node = local_node(stack, prepared.spark_secret)
    cfg = Config.from_env(env)
    region = cfg.s3_region
    env.update({**airflow_environment(stack), **
        {
            "AWS_ACCESS_KEY_ID": prepared.access_key,
            "AWS_SECRET_ACCESS_KEY": prepared.secret_key,
            "AWS_DEFAULT_REGION": region,
            "FRUITFLOW_S3_ENDPOINT": stack.s3_endpoint,
            "FRUITFLOW_IVY_DIR": str(state / "ivy"),
            "FRUITFLOW_SPARK_JARS": ",".join(prepared.jars),
            signing.KEY_VARIABLE: prepared.control_key,
            # the S3A magic committer where its binding is on the class path (resolved with hadoop-aws)
            "FRUITFLOW_S3A_COMMITTER": "magic" if any("spark-hadoop-cloud" in j for j in prepared.jars) else "classic",
            "FRUITFLOW_SPARK_HISTORY_URL": f"http://{stack.host}:{HISTORY_PORT}",
            "SPARK_HOME": str(spark_home()),
            # the node's spark-env.sh (its address, folders, worker's cores and memory, executors' Python)
            **spark_env(node),
            "SPARK_CONF_DIR": str(spark_conf_dir(stack)),
            "FRUITFLOW_SPARK_PROPERTIES_FILE": str(spark_defaults_file(stack)),
            # pyspark's own sessions (the tests', the benchmarks') read the same properties
            "PYSPARK_SUBMIT_ARGS": f"--properties-file {shlex.quote(str(spark_defaults_file(stack)))} pyspark-shell",
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins_dir(stack)),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": env.get("AIRFLOW__CORE__UNIT_TEST_MODE", "False"),
            "AIRFLOW__API__PORT": str(stack.airflow_port),
            # where the api-server is reached: the run summary's report_url is built on it
            "AIRFLOW__API__BASE_URL": f"http://{stack.host}:{stack.airflow_port}",
            # Connections come from the environment only: nothing is stored in a file or the DB.
            **airflow_connections(stack, prepared, cfg),
        }
    })
    return env


def airflow_connections(stack: StackSettings, prepared: Prepared, cfg: Config) -> dict[str, str]:
    """The S3 connection (AWS_CONN_ID), where the operator and the hooks take the S3 endpoint from, and
    the Spark master's (SPARK_CONN_ID)."""
    aws = {
        "conn_type": "aws", "login": prepared.access_key, "password": prepared.secret_key,
        # the S3 timeouts of every other client (Config.s3_timeout_s) for the sensor's and the tasks'
        # hooks too: a stalled store is retried, not waited on
        "extra": {"endpoint_url": stack.s3_endpoint, "region_name": cfg.s3_region,
                  "config_kwargs": {"s3": {"addressing_style": "path"}, "connect_timeout": cfg.s3_timeout_s,
                                    "read_timeout": cfg.s3_timeout_s}},
    }
    spark = {"conn_type": "spark", "host": f"spark://{stack.spark_host or stack.host}", "port": stack.spark_port,
             "extra": {"deploy-mode": "client", "spark-binary": "spark-submit"}}
    return {connection_variable(AWS_CONN_ID): json.dumps(aws), connection_variable(SPARK_CONN_ID): json.dumps(spark)}


def airflow_environment(stack: StackSettings) -> dict[str, str]:
    """Where Airflow keeps its home and metadata DB (all that its health check needs)."""
    home = state_dir(stack) / "airflow"
    return {"AIRFLOW_HOME": str(home), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}"}


def prepared_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """`prepare()` then `environment()` for the current settings: what a command running on the stack uses."""
    stack = settings()
    return environment(stack, prepare(stack), base)
