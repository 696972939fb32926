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


def test_color_histogram_puts_yellow_fruits_together():
    """A banana's colours are closer to a lemon's than to a strawberry's (real photos of the set)."""
    paths = {p.parent.name: p for p in real_images(SAMPLE_500, 20, 1)}
    hist = {n: images.color_histogram(images.preprocess(images.decode(paths[n].read_bytes(), 10**7)))
            for n in ("Banana", "Lemon", "Strawberry")}
    assert float(hist["Banana"] @ hist["Lemon"]) > float(hist["Banana"] @ hist["Strawberry"]) + 0.2
