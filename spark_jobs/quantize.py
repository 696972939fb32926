"""Opt-in INT8 featurizer: static post-training quantization of the FP32 ONNX model.

ONNX Runtime's `quantize_static` in QDQ format: weights signed 8-bit per output channel, activations
unsigned 8-bit per tensor, ranges calibrated (min/max) on real preprocessed images fed through a
`CalibrationDataReader`. The model is shape-inferred and optimised first (`quant_pre_process`), so
batch norms are folded and every convolution is quantizable; ONNX Runtime then runs the QDQ pairs as
integer kernels (QLinearConv, ...).

In the pipeline (`Config.precision == "int8"`) the featurize driver quantizes the run's FP32 model once,
calibrating on a bounded sample of the run's own preprocessed images (`calibration_sample`: a top-k by
key hash, never the whole table), and stores it beside the FP32 model as
`model-int8-<calibration hash>.onnx`, followed by a `.json` marker that makes it complete; the same
model and the same calibration images give the same hash, and the stored model is reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from spark_jobs.common.config import IMAGE_SIZE

ONNX_INPUT = "rgb"
CALIBRATION_IMAGES = 256  # a few hundred real images; more changes little for min/max ranges
CALIBRATION_BATCH = 8
# Part of the stored model's identity: change any of these and the hash changes.
SETTINGS = {
    "format": "QDQ",
    "per_channel": True,
    "activations": "QUInt8",
    "weights": "QInt8",
    "calibration": "MinMax",
    "reduce_range": False,
    # Only the heavy operators run in INT8. The pooled features themselves (GlobalAveragePool and
    # what follows) stay float: quantizing the 2048 outputs to 256 levels would add most of the error.
    "op_types": ["Conv", "Add", "MaxPool"],
    "first_conv_float": True,
    "version": 1,
}


def _ort_quantization():
    from onnxruntime import quantization

    return quantization


def make_reader(rgb: np.ndarray, batch_size: int = CALIBRATION_BATCH, input_name: str = ONNX_INPUT):
    """A CalibrationDataReader over N x 224 x 224 x 3 RGB images (uint8 or float), `batch_size` at a time."""
    q = _ort_quantization()

    class ImageCalibrationReader(q.CalibrationDataReader):
        def __init__(self):
            self.start = 0
            self.end = len(rgb)
            self.position = 0

        def get_next(self):
            if self.position >= self.end:
                return None
            stop = min(self.position + batch_size, self.end)
            batch = np.ascontiguousarray(rgb[self.position:stop], dtype=np.float32)
            self.position = stop
            return {input_name: batch}

        def rewind(self):
            self.position = self.start

        def __len__(self):
            return len(rgb)

        def set_range(self, start_index: int, end_index: int):
            self.start, self.end, self.position = start_index, min(end_index, len(rgb)), start_index

    if rgb.ndim != 4 or rgb.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) or len(rgb) == 0:
        raise ValueError(f"calibration images must be N x {IMAGE_SIZE} x {IMAGE_SIZE} x 3, got {rgb.shape}")
    return ImageCalibrationReader()


def quantize_onnx(fp32_path: str, int8_path: str, calibration_rgb: np.ndarray,
                  batch_size: int = CALIBRATION_BATCH) -> dict:
    """FP32 ONNX file -> static INT8 QDQ ONNX file, calibrated on `calibration_rgb` (RGB 0-255)."""
    q = _ort_quantization()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fruitflow-quant-") as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        # Shape inference + ORT's basic graph optimisations (BatchNorm folded into Conv, ...).
        q.quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
        exclude = _first_conv(prepared) if SETTINGS["first_conv_float"] else []
        q.quantize_static(
            prepared,
            int8_path,
            make_reader(calibration_rgb, batch_size),
            quant_format=q.QuantFormat.QDQ,
            per_channel=SETTINGS["per_channel"],
            reduce_range=SETTINGS["reduce_range"],
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            calibrate_method=q.CalibrationMethod.MinMax,
            op_types_to_quantize=list(SETTINGS["op_types"]),
            nodes_to_exclude=exclude,
            extra_options={
                # The min/max calibrator keeps only per-batch ReduceMin/ReduceMax outputs, so memory
                # stays small without CalibMaxIntermediateOutputs (which, in ORT 1.31, drops the
                # collected batches without merging their ranges: never set it).
                "ActivationSymmetric": False,
                "WeightSymmetric": True,
            },
        )
    return {"n_calibration": int(len(calibration_rgb)), "seconds": round(time.perf_counter() - started, 3),
            **SETTINGS}


def _first_conv(path: str) -> list[str]:
    """The stem convolution reads the mean-subtracted image: an 8-bit grid over its -124..152 range
    would round every pixel by up to half a step; it stays float (about 3 % of the FLOPs)."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    return [next(n.name for n in graph.node if n.op_type == "Conv")]


