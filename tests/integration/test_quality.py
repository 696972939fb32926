"""`make quality` keeps working: the evaluation of the pipeline's own reduction, clustering and classifier
on a folder of real photos (`--data`: a few here; the shared sets in `make quality`), its table printed and
its figures as JSON on the last line. No figure is judged here: docs/quality.md holds them."""

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT, SAMPLE_500, real_images

pytestmark = pytest.mark.slow


def test_quality_smoke(image_tree):
    data = image_tree(real_images(SAMPLE_500, 3, 4))
    done = subprocess.run([sys.executable, "-m", "fruitflow.cli", "quality", "--data", str(data), "--backbone",
                           "efficientnet_lite0"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    *table, last = done.stdout.strip().splitlines()
    scores = json.loads(last)["efficientnet_lite0"][data.name]
    assert scores["n_images"] == 12 and scores["k"] >= 2
    for key in ("explained_variance", "ari", "nmi", "silhouette", "accuracy", "macro_f1"):
        assert scores[key] is not None, key
    assert any(line.startswith("efficientnet_lite0") for line in table)
