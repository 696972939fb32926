"""What every step's thin `main()` shares: arguments, config, session, and the printed manifest."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from contextlib import contextmanager

from spark_jobs.common.config import Config, check_run_id, check_weights, s3a_uri
from spark_jobs.progress import ProgressLog
from spark_jobs.session import build_session, stop_session


def parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-id", required=True, help="names the run-scoped output prefix")
    p.add_argument("--output", help="output URI of this step (default: <bucket>/runs/<run-id>/<step>)")
    p.add_argument("--runs-prefix", dest="runs_prefix",
                   help="prefix under each bucket for run outputs; one prefix is one feature table")
    p.add_argument("--master", help="Spark master when not launched by spark-submit (e.g. local[2])")
    return p


def optional(kind):
    """argparse type where an empty string means 'not set' (templated arguments cannot be omitted)."""

    def parse(text: str):
        return None if text.strip() in ("", "None", "null") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def add_l2_normalize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--l2-normalize", dest="l2_normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="cosine geometry: unit-length features before PCA and reduced vectors before KMeans")


def after_pca_parser(doc: str | None) -> argparse.ArgumentParser:
    """The arguments of a step that reads the pca step's output (cluster, train): add your own to it."""
    p = parser(doc)
    p.add_argument("--input", required=True, help="URI of the pca step (its manifest is read)")
    p.add_argument("--seed", type=int)
    add_l2_normalize(p)
    return p


def run_after_pca(step: str, parser: argparse.ArgumentParser, argv: list[str] | None, run) -> int:
    """run_step for a step made of `run(spark, cfg, input_uri=..., out_uri=...)` over the pca step's output."""
    return run_step(step, parser, argv, lambda spark, cfg, args, out: run(
        spark, cfg, input_uri=args.input, out_uri=out))


def config(args: argparse.Namespace) -> Config:
    """Config from the environment, overridden by any argument named like a Config field."""
    fields = {f.name for f in dataclasses.fields(Config) if f.init}
    overrides = {k: v for k, v in vars(args).items() if k in fields}
    if overrides.get("weights") is not None:  # arguments come from DAG Params: untrusted
        try:
            check_weights(overrides["weights"], Config.from_env())
        except ValueError as exc:
            raise SystemExit(str(exc)) from exc
    return Config.from_env(**overrides)


class SparkError(RuntimeError):
    """An error from Spark's JVM, its message taken while the JVM still runs."""


@contextmanager
def session(step: str, cfg: Config, args: argparse.Namespace):
    from py4j.protocol import Py4JJavaError
    from pyspark.errors.exceptions.captured import CapturedException

    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
    spark = build_session(f"fruitflow-{step}-{args.run_id}", cfg, master=args.master)
    try:
        yield spark
    except (CapturedException, Py4JJavaError) as exc:
        # Their str() asks the JVM, which is gone once the session stops: the task log would read
        # "<exception str() failed>". Said here, with the JVM's stack trace; then a message of its own.
        traceback.print_exc(file=sys.stderr)
        message = str(exc).split("\n\nJVM stacktrace:", 1)[0].strip()
        raise SparkError(f"{type(exc).__name__}: {message}") from None
    finally:
        stop_session(spark)


def run_step(step: str, parser: argparse.ArgumentParser, argv: list[str] | None, runner) -> int:
    """A step's whole main(): parse, configure, open the session, run, print the manifest.

    `runner(spark, cfg, args, out_uri)` returns the manifest the step wrote. A refusal (SystemExit with
    a message, a missing input manifest, unavailable weights) exits with NOT_RETRYABLE after printing
    why; anything else (a lost executor, the store unreachable) is an error a retry may fix.
    """
    from spark_jobs.common.manifest import BadManifest, MissingInput
    from spark_jobs.common.models import ModelUnavailable
    from spark_jobs.common.signing import NoKey
    from spark_jobs.common.steps import NOT_RETRYABLE

    try:
        return _run_step(step, parser, argv, runner)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(f"{step}: {exc.code}", file=sys.stderr)
            raise SystemExit(NOT_RETRYABLE) from None
        raise
    except (MissingInput, BadManifest, ModelUnavailable, NoKey) as exc:
        print(f"{step}: {exc}", file=sys.stderr)
        raise SystemExit(NOT_RETRYABLE) from None


def _run_step(step: str, parser: argparse.ArgumentParser, argv: list[str] | None, runner) -> int:
    from spark_jobs.common import signing

    args = parser.parse_args(argv)
    signing.require_key()  # its manifest could be neither signed nor its inputs' checked: before any work
    cfg = config(args)
    out_uri = args.output or cfg.step_uri(args.run_id, step)
    check_output(cfg, out_uri, args.run_id)  # a step deletes its output folder first: never another one
    with session(step, cfg, args) as spark, ProgressLog(spark, step):
        print_history_link(step, cfg, spark.sparkContext.applicationId)
        manifest = runner(spark, cfg, args, out_uri)
    report(manifest)
    return 0


def print_history_link(step: str, cfg: Config, app_id: str) -> None:
    """Where this application's stages stay browsable once it has ended (the task log shows it)."""
    if cfg.spark_history_url:
        print(f"[{step}] Spark history: {cfg.spark_history_url.rstrip('/')}/history/{app_id}/", file=sys.stderr,
              flush=True)


def check_output(cfg: Config, out_uri: str, run_id: str) -> None:
    """`out_uri` must be a folder inside <bucket>/<runs_prefix>/<run_id>/ of a configured bucket."""
    check_run_id(run_id)
    for bucket in cfg.buckets:
        run_folder = s3a_uri(bucket, cfg.runs_prefix, run_id) + "/"
        if out_uri.startswith(run_folder):
            inside = out_uri[len(run_folder):].strip("/").split("/")
            if all(part not in ("", ".", "..") for part in inside):
                return
    raise SystemExit(f"refusing to write {out_uri}: outside <bucket>/{cfg.runs_prefix}/{run_id}/<step> "
                     f"of the configured buckets")


def report(manifest: dict) -> None:
    """The manifest as the last line of stdout, for whoever launched the job."""
    sys.stdout.write(json.dumps(manifest, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()
