"""Recognition (`make classify`, the Recognise page on the api-server) decodes photos in the decoder sandbox
the executors use: a photo that exhausts the decoder is an error line, never the caller's crash."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from fruitflow.classify import load_images
from spark_jobs.common import signing
from spark_jobs.common.config import Config


# In a fresh interpreter: the decoder's memory cap is the caller's address space plus the budget, and a
# large caller (the test session, with TensorFlow and freed arenas mapped) can lend the child that much.
DECODE = """
import json, sys
from pathlib import Path
from fruitflow.classify import load_images
from spark_jobs.common.config import Config
cfg = Config.from_env().with_overrides(decoder_memory_mb=32, max_image_bytes=10**6)
out = load_images([Path(p) for p in sys.argv[1:]], cfg)
print(json.dumps([list(o.shape) if hasattr(o, "shape") else o for o in out]))
"""


def test_photos_are_decoded_in_the_sandbox_with_the_pipelines_limits(tmp_path):
    fine, bomb, text = tmp_path / "fine.png", tmp_path / "bomb.png", tmp_path / "notes.jpg"
    fine.write_bytes(cv2.imencode(".png", np.full((300, 300, 3), 120, np.uint8))[1].tobytes())
    # 9 KB of PNG that decodes to 75 MB: over a 32 MB decoder budget
    bomb.write_bytes(cv2.imencode(".png", np.zeros((5000, 5000, 3), np.uint8))[1].tobytes())
    text.write_text("not a photo")
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * (10**6 + 1))
    fifo = tmp_path / "pipe.jpg"  # nothing ever writes: reading it would wait for ever
    os.mkfifo(fifo)
    files = [fine, bomb, text, big, tmp_path / "gone.jpg", fifo]
    done = subprocess.run([sys.executable, "-c", DECODE, *map(str, files)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out[0] == [224, 224, 3]
    assert "memory" in out[1].lower(), out[1]
    assert out[2].startswith("unsupported format")
    assert out[3].startswith("file too large") and out[4].startswith("FileNotFoundError")
    assert out[5] == "not a regular file"


class _Objects:
    """get_object over a dict of objects, recording what was asked for."""

    def __init__(self, objects):
        self.objects, self.asked = objects, []

    def get_object(self, Bucket, Key):  # noqa: N803 - boto3's names
        import io

        self.asked.append(f"{Bucket}/{Key}")
        return {"Body": io.BytesIO(self.objects[f"{Bucket}/{Key}"])}


def test_a_manifest_cannot_point_the_classifier_outside_the_folder_it_was_read_from():
    """The check compared the export against the manifest's own `step_uri`: a manifest planted under
    runs/r1/train that names itself runs-x and its export runs-x/evil passed, and the evil files were read."""
    import json

    import pytest

    from fruitflow.classify import Classifier

    cfg = Config.from_env()
    train_uri = f"s3a://{cfg.models_bucket}/{cfg.runs_prefix}/r1/train"
    planted = {"step_uri": f"s3a://{cfg.models_bucket}/runs-x",
               "outputs": {"export": f"s3a://{cfg.models_bucket}/runs-x/evil"}}
    # signed: the check under test is the one behind the signature
    objects = _Objects({f"{cfg.models_bucket}/{cfg.runs_prefix}/r1/train/_manifest.json":
                        json.dumps(signing.sign(planted)).encode()})
    with pytest.raises(ValueError, match="not inside its step"):
        Classifier.from_steps(train_uri, None, cfg, client=objects)
    assert objects.asked == [f"{cfg.models_bucket}/{cfg.runs_prefix}/r1/train/_manifest.json"]


def test_an_export_file_the_spark_nodes_replaced_is_refused():
    """The export folder is under the runs prefix, which the nodes' identity may write: a classify.json
    swapped for one naming the attacker's ONNX file is refused by its digest in the signed manifest."""
    import hashlib
    import json

    import pytest

    from fruitflow.classify import Classifier

    cfg = Config.from_env()
    train_uri = f"s3a://{cfg.models_bucket}/{cfg.runs_prefix}/r1/train"
    written = json.dumps({"format": 1, "backbone_model": f"s3a://{cfg.models_bucket}/resnet50/t/model.onnx"})
    swapped = json.dumps({"format": 1, "backbone_model": f"s3a://{cfg.models_bucket}/{cfg.runs_prefix}/evil.onnx"})
    manifest = {"step_uri": train_uri, "outputs": {"export": f"{train_uri}/export"},
                "export_sha256": {"classify.json": hashlib.sha256(written.encode()).hexdigest()}}
    folder = f"{cfg.models_bucket}/{cfg.runs_prefix}/r1/train"
    objects = _Objects({f"{folder}/_manifest.json": json.dumps(signing.sign(manifest)).encode(),
                        f"{folder}/export/classify.json": swapped.encode()})
    with pytest.raises(ValueError, match="not the one its step wrote"):
        Classifier.from_steps(train_uri, None, cfg, client=objects)


@pytest.mark.parametrize("where", ["{runs}/r1/train/evil.onnx", "resnet50/../{runs}/evil.onnx", "other/model.onnx"])
def test_the_backbone_model_comes_only_from_a_backbones_folder(where):
    """Where the Spark nodes cannot write: never the models bucket's runs prefix."""
    from spark_jobs.common.classifier import BucketReader, load_backbone

    cfg = Config.from_env()
    objects = _Objects({})
    uri = f"s3a://{cfg.models_bucket}/" + where.format(runs=cfg.runs_prefix)
    with pytest.raises(ValueError, match="refused"):
        load_backbone(BucketReader(cfg, objects), uri, 1)
    assert objects.asked == []


def malformed_answer(data: bytes, max_pixels: int):
    """What a child gone wrong may send (loaded by name in the sandbox's fresh interpreter)."""
    return b"short" if data.endswith(b"first") else {"not": "bytes"}


def test_what_a_decoder_child_sends_back_is_checked_before_use(tmp_path, monkeypatch):
    """A child gone wrong (its decoder exploited) may send any bytes or plain value: an error line for that
    photo, never an exception in the caller (a 500 on the Recognise page, a failed Spark task)."""
    from spark_jobs.common import classifier

    photos = [tmp_path / "a.png", tmp_path / "b.png"]
    for photo, tail in zip(photos, [b"first", b"second"]):
        photo.write_bytes(cv2.imencode(".png", np.full((30, 30, 3), 9, np.uint8))[1].tobytes() + tail)
    monkeypatch.setattr(classifier, "_preprocessed_bytes", malformed_answer)
    assert load_images(photos, Config.from_env()) == ["decoder returned malformed output"] * 2
