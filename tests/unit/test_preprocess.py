"""The featurize step's photo reading (`spark_jobs.preprocess`): its pure transforms on a local
SparkSession, real images and generated bad files."""

import hashlib
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import numpy as np
from pyspark.sql import functions as F

from spark_jobs import preprocess
from spark_jobs.common import images
from tests.badfiles import write_bad_files
from tests.helpers import SAMPLE_500, real_images


def _frame(spark, root):
    uri = root.as_uri()
    return preprocess.with_keys(preprocess.extract(spark, uri), uri)


def test_keys_categories_and_ignored_files(spark, image_tree):
    root = image_tree(real_images(SAMPLE_500, 2, 3))
    (root / "notes.txt").write_text("not in a fruit folder")
    (root / "Banana" / "readme.txt").parent.mkdir(exist_ok=True)
    (root / "Banana" / "readme.txt").write_text("not an image")
    nested = root / "Banana" / "deeper" / "x.jpg"
    nested.parent.mkdir()
    nested.write_bytes(real_images(SAMPLE_500, 1, 1)[0].read_bytes())
    rows = {r["relative"]: r for r in _frame(spark, root).drop("content").collect()}
    candidates = {k for k, r in rows.items() if r["ignored_reason"] is None}
    assert len(candidates) == 6
    for key in candidates:
        category, name = key.split("/")
        assert rows[key]["category"] == category and rows[key]["key"] == key
    assert rows["notes.txt"]["ignored_reason"] == "not at <category>/<file> depth"
    assert rows["Banana/readme.txt"]["ignored_reason"] == "not an image extension"
    assert rows["Banana/deeper/x.jpg"]["ignored_reason"] == "not at <category>/<file> depth"


def test_preprocess_accepts_images_and_rejects_bad_files(spark, image_tree, cfg):
    reals = real_images(SAMPLE_500, 2, 3)
    root = image_tree(reals)
    expected = write_bad_files(root, reals[0].read_bytes())
    frame = _frame(spark, root).filter(F.col("ignored_reason").isNull())
    out = {r["key"]: r for r in preprocess.preprocess_images(frame, cfg).collect()}
    assert len(out) == len(reals) + len(expected)  # nothing lost
    for path in reals:
        row = out[f"{path.parent.name}/{path.name}"]
        assert row["status"] == "ok" and row["reason"] is None
        want = images.preprocess(images.decode(path.read_bytes(), 10**7))
        assert row["image"] == images.stored(want)
        # the colour histogram of the exact pixels, not of the stored JPEG's
        assert np.array_equal(np.asarray(row["color"], np.float32), images.color_histogram(want))
        assert row["etag"] and len(row["etag"]) == 32
    for key, outcome in expected.items():
        assert out[key]["status"] == ("ok" if outcome == "ok" else "rejected"), key
        if outcome != "ok":
            assert out[key]["reason"] and out[key]["image"] is None


def test_oversized_file_is_rejected_without_decoding(spark, image_tree, cfg):
    root = image_tree(real_images(SAMPLE_500, 1, 2))
    small = cfg.with_overrides(max_image_bytes=100)
    frame = _frame(spark, root).filter(F.col("ignored_reason").isNull())
    rows = preprocess.preprocess_images(frame, small).collect()
    assert {r["status"] for r in rows} == {"rejected"}
    assert all("too large" in r["reason"] for r in rows)


def test_already_featurized_means_by_this_runs_model(spark, tmp_path):
    """After a backbone switch under the same runs prefix, images featurized by the old model are not
    'already featurized' for the new one: featurize reads them again, or the new table lacks them."""
    import json

    from spark_jobs.common.config import Config
    from spark_jobs.common.images import COLOR_DESCRIPTOR
    from spark_jobs.feature_table import made_with

    features = str(tmp_path / "features")
    spark.createDataFrame([("Apple/a.jpg", "Apple", "e1", [0.0], [1.0]), ("Apple/b.jpg", "Apple", "e2", [1.0], [1.0])],
                          "key string, category string, etag string, features array<float>, color array<float>"
                          ).write.parquet(features)
    lines = [{"key": "Apple/a.jpg", "etag": "e1", "size": 1}, {"key": "Apple/b.jpg", "etag": "e2", "size": 1},
             {"key": "Pear/c.jpg", "etag": "e3", "size": 1}]
    keys = tmp_path / "new.jsonl"
    keys.write_text("".join(json.dumps(line) + "\n" for line in lines))
    resnet = {"params": {"backbone": "resnet50", "weights": "random", "precision": "fp32",
                         "color_descriptor": COLOR_DESCRIPTOR},
              "outputs": {"features": features}, "stored_ms": 1_795_000_000_000}

    def already(cfg):
        frame = preprocess.new_keys(spark, keys.as_uri(), made_with([resnet], cfg))
        return {r["key"] for r in frame.collect() if r["already"]}

    assert already(Config(backbone="resnet50", weights="random")) == {"Apple/a.jpg", "Apple/b.jpg"}
    assert already(Config(backbone="efficientnet_lite0", weights="imagenet")) == set()
    assert already(Config(backbone="resnet50", weights="imagenet")) == set()


