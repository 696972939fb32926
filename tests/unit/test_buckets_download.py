"""`buckets.download_prefix` (make demo's copy of the report folder) writes inside its folder only."""

import pytest

from fruitflow import buckets


class _Bucket:
    def __init__(self, keys):
        self.keys, self.downloaded = keys, []

    def get_paginator(self, name):
        keys = self.keys

        class _Pages:
            def paginate(self, Bucket, Prefix):  # noqa: N803 - boto3's names
                return [{"Contents": [{"Key": k} for k in keys if k.startswith(Prefix)]}]

        return _Pages()

    def download_file(self, bucket, key, target):
        self.downloaded.append(target)
        with open(target, "w") as f:
            f.write(key)


@pytest.mark.parametrize("key", ["run/report/../../escaped.txt", "run/report//etc/escaped.txt"])
def test_a_key_that_climbs_out_is_refused(tmp_path, monkeypatch, key):
    bucket = _Bucket(["run/report/ok.png", key])
    monkeypatch.setattr(buckets, "client", lambda: bucket)
    dest = tmp_path / "out" / "report"
    with pytest.raises(ValueError, match="outside"):
        buckets.download_prefix("s3a://fruitflow-reports/run/report", dest)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out" / "escaped.txt").exists()
    assert all(str(dest) in target for target in bucket.downloaded)


def test_the_folder_is_copied(tmp_path, monkeypatch):
    bucket = _Bucket(["run/report/a.png", "run/report/tables/b.csv", "run/other.txt"])
    monkeypatch.setattr(buckets, "client", lambda: bucket)
    dest = buckets.download_prefix("s3a://fruitflow-reports/run/report", tmp_path / "report")
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == ["a.png", "tables/b.csv"]
