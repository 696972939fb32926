"""Who may do what in which bucket: the one source of the S3 grants, rendered as SeaweedFS identity
actions (the local stack, the five-host cluster, docker-compose) and as IAM policies (EC2).

`fruitflow iam-policy ROLE` prints ROLE's IAM policy for the buckets of the current settings
(FRUITFLOW_*_BUCKET, FRUITFLOW_RUNS_PREFIX); `deploy/ec2/iam-policy-<role>.json` are the renderings
with the defaults.

Roles:
- `pipeline`: the Airflow host. Its tasks list the raw photos and write the listing state, and it runs
  every Spark driver (the standalone master runs Python applications in client mode only), which
  writes the manifests, deletes a rerun's old outputs and materialises the backbone models.
- `spark-node`: the Spark workers, i.e. the executors. They read the photos and the models and write
  the steps' data files, and only under the runs prefix: they cannot change a photo or a backbone
  model that every later run would load.
- `uploader`: whoever adds photos (the app's upload service). On the local stack the pipeline's key
  holds these grants too: the demo and the tests upload their photos with it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from spark_jobs.common.config import FEATURE_DIM, Config

READ, LIST, WRITE = "read", "list", "write"
OUTPUT_BUCKETS = ("preprocessed_bucket", "features_bucket", "reports_bucket", "models_bucket")


@dataclass(frozen=True)
class Grant:
    bucket: str  # a Config field naming the bucket
    ops: tuple[str, ...]
    prefixes: tuple[str, ...] = ("",)  # key prefixes the ops apply to ("" is the whole bucket); {runs}: runs_prefix


# Every output bucket read and listed whole (models included: the backbones and weights files), and
# written only in keys that start with the runs prefix: <bucket>/<runs_prefix>/<run_id>/<step>/, the
# listing state, and the feature tables of their own that demos, tests and benchmarks make beside it
# (`<runs_prefix>-<label>`, Config.table_prefix).
STEP_OUTPUTS = [*(Grant(b, (READ, LIST)) for b in OUTPUT_BUCKETS),
                *(Grant(b, (WRITE,), ("{runs}",)) for b in OUTPUT_BUCKETS)]

ROLES: dict[str, list[Grant]] = {
    "pipeline": [Grant("raw_bucket", (READ, LIST)), *STEP_OUTPUTS,
                 # the materialised backbones, models/<backbone>/... (written by the driver only)
                 Grant("models_bucket", (WRITE,), tuple(f"{name}/" for name in sorted(FEATURE_DIM)))],
    "spark-node": [Grant("raw_bucket", (READ, LIST)), *STEP_OUTPUTS],
    "uploader": [Grant("raw_bucket", (READ, LIST, WRITE))],
}
LOCAL_IDENTITIES = {"pipeline": ("pipeline", "uploader"), "spark-node": ("spark-node",)}

SEAWEED_ACTIONS = {READ: "Read", LIST: "List", WRITE: "Write"}
IAM_ACTIONS = {
    READ: ["s3:GetObject"],
    LIST: ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"],
    WRITE: ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
}


def grants(role: str, cfg: Config) -> list[tuple[str, str, str]]:
    """(operation, bucket, key prefix) for every grant of `role`, with the settings' names."""
    found = []
    for grant in ROLES[role]:
        bucket = getattr(cfg, grant.bucket)
        for prefix in grant.prefixes:
            prefix = prefix.replace("{runs}", cfg.runs_prefix)
            found += [(op, bucket, "" if op == LIST else prefix) for op in grant.ops]
    return list(dict.fromkeys(found))


def seaweed_actions(roles: tuple[str, ...], cfg: Config) -> list[str]:
    """SeaweedFS identity actions: `Read:bucket` for a whole bucket, `Write:bucket/prefix*` for the keys
    that start with a prefix (SeaweedFS matches a trailing `*` as a prefix of `<action>:<bucket>/<key>`,
    as IAM's `arn:aws:s3:::bucket/prefix*`)."""
    actions = []
    for role in roles:
        for op, bucket, prefix in grants(role, cfg):
            actions.append(f"{SEAWEED_ACTIONS[op]}:{bucket}/{prefix}*" if prefix else f"{SEAWEED_ACTIONS[op]}:{bucket}")
    return list(dict.fromkeys(actions))


def iam_policy(role: str, cfg: Config) -> dict:
    """The IAM policy of `role`: its grants, and every request over plain HTTP refused."""
    statements: dict[str, dict] = {}
    for op, bucket, prefix in grants(role, cfg):
        resources = [f"arn:aws:s3:::{bucket}"] if op == LIST else [f"arn:aws:s3:::{bucket}/{prefix}*"]
        statement = statements.setdefault(op, {"Sid": op.capitalize(), "Effect": "Allow",
                                               "Action": IAM_ACTIONS[op], "Resource": []})
        statement["Resource"] += [r for r in resources if r not in statement["Resource"]]
    arns = [f"arn:aws:s3:::{bucket}" for bucket in cfg.buckets]
    deny = {"Sid": "DenyPlainHttp", "Effect": "Deny", "Action": ["s3:*"],
            "Resource": arns + [f"{arn}/*" for arn in arns], "Condition": {"Bool": {"aws:SecureTransport": "false"}}}
    return {"Version": "2012-10-17", "Statement": [*statements.values(), deny]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fruitflow iam-policy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=sorted(ROLES))
    args = parser.parse_args(argv)
    print(json.dumps(iam_policy(args.role, Config.from_env()), indent=2))
    return 0
