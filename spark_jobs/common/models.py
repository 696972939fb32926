"""The featurizer: ResNet50 without its top (global average pooling, 2048 floats per image).

The driver materialises the model once per run into the models location (a Keras file for the
TensorFlow engine and an ONNX export with `preprocess_input` baked in for ONNX Runtime); executors
load it once per Python worker. TensorFlow is imported only where a Keras model is built or run.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from .config import FEATURE_DIM, IMAGE_SIZE, Config

ONNX_INPUT = "rgb"


class ModelUnavailable(RuntimeError):
    """The requested weights cannot be had here; the message says what to do instead."""


@dataclass(frozen=True)
class MaterializedModel:
    weights: str  # what was asked: imagenet | random | a path
    tag: str  # folder under the models location
    onnx_uri: str
    keras_uri: str | None

    def uri_for(self, engine: str) -> str:
        if engine == "onnx":
            return self.onnx_uri
        if not self.keras_uri:
            raise ModelUnavailable(f"weights {self.weights!r} are an ONNX file: the tensorflow engine needs a Keras model")
        return self.keras_uri


def weights_tag(cfg: Config) -> str:
    import keras

    if cfg.weights == "imagenet":
        return f"imagenet-keras{keras.__version__}"
    if cfg.weights == "random":
        # Keras' initialisers may change between versions: the version is part of the identity.
        return f"random-seed{cfg.seed}-keras{keras.__version__}"
    digest = hashlib.sha256(cfg.weights.encode()).hexdigest()[:12]
    return f"custom-{digest}"


def build_keras_model(backbone: str, weights: str, seed: int, local_path: str | None = None):
    """A Keras ResNet50 feature extractor that expects `preprocess_input`-ed images."""
    import keras
    from keras.applications import resnet50

    if backbone != "resnet50":
        raise ValueError(f"unknown backbone {backbone!r}")
    shape = (IMAGE_SIZE, IMAGE_SIZE, 3)
    if weights == "imagenet":
        try:
            return resnet50.ResNet50(weights="imagenet", include_top=False, pooling="avg", input_shape=shape)
        except Exception as exc:  # noqa: BLE001 - Keras raises several kinds for a failed download
            raise ModelUnavailable(
                "could not fetch the ImageNet ResNet50 weights through Keras' download "
                f"({type(exc).__name__}: {exc}). Without internet access, pass weights=random "
                "(fixed-seed initialisation) or weights=<path or s3a URI of a saved .keras model>."
            ) from exc
    if weights == "random":
        keras.utils.set_random_seed(seed)
        return resnet50.ResNet50(weights=None, include_top=False, pooling="avg", input_shape=shape)
    if not local_path or not os.path.exists(local_path):
        raise ModelUnavailable(f"model file {weights!r} not found")
    model = keras.saving.load_model(local_path, compile=False)
    if tuple(model.output_shape) != (None, FEATURE_DIM[backbone]):
        raise ModelUnavailable(
            f"{weights!r} outputs {model.output_shape}; expected (None, {FEATURE_DIM[backbone]}) "
            "(ResNet50, include_top=False, pooling='avg')"
        )
    return model


def export_onnx(model, path: str) -> None:
    """tf2onnx export of `preprocess_input` + the Keras model: the ONNX graph takes RGB 0-255."""
    import tensorflow as tf
    import tf2onnx
    from keras.applications import resnet50

    @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32, name=ONNX_INPUT)])
    def featurize(rgb):
        return model(resnet50.preprocess_input(rgb), training=False)

    tf2onnx.convert.from_function(featurize, input_signature=featurize.input_signature, opset=17, output_path=path)


def materialize(spark, cfg: Config) -> MaterializedModel:
    """Build the model once for the run and store it in the models location (reused when present)."""
    from . import storage

    tag = weights_tag(cfg)
    folder = f"{cfg.models_uri}/{tag}"
    if cfg.weights.endswith(".onnx"):
        if not storage.exists(spark, cfg.weights) and not os.path.exists(cfg.weights):
            raise ModelUnavailable(f"model file {cfg.weights!r} not found")
        return MaterializedModel(cfg.weights, tag, cfg.weights, None)
    onnx_uri, keras_uri = f"{folder}/model.onnx", f"{folder}/model.keras"
    if storage.exists(spark, onnx_uri) and storage.exists(spark, keras_uri):
        return MaterializedModel(cfg.weights, tag, onnx_uri, keras_uri)
    with tempfile.TemporaryDirectory(prefix="fruitflow-model-") as tmp:
        local_source = None
        if cfg.weights not in ("imagenet", "random"):
            local_source = os.path.join(tmp, "source.keras")
            if os.path.exists(cfg.weights):
                local_source = cfg.weights
            elif storage.exists(spark, cfg.weights):
                storage.download_file(spark, cfg.weights, local_source)
        model = build_keras_model(cfg.backbone, cfg.weights, cfg.seed, local_source)
        model.save(os.path.join(tmp, "model.keras"))
        export_onnx(model, os.path.join(tmp, "model.onnx"))
        # ONNX last: its presence is what marks the folder complete.
        storage.upload_file(spark, os.path.join(tmp, "model.keras"), keras_uri)
        storage.upload_file(spark, os.path.join(tmp, "model.onnx"), onnx_uri)
    return MaterializedModel(cfg.weights, tag, onnx_uri, keras_uri)


# --------------------------------------------------------------------------- executors

_LOADED: dict[tuple[str, str], object] = {}


class OnnxFeaturizer:
    def __init__(self, path: str, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return self.session.run(None, {ONNX_INPUT: rgb.astype(np.float32, copy=False)})[0]


class TensorFlowFeaturizer:
    def __init__(self, path: str, threads: int = 1):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass  # already initialised in this process: the first setting stays
        import keras

        self.model = keras.saving.load_model(path, compile=False)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from keras.applications import resnet50

        x = resnet50.preprocess_input(rgb.astype(np.float32, copy=True))
        return np.asarray(self.model.predict_on_batch(x))


def load_featurizer(path: str, engine: str, threads: int = 1):
    """Once per Python worker process (Spark reuses workers across tasks)."""
    key = (path, engine)
    if key not in _LOADED:
        _LOADED[key] = (OnnxFeaturizer if engine == "onnx" else TensorFlowFeaturizer)(path, threads)
    return _LOADED[key]
