#!/usr/bin/env bash
# Creates .venv and installs the pinned set (constraints.txt). Run through `make setup`.
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin=${PYTHON:-}
if [ -z "$python_bin" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python_bin=$candidate; break; fi
  done
fi
"$python_bin" - <<'PY' || { echo "setup: Python 3.11 or newer is required" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY
command -v java >/dev/null 2>&1 || { echo "setup: Java 17 is required by Spark (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }

[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
# The project itself, editable, with every host's extra and the tests' (`fruitflow` on the venv's PATH, its
# packages importable everywhere: Airflow, spark-submit's driver, the tests), at the pins of both locks.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -c constraints-dev.txt \
  -e ".[airflow,spark-node,resnet50,dev]"
.venv/bin/python scripts/check_setup.py
