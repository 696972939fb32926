"""The Spark nodes' own Python environment for the namespace cluster: a venv of fruitflow's `spark-node` extra
alone (Spark, the executors' UDF libraries; no Airflow, no TensorFlow) at the pins of constraints.txt, as
`deploy/ec2/spark-node.sh` and the Spark image install it. The master and the workers run from it and their
executors' Python is its interpreter; the driver's venv stays on the airflow host.

Made once per lock and Python (from pip's cache after the first time), beside the local
stack's state, so that the tests' clusters share it.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from fruitflow.paths import ROOT
from fruitflow.stack.process import log

EXTRA = "spark-node"
# What the master, the workers and the executors' Python workers import (the jobs' own modules come in
# the jobs' zip)
IMPORTED = ("pyspark.daemon", "pyspark.worker", "pyspark.sql.pandas.serializers", "pyspark.ml", "numpy", "pandas",
            "pyarrow", "cv2", "onnxruntime", "PIL.Image", "boto3")
LOCK = ROOT / "constraints.txt"


def requirements(extra: str = EXTRA) -> list[str]:
    """What `pip install fruitflow[extra]` asks for beyond the project itself: the core's and the extra's."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"][extra]]


def _fingerprint() -> str:
    text = "\n".join([sys.version, *requirements(), LOCK.read_text()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure(state: Path) -> Path:
    """The venv's folder (`<state>/node-venv`), made or remade when the lock, the extra or Python changed."""
    venv = state / "node-venv"
    stamp = venv / "fruitflow-node-env"
    if stamp.is_file() and stamp.read_text() == _fingerprint():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    log(f"making the Spark nodes' venv ({EXTRA} extra) in {venv}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # --no-compile, then what the nodes import compiled by importing it: most of what is installed (pyspark's
    # own sources above all) is never imported there, and the worker hosts mount the venv read-only, where
    # an executor could not write a module's bytecode and would compile it again at each start
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--no-compile", "-c", str(LOCK), *requirements()], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-c", f"import {', '.join(IMPORTED)}"], check=True)
    stamp.write_text(_fingerprint())
    return venv


def python(venv: Path) -> Path:
    return venv / "bin" / "python"


def spark_home(venv: Path) -> Path:
    """pyspark's folder in the venv: the nodes' Spark distribution (spark-class, jars)."""
    found = sorted(venv.glob("lib/python3*/site-packages/pyspark"))
    if not found:
        raise RuntimeError(f"no pyspark in {venv}")
    return found[0]


def size_mb(folder: Path) -> int:
    """Disk use of a folder in MB (du: files counted once, hard links included)."""
    out = subprocess.run(["du", "-sm", str(folder)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])
