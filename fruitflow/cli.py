"""`fruitflow <command> [args]`: the project's commands, which the Makefile calls.

    fruitflow stack up|status|down|env   the local stack
    fruitflow demo [--data DIR]          the pipeline end to end on the local stack
    fruitflow multihost-demo [--data DIR]  the same on five hosts (network namespaces; root)
    fruitflow airflow-ui                 Airflow's UI on the local stack
    fruitflow classify PATH              which fruit is in a photo (no Spark), from the latest demo
    fruitflow quality [--variants]       clustering and classifier quality on the shared sets
    fruitflow bench [...]                featurization benchmark
    fruitflow bench-e2e [...]            the whole DAG timed
    fruitflow zip                        the shared library for --py-files
    fruitflow iam-policy ROLE            the IAM policy of the Airflow host (pipeline) or the Spark nodes

`fruitflow <command> -h` tells more. Heavy modules are imported only by the command that needs them.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "stack": "fruitflow.stack.commands",
    "demo": "fruitflow.demo",
    "multihost-demo": "fruitflow.multihost.demo",
    "airflow-ui": "fruitflow.airflow_ui",
    "classify": "fruitflow.classify",
    "quality": "fruitflow.quality",
    "bench": "fruitflow.bench.featurize",
    "bench-e2e": "fruitflow.bench.e2e",
    "zip": "fruitflow.package",
    "iam-policy": "fruitflow.access",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
