"""PCA's running sums: a pca step adds the sums of the new featurize steps to the last step's, and they
are the whole table's; when they cannot be (a photo featurized again), it sums the whole table."""

import numpy as np
import pytest

from spark_jobs import pca
from spark_jobs.common.manifest import STORED_MS
from spark_jobs.feature_table import feature_table
from spark_jobs.pca_sums import Kept, Sums, running_sums, step_id, sums_of
from spark_jobs.step_outputs import with_added_columns


def _step(spark, tmp_path, name: str, keys: list[str], stored_ms: int, seed: int) -> dict:
    """A committed featurize step's manifest and its table (CNN features and a colour histogram)."""
    rng = np.random.default_rng(seed)
    rows = [(key, key.split("/")[0], (rng.normal(0, 1, 12) + len(key)).tolist(), np.abs(rng.normal(0, 1, 4)).tolist())
            for key in keys]
    uri = str(tmp_path / name)
    with_added_columns(spark.createDataFrame(
        rows, "key string, category string, features array<float>, color array<float>")).write.parquet(uri)
    return {"outputs": {"features": uri}, STORED_MS: stored_ms, "step_uri": f"s3a://features/runs/{name}/featurize"}


def _sums(spark, steps, stages, column):
    table = pca.pca_input(feature_table(spark, steps), stages)
    return sums_of(table, column), table.count()


def test_the_new_steps_sums_added_to_the_kept_ones_are_the_whole_tables(spark, tmp_path):
    first = _step(spark, tmp_path, "r1", [f"Apple/{i}.jpg" for i in range(20)], 1, seed=1)
    second = _step(spark, tmp_path, "r2", [f"Pear/{i}.jpg" for i in range(7)], 2, seed=2)
    stages, column = pca.input_stages(feature_table(spark, [first]), True, 0.5)
    kept_sums, _ = _sums(spark, [first], stages, column)
    kept = Kept(kept_sums, [step_id(first)], "s3a://reduced/runs/r1/pca")
    whole, n = _sums(spark, [first, second], stages, column)

    def table_of(steps):
        assert steps == [second] or steps == [first, second]
        return pca.pca_input(feature_table(spark, steps), stages)

    summed, how = running_sums(kept, [first, second], table_of, column, n)
    assert how == {"from": "s3a://reduced/runs/r1/pca", "featurize_steps_summed": 1} and summed.n == n == 27
    for ours, theirs in zip(summed.mean_and_covariance(), whole.mean_and_covariance()):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    # nothing new: the kept sums as they are
    assert running_sums(kept, [first], table_of, column, 20)[1]["featurize_steps_summed"] == 0


def test_a_photo_featurized_again_makes_the_step_sum_the_whole_table(spark, tmp_path):
    """The newer row of a photo replaces its older one in the table: the kept sums still count the older
    row, so the counts do not add up and the whole table is summed."""
    first = _step(spark, tmp_path, "r1", [f"Apple/{i}.jpg" for i in range(10)], 1, seed=1)
    again = _step(spark, tmp_path, "r2", ["Apple/3.jpg", "Pear/0.jpg"], 2, seed=2)
    stages, column = pca.input_stages(feature_table(spark, [first]), True, 0.0)
    kept = Kept(_sums(spark, [first], stages, column)[0], [step_id(first)], "s3a://reduced/runs/r1/pca")
    whole, n = _sums(spark, [first, again], stages, column)
    summed, how = running_sums(kept, [first, again], lambda steps: pca.pca_input(feature_table(spark, steps), stages),
                               column, n)
    assert how == {"from": None, "featurize_steps_summed": 2} and summed.n == n == 11
    np.testing.assert_allclose(summed.gram, whole.gram)


def test_kept_sums_read_back_only_as_plain_consistent_arrays():
    sums = Sums(3, np.arange(4.0), np.eye(4))
    back = Sums.from_bytes(sums.to_bytes())
    assert back.n == 3 and np.array_equal(back.gram, sums.gram)
    with pytest.raises(ValueError):
        Sums.from_bytes(Sums(3, np.arange(4.0), np.eye(3)).to_bytes())
    with pytest.raises(ValueError):
        Sums.from_bytes(Sums(3, np.array([np.nan, 1.0]), np.eye(2)).to_bytes())
    import io

    buffer = io.BytesIO()
    np.savez(buffer, n=np.array(3), total=np.array([object()], dtype=object), gram=np.eye(1))
    with pytest.raises(ValueError):  # a pickled array is refused, never loaded
        Sums.from_bytes(buffer.getvalue())
