"""A step's progress in its log while Spark works: every few seconds, one line per active stage with its
tasks done out of the total, from Spark's status tracker. spark-submit's stderr is the Airflow task's log,
which would otherwise stay silent for the whole of a long featurization."""

from __future__ import annotations

import sys
import threading
from typing import TextIO

EVERY_S = 10.0


def stage_lines(tracker) -> list[str]:
    """One line per active stage of the SparkContext behind `tracker` (a StatusTracker)."""
    lines = []
    for stage_id in sorted(tracker.getActiveStageIds()):
        info = tracker.getStageInfo(stage_id)
        if info is None:  # finished between the two calls
            continue
        failed = f", {info.numFailedTasks} failed" if info.numFailedTasks else ""
        lines.append(f"stage {stage_id} ({info.name}): {info.numCompletedTasks}/{info.numTasks} tasks done, "
                     f"{info.numActiveTasks} running{failed}")
    return lines


class ProgressLog:
    """Context manager: a daemon thread prints `[step] progress: ...` lines while the block runs."""

    def __init__(self, spark, step: str, every: float = EVERY_S, out: TextIO | None = None):
        self.tracker = spark.sparkContext.statusTracker()
        self.step, self.every, self.out = step, every, out or sys.stderr
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"{step}-progress", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                for line in stage_lines(self.tracker):
                    print(f"[{self.step}] progress: {line}", file=self.out, flush=True)
            except Exception as exc:  # noqa: BLE001 - the JVM is going away: progress is not worth a failure
                print(f"[{self.step}] progress: stopped ({type(exc).__name__})", file=self.out, flush=True)
                return

    def __enter__(self) -> "ProgressLog":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every + 5)
