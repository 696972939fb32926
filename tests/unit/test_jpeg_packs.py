"""The preprocessed JPEGs in packs (`spark_jobs.common.jpeg_packs`): one object per batch, a locator per
photo; a locator comes from tables the Spark nodes write, so a reader takes only what a pack can hold."""

import pytest

from spark_jobs.common import jpeg_packs

BUCKET = "fruitflow-preprocessed"
PACK = f"s3a://{BUCKET}/runs/r1/featurize/jpeg/00ff.pack"


def test_each_jpeg_is_read_back_from_its_pack_by_its_locator():
    jpegs = [b"\xff\xd8first", None, b"\xff\xd8second one"]
    body, spans = jpeg_packs.pack(jpegs)
    locators = [jpeg_packs.locator(PACK, span) for span in spans]
    assert locators[1] is None and body == b"\xff\xd8first\xff\xd8second one"
    asked = []

    def get_range(bucket, key, offset, length):
        asked.append((bucket, key))
        return body[offset:offset + length]

    assert [jpeg_packs.read(loc, BUCKET, get_range) for loc in (locators[0], locators[2])] == [jpegs[0], jpegs[2]]
    assert asked == [(BUCKET, "runs/r1/featurize/jpeg/00ff.pack")] * 2


@pytest.mark.parametrize("locator", [
    "s3a://fruitflow-models/runs/r1/featurize/jpeg/00ff.pack#0+10",  # another bucket
    f"s3a://{BUCKET}/runs/r1/../r2/jpeg/00ff.pack#0+10",  # climbing
    f"s3a://{BUCKET}/runs//jpeg/00ff.pack#0+10",  # an empty segment
    f"s3a://{BUCKET}/runs/r1/featurize/table/part-0.parquet#0+10",  # not a pack
    f"{PACK}#0+0", f"{PACK}#0+{jpeg_packs.MAX_LENGTH + 1}",  # nothing, or more than a stored JPEG
    f"{PACK}#-1+10", f"{PACK}#0", "http://example.com/x.pack#0+10", None, 42,
])
def test_a_locator_a_pack_cannot_hold_is_refused_before_any_read(locator):
    def get_range(*args):
        raise AssertionError(f"read {args}")

    with pytest.raises(ValueError):
        jpeg_packs.read(locator, BUCKET, get_range)


def test_a_pack_shorter_than_the_locator_says_is_an_error_not_a_truncated_photo():
    with pytest.raises(ValueError, match="3 bytes read, 10 expected"):
        jpeg_packs.read(f"{PACK}#0+10", BUCKET, lambda *args: b"abc")
