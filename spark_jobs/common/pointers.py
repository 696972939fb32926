"""Where the store names the latest trained run and the latest demo, beside the runs under the configured
runs prefix: `publish` writes the first, `make demo` the second; `classify` and the Recognise page read
the newer of the two."""

from __future__ import annotations

from .config import Config, s3a_uri


def latest_run_uri(cfg: Config) -> str:
    """Names the newest trained run of the DAG (`publish` writes it)."""
    return s3a_uri(cfg.reports_bucket, cfg.runs_prefix, "latest-run.json")


def latest_demo_uri(cfg: Config) -> str:
    """Names the latest demo's prefixes and run (`cfg`: the settings before the demo's own)."""
    return s3a_uri(cfg.reports_bucket, cfg.runs_prefix, "latest-demo.json")
