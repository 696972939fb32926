"""The benchmarks (fruitflow.bench.featurize, fruitflow.bench.e2e: `make bench`, `make bench E2E=1`) keep
working: each runs on a handful of real images (on the shared stack) and prints its figures as JSON on
the last line. No figure is judged here: targets live in the benchmarks."""

import json
import subprocess
import sys

import pytest

from spark_jobs.common.steps import STEP_NAMES
from tests.helpers import ROOT, SAMPLE_500, real_images

pytestmark = pytest.mark.slow


def _bench(*argv, timeout=900):
    result = subprocess.run([sys.executable, "-m", "fruitflow.cli", *argv], cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_featurization_benchmark_smoke(stack, image_tree):
    data = image_tree(real_images(SAMPLE_500, 2, 4))
    figures = _bench("bench", "--data", str(data), "--n", "8", "--rounds", "1", "--calibration", "4",
                     "--original-max", "2")
    assert figures["n_images"] == 8
    # OpenVINO's two contenders when it is installed (it is not in the pinned set)
    assert set(figures["img_per_s"]) - {"openvino", "openvino-int8"} == {
        "bare", "bare-int8", "ours", "ours-int8", "tf-batched", "original"}
    assert all(rate > 0 for rate in figures["img_per_s"].values())
    for key in ("ratio_ours_vs_original", "ratio_ours_vs_bare", "int8_speedup", "int8_cosine_min", "load_avg"):
        assert key in figures
    # both backbones, Lite0's figures at the top level
    assert set(figures["backbones"]) == {"efficientnet_lite0", "resnet50"}
    assert figures["backbone"] == "efficientnet_lite0"
    assert figures["img_per_s"] == figures["backbones"]["efficientnet_lite0"]["img_per_s"]
    for backbone in figures["backbones"].values():
        assert all(rate > 0 for rate in backbone["img_per_s"].values()) and backbone["int8_speedup"] > 0
        assert "skipped" in backbone["openvino"] or backbone["openvino"]["speedup_fp32"] > 0
    assert isinstance(figures["cpu_flags"], list)
    # classify needs a finished demo in the store: measured when there is one, else said so
    assert "skipped" in figures["classify"] or figures["classify"]["img_per_s"] > 0


def test_dag_benchmark_smoke(stack, image_tree, monkeypatch):
    data = image_tree(real_images(SAMPLE_500, 2, 3))
    # The offline default model, which the DAG tests have already put in the models bucket: no export here.
    monkeypatch.setenv("FRUITFLOW_BACKBONE", "efficientnet_lite0")
    figures = _bench("bench-e2e", "--data", str(data), "--weights", "imagenet", "--floor-rounds", "1")
    e2e = figures["e2e"]
    assert e2e["n_images"] == 6
    assert e2e["dag_wall_s"] > e2e["featurize_model_s"] > 0
    assert set(STEP_NAMES) <= set(e2e["tasks"])
    # the DAG's fixed cost against its floor, a trivial spark-submit per Spark step in a row: dag.test()
    # runs one task at a time, so all of them
    assert e2e["spark_steps_in_a_row"] == len(STEP_NAMES) and e2e["trivial_submit_s"] > 0
    assert e2e["ratio_overhead_vs_floor"] == round(e2e["overhead_s"] / (len(STEP_NAMES) * e2e["trivial_submit_s"]), 3)
    # the bare engine on the run's model and images; the DAG's slope needs SCALE's sizes
    cost = figures["cost"]
    assert cost["engine_images"] == 6 and cost["engine_core_ms_per_image"] > 0
    assert cost["pipeline_core_ms_per_image"] is None and cost["worker_cores"] >= 1
