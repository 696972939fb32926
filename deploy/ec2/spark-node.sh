#!/usr/bin/env bash
# Turns an Amazon Linux 2023 (or Debian/Ubuntu) EC2 instance into a fruitflow Spark standalone node.
# Use as EC2 user data (cloud-init runs it as root) or by hand:
#   sudo ROLE=master SPARK_AUTH_SECRET_FILE=/path/to/secret bash spark-node.sh
#   sudo ROLE=worker MASTER_URL=spark://10.0.0.10:7077 SPARK_AUTH_SECRET_FILE=/path/to/secret bash spark-node.sh
#   sudo ROLE=client SPARK_AUTH_SECRET_FILE=/path/to/secret bash spark-node.sh   # the Airflow host: spark-submit's
#        configuration (client mode) and the Spark history server over its event logs
# The node's spark-defaults.conf and spark-env.sh come from fruitflow.stack.node_conf, the renderer the
# multi-host test cluster (`make multihost-demo`) uses too. RENDER_ONLY=1 writes them and nothing else (no
# package, no service): NODE_PYTHON names an interpreter with the project installed.
# Every node and the Airflow host share one RPC secret (spark.authenticate), e.g. from AWS Secrets Manager
# written to a root-only file by the instance's own bootstrap; this script copies it into the conf (0600;
# on the client 0640, for the group of the daemons' user and Airflow's).
# S3 access comes from the instance profile (deploy/ec2/iam-policy-spark-node.json on the Spark nodes,
# iam-policy-pipeline.json on the Airflow host); no key is written anywhere.
set -euo pipefail

ROLE=${ROLE:-worker}
MASTER_URL=${MASTER_URL:-}
SPARK_AUTH_SECRET_FILE=${SPARK_AUTH_SECRET_FILE:-}
REPO_URL=${REPO_URL:-}              # where to fetch the project from (git URL), or
SOURCE_DIR=${SOURCE_DIR:-/opt/fruitflow/src}  # an existing checkout copied onto the instance
PREFIX=${PREFIX:-/opt/fruitflow}
NODE_PYTHON=${NODE_PYTHON:-$PREFIX/venv/bin/python}
NODE_IP=${NODE_IP:-}                # default: the instance's private address
WORKER_CORES=${WORKER_CORES:-$(nproc)}
WORKER_MEMORY=${WORKER_MEMORY:-}    # default: the memory less 4 GiB for the OS, the Python workers' models
FAILURE_TIMEOUT=${FAILURE_TIMEOUT:-60}  # seconds before a silent worker or executor is written off
QUICK_START_JVM=${QUICK_START_JVM:-0}  # client on a small instance (2 vCPUs): C1-only drivers, serial GC (node_conf)
HADOOP_AWS_VERSION=3.5.0            # Spark 4.2's Hadoop client version
SPARK_HADOOP_CLOUD_VERSION=4.0.0    # the S3A committer binding (FRUITFLOW_S3A_COMMITTER=magic)
SPARK_USER=${SPARK_USER:-spark}     # the daemons' user
AIRFLOW_USER=${AIRFLOW_USER:-airflow}  # client: the user Airflow's tasks, so spark-submit's drivers, run as
CLIENT_GROUP=${CLIENT_GROUP:-spark-client}  # client: the group of those two users alone

case "$ROLE" in
  master) ROLES=master ;;
  worker) ROLES=worker ;;
  client) ROLES=client,history ;;
  *) echo "ROLE must be master, worker or client, not '$ROLE'" >&2; exit 2 ;;
esac
if [ -z "$SPARK_AUTH_SECRET_FILE" ] || [ ! -s "$SPARK_AUTH_SECRET_FILE" ]; then
  echo "SPARK_AUTH_SECRET_FILE must name a file holding the cluster's shared RPC secret" >&2
  exit 2
fi
if [ "$ROLE" = worker ] && [ -z "$MASTER_URL" ]; then
  echo "a worker needs MASTER_URL=spark://<master-private-ip>:7077" >&2
  exit 2
fi

install_packages() {
  if command -v dnf >/dev/null 2>&1; then
    dnf install -y java-17-amazon-corretto-headless python3.11 python3.11-pip git
  else
    apt-get update
    apt-get install -y openjdk-17-jre-headless python3.11 python3.11-venv git
  fi
}

node_ip() {
  if [ -n "$NODE_IP" ]; then echo "$NODE_IP"; return; fi
  hostname -I | awk '{print $1}'
}

worker_memory() {
  if [ -n "$WORKER_MEMORY" ]; then echo "$WORKER_MEMORY"; return; fi
  awk '/MemTotal/ { gib = int($2 / 1048576) - 4; if (gib < 2) gib = 2; print gib "g" }' /proc/meminfo
}

render_conf() {
  # One renderer for every node: the multi-host test cluster's configuration comes from it too.
  local quick=()
  if [ "$QUICK_START_JVM" = 1 ]; then quick=(--quick-start-jvm); fi
  "$NODE_PYTHON" -m fruitflow.stack.node_conf --roles "$ROLES" --ip "$(node_ip)" --home "$PREFIX" \
    --secret-file "$SPARK_AUTH_SECRET_FILE" --python "$NODE_PYTHON" \
    --event-log-dir "$([ "$ROLE" = client ] && echo "$PREFIX/spark-events")" \
    --cores "$WORKER_CORES" --memory "$(worker_memory)" --failure-timeout "$FAILURE_TIMEOUT" \
    ${quick[@]+"${quick[@]}"} --out "$PREFIX/conf" >/dev/null
}

