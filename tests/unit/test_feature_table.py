"""The feature table: one row per photo, the newest featurize step's, without moving every row."""

from spark_jobs.common.manifest import STORED_MS
from spark_jobs.feature_table import feature_table


def _steps(spark, tmp_path, contents: list[list[tuple[str, float]]]) -> list[dict]:
    """A featurize output per list of (key, feature value), stored in that order."""
    manifests = []
    for i, rows in enumerate(contents):
        uri = str(tmp_path / f"step{i}")
        spark.createDataFrame([(key, key.split("/")[0], [value], [1.0], f"pack{i}") for key, value in rows],
                              "key string, category string, features array<float>, color array<float>, "
                              "jpeg string").write.parquet(uri)
        manifests.append({"outputs": {"features": uri}, STORED_MS: i + 1, "step_uri": f"s3a://b/runs/r{i}/featurize"})
    return manifests


def _rows(table) -> dict[str, tuple]:
    rows = table.collect()
    assert len(rows) == len({row.key for row in rows}), "one row per key"
    return {row.key: (row.features[0], row.jpeg) for row in rows}


def test_the_newest_steps_row_wins_whether_few_or_many_keys_repeat(spark, tmp_path):
    manifests = _steps(spark, tmp_path, [
        [("a/1.jpg", 1.0), ("a/2.jpg", 2.0), ("b/1.jpg", 3.0)],
        [("a/2.jpg", 20.0), ("b/2.jpg", 4.0)],  # a/2.jpg featurized again: its newer row wins
        [("b/1.jpg", 30.0), ("b/1.jpg", 30.0)],  # a step that wrote a key twice gives one row
    ])
    expected = {"a/1.jpg": (1.0, "pack0"), "a/2.jpg": (20.0, "pack1"), "b/1.jpg": (30.0, "pack2"),
                "b/2.jpg": (4.0, "pack1")}
    assert _rows(feature_table(spark, manifests)) == expected
    # past the keys told apart by name, every row is shuffled: the same table
    assert _rows(feature_table(spark, manifests, max_repeated_keys=1)) == expected
    assert list(feature_table(spark, manifests).columns) == ["key", "category", "features", "color", "jpeg"]


def test_rows_of_photos_featurized_once_are_not_shuffled(spark, tmp_path):
    """Picking the newest row shuffles the rows of the keys that repeat, not the table's ~6 KB rows."""
    once = feature_table(spark, _steps(spark, tmp_path / "once", [[("a/1.jpg", 1.0)], [("a/2.jpg", 2.0)]]))
    plan = once._jdf.queryExecution().executedPlan().toString()
    assert "Window" not in plan and "Exchange" not in plan, plan

    again = feature_table(spark, _steps(spark, tmp_path / "again", [[("a/1.jpg", 1.0)], [("a/1.jpg", 2.0)]]))
    assert _rows(again) == {"a/1.jpg": (2.0, "pack1")}
    assert "BroadcastHashJoin" in again._jdf.queryExecution().executedPlan().toString()
