"""The E2E benchmark's figures: the floor counts the Spark steps a run waited for one after another, from
the tasks' time spans (steps that overlap, cluster beside train under a scheduler, count once); the cost
per photo is the DAG's marginal wall time per image on the worker's cores against the bare engine's."""

from fruitflow.bench.e2e import spark_steps_in_a_row


def _tasks(spans):
    return {name: {"seconds": end - start, "start": start, "end": end} for name, (start, end) in spans.items()}


def test_steps_run_one_after_another_all_count():
    tasks = _tasks({"wait_for_images": (0, 3), "featurize": (3, 90), "pca": (91, 120),
                    "cluster": (121, 170), "train": (171, 230), "publish": (231, 233)})
    assert spark_steps_in_a_row(tasks) == 4


def test_steps_side_by_side_count_once():
    tasks = _tasks({"featurize": (3, 90), "pca": (91, 120),
                    "cluster": (121, 170), "train": (122, 200)})
    assert spark_steps_in_a_row(tasks) == 3


def test_tasks_that_did_not_run_and_airflow_tasks_do_not_count():
    tasks = _tasks({"list_new": (0, 1), "featurize": (3, 40), "publish": (50, 51)})
    tasks["pca"] = {"seconds": None, "start": None, "end": None}
    assert spark_steps_in_a_row(tasks) == 1


def test_the_pipelines_cost_per_photo_is_the_slope_of_its_wall_time_over_the_sizes():
    """Least squares over N, 4N, 10N: the fixed cost (the intercept) is left out, the per-photo cost
    counted on every worker core, then set against the bare engine's."""
    from fruitflow.bench.e2e import cost_figures

    runs = {name: {"n_images": n, "wall_s": 300 + 0.05 * n + noise}
            for name, n, noise in (("N", 1000, 1.0), ("4N", 4000, -2.0), ("10N", 10000, 1.0))}
    cost = cost_figures(runs, worker_cores=2, engine={"engine_core_ms_per_image": 25.0})
    assert abs(cost["pipeline_core_ms_per_image"] - 100.0) < 1.0  # 50 ms of wall per photo on 2 cores
    assert abs(cost["ratio_pipeline_vs_engine"] - 4.0) < 0.05


def test_with_one_size_there_is_no_slope_only_the_engines_figure():
    from fruitflow.bench.e2e import cost_figures

    cost = cost_figures({"N": {"n_images": 6, "wall_s": 120.0}}, worker_cores=2,
                        engine={"engine_core_ms_per_image": 22.6})
    assert cost["pipeline_core_ms_per_image"] is None and cost["ratio_pipeline_vs_engine"] is None
    assert cost["engine_core_ms_per_image"] == 22.6


def test_the_incremental_ratio_sets_photos_added_to_a_big_table_against_the_same_alone():
    from fruitflow.bench.e2e import incremental_figures

    def run(wall, n_table):
        return {"n_images": 100, "n_table": n_table, "wall_s": wall, "tasks": {"pca": {"seconds": wall / 5}}}

    figures = incremental_figures({"+N/10": run(300.0, 10100), "N/10": run(120.0, 100)})
    assert figures["incremental_ratio"] == 2.5
    assert figures["incremental"]["n_table"] == 10100 and figures["incremental"]["per_step_s_added"] == {"pca": 60.0}
