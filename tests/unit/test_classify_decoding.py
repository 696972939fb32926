"""Recognition (`make classify`, the Recognise page on the api-server) decodes photos in the decoder sandbox
the executors use: a photo that exhausts the decoder is an error line, never the caller's crash."""

import cv2
import numpy as np

from fruitflow.classify import load_images
from spark_jobs.common.config import Config


def test_photos_are_decoded_in_the_sandbox_with_the_pipelines_limits(tmp_path):
    fine, bomb, text = tmp_path / "fine.png", tmp_path / "bomb.png", tmp_path / "notes.jpg"
    fine.write_bytes(cv2.imencode(".png", np.full((300, 300, 3), 120, np.uint8))[1].tobytes())
    # 9 KB of PNG that decodes to 75 MB: over a 32 MB decoder budget, which the caller's process has not
    bomb.write_bytes(cv2.imencode(".png", np.zeros((5000, 5000, 3), np.uint8))[1].tobytes())
    text.write_text("not a photo")
    cfg = Config.from_env().with_overrides(decoder_memory_mb=32, max_image_bytes=10**6)
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * (10**6 + 1))
    out = load_images([fine, bomb, text, big, tmp_path / "gone.jpg"], cfg)
    assert out[0].shape == (224, 224, 3)
    assert "memory" in out[1].lower(), out[1]
    assert out[2].startswith("unsupported format")
    assert out[3].startswith("file too large") and out[4].startswith("FileNotFoundError")
