"""`make multihost-demo [DATA=folder]`: the pipeline end to end on a five-host cluster built on this machine
(network namespaces, see `fruitflow.multihost.nodes`), run from the `airflow` host as the DAG runs in a
deployment: spark-submit in client mode against the master by address, executors on two other hosts that
cannot see the driver's files, SeaweedFS on a fourth.

Prints the usual run summary as the last stdout line, plus `hosts`: the hosts whose executors ran the
featurize step's tasks, read from the Spark history server's REST API; and `node_env_mb`, `driver_env_mb`:
the sizes of the Spark nodes' venv and of the airflow host's (the driver's). The cluster is torn down
(processes, namespaces, bridge) whatever happens; its logs stay under <state>/multihost/<host>/logs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fruitflow.multihost import network, node_env
from fruitflow.multihost.nodes import MultiHost
from fruitflow.paths import OUT, ROOT


def log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def featurize_hosts(history_url: str, run_id: str, names: dict[str, str], timeout: float = 90) -> list[str]:
    """The hosts whose executors ran tasks of the run's featurize application, by the history server
    (it lists an application once its event log is complete: polled until then)."""
    from fruitflow.stack.process import http_json, wait_until

    def find():
        apps = http_json(f"{history_url}/api/v1/applications?status=completed", timeout=5)
        return [a["id"] for a in apps if a.get("name", "").startswith("fruitflow-featurize") and run_id in a["name"]]

    app_ids = wait_until(find, timeout, f"the featurize application of {run_id} in the history server")
    hosts = set()
    for app_id in app_ids:
        for executor in http_json(f"{history_url}/api/v1/applications/{app_id}/allexecutors", timeout=5):
            if executor["id"] != "driver" and executor.get("totalTasks", 0) > 0:
                ip = executor["hostPort"].rsplit(":", 1)[0]
                hosts.add(names.get(ip, ip))
    return sorted(hosts)


def venv_sizes(multihost: MultiHost) -> dict[str, int]:
    return {"node_env_mb": node_env.size_mb(multihost.node_venv), "driver_env_mb": node_env.size_mb(Path(sys.prefix))}


def inside(data: Path | None, summary_out: Path | None, out: Path) -> int:
    """On the airflow host: the buckets, the demo (upload, DAG run, report) and the featurize hosts."""
    from fruitflow.demo import run_demo
    from fruitflow.stack.services import create_buckets
    from fruitflow_airflow.submit import safe_run_id
    multihost = MultiHost.default()
    create_buckets(dict(os.environ), multihost.credentials("admin"))
    summary = run_demo(data, out=out)
    if summary is None:
        return 1
    names = {multihost.net.ip(h): h for h in multihost.net.hosts}
    summary["hosts"] = featurize_hosts(multihost.history_url, safe_run_id(summary["run_id"]), names)
    summary["spark_history"] = multihost.history_url
    text = json.dumps(summary, default=str)
    if summary_out:
        summary_out.write_text(text)
    sys.stdout.write(text + "\n")
    return 0


def inside_command(data: Path | None, summary_out: Path, out: Path = OUT) -> list[str]:
    return [sys.executable, "-m", "fruitflow.multihost.demo", "--inside", "--summary-out", str(summary_out),
            "--out", str(out), *(["--data", str(data)] if data else [])]


def run_on_airflow_host(multihost: MultiHost, argv: list[str], extra_env: dict[str, str] | None = None,
                        **kwargs) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", multihost.net.ns("airflow"), *argv],
                            env={**multihost.airflow_env(), **(extra_env or {})}, cwd=ROOT, **kwargs)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fruitflow multihost-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="folder of <fruit>/<image> files (default: the 500-image sample)")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)  # the airflow host's part
    parser.add_argument("--summary-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=OUT, help="where the report is copied (default: ./out)")
    args = parser.parse_args(argv)
    data = args.data.resolve() if args.data else None
    if args.inside:
        return inside(data, args.summary_out, args.out)
    reason = network.unavailable_reason()
    if reason:
        log(f"cannot build the cluster here: {reason}")
        return 2
    multihost = MultiHost.default()
    # SIGTERM (a CI timeout, `kill`) tears down like Ctrl-C does
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    try:
        multihost.up()
        summary_out = multihost.home("airflow") / "summary.json"
        summary_out.unlink(missing_ok=True)
        # the run's logs (the DAG's task logs among them) to stderr; the summary comes back in a file
        proc = run_on_airflow_host(multihost, inside_command(data, summary_out, args.out.resolve()), stdout=sys.stderr)
        if proc.wait() != 0 or not summary_out.exists():
            log(f"the run failed (exit {proc.returncode}); logs under {multihost.base}")
            return 1
        summary = {**json.loads(summary_out.read_text()), **venv_sizes(multihost)}
        log(f"featurize ran on {', '.join(summary['hosts'])}; the nodes' venv {summary['node_env_mb']} MB, "
            f"the driver's {summary['driver_env_mb']} MB")
    finally:
        multihost.down()
        log(f"done in {time.monotonic() - started:.0f}s")
    sys.stdout.write(json.dumps(summary, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
