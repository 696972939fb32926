"""`make classify IMAGES=path`: which fruit is in a photo, without Spark and without a JVM.

Loads the latest committed classifier from the store (the newer of the latest `make demo` run and the
latest DAG run under the configured runs prefix, or the run whose `summary.json` is given) with the artifacts the pipeline exported beside its Spark ML models:
the ONNX backbone, the PCA preparation, the logistic regression's coefficients, the KMeans centres and a
bank of training vectors. Each photo goes through the pipeline's own decoding and preprocessing code.

One JSON line per image: path, fruit (top-1), top (3 classes with probabilities), cluster, neighbours
(the 3 nearest training images), unknown (farther from every training image than the calibrated
distance); a file that cannot be used gets a line with an `error`. The last line is a summary: n,
seconds, img_per_s, load_s and, when the folder holds one sub-folder per fruit, accuracy.

Python API:

    from fruitflow.classify import Classifier
    classifier = Classifier.load()             # the latest trained run; or summary="s3a://.../summary.json"
    for line in classifier.predict(["apple.jpg"]):
        print(line["fruit"], line["top"])
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# the Python API, for `from fruitflow.classify import Classifier`
from spark_jobs.common.classifier import Classifier, NoModel, load_images  # noqa: F401


# ---------------------------------------------------------------------- command


def image_paths(target: Path) -> tuple[list[Path], list[str | None]]:
    """Every file of a folder (sorted) or the one file, and each one's class when the folder holds one
    sub-folder per fruit (files directly in `target` then have no class)."""
    if target.is_file():
        return [target], [None]
    files = sorted(p for p in target.rglob("*") if p.is_file() and not p.name.startswith("."))
    labels = [p.relative_to(target).parts[0] if len(p.relative_to(target).parts) == 2 else None for p in files]
    return files, labels


def summarize(results: list[dict], labels: list[str | None], seconds: float, load_s: float) -> dict:
    done = [r for r in results if "error" not in r]
    labelled = [(r, y) for r, y in zip(results, labels) if y is not None and "error" not in r]
    return {
        "n": len(results), "n_errors": len(results) - len(done), "n_unknown": sum(r["unknown"] for r in done),
        "seconds": round(seconds, 3), "img_per_s": round(len(done) / seconds, 2) if seconds > 0 else None,
        "load_s": load_s,
        "accuracy": round(sum(r["fruit"] == y for r, y in labelled) / len(labelled), 4) if labelled else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", type=Path, help="an image file, or a folder (one sub-folder per fruit: accuracy)")
    parser.add_argument("--summary", help="s3a:// URI of a run's summary.json (default: the latest demo's run)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    if not args.images.exists():
        print(f"classify: {args.images} does not exist", file=sys.stderr)
        return 2

    from fruitflow import stack
    from fruitflow.stack.services import service

    os.environ.update(stack.prepared_env())
    s3 = service("s3")
    started_here = False
    try:
        if not s3.healthy():
            raise OSError
    except Exception:  # noqa: BLE001 - not running: start the store alone for this command
        s3.start(stack.environment(stack.settings(), stack.prepare(stack.settings())))
        started_here = True
    try:
        try:
            classifier = Classifier.load(args.summary)
        except NoModel as exc:
            print(f"classify: {exc}", file=sys.stderr)
            return 1
        print(f"[classify] {classifier.source} loaded in {classifier.load_s}s", file=sys.stderr)
        paths, labels = image_paths(args.images)
        started = time.perf_counter()
        results = classifier.predict(paths, args.batch_size)
        seconds = time.perf_counter() - started
        for line in results:
            sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.write(json.dumps(summarize(results, labels, seconds, classifier.load_s)) + "\n")
        return 0
    finally:
        if started_here:
            s3.stop()


if __name__ == "__main__":
    sys.exit(main())