install_project() {
  if [ -n "$REPO_URL" ] && [ ! -d "$SOURCE_DIR/.git" ]; then
    git clone --depth 1 "$REPO_URL" "$SOURCE_DIR"
  fi
  if [ ! -f "$SOURCE_DIR/constraints.txt" ]; then
    echo "no project at $SOURCE_DIR: set REPO_URL or copy the checkout there" >&2
    exit 2
  fi
  id "$SPARK_USER" >/dev/null 2>&1 || useradd --system --create-home --home-dir "$PREFIX/home" "$SPARK_USER"
  python3.11 -m venv "$PREFIX/venv"
  # fruitflow with its host's extra, at the lock's pins: a master or a worker gets the Spark node's share
  # (Spark, the executors' UDF libraries: no Airflow, no TensorFlow); the client is the Airflow host.
  local extra=spark-node
  if [ "$ROLE" = client ]; then extra=airflow; fi
  "$PREFIX/venv/bin/pip" install --quiet "${SOURCE_DIR}[${extra}]" -c "$SOURCE_DIR/constraints.txt"
}

install_hadoop_aws() {
  # hadoop-aws and its dependencies at /opt/hadoop-aws on every node, as in the images: the Airflow host
  # sets FRUITFLOW_SPARK_JARS=/opt/hadoop-aws/* so that executors find them on their class path.
  local ivy
  ivy=$(ls "$("$NODE_PYTHON" -c 'import pyspark, os; print(os.path.dirname(pyspark.__file__))')"/jars/ivy-*.jar)
  java -cp "$ivy" org.apache.ivy.Main -dependency org.apache.hadoop hadoop-aws "$HADOOP_AWS_VERSION" \
    -confs default -types jar -cache /tmp/ivy \
    -retrieve "/opt/hadoop-aws/[organisation]_[artifact]-[revision](-[classifier]).[ext]"
  java -cp "$ivy" org.apache.ivy.Main -dependency org.apache.spark spark-hadoop-cloud_2.13 \
    "$SPARK_HADOOP_CLOUD_VERSION" -confs default -types jar -notransitive -cache /tmp/ivy \
    -retrieve "/opt/hadoop-aws/[organisation]_[artifact]-[revision](-[classifier]).[ext]"
  rm -rf /tmp/ivy
}

write_unit() {
  local name=$1 class=$2 args=$3
  cat > "/etc/systemd/system/$name.service" <<UNIT
[Unit]
Description=fruitflow Spark standalone $ROLE
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=$SPARK_USER
Environment=SPARK_NO_DAEMONIZE=true
Environment=SPARK_CONF_DIR=$PREFIX/conf
ExecStart=$PREFIX/venv/bin/spark-daemon.sh start $class 1 $args
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
UNIT
}

grant_access() {
  # The daemons run as $SPARK_USER. On the client, the drivers run as Airflow's user: it reads the conf
  # (the RPC secret) and writes the event logs (mode 770, Spark's), which the history server reads; both
  # are shared through a group of those two users (not Airflow's own group, which others may share).
  # Airflow's processes see the group once restarted.
  chown -R "$SPARK_USER" "$PREFIX/conf" "$PREFIX/logs" "$PREFIX/pids"
  if [ "$ROLE" = worker ]; then chown -R "$SPARK_USER" "$PREFIX/work" "$PREFIX/scratch"; fi
  if [ "$ROLE" = client ]; then
    if ! id "$AIRFLOW_USER" >/dev/null 2>&1; then
      echo "no user '$AIRFLOW_USER' to run the drivers: install Airflow first or set AIRFLOW_USER" >&2
      exit 2
    fi
    groupadd -f "$CLIENT_GROUP"
    usermod -a -G "$CLIENT_GROUP" "$SPARK_USER"
    usermod -a -G "$CLIENT_GROUP" "$AIRFLOW_USER"
    chgrp -R "$CLIENT_GROUP" "$PREFIX/conf"
    chmod 0750 "$PREFIX/conf"
    chmod 0640 "$PREFIX/conf/spark-defaults.conf" "$PREFIX/conf/spark-env.sh"
    chown -R "$SPARK_USER:$CLIENT_GROUP" "$PREFIX/spark-events"
    chmod 2770 "$PREFIX/spark-events"  # setgid: each event log gets the group
  fi
}

main() {
  if [ -n "${RENDER_ONLY:-}" ]; then
    render_conf
    return
  fi
  install_packages
  install_project
  install_hadoop_aws
  render_conf
  grant_access
  local spark_home ip
  spark_home=$("$NODE_PYTHON" -c 'import pyspark, os; print(os.path.dirname(pyspark.__file__))')
  ln -sf "$spark_home/sbin/spark-daemon.sh" "$PREFIX/venv/bin/spark-daemon.sh"
  ip=$(node_ip)
  # the ports: Spark's defaults, in the spark-env.sh node_conf rendered
  case "$ROLE" in
    master) write_unit spark-master org.apache.spark.deploy.master.Master "--host $ip" ;;
    worker) write_unit spark-worker org.apache.spark.deploy.worker.Worker "$MASTER_URL --host $ip" ;;
    client) write_unit spark-history org.apache.spark.deploy.history.HistoryServer "" ;;
  esac
  systemctl daemon-reload
  systemctl enable --now "spark-${ROLE/client/history}"
}

# sourced (the tests call its functions), it only defines them: `return` works only in a sourced file
if ! (return 0 2>/dev/null); then main "$@"; fi
