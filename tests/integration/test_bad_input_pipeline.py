"""Bad and unusual input through the real pipeline (list_new, then the steps with spark-submit): CMYK
JPEG, a 6000x4000 photo, UTF-8 / space / accent keys into S3 and back into the feature table and
df_categ.csv, a class with a single image, a note and an image at the wrong depth, unsafe keys ('..',
'.', empty segments, a climb out of the prefix) refused by list_new and recorded as rejects by
featurize, and a listed key deleted before featurize reads it."""

import json
import uuid

import pytest
from botocore.exceptions import ClientError

from fruitflow.package import build_zip
from fruitflow_airflow import AWS_CONN_ID, listing
from fruitflow_airflow.tasks import list_new_images
from spark_jobs.common import images
from spark_jobs.common.config import split_s3_uri
from tests.badfiles import SINGLE_CLASS, UNSAFE_KEYS, write_bad_files, write_more_bad_files
from tests.helpers import SAMPLE_500, list_keys, read_manifest, real_images, stored_jpegs, submit_step


def _json_lines(s3, uri):
    bucket, _ = split_s3_uri(uri)
    rows = []
    for key in list_keys(s3, uri):
        if key.rsplit("/", 1)[-1].startswith("part-"):
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
            rows += [json.loads(line) for line in body.splitlines() if line.strip()]
    return rows


def stored_unsafe_keys(s3, bucket, prefix, body, expected) -> list[str]:
    """Uploads UNSAFE_KEYS under `prefix` and records what the store made of each in `expected`: AWS
    S3 keeps them as given (list_new must refuse them: they are returned), SeaweedFS refuses '.' and
    '..' segments itself and folds '//' into '/' (an ordinary image then)."""
    kept = []
    for key in UNSAFE_KEYS:
        try:
            s3.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=body)
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "InvalidRequest", exc.response["Error"]
            continue
        kept.append(key)
    listed = set(list_keys(s3, f"s3a://{bucket}/{prefix}"))
    unsafe = []
    for key in kept:
        if f"{prefix}/{key}" in listed:
            expected[key] = "reject"
            unsafe.append(key)
        else:
            folded = "/".join(part for part in key.split("/") if part)
            assert f"{prefix}/{folded}" in listed, (key, sorted(listed))
            expected[folded] = "ok"
    return unsafe


def upload_bad_tree(s3, cfg, image_tree, real_jpeg) -> tuple[str, dict[str, str], list[str]]:
    """Real photos and every kind of bad file under a raw prefix of their own, the unsafe keys and a key
    to delete after the listing: (prefix, {key: 'ok' | 'reject' | 'ignore'}, the unsafe keys kept)."""
    reals = real_images(SAMPLE_500, 3, 3)
    root = image_tree(reals)
    expected = {f"{p.parent.name}/{p.name}": "ok" for p in reals}
    expected.update(write_bad_files(root, real_jpeg))
    expected.update(write_more_bad_files(root, real_jpeg))
    prefix = f"bad-raw-{uuid.uuid4().hex[:6]}"
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        s3.upload_file(str(path), cfg.raw_bucket, f"{prefix}/{path.relative_to(root).as_posix()}")
    unsafe = stored_unsafe_keys(s3, cfg.raw_bucket, prefix, real_jpeg, expected)
    s3.put_object(Bucket=cfg.raw_bucket, Key=f"{prefix}/Odd/gone.jpg", Body=real_jpeg)
    expected["Odd/gone.jpg"] = "reject"
    return prefix, expected, unsafe


@pytest.mark.slow
def test_bad_input_through_list_new_featurize_pca(stack, s3, cfg, image_tree, real_jpeg):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    build_zip()
    cfg = cfg.with_overrides(runs_prefix=cfg.table_prefix(f"bad-{uuid.uuid4().hex[:6]}"))  # a feature table of its own
    prefix, expected, unsafe = upload_bad_tree(s3, cfg, image_tree, real_jpeg)
    run_id = f"bad-{uuid.uuid4().hex[:6]}"

    found = list_new_images(S3Hook(aws_conn_id=AWS_CONN_ID), cfg, prefix, run_id)
    assert found["n_refused"] == len(unsafe)
    assert {r["key"] for r in found["refused_sample"]} == {f"{prefix}/{k}" for k in unsafe}
    s3.delete_object(Bucket=cfg.raw_bucket, Key=f"{prefix}/Odd/gone.jpg")  # deleted after the listing

    submit_step("featurize", cfg, run_id, "--raw", f"s3a://{cfg.raw_bucket}/{prefix}", "--keys", found["keys_uri"],
                "--backbone", "resnet50", "--weights", "random", "--batch-size", "8")
    featurized = read_manifest(s3, cfg.step_uri(run_id, "featurize"))
    ok = {k for k, v in expected.items() if v == "ok"}
    rejected = {k for k, v in expected.items() if v == "reject"}
    counts = featurized["counts"]
    assert counts["n_images"] == len(ok), counts
    assert counts["n_rejected"] == len(rejected), counts
    assert counts["n_input"] == counts["n_images"] + counts["n_rejected"] == len(ok) + len(rejected)
    ignored = {r["path"].split(f"/{prefix}/")[-1] for r in _json_lines(s3, featurized["outputs"]["ignored"])}
    assert ignored == {k for k, v in expected.items() if v == "ignore"} == {"Odd/notes.txt", "Odd/deeper/nested.jpg"}
    assert counts["n_ignored"] == 2, counts

    rejects = {r["key"]: r["reason"] for r in _json_lines(s3, featurized["outputs"]["rejects"])}
    assert set(rejects) == rejected, rejects
    for key in unsafe:
        assert rejects[key].startswith("unsafe key"), (key, rejects[key])
    assert rejects["Odd/gone.jpg"].startswith("not found")
    assert rejects["Odd/empty.jpg"] == "empty file"
    # a reject that may pass is listed again by the next run: in the listing state once the run succeeds
    hook = S3Hook(aws_conn_id=AWS_CONN_ID)
    retry = listing.retry_keys(hook, featurized["outputs"]["retry"])
    assert counts["n_retry_next_run"] == 1 and retry == {"Odd/gone.jpg"}
    listing.promote(hook, cfg, found["listing_state"], prefix, retry)
    assert listing.read_state(s3, cfg, prefix).retry == {"Odd/gone.jpg": 1}

    stored = stored_jpegs(s3, featurized)
    assert set(stored) == set(ok)  # UTF-8 keys back, each with its JPEG in a pack
    assert images.decode(stored["Odd/huge 6000x4000.jpg"][1], 10**7).shape == (224, 224, 3)
    assert featurized["params"]["feature_dim"] == 2048

    submit_step("pca", cfg, run_id, "--k", "3")
    pca = read_manifest(s3, cfg.step_uri(run_id, "pca"))
    bucket, key = split_s3_uri(pca["outputs"]["categories_csv"])
    lines = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8").splitlines()
    assert lines[0] == "categ;key"
    table = dict(reversed(line.split(";", 1)) for line in lines[1:])  # key -> category
    assert set(table) == ok  # every accepted image, UTF-8 keys intact, in the feature table
    assert table[f"{SINGLE_CLASS}/seul.jpeg"] == SINGLE_CLASS
    assert list(table.values()).count(SINGLE_CLASS) == 1
