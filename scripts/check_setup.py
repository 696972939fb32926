"""Proves the installed set is the pinned one where it matters: one Spark version (pyspark and the Spark
provider's pyspark-client install the same `pyspark` package), the main packages, Java."""

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    pins = dict(
        line.strip().split("==", 1)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    problems = []
    import pyspark

    if pyspark.__version__ != pins["pyspark"]:
        problems.append(f"pyspark reports {pyspark.__version__}, pinned {pins['pyspark']}")
    if pins.get("pyspark-client", pins["pyspark"]) != pins["pyspark"]:
        problems.append(f"constraints.txt pins pyspark {pins['pyspark']} and pyspark-client {pins['pyspark-client']}: "
                        "they install one package and must be one version")
    for name in ("apache-airflow", "apache-airflow-providers-amazon", "apache-airflow-providers-apache-spark",
                 "tensorflow-cpu", "onnxruntime", "opencv-python-headless", "pandas"):
        installed = metadata.version(name)
        pinned = pins.get(name) or pins.get(name.replace("-", "_"))
        if pinned and installed != pinned:
            problems.append(f"{name} {installed} installed, {pinned} pinned")
    java = subprocess.run(["java", "-version"], capture_output=True, text=True)
    match = re.search(r'version "(\d+)', java.stderr)
    if not match or int(match.group(1)) < 17:
        problems.append(f"Java 17+ required, found: {java.stderr.splitlines()[:1]}")
    import fruitflow

    if Path(fruitflow.__file__).resolve().parent.parent != ROOT:
        problems.append(f"fruitflow is imported from {fruitflow.__file__}, not this checkout (make setup)")
    for p in problems:
        print(f"setup check: {p}", file=sys.stderr)
    if not problems:
        print(f"setup check: ok (pyspark {pyspark.__version__}, Java {match.group(1)})", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
