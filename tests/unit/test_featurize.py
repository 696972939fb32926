"""ResNet50 featurization: ONNX Runtime against the TensorFlow reference on real images, and the
Iterator pandas UDF on a local SparkSession."""

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


def test_featurize_udf_gives_the_models_features(spark, image_tree, model_files, cfg, real_batch):
    paths = real_images(SAMPLE_500, 4, 2)
    root = image_tree(paths)
    frame = preprocess.with_keys(preprocess.extract(spark, root.as_uri()), root.as_uri())
    prepared = preprocess.preprocess_images(frame.filter("ignored_reason is null"), cfg).filter("status = 'ok'")
    out = featurize.featurize_images(prepared.repartition(3), model_files["onnx"], "onnx", batch_size=3,
                                     backbone="resnet50")
    collected = out.collect()
    rows = {r["key"]: np.asarray(r["features"], np.float32) for r in collected}
    colours = {r["key"]: np.asarray(r["color"], np.float32) for r in collected}
    assert len(rows) == len(paths)
    stored = np.stack([images.as_stored(rgb) for rgb in real_batch])  # the pixels the table gives back
    direct = models.OnnxFeaturizer(model_files["onnx"])(stored)
    for i, p in enumerate(paths):
        got = rows[f"{p.parent.name}/{p.name}"]
        assert got.shape == (2048,)
        np.testing.assert_allclose(got, direct[i], atol=1e-4, rtol=1e-5)
        expected_colour = images.color_histogram(real_batch[i].astype(np.uint8))  # of the exact pixels
        np.testing.assert_allclose(colours[f"{p.parent.name}/{p.name}"], expected_colour, atol=1e-6)


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


def test_featurize_refuses_a_preprocessed_table_of_another_stored_form_or_histogram():
    from spark_jobs.common.images import COLOR_DESCRIPTOR, STORED_FORMAT
    from spark_jobs.featurize import incompatible_reason

    ours = {"image_format": STORED_FORMAT, "color_descriptor": COLOR_DESCRIPTOR}
    assert incompatible_reason(ours) is None
    assert "image_format 'raw-rgb'" in incompatible_reason({**ours, "image_format": "raw-rgb"})
    assert "color_descriptor None" in incompatible_reason({"image_format": STORED_FORMAT})
