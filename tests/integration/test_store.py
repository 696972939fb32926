"""The local stack's S3 service (SeaweedFS): authentication on, the pipeline's and the Spark workers'
identities scoped to their buckets and prefixes, private credentials, and data that outlives a restart
of the service."""

import json
import os
import stat
import urllib.error
import urllib.request
import uuid

import pytest
from botocore.exceptions import ClientError

from fruitflow import stack as local_stack
from fruitflow.stack.environment import local_credentials, state_dir
from fruitflow_airflow import SPARK_CONN_ID
from fruitflow.stack.services import service
from spark_jobs.common.config import FEATURE_DIM


def _client(key, secret):
    import boto3
    from botocore.config import Config as BotoConfig

    stack_settings = local_stack.settings()
    return boto3.client("s3", endpoint_url=stack_settings.s3_endpoint, region_name="us-east-1", aws_access_key_id=key,
                        aws_secret_access_key=secret,
                        config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


def _identity(name):
    creds = local_credentials(state_dir(local_stack.settings()), name)
    return _client(creds["key"], creds["secret"])


def _error(call):
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value.response["Error"]["Code"]


def test_unsigned_requests_and_wrong_keys_are_refused(stack, s3, cfg):
    key = f"{cfg.runs_prefix}/auth-check.txt"
    s3.put_object(Bucket=cfg.raw_bucket, Key=key, Body=b"private")
    url = f"{local_stack.settings().s3_endpoint}/{cfg.raw_bucket}/{key}"
    for request in (urllib.request.Request(url), urllib.request.Request(url, data=b"x", method="PUT")):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 403
    pipeline = local_credentials(state_dir(local_stack.settings()), "pipeline")
    assert _error(lambda: _client(pipeline["key"], "not-the-secret").get_object(
        Bucket=cfg.raw_bucket, Key=key)) == "SignatureDoesNotMatch"
    assert _error(lambda: _client("nobody", "nothing").get_object(Bucket=cfg.raw_bucket, Key=key)) \
        == "InvalidAccessKeyId"
    assert s3.get_object(Bucket=cfg.raw_bucket, Key=key)["Body"].read() == b"private"


def test_the_stores_internal_ports_refuse_anonymous_reads_and_writes(stack, s3, cfg):
    """The identities guard the S3 port; `weed mini` also serves its filer, volume and master servers over
    HTTP. The filer listed every bucket and took writes from anyone before they had signing keys; the
    master's /dir/assign signs a write token for whoever asks (its Authorization header), which the volume
    server then accepts: no one may be given one."""
    from fruitflow.stack import seaweed

    key = f"{cfg.runs_prefix}/internal-ports-check.txt"
    s3.put_object(Bucket=cfg.raw_bucket, Key=key, Body=b"private")
    stack_settings = local_stack.settings()
    found = seaweed.ports(stack_settings)
    filer = f"http://{stack_settings.host}:{found['filer.port']}"
    volume = f"http://{stack_settings.host}:{found['volume.port']}"
    # refused (401: no token) or not served at all (404: the filer's HTTP API is off)
    for request, refusals in ((urllib.request.Request(f"{filer}/buckets/{cfg.raw_bucket}/{key}"), (401, 404)),
                              (urllib.request.Request(f"{filer}/buckets/", headers={"Accept": "application/json"}),
                               (401, 404)),
                              (urllib.request.Request(f"{filer}/buckets/{cfg.raw_bucket}/planted.txt", data=b"x",
                                                      method="PUT"), (401, 404)),
                              (urllib.request.Request(f"{volume}/1,0123456789ab", data=b"x", method="PUT"), (401,))):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code in refusals, request.full_url
    _master_gives_no_write_token(f"http://{stack_settings.host}:{found['master.port']}")
    assert s3.get_object(Bucket=cfg.raw_bucket, Key=key)["Body"].read() == b"private"


def _master_gives_no_write_token(master: str) -> None:
    try:
        with urllib.request.urlopen(f"{master}/dir/assign", timeout=5) as answer:
            assigned, token = json.loads(answer.read()), answer.headers.get("Authorization")
    except urllib.error.HTTPError as refused:
        assert refused.code in (401, 403, 404), refused.code  # no assignment at all
        return
    write = urllib.request.Request(f"http://{assigned['url']}/{assigned['fid']}", data=b"planted", method="PUT",
                                   headers={"Authorization": token} if token else {})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(write, timeout=5)
    assert refused.value.code == 401, f"the master's token wrote {assigned['fid']}"


def _weed_shell(commands: str, env: dict, cwd) -> str:
    """What `weed shell` prints for `commands` against the stack's store; nothing when it got no answer (a
    client the gRPC ports refuse stays in its handshake: stopped after 60 s, which is a refusal too)."""
    import subprocess

    from fruitflow.stack import seaweed

    stack_settings = local_stack.settings()
    found, host = seaweed.ports(stack_settings), stack_settings.host
    argv = [seaweed.weed_binary(), "shell", f"-master={host}:{found['master.port']}.{found['master.port.grpc']}",
            f"-filer={host}:{found['filer.port']}.{found['filer.port.grpc']}"]
    try:
        return subprocess.run(argv, input=commands, capture_output=True, text=True, timeout=60, env=env,
                              cwd=cwd).stdout
    except subprocess.TimeoutExpired:
        return ""


def test_the_stores_grpc_ports_take_only_its_own_certificate(stack, s3, cfg, tmp_path):
    """The store's servers talk gRPC to each other, with no identity of S3's: `weed shell` from any process
    that reached those ports listed every bucket (and could read or delete them). Now they require a
    certificate signed by the store's own CA, fresh at each start."""
    from fruitflow.stack import seaweed, store_tls

    # no security.toml where weed looks for one (./, ~/.seaweedfs/) and no WEED_ variables
    anyone = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    store = {**anyone, **store_tls.environment(seaweed.tls_folder(local_stack.settings()))}
    assert cfg.raw_bucket in _weed_shell("s3.bucket.list\n", store, tmp_path)  # the probe can tell
    assert cfg.raw_bucket not in _weed_shell("s3.bucket.list\n", anyone, tmp_path)
    assert stat.S_IMODE(os.stat(store["WEED_GRPC_CLIENT_KEY"]).st_mode) == 0o600


def test_the_pipeline_identity_reaches_its_buckets_only(stack, s3, cfg):
    admin = _identity("admin")
    foreign = f"not-fruitflow-{uuid.uuid4().hex[:6]}"
    assert _error(lambda: s3.create_bucket(Bucket=foreign)) == "AccessDenied"
    admin.create_bucket(Bucket=foreign)
    try:
        admin.put_object(Bucket=foreign, Key="secret.txt", Body=b"not the pipeline's")
        assert _error(lambda: s3.get_object(Bucket=foreign, Key="secret.txt")) == "AccessDenied"
        assert _error(lambda: s3.put_object(Bucket=foreign, Key="planted.txt", Body=b"x")) == "AccessDenied"
        assert foreign not in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    finally:
        admin.delete_object(Bucket=foreign, Key="secret.txt")
        admin.delete_bucket(Bucket=foreign)


def test_the_spark_node_identity_writes_step_outputs_only(stack, s3, cfg):
    """The Spark workers' identity (fruitflow.access "spark-node") reads the photos but cannot change
    them, nor a backbone model that every executor loads, nor anything outside the runs prefixes."""
    node = _identity("spark-node")
    photo = f"{cfg.runs_prefix}-access/Apple/photo.jpg"
    s3.put_object(Bucket=cfg.raw_bucket, Key=photo, Body=b"a photo")  # the pipeline's key: locally, it uploads too
    try:
        assert node.get_object(Bucket=cfg.raw_bucket, Key=photo)["Body"].read() == b"a photo"
        for bucket, key in ((cfg.raw_bucket, photo), (cfg.raw_bucket, "images/planted.jpg"),
                            *((cfg.models_bucket, f"{name}/planted/model.onnx") for name in FEATURE_DIM),
                            (cfg.features_bucket, "elsewhere/planted.parquet")):
            assert _error(lambda: node.put_object(Bucket=bucket, Key=key, Body=b"x")) == "AccessDenied", key
        assert _error(lambda: node.delete_object(Bucket=cfg.raw_bucket, Key=photo)) == "AccessDenied"
        written = f"{cfg.runs_prefix}/run/train/part-0"
        node.put_object(Bucket=cfg.models_bucket, Key=written, Body=b"a step output")
        node.delete_object(Bucket=cfg.models_bucket, Key=written)
    finally:
        s3.delete_object(Bucket=cfg.raw_bucket, Key=photo)


def test_executors_act_with_their_workers_identity(stack, cfg, tmp_path):
    """A Spark application on the local stack: its executor's writes are the spark-node identity's
    (the worker's environment), not the driver's, which could write a backbone model; and nothing in the
    executor's environment holds the driver's key (the Airflow host's AWS connection reached it)."""
    import json

    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    from fruitflow.package import build_zip
    from fruitflow_airflow.submit import submit_kwargs
    from tests.helpers import ROOT

    build_zip()
    allowed = f"{cfg.features_bucket}/{cfg.runs_prefix}/node-check/part-0"
    backbone = f"{cfg.models_bucket}/efficientnet_lite0/node-check/model.onnx"  # Lite0's (auto's offline choice)
    kwargs = submit_kwargs("featurize", cfg)
    kwargs.pop("application")
    kwargs["name"] = "fruitflow-node-writes"
    out = tmp_path / "answers.json"
    SparkSubmitHook(conn_id=SPARK_CONN_ID, application_args=[str(out), allowed, backbone], **kwargs).submit(
        str(ROOT / "tests" / "integration" / "node_writes_app.py"))
    assert json.loads(out.read_text()) == {"_holding_pipeline_key": [], "_holding_control_key": [], allowed: "ok",
                                           backbone: "AccessDenied"}


def test_credentials_are_private_files(stack):
    state = state_dir(local_stack.settings())
    files = [state / "credentials" / f"{name}.json" for name in ("pipeline", "spark-node", "admin")]
    files.append(state / "s3" / "identities.json")
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_data_survives_a_restart_of_the_store_with_authentication_still_on(stack, s3, cfg):
    key = f"{cfg.runs_prefix}/survives-{uuid.uuid4().hex[:6]}.bin"
    body = uuid.uuid4().bytes * 1000
    s3.put_object(Bucket=cfg.features_bucket, Key=key, Body=body)
    store = service("s3")
    store.stop()
    assert not store.pid()
    store.start(local_stack.prepared_env())
    assert store.healthy()  # healthy includes: an unsigned request is refused
    assert s3.get_object(Bucket=cfg.features_bucket, Key=key)["Body"].read() == body


def test_control_objects_a_spark_node_plants_are_refused(stack, s3, cfg):
    """The Spark nodes' identity may write under the runs prefixes, where the control objects live; what
    it plants there (a latest-run pointer and run summary naming its own model, a listing state whose
    watermark hides every later upload, a step manifest) is refused by the readers on the Airflow host,
    which hold the key that signs them (spark_jobs.common.signing); the executors do not."""
    import json

    from fruitflow_airflow import listing
    from spark_jobs.common import signing
    from spark_jobs.common.classifier import BucketReader, read_summary
    from spark_jobs.common.config import split_s3_uri
    from spark_jobs.common.manifest import BadManifest, parse_manifest
    from spark_jobs.common.pointers import latest_run_uri

    cfg = cfg.with_overrides(runs_prefix=cfg.table_prefix(f"control-{uuid.uuid4().hex[:8]}"))
    node = _identity("spark-node")
    forged_summary = f"s3a://{cfg.reports_bucket}/{cfg.runs_prefix}/forged/summary.json"
    planted = {
        latest_run_uri(cfg): {"run_id": "forged", "summary": forged_summary},
        forged_summary: {"run_id": "forged", "outputs": {"train": f"s3a://{cfg.models_bucket}/{cfg.runs_prefix}/x"}},
        listing.state_uri(cfg, "images"): {"raw_prefix": "images", "watermark": "9999-12-31T00:00:00+00:00",
                                           "seen": {}, "retry": {}},
        cfg.step_uri("forged", "featurize") + "/_manifest.json": {
            "step": "featurize", "step_uri": cfg.step_uri("forged", "featurize"), "outputs": {}},
    }
    assert os.environ.get(signing.KEY_VARIABLE)  # the Airflow host's environment, as the tests run with
    try:
        for uri, body in planted.items():
            bucket, key = split_s3_uri(uri)
            node.put_object(Bucket=bucket, Key=key, Body=json.dumps(body).encode())  # allowed: a runs prefix
        with pytest.raises(signing.Unsigned, match="latest-run pointer"):
            read_summary(BucketReader(cfg, s3), None)
        with pytest.raises(signing.Unsigned, match="run summary"):
            read_summary(BucketReader(cfg, s3), forged_summary)
        assert listing.read_state(s3, cfg, "images").watermark is None  # listed from the start instead
        manifest = cfg.step_uri("forged", "featurize") + "/_manifest.json"
        with pytest.raises(BadManifest, match="unsigned"):
            bucket, key = split_s3_uri(manifest)
            parse_manifest(s3.get_object(Bucket=bucket, Key=key)["Body"].read(), 0)
    finally:
        for uri in planted:
            bucket, key = split_s3_uri(uri)
            s3.delete_object(Bucket=bucket, Key=key)
