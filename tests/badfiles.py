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


# Keys S3 accepts but a file system cannot hold: '.', '..' and empty segments, and a climb out of the
# raw prefix. Uploaded directly with boto3 (relative to the raw prefix), with a real JPEG as the body so
# that only the key can get them refused.
UNSAFE_KEYS = ("Odd/../sneaky.jpg", "Odd/./dot.jpg", "Odd//double.jpg", "../outside.jpg")

# One image alone in a class whose name is not ASCII and has a space.
SINGLE_CLASS = "Pitaya 火龍果"
HUGE_SIZE = (6000, 4000)  # width, height: 24 Mpx, under the 40 Mpx cap, decoded at 1/8 scale


def cmyk_jpeg(real_jpeg: bytes) -> bytes:
    """The real photo re-encoded as a CMYK JPEG (as print workflows produce)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(real_jpeg)).convert("CMYK").save(buf, "JPEG", quality=95)
    return buf.getvalue()


def huge_jpeg(real_jpeg: bytes, size: tuple[int, int] = HUGE_SIZE) -> bytes:
    """The real photo upscaled to `size` (a smooth image: ~0.5 MB as JPEG, 72 MB once decoded)."""
    img = cv2.imdecode(np.frombuffer(real_jpeg, np.uint8), cv2.IMREAD_COLOR)
    return cv2.imencode(".jpg", cv2.resize(img, size, interpolation=cv2.INTER_LINEAR),
                        [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()


def write_more_bad_files(folder: Path, real_jpeg: bytes) -> dict[str, str]:
    """The rest of the issue's list, written under folder: {relative key: 'ok' | 'reject' | 'ignore'}.

    CMYK JPEG, a 6000x4000 photo, keys with spaces, accents and other UTF-8 (and '+', '(', "'"), a
    class with a single image, a .txt note inside a fruit folder and an image one folder too deep.
    """
    files = {
        "Odd/cmyk.jpg": (cmyk_jpeg(real_jpeg), "ok"),
        "Odd/huge 6000x4000.jpg": (huge_jpeg(real_jpeg), "ok"),
        "Odd/pomme été à l'eau.jpg": (real_jpeg, "ok"),
        "Odd/图片 1+2 (copy).JPG": (real_jpeg, "ok"),
        f"{SINGLE_CLASS}/seul.jpeg": (real_jpeg, "ok"),
        "Odd/notes.txt": (b"picked on a Tuesday\n", "ignore"),
        "Odd/deeper/nested.jpg": (real_jpeg, "ignore"),
    }
    for key, (data, _) in files.items():
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return {key: expected for key, (_, expected) in files.items()}
