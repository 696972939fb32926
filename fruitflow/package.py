"""Builds dist/fruitflow_jobs.zip: the `spark_jobs` package that spark-submit ships with --py-files."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

from fruitflow.paths import ROOT

DEFAULT_ZIP = ROOT / "dist" / "fruitflow_jobs.zip"


def build_zip(dest: Path = DEFAULT_ZIP) -> Path:
    """Rebuilt only when a source file is newer than the zip."""
    sources = sorted(p for p in (ROOT / "spark_jobs").rglob("*.py") if "__pycache__" not in p.parts)
    if dest.exists() and dest.stat().st_mtime >= max(p.stat().st_mtime for p in sources):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sources:
            zf.write(path, path.relative_to(ROOT).as_posix())
    tmp.replace(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(prog="fruitflow zip", description=__doc__).parse_args(argv)
    print(build_zip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