def calibration_hash(model_identity: str, keys: list[str]) -> str:
    """Identity of an INT8 model: the FP32 model it comes from, the calibration images and the settings."""
    import onnxruntime

    digest = hashlib.sha256()
    digest.update(model_identity.encode())
    digest.update(json.dumps(SETTINGS, sort_keys=True).encode())
    digest.update(onnxruntime.__version__.encode())
    for key in sorted(keys):
        digest.update(b"\0" + key.encode())
    return digest.hexdigest()[:16]


def cosine_per_row(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return np.einsum("ij,ij->i", a64, b64) / np.maximum(norms, np.finfo(np.float64).tiny)


# --------------------------------------------------------------------------- driver (Spark)


@dataclass(frozen=True)
class Int8Model:
    uri: str
    calibration_hash: str
    n_calibration: int
    reused: bool
    seconds: float


def calibration_sample(images, n: int = CALIBRATION_IMAGES) -> tuple[list[str], np.ndarray]:
    """At most `n` preprocessed images of a (key, etag, image) DataFrame: the top n keys by key hash (so
    the same images give the same sample), chosen on the key column alone, then only those n images
    are read and collected: the driver never holds more than n images, whatever the table's size."""
    from pyspark.sql import functions as F

    from spark_jobs.common.images import from_stored

    chosen = images.select("key").orderBy(F.xxhash64("key"), "key").limit(n)
    rows = sorted(images.join(F.broadcast(chosen), "key").select("key", "etag", "image").collect(),
                  key=lambda r: r["key"])
    keys = [f"{r['key']}@{r['etag']}" for r in rows]
    rgb = np.stack([from_stored(r["image"]) for r in rows]) if rows else np.empty((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    return keys, rgb


def int8_folder(cfg, model) -> str:
    """Beside the FP32 model when it lives in the models location, else the models location's tag folder."""
    folder = model.onnx_uri.rsplit("/", 1)[0]
    return folder if model.onnx_uri.startswith(cfg.models_uri + "/") else f"{cfg.models_uri}/{model.tag}"


def materialize_int8(spark, cfg, model, images, n: int = CALIBRATION_IMAGES) -> Int8Model:
    """The run's INT8 model: reused when the same FP32 model and calibration images made one before;
    otherwise quantized here on the driver and stored (model first, then its marker)."""
    from spark_jobs.common import storage

    started = time.perf_counter()
    keys, rgb = calibration_sample(images, n)
    if not keys:
        raise RuntimeError("no preprocessed images to calibrate the INT8 model on")
    digest = calibration_hash(f"{model.tag}|{model.onnx_uri}", keys)
    uri = f"{int8_folder(cfg, model)}/model-int8-{digest}.onnx"
    marker = uri + ".json"
    if storage.exists(spark, marker) and storage.exists(spark, uri):
        return Int8Model(uri, digest, len(keys), True, round(time.perf_counter() - started, 3))
    with tempfile.TemporaryDirectory(prefix="fruitflow-int8-") as tmp:
        fp32_local, int8_local = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "model-int8.onnx")
        if os.path.exists(model.onnx_uri):
            fp32_local = model.onnx_uri
        else:
            storage.download_file(spark, model.onnx_uri, fp32_local)
        info = quantize_onnx(fp32_local, int8_local, rgb)
        del rgb
        storage.delete(spark, marker)
        storage.upload_file(spark, int8_local, uri)
        # The marker last: its presence is what marks the INT8 model complete.
        storage.write_text(spark, marker, json.dumps(
            {**info, "source": model.onnx_uri, "model_tag": model.tag, "calibration_hash": digest,
             "calibration_keys": sorted(keys)}, indent=1))
    return Int8Model(uri, digest, len(keys), False, round(time.perf_counter() - started, 3))
