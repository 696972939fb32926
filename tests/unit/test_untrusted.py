"""Hostile category names (they come from object keys) in the report's CSVs and plots, and hostile run
ids and output locations: neutralised or refused, never a failed run or a write outside the run."""

import csv
import json
import re
from functools import partial

import cv2

import numpy as np
import pandas as pd
import pytest

from spark_jobs import step_cli
from spark_jobs.common import cluster_report, report_page
from spark_jobs.common.config import Config
from spark_jobs.common.untrusted import csv_cell, plot_label

HOSTILE = ["=HYPERLINK(\"http://example.invalid\",\"x\")", "+1+1", "-2", "@SUM(A1)", "\tTab", r"$\evil$", "Apple",
           "<img src=x onerror=alert(1)>"]


def test_csv_cells_that_spreadsheets_run_are_neutralised():
    assert [csv_cell(c) for c in HOSTILE[:-1]] == [
        "'=HYPERLINK(\"http://example.invalid\",\"x\")", "'+1+1", "'-2", "'@SUM(A1)", "'\tTab", r"$\evil$", "Apple"]
    assert plot_label(r"$\evil$") == r"\$\evil\$"


def test_the_report_draws_and_writes_hostile_category_names(tmp_path):
    """A category named like mathtext raised in the plot legend; CSV cells carried formulas as given."""
    rng = np.random.default_rng(0)
    categories = [HOSTILE[i % len(HOSTILE)] if i % 2 else HOSTILE[-1] for i in range(28)]  # the HTML one leads
    points = pd.DataFrame({"key": [f"{c}/{i}.jpg" for i, c in enumerate(categories)], "category": categories,
                           "cluster": [i % 3 for i in range(28)], "pc1": rng.normal(size=28),
                           "pc2": rng.normal(size=28), "pca": list(rng.normal(size=(28, 4))),
                           "jpeg": [f"s3a://b/jpeg/p.pack#{i}+1" for i in range(28)]})
    embedded = points.assign(tsne1=points["pc1"], tsne2=points["pc2"])
    table = points.groupby(["category", "cluster"]).size().unstack(fill_value=0)
    jpeg = cv2.imencode(".jpg", np.full((224, 224, 3), 90, np.uint8))[1].tobytes()
    cluster_report.build(str(tmp_path), points=points, embedded=embedded, table=table, metrics={"ari": 0.5},
                 context={"images": 28}, explained=[0.4, 0.2, 0.1, 0.05],
                 fetch_jpegs=lambda locators: {k: (loc, jpeg) for k, loc in locators.items() if not k.startswith("+")},
                 make_thumbnails=partial(report_page.thumbnails, memory_bytes=512 * 2**20, timeout_s=30))
    cells = [cell for name in ("clusters.csv", "contingency.csv") for row in csv.reader(open(tmp_path / name))
             for cell in row]
    cells += [cell for row in csv.reader(open(tmp_path / "views_2d.csv"), delimiter=";") for cell in row]
    assert not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r")) and not _number(c)]
    assert (tmp_path / "pca_by_fruit.png").stat().st_size > 0
    # the page: every name escaped, every image inline (a page to mail), four photos per cluster found
    page = (tmp_path / "index.html").read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert sources and all(src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for src in sources)
    assert sum(src.startswith("data:image/png") for src in sources) == len(cluster_report.figure_files()) == 6
    document = json.loads((tmp_path / "clusters.json").read_text())
    shown = [k for c in document["clusters"] for k in c["thumbnails"]]
    assert all(1 <= len(c["thumbnails"]) <= 4 for c in document["clusters"]) and len(document["clusters"]) == 3
    assert not [k for k in shown if k.startswith("+")]  # a photo not found is left out, the page still made
    assert sum(src.startswith("data:image/jpeg") for src in sources) == len(shown)
    # the same thumbnails for the run report, which decodes no photo itself
    assert set(report_page.parse_thumbnails((tmp_path / report_page.THUMBNAILS_FILE).read_bytes())) == set(shown)


def _number(cell):
    try:
        float(cell)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("run_id", ["", ".", "..", "a/b", "../runs"])
def test_run_ids_that_name_no_folder_of_their_own_are_refused(run_id):
    with pytest.raises(ValueError, match="run id"):
        Config().step_uri(run_id, "pca")


