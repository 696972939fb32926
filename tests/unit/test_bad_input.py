"""Bad and unusual input that tests/integration/test_dag_e2e.py does not already cover, through the real pipeline:
CMYK JPEG, a 6000x4000 photo (decoded at reduced scale: bounded memory), UTF-8 / space / accent keys
into S3 and back into the feature table and df_categ.csv, a class with a single image, a note and an
image at the wrong depth, unsafe keys ('..', '.', empty segments, a climb out of the prefix) refused by
list_new and recorded as rejects by featurize, and a listed key deleted before featurize reads it."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest

from fruitflow_airflow.tasks import unsafe_key_reason
from spark_jobs.common import images
from spark_jobs.common.keys import check_location
from spark_jobs.preprocess import check_raw_uri
from tests.badfiles import (HUGE_SIZE, UNSAFE_KEYS, cmyk_jpeg, huge_jpeg)
from tests.helpers import ROOT


# --------------------------------------------------------------------------- decoding, no Spark


def test_cmyk_jpeg_decodes_to_the_photo_colours(real_jpeg):
    from PIL import Image

    data = cmyk_jpeg(real_jpeg)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    rgb = np.asarray(Image.open(io.BytesIO(real_jpeg)).convert("RGB")).astype(int)
    bgr = images.decode(data, 10**7)
    assert bgr.shape == rgb.shape and bgr.dtype == np.uint8
    assert np.abs(bgr[..., ::-1].astype(int) - rgb).mean() < 3  # not inverted, not channel-swapped


_PEAK = """
import json, sys
import cv2, numpy as np
from spark_jobs.common import images

def status(field):  # kB, from the kernel's own accounting of this process
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])

data = open(sys.argv[1], "rb").read()
open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current RSS
before = status("VmRSS:")
if sys.argv[2] == "pipeline":
    shape = images.decode(data, 40_000_000).shape
else:  # what a naive full-size decode costs: the control that shows the measure can see it
    shape = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape
print(json.dumps({"shape": shape, "grown_mib": (status("VmHWM:") - before) / 1024}))
"""


def _peak(path, mode):
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path), mode], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_huge_image_is_decoded_at_reduced_scale_in_bounded_memory(tmp_path, real_jpeg):
    path = tmp_path / "huge.jpg"
    path.write_bytes(huge_jpeg(real_jpeg))
    width, height = HUGE_SIZE
    full = _peak(path, "full")
    assert full["shape"] == [height, width, 3] and full["grown_mib"] > 60  # 72 MB of pixels
    guarded = _peak(path, "pipeline")
    assert guarded["shape"] == [height // 8, width // 8, 3]  # libjpeg's 1/8 scaling, on the way
    assert guarded["grown_mib"] < 16, guarded
    assert images.preprocess(images.decode(path.read_bytes(), 40_000_000)).shape == (224, 224, 3)


def test_unsafe_keys_and_raw_uris_are_refused():
    for key in UNSAFE_KEYS:
        assert unsafe_key_reason(f"raw/{key}", "raw/"), key
    assert unsafe_key_reason("other/Apple/a.jpg", "raw/") == "unsafe key: outside the raw prefix"
    assert unsafe_key_reason("raw/Apple/a\x01.jpg", "raw/") == "unsafe key: control character"
    assert unsafe_key_reason("raw/Pomme été/火龍果 1+2 (copy).jpg", "raw/") is None
    for uri in ("s3a://b/raw/../secret", "s3a://b/./raw", "s3a://b/raw/..", "file:///tmp/x/../y"):
        with pytest.raises(SystemExit):
            check_raw_uri(uri)
    check_raw_uri("s3a://fruitflow-raw/images")
    check_raw_uri("file:///tmp/raw dir/été")
    for prefix in ("images/../secret", "../etc", "images/."):
        with pytest.raises(ValueError):
            check_location(prefix)
    check_location("images/2026 été")


# --------------------------------------------------------------------------- the pipeline, on the stack


class _ListingHook:
    """The S3Hook calls list_new makes, over a listing as AWS S3 returns it (keys kept as given, where
    SeaweedFS refuses '.' and '..' segments at upload and folds '//')."""

    def __init__(self, keys):
        import datetime as dt

        now = dt.datetime(2026, 11, 27, tzinfo=dt.timezone.utc)
        self.contents = [{"Key": k, "ETag": '"e"', "Size": 3, "LastModified": now} for k in keys]
        self.uploaded = {}

    def get_conn(self):
        return self

    def get_paginator(self, name):
        assert name == "list_objects_v2"
        return self

    def paginate(self, Bucket, Prefix):  # noqa: N803 - boto3's names
        yield {"Contents": [c for c in self.contents if c["Key"].startswith(Prefix)]}

    def load_file(self, filename, key, bucket_name, replace):
        with open(filename, encoding="utf-8") as f:
            self.uploaded[(bucket_name, key)] = [json.loads(line) for line in f]

    def load_string(self, string_data, key, bucket_name, replace):
        self.states = {(bucket_name, key): string_data}


def test_list_new_marks_unsafe_keys_refused_as_aws_lists_them():
    from fruitflow_airflow.listing import ListingState
    from fruitflow_airflow.tasks import list_new_images
    from spark_jobs.common.config import Config

    hook = _ListingHook([f"raw/{k}" for k in (*UNSAFE_KEYS, "Apple/ok.jpg")])
    found = list_new_images(hook, Config(), "raw", "r1", ListingState("raw"))
    assert found["n_new"] == len(UNSAFE_KEYS) + 1 and found["n_refused"] == len(UNSAFE_KEYS)
    (lines,) = hook.uploaded.values()
    refused = {line["key"]: line.get("refused") for line in lines}
    assert refused.pop("Apple/ok.jpg") is None
    assert all(reason.startswith("unsafe key") for reason in refused.values()), refused
