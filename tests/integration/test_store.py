"""The local stack's S3 service (SeaweedFS): authentication on, the pipeline's identity scoped to its
buckets, private credentials, and data that outlives a restart of the service."""

import stat
import urllib.error
import urllib.request
import uuid

import pytest
from botocore.exceptions import ClientError

from fruitflow import stack as local_stack
from fruitflow.stack.environment import local_credentials, state_dir
from fruitflow.stack.services import service


def _client(key, secret):
    import boto3
    from botocore.config import Config as BotoConfig

    s = local_stack.settings()
    return boto3.client("s3", endpoint_url=s.s3_endpoint, region_name="us-east-1", aws_access_key_id=key,
                        aws_secret_access_key=secret,
                        config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


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


def test_the_pipeline_identity_reaches_its_buckets_only(stack, s3, cfg):
    admin_creds = local_credentials(state_dir(local_stack.settings()), "admin")
    admin = _client(admin_creds["key"], admin_creds["secret"])
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


def test_credentials_are_private_files(stack):
    state = state_dir(local_stack.settings())
    files = [state / "credentials" / "pipeline.json", state / "credentials" / "admin.json",
             state / "s3" / "identities.json"]
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
