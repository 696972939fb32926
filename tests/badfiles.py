"""Generated bad and unusual inputs, written next to real images by the tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def _jpeg(img: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", img)[1].tobytes()


def _png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


def write_bad_files(folder: Path, real_jpeg: bytes) -> dict[str, str]:
    """Writes files under folder/<category>/...; returns {key: 'ok' | 'reject'} for candidates."""
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    files = {
        "Odd/truncated.jpg": (real_jpeg[: len(real_jpeg) // 3], "reject"),
        "Odd/empty.jpg": (b"", "reject"),
        "Odd/text.jpg": (b"this is a note, not a photo\n", "reject"),
        "Odd/png_named.jpg": (_png(colour), "ok"),
        "Odd/gray.jpg": (_jpeg(cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)), "ok"),
        "Odd/rgba.png": (_png(cv2.cvtColor(colour, cv2.COLOR_BGR2BGRA)), "ok"),
        "Odd/tiny.png": (_png(colour[:1, :1]), "ok"),
    }
    for key, (data, _) in files.items():
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return {key: expected for key, (_, expected) in files.items()}
