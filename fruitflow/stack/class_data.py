"""The local stack's JVM class-data archive: the classes Spark's drivers and executors load at start
(Spark, Hadoop's s3a and the AWS SDK, Parquet, Arrow, Spark ML), mapped from one file instead of read
and verified from hundreds of jars at every application's start. On two cores this takes a trivial
application from ~14 s to ~8 s (`bench/RESULTS.md`), and every step of every run pays that start.

Java 17 writes such an archive when a JVM started with `-XX:ArchiveClassesAtExit` exits. `ensure()`
runs one small application that way, in local mode (its driver runs the tasks too, so the archive holds
the executors' classes), on the class path that every driver and executor of the stack has: the
hadoop-aws jars, the stack's SPARK_CONF_DIR (empty: Java maps an archive only over a class path whose
folders are empty) and Spark's jars. The file's name is made from what it depends on (the JVM, the jars
and the JVM options), so that another Java or Spark makes a new one; a JVM that still cannot map it
starts without it. Only the local stack's drivers and executors use it (node_conf's
`class_data_archive`); a real cluster's nodes keep the JVM's defaults.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from fruitflow.paths import spark_home
from fruitflow.stack.node_conf import QUICK_START_JAVA_OPTIONS
from fruitflow.stack.process import log
from spark_jobs.common.config import Config, s3a_uri
from spark_jobs.common.spark_conf import launch_conf

JOB = Path(__file__).with_name("class_data_job.py")
TIMEOUT_S = 900


def java_binary() -> Path | None:
    """The `java` Spark's scripts run: $JAVA_HOME/bin/java, else the first on PATH."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    return Path(found).resolve() if found and Path(found).exists() else None


def _fingerprint(java: Path, jars: tuple[str, ...], conf_dir: Path) -> str:
    """What an archive is valid for: the JVM (its binary and libjvm), every jar on the class path (name,
    size, time), the class path's folder and the JVM options it was made with."""
    files = [java, *sorted(java.parent.parent.glob("lib/server/libjvm.so")),
             *sorted((spark_home() / "jars").glob("*.jar")), *(Path(j) for j in jars)]
    digest = hashlib.sha256(f"{QUICK_START_JAVA_OPTIONS}\n{conf_dir}\n".encode())
    for f in files:
        st = f.stat()
        digest.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def archive_path(state: Path, conf_dir: Path, jars: tuple[str, ...]) -> Path | None:
    """Where the archive for this JVM, these jars and the stack's (empty) conf folder `conf_dir` is, or
    would be, under the stack's `state` folder; None when there can be none: no Java found, or no
    hadoop-aws jars on the class path (spark-submit then resolves packages itself)."""
    java = java_binary()
    if java is None or not jars or not all(Path(j).is_file() for j in jars):
        return None
    return state / "jvm" / f"spark-{_fingerprint(java, jars, conf_dir)}.jsa"


def existing(state: Path, conf_dir: Path, jars: tuple[str, ...]) -> str:
    path = archive_path(state, conf_dir, jars)
    return str(path) if path is not None and path.is_file() else ""


def ensure(state: Path, conf_dir: Path, env: dict[str, str]) -> str:
    """The archive for the stack's class path, made once when missing (the store must be up: the
    application writes and reads a Parquet folder through s3a); "" when there can be none or its making
    failed (the stack then runs without it, as before). `env` is the stack's environment."""
    jars = tuple(j for j in env.get("FRUITFLOW_SPARK_JARS", "").split(",") if j)
    path = archive_path(state, conf_dir, jars)
    if path is None:
        return ""
    if path.is_file():
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    log("class-data archive: making it once for this Java and these jars (about 30 s)")
    started = time.monotonic()
    logfile = path.parent / "making.log"
    with open(logfile, "wb") as out:
        done = subprocess.run(_command(env, partial), env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=TIMEOUT_S, check=False)
    if done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        log(f"class-data archive: not made (exit {done.returncode}; see {logfile}); Spark starts without it")
        return ""
    for older in path.parent.glob("spark-*.jsa"):
        older.unlink()
    partial.rename(path)
    log(f"class-data archive: {path} ({path.stat().st_size >> 20} MB) in {time.monotonic() - started:.0f} s")
    return str(path)


def _command(env: dict[str, str], archive: Path) -> list[str]:
    """spark-submit of the job in local mode with the steps' launch settings (their class path among
    them), writing the archive at the JVM's exit."""
    cfg = Config.from_env(env)
    conf = {**launch_conf(cfg),
            "spark.driver.defaultJavaOptions": f"{QUICK_START_JAVA_OPTIONS} -XX:ArchiveClassesAtExit={archive}",
            "spark.eventLog.enabled": "false", "spark.ui.enabled": "false"}
    argv = [str(spark_home() / "bin" / "spark-submit"), "--master", "local[2]", "--name", "fruitflow-class-data",
            "--properties-file", env["FRUITFLOW_SPARK_PROPERTIES_FILE"]]
    for key, value in conf.items():
        argv += ["--conf", f"{key}={value}"]
    output = s3a_uri(cfg.reports_bucket, cfg.runs_prefix, "_stack", "class-data")
    return [*argv, str(JOB), output]
