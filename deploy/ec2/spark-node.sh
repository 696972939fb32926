#!/usr/bin/env bash
# Turns an Amazon Linux 2023 (or Debian/Ubuntu) EC2 instance into a fruitflow Spark standalone node.
# Use as EC2 user data (cloud-init runs it as root) or by hand:
#   sudo ROLE=master SPARK_AUTH_SECRET_FILE=/path/to/secret bash spark-node.sh
#   sudo ROLE=worker MASTER_URL=spark://10.0.0.10:7077 SPARK_AUTH_SECRET_FILE=/path/to/secret bash spark-node.sh
# Every node and the Airflow host share one RPC secret (spark.authenticate), e.g. from AWS Secrets Manager
# written to a root-only file by the instance's own bootstrap; this script copies it into the 0600 conf.
# S3 access comes from the instance profile (deploy/ec2/iam-policy.json); no key is written anywhere.
set -euo pipefail

ROLE=${ROLE:-worker}
MASTER_URL=${MASTER_URL:-}
SPARK_AUTH_SECRET_FILE=${SPARK_AUTH_SECRET_FILE:-}
REPO_URL=${REPO_URL:-}              # where to fetch the project from (git URL), or
SOURCE_DIR=${SOURCE_DIR:-/opt/fruitflow/src}  # an existing checkout copied onto the instance
PREFIX=/opt/fruitflow
SPARK_USER=spark

case "$ROLE" in
  master|worker) ;;
  *) echo "ROLE must be master or worker, not '$ROLE'" >&2; exit 2 ;;
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
  "$PREFIX/venv/bin/pip" install --quiet -r "$SOURCE_DIR/requirements.in" -c "$SOURCE_DIR/constraints.txt"
  local pin
  pin=$(grep -E '^pyspark==' "$SOURCE_DIR/constraints.txt")
  "$PREFIX/venv/bin/pip" install --quiet --no-deps --force-reinstall "$pin"
  mkdir -p "$PREFIX/logs" "$PREFIX/work" "$PREFIX/conf"
  chown -R "$SPARK_USER" "$PREFIX/logs" "$PREFIX/work"
}

write_spark_defaults() {
  # s3a on real S3 with the instance profile's rotating credentials; RPC authentication with the
  # shared secret, no REST submission server, no kill links in the UIs. Readable by the Spark user only.
  local secret
  secret=$(tr -d '\n' < "$SPARK_AUTH_SECRET_FILE")
  install -m 0600 -o "$SPARK_USER" /dev/null "$PREFIX/conf/spark-defaults.conf"
  cat > "$PREFIX/conf/spark-defaults.conf" <<CONF
spark.hadoop.fs.s3a.aws.credentials.provider org.apache.hadoop.fs.s3a.auth.IAMInstanceCredentialsProvider
spark.jars.packages org.apache.hadoop:hadoop-aws:3.5.0
spark.pyspark.python $PREFIX/venv/bin/python
spark.authenticate true
spark.authenticate.secret $secret
spark.master.rest.enabled false
spark.ui.killEnabled false
CONF
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
Environment=SPARK_LOG_DIR=$PREFIX/logs
Environment=SPARK_PID_DIR=$PREFIX/work
Environment=SPARK_WORKER_DIR=$PREFIX/work
Environment=SPARK_CONF_DIR=$PREFIX/conf
Environment=PYSPARK_PYTHON=$PREFIX/venv/bin/python
ExecStart=$PREFIX/venv/bin/spark-daemon.sh start $class 1 $args
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
UNIT
}

main() {
  install_packages
  install_project
  write_spark_defaults
  local spark_home
  spark_home=$("$PREFIX/venv/bin/python" -c 'import pyspark, os; print(os.path.dirname(pyspark.__file__))')
  ln -sf "$spark_home/sbin/spark-daemon.sh" "$PREFIX/venv/bin/spark-daemon.sh"
  if [ "$ROLE" = master ]; then
    write_unit spark-master org.apache.spark.deploy.master.Master "--port 7077 --webui-port 8080"
    systemctl daemon-reload
    systemctl enable --now spark-master
  else
    write_unit spark-worker org.apache.spark.deploy.worker.Worker "$MASTER_URL --webui-port 8081"
    systemctl daemon-reload
    systemctl enable --now spark-worker
  fi
}

main "$@"
