"""ResNet50 featurization: ONNX Runtime against the TensorFlow reference on real images, and the
featurize step's one pass over each photo (read, decode, preprocess, model) on a local SparkSession."""

import numpy as np
import pytest

from spark_jobs import featurize, preprocess
from spark_jobs.common import images, models
from tests.helpers import SAMPLE_500, real_images


@pytest.fixture(scope="module")
def real_batch():
    paths = real_images(SAMPLE_500, 4, 2)
    return np.stack([images.preprocess(images.decode(p.read_bytes(), 10**7)) for p in paths]).astype(np.float32)


def test_onnx_matches_tensorflow_on_real_images(model_files, real_batch):
    tf_features = models.TensorFlowFeaturizer(model_files["keras"], backbone="resnet50")(real_batch)
    onnx_features = models.OnnxFeaturizer(model_files["onnx"])(real_batch)
    assert tf_features.shape == onnx_features.shape == (len(real_batch), 2048)
    assert np.abs(tf_features - onnx_features).max() <= 1e-4


def test_preprocess_input_is_applied(model_files, real_batch):
    """The featurizer must see caffe-style inputs (BGR, mean-subtracted), not raw 0-255 RGB."""
    import keras
    from keras.applications import resnet50

    model = keras.saving.load_model(model_files["keras"], compile=False)
    with_pre = np.asarray(model.predict_on_batch(resnet50.preprocess_input(real_batch.copy())))
    raw = np.asarray(model.predict_on_batch(real_batch))
    ours = models.OnnxFeaturizer(model_files["onnx"])(real_batch)
    assert np.abs(ours - with_pre).max() <= 1e-4
    assert np.abs(ours - raw).max() > 1e-2


