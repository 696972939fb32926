"""Decoding and preprocessing of one image: real fruit photos and generated bad files."""

import cv2
import numpy as np
import pytest

from spark_jobs.common import images
from tests.badfiles import write_bad_files
from tests.helpers import SAMPLE_500, real_images


def test_real_image_is_blurred_resized_and_rgb():
    path = real_images(SAMPLE_500, 1, 1)[0]
    data = path.read_bytes()
    bgr = images.decode(data, max_pixels=10**7)
    assert bgr.shape == (100, 100, 3) and bgr.dtype == np.uint8
    rgb = images.preprocess(bgr)
    assert rgb.shape == (224, 224, 3)
    expected = cv2.cvtColor(cv2.resize(cv2.GaussianBlur(bgr, (3, 3), 0), (224, 224)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(rgb, expected)
    assert np.array_equal(images.rgb_from_bytes(rgb.tobytes()), rgb)


def test_jpeg_round_trip_stays_close():
    rgb = images.preprocess(images.decode(real_images(SAMPLE_500, 1, 1)[0].read_bytes(), 10**7))
    back = cv2.cvtColor(cv2.imdecode(np.frombuffer(images.to_jpeg(rgb), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.abs(back.astype(int) - rgb.astype(int)).mean() < 3


def test_a_stored_image_gives_back_its_pixels_and_a_planted_row_is_refused_before_decoding():
    rgb = images.preprocess(images.decode(real_images(SAMPLE_500, 1, 1)[0].read_bytes(), 10**7))
    data = images.stored(rgb)
    assert len(data) < len(rgb.tobytes()) / 5
    back = images.from_stored(data)
    assert back.shape == rgb.shape and np.abs(back.astype(int) - rgb.astype(int)).mean() < 3
    assert np.array_equal(images.as_stored(rgb), back)
    other_size = cv2.imencode(".jpg", np.zeros((225, 224, 3), np.uint8))[1].tobytes()
    png = cv2.imencode(".png", rgb)[1].tobytes()
    truncated = data[:200]
    for planted in (rgb.tobytes(), other_size, png, truncated, b"", None):
        with pytest.raises(ValueError, match="not a stored preprocessed image"):
            images.from_stored(planted)


def test_bad_and_unusual_files(tmp_path):
    real = real_images(SAMPLE_500, 1, 1)[0].read_bytes()
    expected = write_bad_files(tmp_path, real)
    for key, outcome in expected.items():
        data = (tmp_path / key).read_bytes()
        if outcome == "ok":
            out = images.preprocess(images.decode(data, max_pixels=10**7))
            assert out.shape == (224, 224, 3), key
        else:
            with pytest.raises(images.RejectedImage):
                images.decode(data, max_pixels=10**7)


def test_huge_image_is_decoded_reduced_or_refused():
    big = np.full((4000, 6000, 3), 128, np.uint8)
    data = cv2.imencode(".jpg", big)[1].tobytes()
    assert images.decode(data, max_pixels=10**8).shape == (500, 750, 3)  # decoded at 1/8 scale
    with pytest.raises(images.RejectedImage, match="too large"):
        images.decode(data, max_pixels=10**6)


def test_color_histogram_describes_the_fruit_not_the_white_background():
    red_on_white = np.full((224, 224, 3), 255, np.uint8)
    red_on_white[60:160, 60:160] = (200, 20, 20)
    histogram = images.color_histogram(red_on_white)
    assert histogram.shape == (int(np.prod(images.COLOR_BINS)),) and histogram.dtype == np.float32
    assert np.linalg.norm(histogram) == pytest.approx(1.0, abs=1e-6)
    assert np.count_nonzero(histogram) == 1  # one bin: the red square, and nothing of the background
    green = red_on_white.copy()
    green[60:160, 60:160] = (20, 200, 20)
    assert float(histogram @ images.color_histogram(green)) == 0.0
    assert not images.color_histogram(np.full((224, 224, 3), 255, np.uint8)).any()  # all background: zeros


def test_color_histogram_counts_a_pixel_whose_darkest_channel_is_below_the_background_level():
    """The background is a pixel whose every channel is at least BACKGROUND_MIN, in whichever channel
    the darkest value is."""
    level = images.BACKGROUND_MIN
    for channel in range(3):
        image = np.full((224, 224, 3), 255, np.uint8)
        image[:10, :, channel] = level - 1  # fruit: one channel just below
        image[10:30, :, channel] = level  # background: every channel at the level or above
        counts = images.color_histogram(image) ** 2 * (10 * 224)  # frequencies back to pixel counts
        assert round(float(counts.sum())) == 10 * 224, channel


def test_color_histogram_puts_yellow_fruits_together():
    """A banana's colours are closer to a lemon's than to a strawberry's (real photos of the set)."""
    paths = {p.parent.name: p for p in real_images(SAMPLE_500, 20, 1)}
    hist = {n: images.color_histogram(images.preprocess(images.decode(paths[n].read_bytes(), 10**7)))
            for n in ("Banana", "Lemon", "Strawberry")}
    assert float(hist["Banana"] @ hist["Lemon"]) > float(hist["Banana"] @ hist["Strawberry"]) + 0.2


def _png_bomb(width: int, height: int) -> bytes:
    """A gray 8-bit PNG of width x height zero pixels, compressed in chunks (never held in memory):
    ~190 KB on disk for 14000 x 14000, 196 MB once decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_a_bomb_beyond_pillows_own_limit_is_refused_from_its_header():
    """Pillow refuses to give the size of a 196 Mpx image (its own bomb guard): the size check must not
    be skipped then, or OpenCV decodes it whole."""
    bomb = _png_bomb(14000, 14000)
    assert len(bomb) < 400_000
    with pytest.raises(images.RejectedImage, match="too large: 14000x14000"):
        images.decode(bomb, max_pixels=40_000_000)


@pytest.mark.parametrize("fmt, name", [(".gif", "GIF"), (".tiff", "TIFF"), (".bmp", "BMP")])
def test_other_formats_named_jpg_are_refused_by_their_bytes(tmp_path, fmt, name):
    from PIL import Image

    path = tmp_path / f"photo{fmt}"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    with pytest.raises(images.RejectedImage, match=f"unsupported format: {name}"):
        images.decode(path.read_bytes(), max_pixels=10**7)  # whatever its key says (.jpg)


def test_a_16_bit_png_is_read_with_its_colours():
    rgb16 = np.zeros((40, 50, 3), np.uint16)
    rgb16[..., 2] = 65535  # red, in OpenCV's BGR order
    rgb16[..., 1] = 32768
    bgr = images.decode(cv2.imencode(".png", rgb16)[1].tobytes(), max_pixels=10**7)
    assert bgr.dtype == np.uint8 and bgr.shape == (40, 50, 3)
    assert tuple(bgr[0, 0]) == (0, 128, 255)


def test_a_header_whose_size_cannot_be_read_is_refused():
    with pytest.raises(images.RejectedImage, match="size unknown"):
        images.decode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, max_pixels=10**7)


def test_executors_get_opencvs_own_pixel_limit():
    """Behind the header check, OpenCV's decoder has the same cap (OPENCV_IO_MAX_IMAGE_PIXELS), and it
    honours it: a 3000 x 2000 PNG under a 1 Mpx limit is not decoded."""
    import subprocess
    import sys

    from spark_jobs.common.config import Config
    from spark_jobs.common.spark_conf import session_conf

    assert session_conf(Config(max_image_pixels=1_000_000))["spark.executorEnv.OPENCV_IO_MAX_IMAGE_PIXELS"] == "1000000"
    code = ("import sys, cv2, numpy as np; from spark_jobs.common import images;"
            "data = cv2.imencode('.png', np.zeros((2000, 3000), np.uint8))[1].tobytes()\n"
            "try:\n    images.decode(data, max_pixels=10**9)\nexcept images.RejectedImage as exc:\n"
            "    sys.exit(0 if 'CV_IO_MAX_IMAGE_PIXELS' in str(exc) else 2)\nsys.exit(1)")
    result = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ,
                                                                "OPENCV_IO_MAX_IMAGE_PIXELS": "1000000"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-500:]
