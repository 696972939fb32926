"""Control objects signed by the Airflow host: what an executor plants or edits under the runs prefixes is
refused by every reader that holds the key."""

import json

import pytest

from spark_jobs.common import signing
from spark_jobs.common.manifest import STORED_MS, BadManifest, parse_manifest


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(signing.KEY_VARIABLE, "the-airflow-hosts-key")


def test_a_signed_document_reads_back_as_written(key):
    document = {"run_id": "r", "n_images": 3, "outputs": {"features": "s3a://b/runs/r/featurize/features"}}
    stored = json.dumps(signing.sign(document))
    assert signing.loads(stored, "summary") == document


def test_a_document_is_signed_in_the_form_it_is_stored(key):
    """What JSON cannot hold (a run's datetime in a summary) is stored as its text, and signed as such."""
    import datetime as dt

    at = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.timezone.utc)
    stored = json.dumps(signing.sign({"run_id": "r", "at": at}))
    assert signing.loads(stored, "summary") == {"run_id": "r", "at": str(at)}


@pytest.mark.parametrize("tamper", [
    lambda d: d.pop(signing.FIELD),  # planted without a signature
    lambda d: d.update(n_images=4),  # edited after signing
    lambda d: d.update(signature="0" * 64),  # signed with another key
])
def test_a_planted_or_edited_document_is_refused(key, tamper):
    document = signing.sign({"run_id": "r", "n_images": 3})
    tamper(document)
    with pytest.raises(signing.Unsigned):
        signing.loads(json.dumps(document), "summary")


@pytest.mark.parametrize("value", [None, "", "change-me-control-key", "short-key"],
                         ids=["unset", "empty", "the example's placeholder", "too short"])
def test_without_a_usable_key_nothing_is_signed_or_trusted(monkeypatch, value):
    """A deployment that forgot the key stops at its first control object: it neither writes unsigned ones
    nor follows what an executor planted (fail-closed, not open)."""
    if value is None:
        monkeypatch.delenv(signing.KEY_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(signing.KEY_VARIABLE, value)
    with pytest.raises(signing.NoKey, match=signing.KEY_VARIABLE):
        signing.sign({"a": 1})
    with pytest.raises(signing.NoKey, match="docs/security.md"):
        signing.loads('{"a": 1}', "summary")
    with pytest.raises(signing.NoKey):
        signing.require_key()


def test_a_step_without_the_key_stops_before_any_work(monkeypatch, capsys):
    """The Spark step refuses at once, as a failure no retry changes, before its session starts."""
    from spark_jobs import step_cli
    from spark_jobs.common.steps import NOT_RETRYABLE

    monkeypatch.delenv(signing.KEY_VARIABLE, raising=False)
    ran = []
    with pytest.raises(SystemExit) as stopped:
        step_cli.run_step("pca", step_cli.parser("pca"), ["--run-id", "r"], lambda *a: ran.append(a))
    assert stopped.value.code == NOT_RETRYABLE and not ran
    assert f"{signing.KEY_VARIABLE} is not set" in capsys.readouterr().err


def test_a_manifest_an_executor_planted_is_a_bad_manifest(key):
    planted = {"step_uri": "s3a://fruitflow-features/runs/r/featurize", "outputs": {}}
    with pytest.raises(BadManifest, match="unsigned"):
        parse_manifest(json.dumps(planted), 1)
    signed = parse_manifest(json.dumps(signing.sign(planted)), 1)
    assert signed == {**planted, STORED_MS: 1}


def test_the_local_spark_workers_environment_drops_the_control_key():
    """What the stack's worker (and so its executors) runs with: the Airflow host's settings without its
    keys; the control key never reaches a node."""
    from fruitflow.stack.environment import worker_environment

    host = {signing.KEY_VARIABLE: "k", "PATH": "/bin", "FRUITFLOW_S3_ENDPOINT": "http://store:9000"}
    env = worker_environment(host, {"AWS_ACCESS_KEY_ID": "spark-node-key"})
    assert signing.KEY_VARIABLE not in env and env["FRUITFLOW_S3_ENDPOINT"] == "http://store:9000"