def test_the_pass_gives_the_models_features_of_the_stored_image_and_rejects_bad_files(
        spark, image_tree, model_files, cfg, real_batch):
    """Each photo goes from the decoder to the model in the same worker: its vector is the model's of its
    stored image's pixels (what `make classify` gives the model too), its colour histogram of the exact
    pixels; a file that cannot be decoded is a reject with its reason, beside the others."""
    paths = real_images(SAMPLE_500, 4, 2)
    root = image_tree(paths)
    (root / "Pear").mkdir()
    (root / "Pear" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a JPEG")
    frame = preprocess.with_keys(preprocess.extract(spark, root.as_uri()), root.as_uri())
    step_cfg = cfg.with_overrides(backbone="resnet50", engine="onnx", batch_size=3, model_batch_size=2)
    out = featurize.featurize_photos(frame.filter("ignored_reason is null").repartition(3), step_cfg,
                                     model_files["onnx"])
    collected = {r["key"]: r for r in out.collect()}
    assert collected["Pear/broken.jpg"]["status"] == "rejected" and collected["Pear/broken.jpg"]["features"] is None
    assert collected["Pear/broken.jpg"]["reason"]
    stored = np.stack([images.as_stored(rgb.astype(np.uint8)) for rgb in real_batch])
    direct = models.OnnxFeaturizer(model_files["onnx"])(stored)
    for i, p in enumerate(paths):
        row = collected[f"{p.parent.name}/{p.name}"]
        assert row["status"] == "ok" and row["reason"] is None
        got = np.asarray(row["features"], np.float32)
        assert got.shape == (2048,)
        np.testing.assert_allclose(got, direct[i], atol=1e-4, rtol=1e-5)
        expected_colour = images.color_histogram(real_batch[i].astype(np.uint8))
        np.testing.assert_allclose(np.asarray(row["color"], np.float32), expected_colour, atol=1e-6)
    assert len(collected) == len(paths) + 1


def test_int8_calibrates_on_a_bounded_sample_of_the_runs_photos_chosen_by_key(spark, image_tree, cfg, monkeypatch):
    """`--precision int8` quantizes on at most CALIBRATION_IMAGES of the run's photos, preprocessed before
    the pass: the same photos give the same sample, whatever their order, and a reject is not among them."""
    from pyspark.sql import functions as F

    from spark_jobs import quantize

    monkeypatch.setattr(quantize, "CALIBRATION_IMAGES", 4)
    root = image_tree(real_images(SAMPLE_500, 3, 2))
    (root / "Pear").mkdir()
    (root / "Pear" / "broken.jpg").write_bytes(b"not an image")
    frame = preprocess.with_keys(preprocess.extract(spark, root.as_uri()), root.as_uri())
    candidates = frame.filter("ignored_reason is null")
    sample = featurize.calibration_images(candidates, cfg).collect()
    again = featurize.calibration_images(candidates.orderBy(F.desc("key")).repartition(3), cfg).collect()
    assert 0 < len(sample) <= 4 and sorted(r["key"] for r in sample) == sorted(r["key"] for r in again)
    chosen = [r["key"] for r in candidates.select("key").orderBy(F.xxhash64("key"), "key").limit(4).collect()]
    assert {r["key"] for r in sample} == set(chosen) - {"Pear/broken.jpg"}
    assert all(images.from_stored(r["image"]).shape == (224, 224, 3) for r in sample)


def test_a_run_with_no_image_to_decode_succeeds_and_says_why(spark, tmp_path, cfg, model_files):
    """Every listed file ignored (or, in the DAG, every image already featurized): nothing is decoded, the
    step's table is empty and partitioned by status, which Spark cannot read back without its schema
    (UNABLE_TO_INFER_SCHEMA, on every attempt and every later run). The step succeeds, counts what it
    left, names its model (the table's newest step defines the table's model) and its features output
    reads as an empty table."""
    root = tmp_path / "raw"
    (root / "Apple").mkdir(parents=True)
    (root / "notes.txt").write_text("not in a fruit folder")
    (root / "Apple" / "readme.txt").write_text("not an image")
    step_cfg = cfg.with_overrides(backbone="resnet50", weights=model_files["onnx"], engine="onnx")
    manifest = featurize.run(spark, step_cfg, raw_uri=root.as_uri(), out_uri=(tmp_path / "out").as_uri())
    assert manifest["counts"] == {"n_input": 0, "n_images": 0, "n_rejected": 0, "n_ignored": 2,
                                  "n_retry_next_run": 0, "n_already_featurized": 0, "n_categories": 0}
    assert manifest["params"]["backbone"] == "resnet50" and manifest["params"]["weights"] == model_files["onnx"]
    assert manifest["params"]["feature_dim"] is None
    assert spark.read.parquet(manifest["outputs"]["features"]).count() == 0
    assert spark.read.json(manifest["outputs"]["rejects"]).count() == 0
    # what the run summary and the report name: each ignored file with its reason
    assert sorted(manifest["samples"]["ignored"], key=lambda r: r["key"]) == [
        {"key": "Apple/readme.txt", "reason": "not an image extension"},
        {"key": "notes.txt", "reason": "not at <category>/<file> depth"}]


def test_imagenet_without_internet_fails_with_a_clear_message(monkeypatch):
    import keras

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")  # what keras' get_file raises offline

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.resnet.file_utils.get_file", offline)
    with pytest.raises(models.ModelUnavailable, match="weights=random"):
        models.build_keras_model("resnet50", "imagenet", seed=0)


# --------------------------------------------------------------------------- EfficientNet-Lite0 (offline ImageNet)


@pytest.fixture(scope="module")
def lite0_classifier():
    from spark_jobs.common import efficientnet_lite
    from spark_jobs.common.torch_checkpoint import load_state_dict

    return efficientnet_lite.load(load_state_dict(efficientnet_lite.packaged_checkpoint()), include_top=True)


@pytest.mark.parametrize("fruit, imagenet_class", [("Banana", 954), ("Orange", 950), ("Lemon", 951),
                                                   ("Strawberry", 949)])
def test_lite0_weights_are_imagenet(lite0_classifier, fruit, imagenet_class):
    """Through the pipeline's own preprocessing, the network's own head names the real fruit."""
    from spark_jobs.common import efficientnet_lite

    if not (SAMPLE_500 / fruit).is_dir():
        pytest.skip(f"{SAMPLE_500 / fruit} not found")
    path = sorted((SAMPLE_500 / fruit).glob("*.jpg"))[0]
    rgb = images.preprocess(images.decode(path.read_bytes(), 10**7)).astype(np.float32)[None]
    logits = np.asarray(lite0_classifier.predict_on_batch(efficientnet_lite.preprocess(rgb)))
    assert logits.shape == (1, 1000)
    assert int(logits.argmax()) == imagenet_class


def test_lite0_onnx_export_matches_keras(lite0_files, real_batch):
    keras_features = models.TensorFlowFeaturizer(lite0_files["keras"], backbone="efficientnet_lite0")(real_batch)
    onnx_features = models.OnnxFeaturizer(lite0_files["onnx"])(real_batch)
    assert onnx_features.shape == (len(real_batch), 1280)
    assert np.abs(keras_features - onnx_features).max() <= 1e-4
    assert np.abs(onnx_features).max() > 0.1  # not a dead network


def test_lite0_loading_is_strict():
    from spark_jobs.common import efficientnet_lite
    from spark_jobs.common.torch_checkpoint import load_state_dict

    state = load_state_dict(efficientnet_lite.packaged_checkpoint())
    assert len(state) == 296 and state["_conv_head.weight"].shape == (1280, 320, 1, 1)
    with pytest.raises(KeyError, match="_blocks.3._depthwise_conv.weight"):
        efficientnet_lite.load({k: v for k, v in state.items() if k != "_blocks.3._depthwise_conv.weight"})
    with pytest.raises(ValueError, match="not used"):
        efficientnet_lite.load({**state, "_extra.weight": np.zeros(3, np.float32)})
