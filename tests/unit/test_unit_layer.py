"""`make test-unit` needs no stack: it prepares nothing and writes nothing into the state folder."""

import os
import subprocess
import sys

from tests.helpers import ROOT


def test_the_fast_unit_layer_leaves_the_state_folder_untouched(tmp_path):
    """Run as `make test-unit` runs it (a few of its tests), with the state folder pointed at an empty
    folder: no credentials written, no jar resolved, no Airflow home, nothing at all there afterwards."""
    state = tmp_path / "state"
    env = {**os.environ, "FRUITFLOW_STATE_DIR": str(state)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit",
                           "-m", "not slow", "-k", "test_operator or test_listing"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout
    assert not state.exists() or not any(state.iterdir()), sorted(p.name for p in state.rglob("*"))
