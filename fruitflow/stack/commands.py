"""`fruitflow stack up | status | down | env`: the local stack (see `fruitflow.stack`)."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

from fruitflow_airflow import AWS_CONN_ID

from fruitflow.stack import down, environment, prepare, settings, status, up
from fruitflow.stack.process import log
from spark_jobs.common import signing

# Printed by `env`: settings, never the credentials (they stay in the state folder, mode 0600).
SHOWN = ("FRUITFLOW_", "SPARK_", "AIRFLOW__", "AIRFLOW_HOME", "AWS_ENDPOINT", "AWS_DEFAULT_REGION", "PYSPARK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fruitflow stack", description=__doc__)
    parser.add_argument("command", choices=["up", "status", "down", "env"])
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            up()
            return 0 if status() else 1
        if args.command == "status":
            return 0 if status() else 1
        if args.command == "down":
            down()
            return 0
        stack = settings()
        for k, v in sorted(environment(stack, prepare(stack), base={}).items()):
            if k.startswith(SHOWN) and k != signing.KEY_VARIABLE:
                print(f"export {k}={shlex.quote(v)}")
        print(f"# credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, the {AWS_CONN_ID} connection): "
              f"{stack.state_dir}/credentials/pipeline.json; {signing.KEY_VARIABLE}: "
              f"{stack.state_dir}/credentials/control.json")
        return 0
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
