"""Where things are in a checkout (the project is installed in editable mode: files stay in place)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAGS = ROOT / "dags"
OUT = ROOT / "out"
# The Fruits-360 samples, read by path from the folder beside the checkout (never copied in).
SHARED_FRUITS = ROOT.parent / "shared" / "fruits360"
SAMPLE_500 = SHARED_FRUITS / "data_sample_025_020"
SAMPLE_1179 = SHARED_FRUITS / "data_sample_009"


def spark_home() -> Path:
    """pyspark's folder, found without importing it (commands such as `classify` run without Spark)."""
    import importlib.util

    return Path(importlib.util.find_spec("pyspark").origin).resolve().parent
