"""fruitflow as a team that already runs Airflow installs it: a wheel built from the checkout, pip-installed
with the Airflow host's extra into a fresh venv, away from the checkout. Airflow finds the plugin by its
entry point (the plugins folder is empty) and parses the DAG with no import error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the fresh venv's python, an environment for its Airflow, a folder outside the checkout)"""
    tmp = tmp_path_factory.mktemp("wheel")
    # from a copy of what the wheel is made of: the build writes its own folders into the source tree
    source = tmp / "source"
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for package in ("fruitflow", "spark_jobs", "plugins"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp / "dist"), str(source)],
                   check=True, capture_output=True, timeout=600)
    wheel = next((tmp / "dist").glob("fruitflow-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True, timeout=300)
    python = tmp / "venv" / "bin" / "python"
    # --no-compile: this throwaway venv runs a few commands; compiling all of Airflow's sources cost more
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
                    f"{wheel}[airflow]", "-c", str(ROOT / "constraints.txt")], check=True, timeout=1200)
    (tmp / "plugins").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "FRUITFLOW", "PYTHON", "SPARK"))}
    env.update({"AIRFLOW_HOME": str(tmp / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(tmp / "plugins"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "PATH": f"{python.parent}{os.pathsep}{env.get('PATH', '')}"})
    return python, env, tmp


def test_the_wheel_holds_the_packages_and_not_the_checkout(installed):
    python, env, tmp = installed
    where = subprocess.run([str(python), "-c", "import fruitflow, fruitflow_airflow, spark_jobs; "
                            "print(fruitflow.__file__, fruitflow_airflow.__file__, spark_jobs.__file__)"],
                           cwd=tmp, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr[-2000:]
    assert all(f"{tmp}/venv/" in path for path in where.stdout.split()), where.stdout


def test_airflow_lists_the_plugin_from_its_entry_point(installed):
    python, env, tmp = installed
    listed = subprocess.run([str(python.parent / "airflow"), "plugins", "--output", "json"], cwd=tmp, env=env,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr[-3000:]
    plugins = json.loads(listed.stdout[listed.stdout.index("["):])
    ours = [p for p in plugins if p["name"] == "fruitflow"]
    assert len(ours) == 1 and "fruitflow_airflow" in json.dumps(ours[0]), plugins
    assert not any(Path(env["AIRFLOW__CORE__PLUGINS_FOLDER"]).iterdir())


DAGBAG = """
import json, sys
from airflow.models.dagbag import DagBag
import fruitflow_airflow
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({"dags": sorted(bag.dag_ids), "errors": bag.import_errors, "plugin": fruitflow_airflow.__file__}))
"""


def test_dagbag_parses_the_dags_folder_with_the_installed_package(installed):
    python, env, tmp = installed
    parsed = subprocess.run([str(python), "-c", DAGBAG, env["AIRFLOW__CORE__DAGS_FOLDER"]], cwd=tmp, env=env,
                            capture_output=True, text=True, timeout=300)
    assert parsed.returncode == 0, parsed.stderr[-3000:]
    result = json.loads(parsed.stdout.strip().splitlines()[-1])
    from fruitflow_airflow import DAG_ID

    assert result["errors"] == {} and result["dags"] == [DAG_ID], result
    assert result["plugin"].startswith(f"{tmp}/venv/"), result
