"""The opt-in INT8 model through the pipeline's store: made once in the models location, then reused."""

import types
import uuid

from spark_jobs import quantize


def test_pipeline_int8_model_is_stored_once_then_reused(stack, spark, cfg, model_files, calibration_and_held_out):
    """materialize_int8 on a Spark DataFrame of preprocessed images: a bounded calibration sample,
    the model and its completion marker in the models location, and the same model on a second call."""
    from spark_jobs.common import images, storage

    paths, rgb, _ = calibration_and_held_out
    cfg = cfg.with_overrides(backbone="resnet50")  # model_files' backbone, as the run's list_new gives it
    frame = spark.createDataFrame(
        [(f"{p.parent.name}/{p.name}", p.parent.name, "etag", images.stored(img)) for p, img in zip(paths, rgb)],
        "key string, category string, etag string, image binary")
    fp32 = types.SimpleNamespace(tag=f"test-{uuid.uuid4().hex[:8]}", onnx_uri=model_files["onnx"])
    first = quantize.materialize_int8(spark, cfg, fp32, frame, n=10)
    assert first.n_calibration == 10 and not first.reused
    assert first.uri == f"{cfg.models_uri}/{fp32.tag}/model-int8-{first.calibration_hash}.onnx"
    assert storage.exists(spark, first.uri) and storage.exists(spark, first.uri + ".json")
    second = quantize.materialize_int8(spark, cfg, fp32, frame, n=10)
    assert second.reused and second.uri == first.uri
    storage.delete(spark, f"{cfg.models_uri}/{fp32.tag}")
