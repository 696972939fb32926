"""The benchmarks: `make bench` (featurize.py, the model call) and `make bench E2E=1` (e2e.py, the DAG)."""

from __future__ import annotations

import os
from pathlib import Path


def ready(data: Path, log) -> bool:
    """Whether `data` is a folder of photos to bench on; if it is, this process gets the local stack's
    environment (the benchmarks run against the stack `fruitflow stack up` starts)."""
    from fruitflow import stack

    if not data.is_dir():
        log(f"no images at {data}: pass DATA=<folder of <fruit>/<image>.jpg>")
        return False
    os.environ.update(stack.prepared_env())
    return True
