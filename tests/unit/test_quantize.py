"""Opt-in INT8 featurizer: static QDQ quantization calibrated on a few real images must keep the
features of other (held-out) real images close to the FP32 model's; the pipeline stores it once and
reuses it."""


import numpy as np
import pytest

from spark_jobs import quantize
from spark_jobs.common.config import Config
from spark_jobs.common.models import OnnxFeaturizer


@pytest.fixture(scope="module")
def int8_model(model_files, calibration_and_held_out, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("int8") / "model-int8.onnx")
    info = quantize.quantize_onnx(model_files["onnx"], path, calibration_and_held_out[1])
    return path, info


def test_int8_features_match_fp32_on_held_out_real_images(model_files, int8_model, calibration_and_held_out):
    import onnx

    path, info = int8_model
    assert info["n_calibration"] == 16 and info["format"] == "QDQ"
    ops = {n.op_type for n in onnx.load(path, load_external_data=False).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # really quantized
    held_out = calibration_and_held_out[2].astype(np.float32)
    fp32 = OnnxFeaturizer(model_files["onnx"], threads=2)(held_out)
    int8 = OnnxFeaturizer(path, threads=2)(held_out)
    assert int8.shape == fp32.shape == (len(held_out), 2048)
    cosine = quantize.cosine_per_row(fp32, int8)
    assert cosine.min() >= 0.99, cosine
    assert not np.allclose(fp32, int8, atol=1e-4)  # and not silently the FP32 model


def test_calibration_reader_batches_and_rewinds(calibration_and_held_out):
    rgb = calibration_and_held_out[1]
    reader = quantize.make_reader(rgb, batch_size=5)
    sizes = []
    while (item := reader.get_next()) is not None:
        assert item["rgb"].dtype == np.float32
        sizes.append(len(item["rgb"]))
    assert sizes == [5, 5, 5, 1]
    reader.rewind()
    assert len(reader.get_next()["rgb"]) == 5
    with pytest.raises(ValueError):
        quantize.make_reader(rgb[:, :100])


def test_calibration_hash_depends_on_images_and_model_not_order():
    a = quantize.calibration_hash("m1", ["a/1.jpg@e1", "b/2.jpg@e2"])
    assert a == quantize.calibration_hash("m1", ["b/2.jpg@e2", "a/1.jpg@e1"])
    assert a != quantize.calibration_hash("m2", ["a/1.jpg@e1", "b/2.jpg@e2"])
    assert a != quantize.calibration_hash("m1", ["a/1.jpg@e1", "b/2.jpg@e3"])


def test_precision_is_validated():
    assert Config().precision == "fp32"
    assert Config.from_env({"FRUITFLOW_PRECISION": "int8"}).precision == "int8"
    with pytest.raises(ValueError, match="precision"):
        Config(precision="int4")
    with pytest.raises(ValueError, match="onnx"):
        Config(precision="int8", engine="tensorflow")
