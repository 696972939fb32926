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


def test_many_jpegs_are_read_side_by_side_and_one_that_fails_is_left_out_with_its_reason():
    """A report reads a few hundred thumbnails, each a round trip that leaves the reader idle: here three
    reads must be in flight together to pass the barrier (one at a time, each would wait out its timeout)."""
    import threading

    body, spans = jpeg_packs.pack([b"\xff\xd8one", b"\xff\xd8two", b"\xff\xd8three"])
    locators = {f"k{i}": jpeg_packs.locator(PACK, span) for i, span in enumerate(spans)}
    locators["planted"] = "s3a://fruitflow-models/x.pack#0+3"
    together = threading.Barrier(3, timeout=10)

    def get_range(bucket, key, offset, length):
        together.wait()
        return body[offset:offset + length]

    left_out = {}
    found = jpeg_packs.read_all(locators, BUCKET, get_range, lambda key, exc: left_out.update({key: str(exc)}))
    assert found == {"k0": b"\xff\xd8one", "k1": b"\xff\xd8two", "k2": b"\xff\xd8three"}
    assert list(left_out) == ["planted"] and "outside the preprocessed bucket" in left_out["planted"]
