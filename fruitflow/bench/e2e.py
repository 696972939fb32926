"""`make bench E2E=1 [SCALE=1] [PRECISION=int8] [DATA=...]`: the whole DAG on real images, timed.

E2E: uploads DATA (default: the 1179-image sample) under a fresh raw prefix, runs `fruit_pipeline`
with `dag.test()` on the local stack (the machinery of `make demo`, with its own feature table), and
prints the time of every task, the in-step timings of the Spark steps, and the overhead outside
featurization (JVM starts, S3 I/O, PCA, KMeans, Airflow): the DAG's wall time minus the featurize
step's model time.

SCALE: the same at N, 4N, 10N and 30N (the same images copied under new keys, each set with its own feature
table): featurize + PCA + KMeans time at each size, its ratio to N (`scale_ratio_4n`, `scale_ratio_10n`,
`scale_ratio_30n`; target at most 1.1 x the size ratio), and each step's driver peak RSS (the spark-submit JVM
plus the step's driver Python process, polled with psutil). Then about N/10 new photos (those of every tenth
fruit of DATA, under new keys) are added to the 10N run's bucket prefix and feature table, and the same photos
run into an empty table of their own: `incremental_ratio` is the first run's wall time over the second's
(target <= 1.2: a run's work should grow with what is new).

Cost per photo (`cost`): the bare engine, ONNX Runtime on the same model over DATA's images decoded and
preprocessed in memory on every core, gives `engine_core_ms_per_image`; with SCALE, the DAG's marginal
wall time per image (least squares over N, 4N, 10N) times the worker's cores gives
`pipeline_core_ms_per_image`, and `ratio_pipeline_vs_engine` is the one over the other (target <= 2.0).

After the runs, a trivial Spark application (start, one executor, one row to S3, stop) is submitted like
a step: `overhead_s` (the DAG's wall time outside featurization) over as many of those as the run
launched Spark steps one after another (`spark_steps_in_a_row`, from the tasks' time spans) is
`ratio_overhead_vs_floor`, the fixed cost's share (for reference).

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path

import numpy as np

from fruitflow import buckets, stack
from fruitflow.bench import ready
from fruitflow.bench.sampler import ProcessSampler
from fruitflow.paths import SAMPLE_1179
from spark_jobs.common.config import Config
from spark_jobs.common.steps import STEP_NAMES, STEPS

DEFAULT_DATA = SAMPLE_1179
SCALED_STEPS = ("featurize", "pca", "cluster")  # featurize sees new photos only; pca and cluster see the table
SIZES = (("N", 1), ("4N", 4), ("10N", 10), ("30N", 30))  # SCALE=1: the same images copied under new keys
COST_SIZES = ("N", "4N", "10N")  # the marginal cost's line (30N checks that the scale stays flat)


def log(msg: str) -> None:
    print(f"[bench-e2e] {msg}", file=sys.stderr, flush=True)


class StepDriverRss(ProcessSampler):
    """Peak RSS of each Spark step's driver: the spark-submit JVM and its Python child, both of which
    carry `spark_jobs/<step>.py` on their command line (executors and Python workers do not)."""

    def __init__(self, interval: float = 0.25):
        super().__init__(interval)
        self.peaks: dict[str, dict[str, float]] = {}

    def sample(self, processes):
        now: dict[str, dict[str, float]] = {}
        for _, cmd, rss in processes:
            for step in STEPS:
                if f"spark_jobs/{step.application}" in cmd and "pyspark.daemon" not in cmd:
                    part = "jvm_mb" if "SparkSubmit" in cmd else "python_mb"
                    now.setdefault(step.name, {"jvm_mb": 0.0, "python_mb": 0.0})[part] += rss
        for step, parts in now.items():
            peak = self.peaks.setdefault(step, {"jvm_mb": 0.0, "python_mb": 0.0, "total_mb": 0.0})
            peak["jvm_mb"] = max(peak["jvm_mb"], parts["jvm_mb"])
            peak["python_mb"] = max(peak["python_mb"], parts["python_mb"])
            peak["total_mb"] = max(peak["total_mb"], parts["jvm_mb"] + parts["python_mb"])


def upload_copies(folder: Path, bucket: str, prefix: str, copies: int, first_copy: int = 0, every: int = 1) -> int:
    """<fruit>/<name> files (of every `every`-th fruit: whole fruits, so that each has photos to train
    on and hold out), `copies` times: copy c > 0 is stored as <fruit>/c<c>_<name> (new keys), c counted
    from `first_copy`."""
    fruits = sorted(p for p in folder.iterdir() if p.is_dir())[::every]
    files = [p for fruit in fruits for p in sorted(fruit.iterdir()) if p.is_file()]
    return buckets.upload_files([(p, f"{prefix}/{p.parent.name}/{'' if c == 0 else f'c{c}_'}{p.name}")
                               for c in range(first_copy, first_copy + copies) for p in files], bucket)


def run_pipeline(data: Path, copies: int, weights: str, precision: str, *, label: str = "", first_copy: int = 0,
                 every: int = 1) -> dict:
    """One DAG run over `copies` x DATA (every `every`-th photo) under its own raw prefix and feature table,
    or under `label`'s, which an earlier run made (its photos then are the table's old ones); timings
    and RSS."""
    from fruitflow.demo import read_summary, run_dag

    label = label or f"bench-e2e-{uuid.uuid4().hex[:6]}-x{copies}"
    os.environ["FRUITFLOW_RUNS_PREFIX"] = Config.from_env().table_prefix(label)  # a feature table of its own
    os.environ["FRUITFLOW_PRECISION"] = precision  # read by the featurize driver (spark-submit inherits it)
    cfg = Config.from_env()
    n_files = upload_copies(data, cfg.raw_bucket, label, copies, first_copy, every)
    log(f"uploaded {n_files} files to s3://{cfg.raw_bucket}/{label}/; running the DAG (precision {precision})")
    started = time.perf_counter()
    with StepDriverRss() as rss:
        dag_run = run_dag({"raw_prefix": label, "weights": weights})
    wall = time.perf_counter() - started
    state = str(getattr(dag_run, "state", "unknown"))
    tasks = {}
    for ti in dag_run.get_task_instances():
        duration = (ti.end_date - ti.start_date).total_seconds() if ti.start_date and ti.end_date else None
        tasks[ti.task_id] = {"state": str(ti.state), "seconds": round(duration, 2) if duration is not None else None,
                             "start": ti.start_date.timestamp() if ti.start_date else None,
                             "end": ti.end_date.timestamp() if ti.end_date else None}
    if state != "success":
        raise RuntimeError(f"DAG run {dag_run.run_id} ended {state}: {tasks}")
    summary = read_summary(cfg, dag_run.run_id)
    return {"n_files": n_files, "n_images": summary["n_images"], "wall_s": round(wall, 2), "tasks": tasks,
            "step_timings_s": summary.get("timings_s", {}), "driver_peak_rss_mb": {
                k: {kk: round(vv) for kk, vv in v.items()} for k, v in rss.peaks.items()},
            "n_table": summary.get("n_table"), "ari": summary.get("ari"), "nmi": summary.get("nmi"),
            "run_id": dag_run.run_id, "label": label}


def prime_model(weights: str) -> tuple[float, str]:
    """Materialise the FP32 model in the models location before the timed runs (a deployment does it
    once; every later run reuses it), so that each run measures the steady state and N and 4N compare:
    (seconds, the model's ONNX file)."""
    from fruitflow_airflow.tasks import choose_model

    from spark_jobs.common import storage
    from spark_jobs.common.models import materialize
    from spark_jobs.session import build_session, stop_session

    started = time.perf_counter()
    cfg = Config.from_env(weights=weights)
    spark = build_session("fruitflow-bench-prime", cfg, master="local[1]")
    try:
        # the model the runs' list_new task will choose (the same rule, the same models bucket)
        chosen = choose_model(cfg.backbone, cfg.weights, cfg, partial(storage.exists, spark))
        model = materialize(spark, cfg.with_overrides(backbone=chosen["backbone"], weights=chosen["weights"]))
    finally:
        stop_session(spark)
    log(f"model ready at {model.onnx_uri} ({time.perf_counter() - started:.0f} s)")
    return time.perf_counter() - started, model.onnx_uri


def spark_steps_in_a_row(tasks: dict) -> int:
    """The spark-submit launches the run waited for one after another: its Spark steps' time spans,
    overlapping ones counted once. Measured rather than read off the DAG, because it depends on who runs
    it: `dag.test()` (this bench, `make demo`) runs one task at a time, so cluster and train follow each
    other (5); a scheduler with parallelism starts them together (4), though on one 2-core worker the
    second application still waits for the first's executor to release the cores."""
    spans = sorted((t["start"], t["end"]) for name, t in tasks.items()
                   if name in STEP_NAMES and t.get("start") is not None and t.get("end") is not None)
    in_a_row, end = 0, None
    for start, stop in spans:
        if end is None or start >= end:
            in_a_row += 1
        end = stop if end is None else max(end, stop)
    return in_a_row


def trivial_submit_s(cfg, rounds: int = 2) -> float:
    """The fastest of `rounds` submissions of the trivial job (fruitflow.bench.trivial_job), launched
    like a step: the operator's hook, launch settings, py-files and master."""
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook
    from fruitflow_airflow import SPARK_CONN_ID
    from fruitflow_airflow.submit import submit_kwargs

    from spark_jobs.common.config import s3a_uri

    kwargs = submit_kwargs(STEP_NAMES[0], cfg)
    kwargs.pop("application")
    kwargs["name"] = "fruitflow-trivial"
    output = s3a_uri(cfg.reports_bucket, cfg.runs_prefix, "trivial-submit")
    times = []
    for _ in range(rounds):
        hook = SparkSubmitHook(conn_id=SPARK_CONN_ID, application_args=[output], **kwargs)
        started = time.perf_counter()
        hook.submit(str(Path(__file__).with_name("trivial_job.py")))
        times.append(time.perf_counter() - started)
    log(f"trivial spark-submit: {', '.join(f'{t:.1f}' for t in times)} s")
    return round(min(times), 2)


def floor_figures(overhead_s: float, trivial_s: float, in_a_row: int) -> dict:
    """The DAG's fixed cost against its floor: as many trivial submissions as Spark steps in a row."""
    floor = in_a_row * trivial_s
    return {"overhead_s": overhead_s, "trivial_submit_s": trivial_s, "spark_steps_in_a_row": in_a_row,
            "ratio_overhead_vs_floor": round(overhead_s / floor, 3) if floor else None}


def breakdown(run: dict) -> dict:
    featurize_model_s = (run["step_timings_s"].get("featurize") or {}).get("featurize", 0.0)
    task_total = sum(t["seconds"] or 0 for t in run["tasks"].values())
    return {
        "dag_wall_s": run["wall_s"],
        "featurize_model_s": featurize_model_s,
        "overhead_outside_featurization_s": round(run["wall_s"] - featurize_model_s, 2),
        "airflow_between_tasks_s": round(run["wall_s"] - task_total, 2),
        "spark_step_outside_measured_s": {  # JVM start, session, manifests, reads outside timed blocks
            step: round(run["tasks"][step]["seconds"] - sum((run["step_timings_s"].get(step) or {}).values()), 2)
            for step in STEP_NAMES if run["tasks"].get(step, {}).get("seconds") is not None
        },
    }


def print_run(name: str, run: dict) -> None:
    print(f"== {name}: {run['n_images']} images (feature table {run['n_table']}), DAG wall {run['wall_s']:.1f} s")
    print(f"{'task':16s} {'seconds':>8s}  in-step timings (s)")
    for task, info in run["tasks"].items():
        inner = run["step_timings_s"].get(task) or {}
        print(f"{task:16s} {info['seconds'] if info['seconds'] is not None else '-':>8}  "
              + ", ".join(f"{k} {v:.1f}" for k, v in inner.items()))
    b = breakdown(run)
    print(f"overhead outside featurization: {b['overhead_outside_featurization_s']:.1f} s "
          f"(= DAG wall {b['dag_wall_s']:.1f} - featurize model time {b['featurize_model_s']:.1f}); "
          f"Airflow between tasks {b['airflow_between_tasks_s']:.1f} s; Spark steps outside their timed "
          f"blocks (JVM start, session, manifests): {b['spark_step_outside_measured_s']}")
    print("driver peak RSS (MB, spark-submit JVM + driver Python): "
          + ", ".join(f"{step} {v['total_mb']} ({v['jvm_mb']} + {v['python_mb']})"
                      for step, v in run["driver_peak_rss_mb"].items()))


def run_in_child(name: str, copies: int, args, *, label: str = "", first_copy: int = 0, every: int = 1) -> dict:
    """One DAG run in a fresh process (a second dag.test() in one process does not run cleanly)."""
    child = subprocess.run(
        [sys.executable, "-m", "fruitflow.bench.e2e", "--data", str(args.data), "--precision", args.precision,
         "--weights", args.weights, "--copies", str(copies), "--label", label, "--first-copy", str(first_copy),
         "--every", str(every)], stdout=subprocess.PIPE, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"the {name} run failed (exit {child.returncode}): see its log above")
    run = json.loads(child.stdout.strip().splitlines()[-1])
    print_run(name, run)
    return run


def scale_figures(runs: dict) -> dict:
    """SCALE's figures: featurize + PCA + KMeans time and driver peak RSS at each size, and the time at
    4N and 10N over the time at N (`scale_ratio_4n`, `scale_ratio_10n`), printed and returned."""
    def scaled(run):
        return round(sum(run["tasks"][step]["seconds"] for step in SCALED_STEPS), 2)

    def peak(run):
        return max((run["driver_peak_rss_mb"].get(step, {}).get("total_mb", 0) for step in SCALED_STEPS), default=0)

    sc = {
        "n_images": {name: run["n_images"] for name, run in runs.items()},
        "featurize_pca_kmeans_s": {name: scaled(run) for name, run in runs.items()},
        "per_step_s": {step: {name: run["tasks"][step]["seconds"] for name, run in runs.items()}
                       for step in SCALED_STEPS},
        "driver_peak_rss_mb": {name: peak(run) for name, run in runs.items()},
        "driver_peak_rss_mb_per_step": {step: {name: run["driver_peak_rss_mb"].get(step, {}).get("total_mb")
                                            for name, run in runs.items()} for step in SCALED_STEPS},
        "e2e": {name: breakdown(run) for name, run in runs.items() if name != "N"},
    }
    figures = {"scale": sc}
    for name, copies in SIZES[1:]:
        ratio = figures[f"scale_ratio_{name.lower()}"] = round(scaled(runs[name]) / scaled(runs["N"]), 3)
        print(f"== scale: featurize + PCA + KMeans {sc['featurize_pca_kmeans_s']['N']:.1f} s at N="
              f"{sc['n_images']['N']}, {sc['featurize_pca_kmeans_s'][name]:.1f} s at {name}="
              f"{sc['n_images'][name]}: ratio {ratio:.2f} (target <= {1.1 * copies:.1f}); driver peak RSS "
              f"{sc['driver_peak_rss_mb']['N']} MB vs {sc['driver_peak_rss_mb'][name]} MB")
    return figures


def engine_core_ms_per_image(onnx_uri: str, data: Path, batch_size: int, max_images: int = 512) -> dict:
    """The bare engine on the runs' model and images: ONNX Runtime over up to `max_images` of DATA,
    decoded and preprocessed beforehand, in memory, on every core of the machine, in calls of
    `batch_size` photos (the pipeline's `model_batch_size`)."""
    import tempfile

    from fruitflow.bench.featurize import bench_bare, load_images
    from spark_jobs.common.config import split_s3_uri

    n = min(max_images, len(list(data.glob("*/*.jpg"))))
    _, batch = load_images(data, n)
    with tempfile.TemporaryDirectory(prefix="fruitflow-bench-engine-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        buckets.client().download_file(*split_s3_uri(onnx_uri), path)
        img_per_s, _ = bench_bare(path, batch, batch_size)
    cores = os.cpu_count() or 2
    return {"engine_images": n, "engine_img_per_s": round(img_per_s, 1),
            "engine_core_ms_per_image": round(cores * 1000 / img_per_s, 2)}


def incremental_runs(after: dict, args) -> dict:
    """About N/10 new photos (those of every tenth fruit of DATA, under keys no copy of any size uses) added
    to `after`'s bucket prefix and feature table, then the same photos into an empty table of their own."""
    new = {"copies": 1, "first_copy": SIZES[-1][1], "every": 10}
    return {"+N/10": run_in_child("+N/10 after 10N", args=args, label=after["label"], **new),
            "N/10": run_in_child("N/10 alone", args=args, **new)}


def incremental_figures(runs: dict) -> dict:
    """`incremental_ratio`: the DAG's wall time for N/10 new photos added to the 10N table over the same
    photos into an empty one (target <= 1.2: a run's work should grow with what is new)."""
    added, alone = runs["+N/10"], runs["N/10"]
    return {"incremental": {"n_new": added["n_images"], "n_table": added["n_table"], "wall_s_added": added["wall_s"],
                            "wall_s_alone": alone["wall_s"],
                            "per_step_s_added": {step: t["seconds"] for step, t in added["tasks"].items()},
                            "per_step_s_alone": {step: t["seconds"] for step, t in alone["tasks"].items()}},
            "incremental_ratio": round(added["wall_s"] / alone["wall_s"], 3)}


def cost_figures(runs: dict, worker_cores: int, engine: dict) -> dict:
    """The DAG's marginal cost per image, the least-squares slope of its wall time over the runs' sizes
    times the worker's cores (None with a single size), against the bare engine's."""
    sized = [runs[name] for name in COST_SIZES if name in runs]
    pipeline = None
    if len({run["n_images"] for run in sized}) > 1:
        slope_s = float(np.polyfit([r["n_images"] for r in sized], [r["wall_s"] for r in sized], 1)[0])
        pipeline = round(slope_s * 1000 * worker_cores, 2)
    engine_ms = engine.get("engine_core_ms_per_image")
    return {**engine, "worker_cores": worker_cores, "pipeline_core_ms_per_image": pipeline,
            "ratio_pipeline_vs_engine": round(pipeline / engine_ms, 3) if pipeline and engine_ms else None}


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--scale", action="store_true", help="also run 4N and 10N (the same images under new "
                        "keys), then N/10 new photos added to the 10N table and alone, then 30N")
    parser.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    # the model a user's run gets (Config: auto with ImageNet weights, EfficientNet-Lite0 offline)
    parser.add_argument("--weights", default=Config.weights, help="imagenet (default) | random")
    parser.add_argument("--floor-rounds", type=int, default=2,
                        help="trivial submissions timed for the floor (the fastest counts)")
    # one run, in a child process
    parser.add_argument("--copies", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--label", default="", help=argparse.SUPPRESS)
    parser.add_argument("--first-copy", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--every", type=int, default=1, help=argparse.SUPPRESS)
    return parser


def measure(args) -> dict:
    """Every run and reference timing, on the local stack (started and stopped here when it was down)."""
    from fruitflow.package import build_zip

    load_start = os.getloadavg()
    started_stack = not stack.all_healthy()
    if started_stack:
        stack.up()
    try:
        build_zip()
        prime_s, onnx_uri = prime_model(args.weights)
        runs = {name: run_in_child(name, copies, args) for name, copies in (SIZES[:3] if args.scale else SIZES[:1])}
        if args.scale:  # N/10 added to the 10N table, then 30N in a table of its own
            runs.update(incremental_runs(runs["10N"], args))
            runs.update({name: run_in_child(name, copies, args) for name, copies in SIZES[3:]})
        base = Config.from_env()
        trivial_cfg = base.with_overrides(runs_prefix=base.table_prefix(f"trivial-{uuid.uuid4().hex[:6]}"))
        trivial_s = trivial_submit_s(trivial_cfg, args.floor_rounds)
        # the FP32 engine: an INT8 model is made by each run on its own images
        engine = (engine_core_ms_per_image(onnx_uri, args.data, base.model_batch_size)
                  if args.precision == "fp32" else {})
    finally:
        if started_stack:
            stack.down()
    load = [round(max(a, b), 2) for a, b in zip(load_start, os.getloadavg())]
    return {"runs": runs, "prime_s": prime_s, "trivial_s": trivial_s, "engine": engine, "load": load}


def results(args, measured: dict) -> dict:
    """The figures of `measured`, printed as they come; the last line's JSON object."""
    runs = measured["runs"]
    n_run = breakdown(runs["N"])
    result = {"precision": args.precision, "weights": args.weights, "load_avg_1_5_15_max": measured["load"],
              "model_materialize_before_runs_s": round(measured["prime_s"], 1),
              "e2e": {**n_run, **floor_figures(n_run["overhead_outside_featurization_s"], measured["trivial_s"],
                                               spark_steps_in_a_row(runs["N"]["tasks"])),
                      **{k: runs["N"][k] for k in ("n_images", "tasks", "step_timings_s", "driver_peak_rss_mb",
                                                   "ari", "nmi")}}}
    e2e = result["e2e"]
    print(f"overhead {e2e['overhead_s']:.1f} s against {e2e['spark_steps_in_a_row']} trivial spark-submits of "
          f"{e2e['trivial_submit_s']:.1f} s: ratio {e2e['ratio_overhead_vs_floor']}")
    cost = result["cost"] = cost_figures(runs, stack.settings().worker_cores, measured["engine"])
    print(f"cost per photo: the DAG {cost['pipeline_core_ms_per_image']} core-ms (with SCALE), the bare engine "
          f"{cost.get('engine_core_ms_per_image')} core-ms: ratio {cost['ratio_pipeline_vs_engine']} (target <= 2.0)")
    if args.scale:
        result.update(scale_figures(runs))
        result.update(incremental_figures(runs))
        incremental = result["incremental"]
        print(f"incremental: {incremental['n_new']} new photos added to a table of {incremental['n_table']}: "
              f"{incremental['wall_s_added']:.1f} s, against {incremental['wall_s_alone']:.1f} s into an empty "
              f"table: ratio {result['incremental_ratio']} (target <= 1.2)")
    print(f"load average (max of start/end, 1/5/15 min): {measured['load']}")
    return result


def main(argv=None) -> int:
    args = arg_parser().parse_args(argv)
    if not ready(args.data, log):
        return 2
    os.environ.setdefault("FRUITFLOW_SCHEDULE", "none")
    if args.copies:  # child: one DAG run on a stack the parent brought up; the run as the last line
        print(json.dumps(run_pipeline(args.data, args.copies, args.weights, args.precision, label=args.label,
                                      first_copy=args.first_copy, every=args.every), default=str))
        return 0
    print(json.dumps(results(args, measure(args)), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
