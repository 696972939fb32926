"""wait_for_images against the real store: it waits while nothing is newer than the last successful run,
and goes on once a new photo lands, whether it pokes or its trigger waits in the triggerer."""

from __future__ import annotations

import asyncio
import datetime as dt
import types
import uuid

import pytest
from airflow.sdk.exceptions import AirflowSkipException

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


def test_a_scheduled_run_with_nothing_new_waits_then_is_skipped(stack, prefix_with_old_photo):
    """As the DAG configures it (soft_fail), minus the hours: the poking form of the same sensor."""
    from airflow.dag_processing.dagbag import DagBag

    from fruitflow.paths import DAGS

    prefix, since = prefix_with_old_photo
    configured = DagBag(dag_folder=str(DAGS)).dags["fruit_pipeline"].get_task("wait_for_images")
    assert isinstance(configured, NewImagesSensor) and configured.deferrable and configured.soft_fail
    sensor = NewImagesSensor(task_id="wait", bucket=RAW, raw_prefix=prefix, deferrable=False, soft_fail=True,
                             poke_interval=0.5, timeout=3)
    scheduled = {"dag_run": types.SimpleNamespace(run_type="scheduled"), "prev_start_date_success": since}
    with pytest.raises(AirflowSkipException):
        sensor.execute(scheduled)
    assert sensor.poke({**scheduled, "prev_start_date_success": since - dt.timedelta(seconds=1)})
    assert sensor.poke({**scheduled, "dag_run": types.SimpleNamespace(run_type="manual")})  # Trigger: no wait
