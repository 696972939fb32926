"""wait_for_images against the real store: it waits while nothing is newer than the last successful run,
and goes on once a new photo lands, whether it pokes or its trigger waits in the triggerer."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import types
import uuid

import pytest
from airflow.sdk.exceptions import AirflowSkipException

from fruitflow_airflow import AWS_CONN_ID, DAG_ID
from fruitflow_airflow.sensors import NewImagesSensor, NewImagesTrigger

RAW = "fruitflow-raw"


@pytest.fixture
def prefix_with_old_photo(s3, real_jpeg):
    """A raw prefix holding one photo and a non-image, and the time of the 'last successful run' after them."""
    prefix = f"sensor-{uuid.uuid4().hex[:8]}"
    s3.put_object(Bucket=RAW, Key=f"{prefix}/Apple/old.jpg", Body=real_jpeg)
    s3.put_object(Bucket=RAW, Key=f"{prefix}/notes.txt", Body=b"not a photo")
    since = s3.head_object(Bucket=RAW, Key=f"{prefix}/Apple/old.jpg")["LastModified"]
    yield prefix, since
    for obj in s3.list_objects_v2(Bucket=RAW, Prefix=prefix + "/").get("Contents", []):
        s3.delete_object(Bucket=RAW, Key=obj["Key"])


def _first_event(trigger, timeout):
    async def first():
        return await asyncio.wait_for(anext(trigger.run()), timeout)
    return first()


def test_the_trigger_waits_until_a_new_photo_lands(s3, real_jpeg, prefix_with_old_photo):
    prefix, since = prefix_with_old_photo
    trigger = NewImagesTrigger(RAW, prefix, since.isoformat(), poke_interval=0.5)
    classpath, kwargs = trigger.serialize()  # what the triggerer rebuilds it from
    assert classpath == "fruitflow_airflow.sensors.NewImagesTrigger"
    with pytest.raises(TimeoutError):  # only the old photo (and a non-image): it keeps waiting
        asyncio.run(_first_event(NewImagesTrigger(**kwargs), 4))

    async def upload_while_waiting():
        waiting = asyncio.ensure_future(_first_event(trigger, 60))
        await asyncio.sleep(2)  # LastModified has a one-second grain: the new photo is strictly newer
        assert not waiting.done()
        await asyncio.to_thread(s3.put_object, Bucket=RAW, Key=f"{prefix}/Banana/new.jpg", Body=real_jpeg)
        return await waiting

    event = asyncio.run(upload_while_waiting())
    assert event.payload == {"status": "success", "key": f"{prefix}/Banana/new.jpg"}
    # with no watermark (the first run, or a manual one) the old photo is enough
    event = asyncio.run(_first_event(NewImagesTrigger(RAW, prefix, None, poke_interval=0.5), 30))
    assert event.payload["status"] == "success"


def test_a_scheduled_run_with_nothing_new_waits_then_is_skipped(stack, s3, prefix_with_old_photo):
    """As the DAG configures it (soft_fail), minus the hours: the poking form of the same sensor."""
    from airflow.dag_processing.dagbag import DagBag

    from fruitflow.paths import DAGS

    prefix, since = prefix_with_old_photo
    configured = DagBag(dag_folder=str(DAGS)).dags[DAG_ID].get_task("wait_for_images")
    assert isinstance(configured, NewImagesSensor) and configured.deferrable and configured.soft_fail
    sensor = NewImagesSensor(task_id="wait", bucket=RAW, raw_prefix=prefix, deferrable=False, soft_fail=True,
                             poke_interval=0.5, timeout=3)
    scheduled = {"dag_run": types.SimpleNamespace(run_type="scheduled")}
    assert sensor.poke(scheduled)  # the prefix was never listed by a successful run
    with _listing_state(s3, prefix, since):
        with pytest.raises(AirflowSkipException):
            sensor.execute(scheduled)
    with _listing_state(s3, prefix, since - dt.timedelta(seconds=1)):
        assert sensor.poke(scheduled)
    with _listing_state(s3, prefix, since):
        assert sensor.poke({"dag_run": types.SimpleNamespace(run_type="manual")})  # Trigger: no wait


@contextlib.contextmanager
def _listing_state(s3, prefix, watermark, seen=None, cfg=None):
    """The raw prefix's listing state as a successful run would have promoted it."""
    from fruitflow_airflow.listing import ListingState, state_uri
    from spark_jobs.common.config import Config, split_s3_uri

    bucket, key = split_s3_uri(state_uri(cfg or Config.from_env(), prefix))
    s3.put_object(Bucket=bucket, Key=key, Body=ListingState(prefix, watermark, seen or {}).to_json().encode())
    try:
        yield
    finally:
        s3.delete_object(Bucket=bucket, Key=key)


def test_list_new_keeps_one_state_per_raw_prefix_and_lists_late_uploads(stack, s3, real_jpeg, cfg):
    """A run on another prefix does not move this prefix's watermark, nothing listed by a successful run
    is listed again, and an upload that landed after that listing with an earlier LastModified (what a
    multipart upload carries) is listed by the next run, where "newer than the last run" skipped it."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from fruitflow_airflow import listing
    from fruitflow_airflow.tasks import list_new_images

    cfg = cfg.with_overrides(runs_prefix=cfg.table_prefix(f"listing-{uuid.uuid4().hex[:8]}"))
    hook = S3Hook(aws_conn_id=AWS_CONN_ID)
    a, b = (f"listing-{name}-{uuid.uuid4().hex[:6]}" for name in "ab")
    try:
        for prefix in (a, b):
            s3.put_object(Bucket=RAW, Key=f"{prefix}/Apple/1.jpg", Body=real_jpeg)
        first = list_new_images(hook, cfg, a, "run-a1")
        assert first["n_new"] == 1 and first["since"] is None
        listing.promote(hook, cfg, first["listing_state"], a)  # run-a1 succeeded
        assert list_new_images(hook, cfg, b, "run-b1")["n_new"] == 1  # b was never listed
        assert list_new_images(hook, cfg, a, "run-a2")["n_new"] == 0

        s3.put_object(Bucket=RAW, Key=f"{b}/Apple/2.jpg", Body=real_jpeg)
        s3.put_object(Bucket=RAW, Key=f"{a}/Apple/late.jpg", Body=real_jpeg)
        late = s3.head_object(Bucket=RAW, Key=f"{a}/Apple/late.jpg")
        etag = s3.head_object(Bucket=RAW, Key=f"{a}/Apple/1.jpg")["ETag"].strip('"')
        # as if a successful run had listed the prefix a minute after late.jpg's LastModified, without it
        with _listing_state(s3, a, late["LastModified"] + dt.timedelta(minutes=1), {"Apple/1.jpg": etag}, cfg):
            found = list_new_images(hook, cfg, a, "run-a3")
            assert found["n_new"] == 1, found
            lines = s3.get_object(Bucket=cfg.features_bucket, Key=found["keys_uri"].split("/", 3)[3])["Body"]
            assert [json.loads(line)["key"] for line in lines.read().decode().splitlines()] == ["Apple/late.jpg"]
    finally:
        for bucket, prefix in ((RAW, a), (RAW, b), (cfg.features_bucket, cfg.runs_prefix)):
            for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