def test_a_step_refuses_to_write_outside_its_run():
    cfg = Config(runs_prefix="runs")
    good = cfg.step_uri("r1", "pca")
    step_cli.check_output(cfg, good, "r1")
    for bad in ("s3a://fruitflow-features/runs/r2/pca", "s3a://fruitflow-features/other/r1/pca",
                "s3a://elsewhere/runs/r1/pca", "s3a://fruitflow-features/runs/r1", "s3a://fruitflow-features/runs"):
        with pytest.raises(SystemExit, match="outside"):
            step_cli.check_output(cfg, bad, "r1")


@pytest.mark.parametrize("airflow_run_id", ["::", "..", "+.+"])
def test_airflow_run_ids_that_clean_to_nothing_are_refused(airflow_run_id):
    from fruitflow_airflow.submit import safe_run_id

    with pytest.raises(ValueError, match="run id"):
        safe_run_id(airflow_run_id)


def test_two_run_ids_never_share_a_folder():
    """Cleaning alone mapped `...T00:00:00+00:00` and `...T00_00_00_00_00` (both valid Airflow run ids) to
    one folder, and each run's steps delete their folder before writing it. An id that needs cleaning gets
    a hash of itself; a clean id stays as it is, unless it could pass for a hashed one."""
    from fruitflow_airflow.submit import safe_run_id

    colons, underscores = "manual__2026-01-01T00:00:00+00:00", "manual__2026-01-01T00_00_00_00_00"
    assert safe_run_id(underscores) == underscores  # already a folder name: unchanged
    hashed = safe_run_id(colons)
    assert hashed != underscores and hashed.startswith(underscores + ".h")
    assert safe_run_id(hashed) != hashed  # an id that looks hashed is hashed again
    ids = [colons, underscores, hashed, "manual__2026-01-01T00 00 00 00 00", "a:b", "a;b", "a_b", "r1", "r1.h0"]
    assert len({safe_run_id(i) for i in ids}) == len(ids)


# A formula behind a separator the file does not use: a cell of its own once opened with that separator.
SPLIT = {"Apple,=1+2": "Apple,'=1+2", "Kiwi;@SUM(A1)": "Kiwi;'@SUM(A1)", "a|-1,+2": "a|'-1,'+2",
         "=x,=y": "'=x,'=y", "Lemon, Meyer": "Lemon, Meyer",
         "a\t\t=1": "a\t'\t'=1"}


def test_a_formula_after_a_separator_inside_a_cell_is_neutralised():
    assert {c: csv_cell(c) for c in SPLIT} == SPLIT
    rows = list(csv.reader([";".join(csv_cell(c) for c in SPLIT)], delimiter=","))
    assert not any(cell.startswith(("=", "+", "-", "@")) for cell in rows[0]), rows


def test_csvs_that_spark_writes_follow_the_same_rule(spark):
    from pyspark.sql import functions as F

    from spark_jobs.columns import csv_column

    texts = [*HOSTILE, *SPLIT]
    frame = spark.createDataFrame([(c,) for c in texts], "category string")
    assert [r[0] for r in frame.select(csv_column(F.col("category"))).collect()] == [csv_cell(c) for c in texts]


@pytest.mark.parametrize("weights", ["/tmp/evil.pth", "s3a://someone-elses/evil.pth", "s3a://fruitflow-models/x.pkl",
                                     "s3a://fruitflow-models/a/../../b/evil.pth",
                                     # where the Spark nodes may write: a model planted there is refused
                                     "s3a://fruitflow-models/runs/r1/train/planted.onnx",
                                     "s3a://fruitflow-models/runs-label/planted.pth"])
def test_a_job_refuses_weights_a_param_may_not_name(weights, monkeypatch):
    from spark_jobs import featurize

    monkeypatch.delenv("FRUITFLOW_WEIGHTS", raising=False)
    args = featurize.arg_parser().parse_args(["--run-id", "r", "--keys", "s3a://x/y.jsonl", "--backbone", "resnet50",
                                              "--weights", weights])
    with pytest.raises(SystemExit, match="refused"):
        step_cli.config(args)


def test_the_operators_own_local_weights_stay_usable(monkeypatch):
    from spark_jobs import featurize

    monkeypatch.setenv("FRUITFLOW_WEIGHTS", "/opt/models/resnet50.onnx")
    for weights in ("/opt/models/resnet50.onnx", "s3a://fruitflow-models/resnet50/x.onnx", "imagenet"):
        args = featurize.arg_parser().parse_args(["--run-id", "r", "--keys", "s3a://x/y.jsonl",
                                                  "--backbone", "resnet50", "--weights", weights])
        assert step_cli.config(args).weights == weights
