"""The driver's object-store access (`spark_jobs.common.storage`) on a local SparkSession and local files:
the same Hadoop FileSystem calls as on s3a."""

import os

import pytest

from spark_jobs.common import storage


@pytest.mark.parametrize("size", [10, storage.PY4J_MAX_BYTES + 1, 3 * storage.PY4J_MAX_BYTES])
def test_a_file_is_written_and_read_back_whole_whatever_its_size(spark, tmp_path, size):
    """Small files cross py4j as byte arrays; larger ones (PCA's kept sums, 17 MB) through a local copy."""
    data = os.urandom(size)
    uri = (tmp_path / "folder" / "sums.npz").as_uri()
    storage.write_bytes(spark, uri, data)
    assert storage.read_bytes(spark, uri) == data
    assert storage.read_bytes(spark, uri, max_bytes=size) == data


@pytest.mark.parametrize("size", [10, 2 * storage.PY4J_MAX_BYTES])
def test_a_file_over_the_callers_limit_is_refused_before_it_is_read(spark, tmp_path, size):
    path = tmp_path / "planted.npz"
    path.write_bytes(b"x" * size)
    with pytest.raises(ValueError, match=f"over {size - 1} bytes"):
        storage.read_bytes(spark, path.as_uri(), max_bytes=size - 1)
