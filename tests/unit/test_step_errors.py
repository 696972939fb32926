"""What a step says when it fails: Spark's own message reaches the task log (the step's stderr)."""

import subprocess
import sys

import pytest

# A step whose work raises one of Spark's errors: reading a folder with no Parquet file in it.
FAILING_STEP = """
import sys
from spark_jobs import step_cli

def runner(spark, cfg, args, out):
    spark.read.parquet(sys.argv[1]).count()

step_cli.run_step("pca", step_cli.parser(None), ["--run-id", "t", "--master", "local[1]"], runner)
"""


@pytest.mark.slow
def test_sparks_error_message_reaches_the_log_after_the_session_stops(tmp_path):
    (tmp_path / "empty").mkdir()
    done = subprocess.run([sys.executable, "-c", FAILING_STEP, (tmp_path / "empty").as_uri()],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "str() failed" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("spark_jobs.step_cli.SparkError: AnalysisException: [UNABLE_TO_INFER_SCHEMA]"), last
