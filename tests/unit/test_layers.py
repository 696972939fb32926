"""The packages' dependencies point one way: the core (`spark_jobs.common`) imports neither Spark nor
Airflow nor anything above it; the Spark jobs (`spark_jobs`) and the Airflow plugin (`fruitflow_airflow`,
with `dags/`) stand on the core and never on the tooling (`fruitflow`) or on each other. Read from the
source (every import, those inside functions too), so a lazy import cannot hide an arrow running up."""

import ast
from pathlib import Path

import pytest

from fruitflow.paths import ROOT

pytestmark = pytest.mark.unit

CORE = ROOT / "spark_jobs" / "common"
SPARK_JOBS = ROOT / "spark_jobs"
PLUGIN = ROOT / "plugins" / "fruitflow_airflow"


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in the file, outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text(), str(path))
    type_only = {id(node) for block in ast.walk(tree)
                 if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                 for node in ast.walk(block)}
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, node.module)]
    return found


def arrows(folder: Path, refused) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{line} imports {module}"
            for path in sorted(folder.rglob("*.py")) for line, module in imports(path) if refused(module)]


def top(module: str) -> str:
    return module.split(".")[0]


def test_the_core_imports_neither_spark_nor_airflow_nor_what_stands_on_it():
    def refused(module: str) -> bool:
        return top(module) in ("pyspark", "airflow", "fruitflow", "fruitflow_airflow") or (
            top(module) == "spark_jobs" and not module.startswith("spark_jobs.common"))

    assert arrows(CORE, refused) == []


def test_the_spark_jobs_import_no_airflow_and_no_tooling():
    assert arrows(SPARK_JOBS, lambda m: top(m) in ("airflow", "fruitflow", "fruitflow_airflow")) == []


def test_the_airflow_plugin_and_the_dags_import_the_core_only_and_no_spark():
    def refused(module: str) -> bool:
        return top(module) in ("pyspark", "fruitflow") or (
            top(module) == "spark_jobs" and not module.startswith("spark_jobs.common"))

    assert arrows(PLUGIN, refused) + arrows(ROOT / "dags", refused) == []


def test_the_reading_of_imports_sees_those_inside_functions_and_skips_type_only_ones(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pyspark\n"
                      "def f():\n    from pyspark.sql import functions\n")
    assert imports(source) == [(1, "typing"), (5, "pyspark.sql")]
