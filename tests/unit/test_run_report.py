"""The run's report page as the plugin finds it (plugins/fruitflow_airflow/run_report.py)."""

from fruitflow_airflow import run_report
from spark_jobs.common.config import Config, split_s3_uri


class _Pages:
    def __init__(self, objects):
        self.objects = objects

    def check_for_key(self, key, bucket):
        return (bucket, key) in self.objects

    def read_key(self, key, bucket):
        return self.objects[(bucket, key)]


def test_a_run_from_before_hashed_folder_names_keeps_its_page():
    """Run ids with ':' now get a hashed folder; a run made before keeps its page under the old name."""
    cfg = Config.from_env()
    run_id = "manual__2026-11-30T10:00:00+00:00"
    old = split_s3_uri(run_report.report_html_uri(cfg, run_id, "manual__2026-11-30T10_00_00_00_00"))
    assert run_report.read(_Pages({old: "<html>old page</html>"}), cfg, run_id) == "<html>old page</html>"
    new = split_s3_uri(run_report.report_html_uri(cfg, run_id))
    pages = _Pages({old: "<html>old page</html>", new: "<html>new page</html>"})
    assert run_report.read(pages, cfg, run_id) == "<html>new page</html>"
    assert run_report.read(_Pages({}), cfg, run_id) is None


def test_the_nothing_new_line_says_below_only_when_a_page_is_there():
    summary = {"n_new": 2, "n_already_featurized": 2}
    assert "Below: the report of run r1" in run_report.nothing_new_notice("r2", summary, "r1", True)
    assert "r1, left no report page" in run_report.nothing_new_notice("r2", summary, "r1", False)
    assert "No run has trained yet" in run_report.nothing_new_notice("r2", summary, None, False)