def test_an_image_whose_decoding_exceeds_the_decoders_memory_is_a_reject(spark, image_tree, cfg):
    """A PNG within the pixel limit that decodes to more than the decoder's budget (here 32 MB: a
    5000x5000 PNG of 9 KB needs 75 MB) is a reject with its reason; the photos beside it are processed
    and the task lives on. Before the sandbox it decoded at full size inside the Python worker."""
    import cv2

    reals = real_images(SAMPLE_500, 1, 2)
    root = image_tree(reals)
    bomb = np.zeros((5000, 5000, 3), np.uint8)
    (root / reals[0].parent.name / "bomb.png").write_bytes(cv2.imencode(".png", bomb)[1].tobytes())
    frame = _frame(spark, root).filter(F.col("ignored_reason").isNull())
    tight = cfg.with_overrides(decoder_memory_mb=32)
    out = {r["key"].split("/")[1]: r for r in preprocess.preprocess_images(frame, tight).drop("image").collect()}
    assert out["bomb.png"]["status"] == "rejected", out["bomb.png"]
    assert "memory" in out["bomb.png"]["reason"].lower(), out["bomb.png"]["reason"]
    assert [out[p.name]["status"] for p in reals] == ["ok", "ok"]


class _CountingS3(BaseHTTPRequestHandler):
    """Just enough of S3 (path-style HeadObject, GetObject with or without a range, and PutObject) to
    count the requests per key, and per client (Arrow's C++ SDK or boto3) in `clients`."""

    protocol_version = "HTTP/1.1"  # boto3 sends PutObject with `Expect: 100-continue`
    objects: dict[str, bytes] = {}
    requests: Counter = Counter()
    clients: Counter = Counter()

    def _count(self, method: str) -> str:
        path = unquote(self.path.split("?")[0])
        self.requests[method, path] += 1
        client = "arrow" if "aws-sdk-cpp" in self.headers.get("User-Agent", "") else "boto3"
        self.clients[method, path, client] += 1
        return path

    def do_HEAD(self):  # noqa: N802
        path = self._count("HEAD")
        if path in self.objects:
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.objects[path])))
            self.send_header("ETag", f'"{hashlib.md5(self.objects[path]).hexdigest()}"')
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
        self.end_headers()
    # another refusal of one object: an argument it does not take (400)
    REFUSED = {"other-key.jpg": (400, "InvalidArgument")}

    def _reply(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server's name
        path = self._count("GET")
        if path.endswith("/sse-c.jpg"):  # an object encrypted with a customer key: AWS answers 400
            self._reply(400, b"<Error><Code>InvalidRequest</Code><Message>SSE-C key needed</Message></Error>")
        elif path.rsplit("/", 1)[-1] in self.REFUSED:  # other refusals of one object
            status, code = self.REFUSED[path.rsplit("/", 1)[-1]]
            self._reply(status, f"<Error><Code>{code}</Code><Message>refused</Message></Error>".encode())
        elif path.endswith("/expired.jpg"):  # the credentials, not the object: every read would get it
            self._reply(400, b"<Error><Code>ExpiredToken</Code><Message>expired</Message></Error>")
        elif path in self.objects and self.headers.get("Range"):
            first, last = map(int, self.headers["Range"].removeprefix("bytes=").split("-"))
            body = self.objects[path][first:last + 1]
            self._reply(206, body, ETag=f'"{hashlib.md5(self.objects[path]).hexdigest()}"',
                        **{"Content-Range": f"bytes {first}-{first + len(body) - 1}/{len(self.objects[path])}"})
        elif path in self.objects:
            self._reply(200, self.objects[path], ETag=f'"{hashlib.md5(self.objects[path]).hexdigest()}"')
        else:
            self._reply(404, b"<Error><Code>NoSuchKey</Code><Message>none</Message></Error>")

    def do_PUT(self):  # noqa: N802
        path = self._count("PUT")
        self.objects[path] = self.rfile.read(int(self.headers["Content-Length"]))
        self._reply(200, ETag='"0"')

    def log_message(self, *args):
        pass


def test_each_listed_image_is_read_once_and_its_batch_written_as_one_pack(spark, cfg):
    """The listed path reads every object by key: one GET per image (the too-large branch of the step used
    to read them all a second time), none for a file the listing says is too large, and a key gone since
    the listing becomes a reject the next run retries. The batch's JPEGs go up as one pack (a PUT per
    photo cost more than the rest of its preprocessing), and each image's locator reads back its JPEG."""
    from spark_jobs.common import jpeg_packs

    reals = real_images(SAMPLE_500, 2, 2)
    keys = [f"{p.parent.name}/{p.name}" for p in reals]
    _CountingS3.objects = {f"/raw/in/{k}": p.read_bytes() for k, p in zip(keys, reals)}
    _CountingS3.requests = Counter()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CountingS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fake = cfg.with_overrides(s3_endpoint=f"http://127.0.0.1:{server.server_port}", max_image_bytes=10**6)
        rows = [(k, None, len(_CountingS3.objects[f"/raw/in/{k}"]), None, False) for k in keys]
        rows += [("Pear/big.jpg", None, 10**7, None, False), ("Pear/gone.jpg", None, 100, None, False),
                 ("Pear/sse-c.jpg", None, 100, None, False),
                 *((f"Pear/{name}", None, 100, None, False) for name in _CountingS3.REFUSED)]
        wanted = spark.createDataFrame(rows, "key string, etag string, size long, refused string, already boolean")
        raw = "s3a://raw/in"
        listing = preprocess.with_keys(preprocess.listed_files(wanted, raw), raw)
        out = preprocess.preprocess_images(listing.filter(F.col("ignored_reason").isNull()).drop("already"), fake,
                                           fetch_from=raw, jpeg_uri="s3a://out/run/jpeg")
        found = {r["key"]: r for r in out.collect()}
        partitions = out.rdd.getNumPartitions()
    finally:
        server.shutdown()
    assert {k for k in keys if found[k]["status"] == "ok"} == set(keys)
    assert "too large" in found["Pear/big.jpg"]["reason"]
    assert found["Pear/gone.jpg"]["reason"].endswith(f"({preprocess.RETRY_NEXT_RUN})")
    # another refusal of one key (a 400 here) is that key's reject, not the run's failure
    assert found["Pear/sse-c.jpg"]["reason"] == f"unreadable: InvalidRequest ({preprocess.RETRY_NEXT_RUN})"
    for name, (_, code) in _CountingS3.REFUSED.items():
        assert found[f"Pear/{name}"]["reason"] == f"unreadable: {code} ({preprocess.RETRY_NEXT_RUN})", name
    assert all(found[k]["etag"] == hashlib.md5(_CountingS3.objects[f"/raw/in/{k}"]).hexdigest() for k in keys)
    reads = {path: n for (method, path), n in _CountingS3.requests.items() if method == "GET"}
    assert reads == {**{f"/raw/in/{k}": 1 for k in keys}, "/raw/in/Pear/gone.jpg": 1, "/raw/in/Pear/sse-c.jpg": 1,
                     **{f"/raw/in/Pear/{name}": 1 for name in _CountingS3.REFUSED}}
    writes = {path: n for (method, path), n in _CountingS3.requests.items() if method == "PUT"}
    assert set(writes.values()) == {1} and len(writes) <= partitions and len(writes) < len(keys), writes
    assert all(path.startswith("/out/run/jpeg/") and path.endswith(jpeg_packs.SUFFIX) for path in writes)
    for key in keys:
        _, pack, offset, length = jpeg_packs.parse(found[key]["jpeg"], "out")
        assert _CountingS3.objects[f"/out/{pack}"][offset:offset + length] == found[key]["image"]
    assert found["Pear/big.jpg"]["jpeg"] is None and found["Pear/gone.jpg"]["jpeg"] is None


def test_a_listed_photo_is_read_by_arrows_client_only_when_its_bytes_are_the_content_listed(spark, cfg):
    """A photo whose bytes hash to the ETag its listing gave is read once, through Arrow's S3 client (a
    third of boto3's CPU a photo); one replaced since its listing, one listed with a multipart ETag and
    one gone are read through boto3 after Arrow's try, which gives the new content, the photo and the
    reject their reasons."""
    reals = real_images(SAMPLE_500, 2, 2)
    keys = [f"{p.parent.name}/{p.name}" for p in reals]
    _CountingS3.objects = {f"/raw/in/{k}": p.read_bytes() for k, p in zip(keys, reals)}
    _CountingS3.objects["/raw/in/Pear/replaced.jpg"] = reals[0].read_bytes()
    _CountingS3.objects["/raw/in/Pear/multipart.jpg"] = reals[1].read_bytes()
    _CountingS3.requests, _CountingS3.clients = Counter(), Counter()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CountingS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fake = cfg.with_overrides(s3_endpoint=f"http://127.0.0.1:{server.server_port}")
        md5 = {k: hashlib.md5(_CountingS3.objects[f"/raw/in/{k}"]).hexdigest() for k in keys}
        rows = [(k, md5[k], len(_CountingS3.objects[f"/raw/in/{k}"]), None, False) for k in keys]
        rows += [("Pear/replaced.jpg", hashlib.md5(b"the listed content").hexdigest(), 100, None, False),
                 ("Pear/multipart.jpg", md5[keys[1]] + "-2", 100, None, False),
                 ("Pear/gone.jpg", md5[keys[0]], 100, None, False)]
        wanted = spark.createDataFrame(rows, "key string, etag string, size long, refused string, already boolean")
        listing = preprocess.with_keys(preprocess.listed_files(wanted, "s3a://raw/in"), "s3a://raw/in")
        out = preprocess.preprocess_images(listing.drop("already"), fake, fetch_from="s3a://raw/in")
        found = {r["key"]: r for r in out.drop("image").collect()}
    finally:
        server.shutdown()
    gets = {(path, client): n for (method, path, client), n in _CountingS3.clients.items() if method == "GET"}
    assert {k: found[k]["status"] for k in keys} == dict.fromkeys(keys, "ok")
    assert all(found[k]["etag"] == md5[k] for k in keys)
    assert {(f"/raw/in/{k}", "arrow"): 1 for k in keys}.items() <= gets.items()
    assert not any(path == f"/raw/in/{k}" and client == "boto3" for (path, client) in gets for k in keys)
    # replaced since its listing: Arrow read the new bytes, which are not the content listed; boto3 reads them
    assert gets[("/raw/in/Pear/replaced.jpg", "boto3")] == 1
    assert found["Pear/replaced.jpg"]["status"] == "ok" and found["Pear/replaced.jpg"]["etag"] == md5[keys[0]]
    assert gets[("/raw/in/Pear/multipart.jpg", "boto3")] == 1 and found["Pear/multipart.jpg"]["status"] == "ok"
    assert gets[("/raw/in/Pear/gone.jpg", "boto3")] == 1
    assert found["Pear/gone.jpg"]["reason"].endswith(f"({preprocess.RETRY_NEXT_RUN})")


def test_a_credentials_error_fails_the_task_instead_of_rejecting_every_key(spark, cfg):
    """Only refusals of one object are that key's reject: an expired token (400 too) would reject every
    key, the run would succeed with nothing and its listing would give the photos up after a few runs."""
    import pytest

    server = ThreadingHTTPServer(("127.0.0.1", 0), _CountingS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fake = cfg.with_overrides(s3_endpoint=f"http://127.0.0.1:{server.server_port}")
        wanted = spark.createDataFrame([("Pear/expired.jpg", None, 100, None, False)],
                                       "key string, etag string, size long, refused string, already boolean")
        listing = preprocess.with_keys(preprocess.listed_files(wanted, "s3a://raw/in"), "s3a://raw/in")
        out = preprocess.preprocess_images(listing.drop("already"), fake, fetch_from="s3a://raw/in")
        with pytest.raises(Exception, match="ExpiredToken"):
            out.drop("image").collect()
    finally:
        server.shutdown()
