"""The five steps submitted with spark-submit (the provider's SparkSubmitHook, as the DAG does) to the
standalone master, reading and writing S3 through s3a, on a small real subset plus bad files."""

import json
import uuid

import numpy as np
import pytest
from airflow.sdk.exceptions import AirflowException


from fruitflow.package import build_zip
from fruitflow.stack.process import http_json, wait_until
from spark_jobs.common.config import split_s3_uri
from spark_jobs.common.steps import NOT_RETRYABLE
from tests.badfiles import write_bad_files
from tests.helpers import SAMPLE_500, list_keys, read_manifest, read_parquet, real_images, submit_step



def test_the_steps_on_the_standalone_master(stack, s3, cfg, image_tree, upload_folder):
    build_zip()
    reals = real_images(SAMPLE_500, 3, 4)
    root = image_tree(reals)
    expected = write_bad_files(root, reals[0].read_bytes())
    (root / "README.txt").write_text("a stray note at the top level")
    raw_uri = upload_folder(root, cfg.raw_bucket)
    run_id = f"it-{uuid.uuid4().hex[:6]}"
    n_bad = sum(1 for v in expected.values() if v == "reject")
    n_odd_ok = len(expected) - n_bad

    submit_step("preprocess", cfg, run_id, "--raw", raw_uri)
    pre = read_manifest(s3, cfg.step_uri(run_id, "preprocess"))
    assert pre["counts"]["n_input"] == len(reals) + len(expected)
    assert pre["counts"]["n_images"] == len(reals) + n_odd_ok
    assert pre["counts"]["n_rejected"] == n_bad
    assert pre["counts"]["n_ignored"] == 1
    jpegs = list_keys(s3, pre["outputs"]["jpeg"])
    assert len(jpegs) == pre["counts"]["n_images"]
    assert any(k.endswith(f"{reals[0].parent.name}/{reals[0].name}") for k in jpegs)

    submit_step("featurize", cfg, run_id, "--input", pre["step_uri"], "--weights", "random", "--batch-size", "8")
    feat = read_manifest(s3, cfg.step_uri(run_id, "featurize"))
    assert feat["counts"]["n_images"] == pre["counts"]["n_images"]
    assert feat["params"]["feature_dim"] == 2048 and feat["params"]["weights"] == "random"
    assert list_keys(s3, feat["outputs"]["model"].rsplit("/", 1)[0])
    # Parquet goes through the S3A magic committer (spark-hadoop-cloud 4.0.0's binding on Spark 4.3): its
    # _SUCCESS is the committer's JSON report, where the classic committer leaves an empty file.
    bucket, key = split_s3_uri(feat["outputs"]["features"] + "/_SUCCESS")
    success = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read() or b"{}")
    assert success.get("committer") == "magic", success
    assert not [k for k in list_keys(s3, feat["step_uri"]) if "__magic" in k]  # nothing pending left behind

    submit_step("pca", cfg, run_id, "--k", "5")
    pca = read_manifest(s3, cfg.step_uri(run_id, "pca"))
    assert pca["params"]["k"] == 5 and pca["counts"]["n_images"] == feat["counts"]["n_images"]
    assert 0 < pca["metrics"]["explained_variance"] <= 1
    assert len(pca["metrics"]["explained_variance_per_component"]) == 5
    bucket, key = split_s3_uri(pca["outputs"]["categories_csv"])
    categ = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()
    assert categ[0] == "categ;key" and len(categ) == 1 + pca["counts"]["n_images"]

    submit_step("cluster", cfg, run_id, "--input", pca["step_uri"])
    clu = read_manifest(s3, cfg.step_uri(run_id, "cluster"))
    assert clu["params"]["n_clusters"] == 4  # three fruit folders and the generated 'Odd' one
    for metric in ("silhouette", "ari", "nmi", "purity"):
        assert -1 <= clu["metrics"][metric] <= 1
    report = list_keys(s3, clu["outputs"]["report_folder"])
    assert {k.rsplit("/", 1)[1] for k in report} >= {"index.html", "pca_by_fruit.png", "tsne_by_cluster.png"}

    submit_step("train", cfg, run_id, "--input", pca["step_uri"])
    trn = read_manifest(s3, cfg.step_uri(run_id, "train"))
    assert trn["counts"]["n_images"] == pca["counts"]["n_images"] == trn["counts"]["n_train"] + trn["counts"]["n_held_out"]
    assert trn["counts"]["n_classes"] == 4 and trn["counts"]["n_held_out"] >= 4  # one of each class at least
    assert 0 <= trn["metrics"]["accuracy"] <= 1 and 0 <= trn["metrics"]["macro_f1"] <= 1
    assert set(trn["metrics"]["per_class_recall"]) == {p.parent.name for p in reals} | {"Odd"}
    assert trn["outputs"]["model"].startswith(f"{trn['step_uri']}/classifier-resnet50-random-")
    assert split_s3_uri(trn["step_uri"])[0] == cfg.models_bucket
    assert trn["outputs"]["backbone_model"] == feat["outputs"]["model"]

    # Spark-free classification from the exported artifacts: the same features as the pipeline's
    from fruitflow.classify import Classifier, load_image

    classifier = Classifier.from_steps(trn["step_uri"], clu["step_uri"], cfg)
    assert classifier.centres is not None and len(classifier.centres) == 4
    table = read_parquet(s3, feat["outputs"]["features"]).set_index("key")
    reduced = read_parquet(s3, pca["outputs"]["reduced"]).set_index("key")
    rgb = np.stack([load_image(p, cfg) for p in reals])
    features, color = classifier.features(rgb)
    keys = [f"{p.parent.name}/{p.name}" for p in reals]
    assert np.abs(features - np.stack(table.loc[keys, "features"])).max() <= 1e-5
    assert np.abs(color - np.stack(table.loc[keys, "color"])).max() <= 1e-6
    assert np.abs(classifier.reduce(features, color) - np.stack(reduced.loc[keys, "pca"])).max() <= 1e-5
    results = classifier.predict([*reals, root / "Odd" / "text.jpg"])
    assert {r["fruit"] for r in results[:-1]} <= {p.parent.name for p in reals} | {"Odd"}
    assert all(len(r["top"]) == 3 and len(r["neighbours"]) == 3 for r in results[:-1])
    assert results[-1]["error"].startswith("unsupported format") and "fruit" not in results[-1]

    # Every step's application is on the Spark history server once it has ended.
    apps = {f"fruitflow-{step}-{run_id}" for step in ("preprocess", "featurize", "pca", "cluster", "train")}
    wait_until(lambda: apps <= {a["name"] for a in http_json(f"{cfg.spark_history_url}/api/v1/applications")},
               60, "the steps' applications in the history server")

    # A refusal (here: no upstream manifest) exits with the code the operator does not retry.
    with pytest.raises(AirflowException, match=f"Error code is: {NOT_RETRYABLE}\\."):
        submit_step("featurize", cfg, f"{run_id}-x", "--input", cfg.step_uri(f"{run_id}-x", "preprocess"))
