"""The E2E benchmark's floor counts the Spark steps a run waited for one after another, from the
tasks' time spans: steps that overlap (cluster beside train under a scheduler) count once."""

from fruitflow.bench.e2e import spark_steps_in_a_row


def _tasks(spans):
    return {name: {"seconds": end - start, "start": start, "end": end} for name, (start, end) in spans.items()}


def test_steps_run_one_after_another_all_count():
    tasks = _tasks({"wait_for_images": (0, 3), "preprocess": (3, 40), "featurize": (41, 90), "pca": (91, 120),
                    "cluster": (121, 170), "train": (171, 230), "publish": (231, 233)})
    assert spark_steps_in_a_row(tasks) == 5


def test_steps_side_by_side_count_once():
    tasks = _tasks({"preprocess": (3, 40), "featurize": (41, 90), "pca": (91, 120),
                    "cluster": (121, 170), "train": (122, 200)})
    assert spark_steps_in_a_row(tasks) == 4


def test_tasks_that_did_not_run_and_airflow_tasks_do_not_count():
    tasks = _tasks({"list_new": (0, 1), "preprocess": (3, 40), "publish": (50, 51)})
    tasks["featurize"] = {"seconds": None, "start": None, "end": None}
    assert spark_steps_in_a_row(tasks) == 1
