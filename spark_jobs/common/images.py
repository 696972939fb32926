"""Image decoding and preprocessing, one image at a time, pure numpy/OpenCV (no Spark)."""

from __future__ import annotations

import io

import cv2
import numpy as np

from .config import IMAGE_SIZE


class RejectedImage(ValueError):
    """The file is not an image the pipeline can use; the message is the recorded reason."""


# The formats the pipeline reads, by their magic bytes (never by the file's name), and a few others
# named in the reason when they are refused.
READ_FORMATS = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}
OTHER_FORMATS = {b"GIF87a": "GIF", b"GIF89a": "GIF", b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"BM": "BMP",
                 b"RIFF": "RIFF (WebP?)", b"\x00\x00\x00\x0cjP": "JPEG 2000", b"%PDF": "PDF"}


def image_format(data: bytes) -> str:
    """JPEG or PNG, by magic bytes; anything else is refused (OpenCV would decode GIF, TIFF, WebP, ...,
    each one more decoder exposed to untrusted bytes)."""
    for magic, name in READ_FORMATS.items():
        if data.startswith(magic):
            return name
    other = next((name for magic, name in OTHER_FORMATS.items() if data.startswith(magic)), "not an image")
    raise RejectedImage(f"unsupported format: {other} (JPEG and PNG are read)")


def image_dimensions(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) from the header alone, without decoding the pixels; None if unreadable.
    Pillow's own bomb guard is off here: it would hide the size of exactly the images that need it."""
    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as img:
            return img.size
    except Exception:  # noqa: BLE001 - any failure: the size is unknown
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def decode(data: bytes | None, max_pixels: int) -> np.ndarray:
    """Bytes -> BGR uint8 array (3 channels), for JPEG and PNG (gray, RGBA, 16-bit, CMYK). Nothing is
    decoded before the header says the image is within `max_pixels`; an unknown size is a reject."""
    if not data:
        raise RejectedImage("empty file")
    fmt = image_format(data)
    size = image_dimensions(data, fmt)
    if size is None:
        raise RejectedImage(f"unreadable {fmt} header: image size unknown")
    if size[0] * size[1] > max_pixels:
        raise RejectedImage(f"image too large: {size[0]}x{size[1]} exceeds {max_pixels} pixels")
    flags = cv2.IMREAD_UNCHANGED
    # Large photos: let the decoder scale by 1/2, 1/4 or 1/8 on the way, bounding memory and time,
    # while keeping at least IMAGE_SIZE pixels on the short side.
    for factor, reduced in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if min(size) >= factor * IMAGE_SIZE:
            flags = reduced
            break
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error as exc:  # OpenCV's own limits (OPENCV_IO_MAX_IMAGE_PIXELS) and decoder errors
        raise RejectedImage(f"not decodable: {str(exc).strip().splitlines()[-1][:200]}") from exc
    if img is None or img.size == 0:
        raise RejectedImage("not a decodable image (corrupt, truncated or not an image format)")
    if img.dtype != np.uint8:  # 16-bit PNG
        img = cv2.convertScaleAbs(img, alpha=255.0 / np.iinfo(img.dtype).max)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.shape[2] == 1:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return img


def preprocess(bgr: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """The study's preprocessing: denoise (3x3 Gaussian), resize to size x size, BGR -> RGB."""
    denoised = cv2.GaussianBlur(bgr, (3, 3), 0)
    shrinking = denoised.shape[0] > size or denoised.shape[1] > size
    resized = cv2.resize(denoised, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)


def to_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def is_preprocessed(raw, size: int = IMAGE_SIZE) -> bool:
    """Whether `raw` (what a decoder child sent back) can be a preprocessed image's raw RGB bytes."""
    return isinstance(raw, bytes) and len(raw) == size * size * 3


def rgb_from_bytes(raw: bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    """A decoder child's raw RGB bytes as pixels: the inverse of `arr.tobytes()`."""
    return np.frombuffer(raw, dtype=np.uint8).reshape(size, size, 3)


# A preprocessed image's stored form (the name goes into featurize's manifest): a JPEG at quality 95, ~10 KB
# where the raw pixels are 150 KB. It is the photo's thumbnail in its batch's pack and, decoded, what the
# model is given, in the pipeline as in `make classify` and the Recognise page (`as_stored`).
STORED_FORMAT = "jpeg-q95"


def stored(rgb: np.ndarray) -> bytes:
    """Preprocessed pixels in their stored form. The JPEG is made by the executor's own encoder from
    pixels whose size it checked, never copied from a decoder child's output."""
    return to_jpeg(rgb, quality=95)


def from_stored(data: bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    """A stored image's pixels (RGB, size x size). The header is read first: only a size x size JPEG is
    decoded (stored images are written by Spark nodes: a planted one is an error, never a decoder's work)."""
    if not isinstance(data, bytes) or not data.startswith(b"\xff\xd8\xff") or \
            image_dimensions(data, "JPEG") != (size, size):
        raise ValueError(f"not a stored preprocessed image ({STORED_FORMAT}, {size}x{size})")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.shape != (size, size, 3):
        raise ValueError(f"not a stored preprocessed image ({STORED_FORMAT}, {size}x{size}): not decodable")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def as_stored(rgb: np.ndarray) -> np.ndarray:
    """The pixels the pipeline featurizes for these preprocessed pixels (through the stored form): a photo
    recognised outside the pipeline gets the features the pipeline would give it."""
    return from_stored(stored(rgb))


# Hue x saturation x value bins of the colour descriptor; the name goes into manifests, so that colour
# vectors of another definition never mix in one feature table.
COLOR_BINS = (12, 4, 4)
COLOR_DESCRIPTOR = "hsv-12x4x4-nonwhite-sqrt"
BACKGROUND_MIN = 230  # a pixel whose every channel is at least this is background (Fruits-360: white)


def color_histogram(rgb: np.ndarray) -> np.ndarray:
    """HSV colour histogram of the fruit's pixels (the near-white background left out), as the square
    root of its frequencies: unit length, so that it weighs like an L2-normalised CNN vector (zeros for
    an all-white image). Colour is what tells many Fruits-360 classes apart (apple varieties) and what
    ImageNet features blur."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    # OpenCV's per-channel minimum: numpy's `rgb.min(axis=2)` gives the same mask at several times the cost
    red, green, blue = cv2.split(rgb)
    darkest = cv2.min(cv2.min(red, green), blue)
    mask = cv2.threshold(darkest, BACKGROUND_MIN - 1, 1, cv2.THRESH_BINARY_INV)[1]  # 1 where < BACKGROUND_MIN
    counts = cv2.calcHist([hsv], [0, 1, 2], mask, list(COLOR_BINS), [0, 180, 0, 256, 0, 256]).ravel()
    total = counts.sum()
    return np.sqrt(counts / total).astype(np.float32) if total else np.zeros(counts.size, np.float32)
