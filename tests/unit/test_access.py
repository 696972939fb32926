"""fruitflow.access: the S3 grants of the Airflow host, the Spark nodes and the uploader, rendered for
SeaweedFS (the local stack) and IAM (deploy/ec2; tests/unit/test_deploy.py checks the files)."""

import pytest

from fruitflow.access import LOCAL_IDENTITIES, grants, seaweed_actions
from spark_jobs.common.config import FEATURE_DIM, Config


def _writes(role: str, cfg: Config) -> set[tuple[str, str]]:
    return {(bucket, prefix) for op, bucket, prefix in grants(role, cfg) if op == "write"}


def test_nodes_write_only_keys_under_the_runs_prefix():
    cfg = Config(runs_prefix="tables/main")
    outputs = {cfg.preprocessed_bucket, cfg.features_bucket, cfg.reports_bucket, cfg.models_bucket}
    assert _writes("spark-node", cfg) == {(bucket, "tables/main") for bucket in outputs}
    assert _writes("pipeline", cfg) == _writes("spark-node", cfg) | {
        (cfg.models_bucket, f"{name}/") for name in FEATURE_DIM}
    assert _writes("uploader", cfg) == {(cfg.raw_bucket, "")}


def test_seaweedfs_actions_follow_the_grants_and_name_the_configured_buckets():
    cfg = Config(runs_prefix="runs", models_bucket="acme-models", raw_bucket="acme-photos")
    node = seaweed_actions(LOCAL_IDENTITIES["spark-node"], cfg)
    assert "Write:acme-models/runs*" in node and "Read:acme-models" in node and "Read:acme-photos" in node
    assert not [a for a in node if a.startswith("Write:acme-photos") or a.startswith("Write:acme-models/resnet50")]
    # the local stack's pipeline key uploads the demo's and tests' photos as well
    assert "Write:acme-photos" in seaweed_actions(LOCAL_IDENTITIES["pipeline"], cfg)


@pytest.mark.parametrize("prefix", ["", "r", "resnet", "eff"])
def test_a_runs_prefix_that_would_take_in_a_backbone_folder_is_refused(prefix):
    """Writes are granted on the keys that start with the runs prefix: `r` would cover `resnet50/`."""
    with pytest.raises(ValueError, match="backbone"):
        Config(runs_prefix=prefix)


def test_feature_tables_of_their_own_stay_inside_the_grants():
    cfg = Config()
    assert cfg.table_prefix("demo-20261128T100000").startswith(cfg.runs_prefix)
    assert Config(runs_prefix=cfg.table_prefix("x")).runs_prefix == "runs-x"
