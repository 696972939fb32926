"""Bad and unusual input that tests/test_integration.py does not already cover, through the real pipeline:
CMYK JPEG, a 6000x4000 photo (decoded at reduced scale: bounded memory), UTF-8 / space / accent keys
into S3 and back into the feature table and df_categ.csv, a class with a single image, a note and an
image at the wrong depth, unsafe keys ('..', '.', empty segments, a climb out of the prefix) refused by
list_new and recorded as rejects by preprocess, and a listed key deleted before preprocess reads it."""

import io
import json
import subprocess
import sys
import uuid

import numpy as np
import pytest

from fruitflow_airflow.tasks import list_new_images, unsafe_key_reason
from scripts.package import build_zip
from spark_jobs.common import images
from spark_jobs.common.config import split_s3_uri
from spark_jobs.common.keys import check_location
from spark_jobs.preprocess import check_raw_uri
from tests.badfiles import (HUGE_SIZE, SINGLE_CLASS, UNSAFE_KEYS, cmyk_jpeg, huge_jpeg, write_bad_files,
                            write_more_bad_files)
from tests.conftest import ROOT, SAMPLE_500, real_images
from tests.test_integration import _keys, _manifest, _submit


@pytest.fixture(scope="module")
def real_jpeg():
    return real_images(SAMPLE_500, 1, 1)[0].read_bytes()


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


def _json_lines(s3, uri):
    bucket, _ = split_s3_uri(uri)
    rows = []
    for key in _keys(s3, uri):
        if key.rsplit("/", 1)[-1].startswith("part-"):
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
            rows += [json.loads(line) for line in body.splitlines() if line.strip()]
    return rows


@pytest.mark.integration
@pytest.mark.slow
def test_bad_input_through_list_new_preprocess_featurize_pca(stack, s3, cfg, image_tree, real_jpeg):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    build_zip()
    cfg = cfg.with_overrides(runs_prefix=f"bad-{uuid.uuid4().hex[:6]}")  # a feature table of its own
    reals = real_images(SAMPLE_500, 3, 3)
    root = image_tree(reals)
    expected = {f"{p.parent.name}/{p.name}": "ok" for p in reals}
    expected.update(write_bad_files(root, real_jpeg))
    expected.update(write_more_bad_files(root, real_jpeg))
    prefix = f"bad-raw-{uuid.uuid4().hex[:6]}"
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        s3.upload_file(str(path), cfg.raw_bucket, f"{prefix}/{path.relative_to(root).as_posix()}")
    for key in UNSAFE_KEYS:
        s3.put_object(Bucket=cfg.raw_bucket, Key=f"{prefix}/{key}", Body=real_jpeg)
        expected[key] = "reject"
    s3.put_object(Bucket=cfg.raw_bucket, Key=f"{prefix}/Odd/gone.jpg", Body=real_jpeg)
    expected["Odd/gone.jpg"] = "reject"
    run_id = f"bad-{uuid.uuid4().hex[:6]}"

    found = list_new_images(S3Hook(aws_conn_id="aws_default"), cfg, prefix, run_id, None)
    assert found["n_refused"] == len(UNSAFE_KEYS)
    assert {r["key"] for r in found["refused_sample"]} == {f"{prefix}/{k}" for k in UNSAFE_KEYS}
    s3.delete_object(Bucket=cfg.raw_bucket, Key=f"{prefix}/Odd/gone.jpg")  # deleted after the listing

    _submit("preprocess", cfg, run_id, "--raw", f"s3a://{cfg.raw_bucket}/{prefix}", "--keys", found["keys_uri"])
    pre = _manifest(s3, cfg.step_uri(run_id, "preprocess"))
    ok = {k for k, v in expected.items() if v == "ok"}
    rejected = {k for k, v in expected.items() if v == "reject"}
    counts = pre["counts"]
    assert counts["n_images"] == len(ok), counts
    assert counts["n_rejected"] == len(rejected), counts
    assert counts["n_input"] == counts["n_images"] + counts["n_rejected"] == len(ok) + len(rejected)
    ignored = {r["path"].split(f"/{prefix}/")[-1] for r in _json_lines(s3, pre["outputs"]["ignored"])}
    assert ignored == {k for k, v in expected.items() if v == "ignore"} == {"Odd/notes.txt", "Odd/deeper/nested.jpg"}
    assert counts["n_ignored"] == 2, counts

    rejects = {r["key"]: r["reason"] for r in _json_lines(s3, pre["outputs"]["rejects"])}
    assert set(rejects) == rejected, rejects
    for key in UNSAFE_KEYS:
        assert rejects[key].startswith("unsafe key"), (key, rejects[key])
    assert rejects["Odd/gone.jpg"].startswith("not found")
    assert rejects["Odd/empty.jpg"] == "empty file"

    jpeg_bucket, jpeg_prefix = split_s3_uri(pre["outputs"]["jpeg"])
    assert set(_keys(s3, pre["outputs"]["jpeg"])) == {f"{jpeg_prefix}/{k}" for k in ok}  # UTF-8 keys back
    stored = s3.get_object(Bucket=jpeg_bucket, Key=f"{jpeg_prefix}/Odd/huge 6000x4000.jpg")["Body"].read()
    assert images.decode(stored, 10**7).shape == (224, 224, 3)

    _submit("featurize", cfg, run_id, "--input", pre["step_uri"], "--weights", "random", "--batch-size", "8")
    feat = _manifest(s3, cfg.step_uri(run_id, "featurize"))
    assert feat["counts"]["n_images"] == len(ok)

    _submit("pca", cfg, run_id, "--k", "3")
    pca = _manifest(s3, cfg.step_uri(run_id, "pca"))
    bucket, key = split_s3_uri(pca["outputs"]["categories_csv"])
    lines = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8").splitlines()
    assert lines[0] == "categ;key"
    table = dict(reversed(line.split(";", 1)) for line in lines[1:])  # key -> category
    assert set(table) == ok  # every accepted image, UTF-8 keys intact, in the feature table
    assert table[f"{SINGLE_CLASS}/seul.jpeg"] == SINGLE_CLASS
    assert list(table.values()).count(SINGLE_CLASS) == 1
