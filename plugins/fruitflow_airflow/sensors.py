"""A sensor that waits for *new* photos: an image object under the raw prefix modified after the last
successful run started (the same watermark `list_new` filters with), deferred to the triggerer meanwhile.

The Amazon provider's S3KeySensor succeeds on any key under the prefix, so after the first run a scheduled
run never waits; its `check_fn` would see LastModified only through a HEAD request per object (and its
deferrable path needs aiobotocore). Here one listing (ListObjectsV2, 1000 keys a request, LastModified
included) answers, run by boto3 in a thread, whether the sensor pokes or the trigger waits.

Manual runs (the UI's Trigger button, the REST API) do not wait for new photos: any photo under the prefix
lets them go on, and `list_new` then keeps only the new ones or reports that nothing is new.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from fruitflow_airflow import AWS_CONN_ID
from spark_jobs.common.config import IMAGE_EXTENSIONS


def is_new_image(key: str, last_modified: dt.datetime, prefix: str, since: dt.datetime | None) -> bool:
    """An image file (by extension) in a category folder under `prefix`, modified after `since`."""
    relative = key[len(prefix):] if key.startswith(prefix) else ""
    return ("/" in relative and relative.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS
            and (since is None or last_modified > since))


def first_new_image(client, bucket: str, prefix: str, since: dt.datetime | None) -> str | None:
    """The first new image's key under `prefix/`, page by page (stops at the first one), or None."""
    prefix = prefix.strip("/") + "/"
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if is_new_image(obj["Key"], obj["LastModified"], prefix, since):
                return obj["Key"]
    return None


def _s3_client(aws_conn_id: str):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=aws_conn_id).get_conn()


class NewImagesTrigger(BaseTrigger):
    """Lists the prefix every `poke_interval` seconds (the first time one interval after the sensor's
    own look) until a new image is there; fires with its key."""

    def __init__(self, bucket: str, prefix: str, since: str | None, aws_conn_id: str = AWS_CONN_ID,
                 poke_interval: float = 60.0):
        super().__init__()
        self.bucket, self.prefix, self.since = bucket, prefix, since
        self.aws_conn_id, self.poke_interval = aws_conn_id, poke_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"bucket": self.bucket, "prefix": self.prefix, "since": self.since,
                 "aws_conn_id": self.aws_conn_id, "poke_interval": self.poke_interval})

    def _find(self, client) -> str | None:
        since = dt.datetime.fromisoformat(self.since) if self.since else None
        return first_new_image(client, self.bucket, self.prefix, since)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            client = await asyncio.to_thread(_s3_client, self.aws_conn_id)
            while True:
                # The sensor listed the prefix just before deferring: the first look waits an interval too
                # (one listing is up to 10^4 requests on a bucket of 10^7 photos).
                await asyncio.sleep(self.poke_interval)
                key = await asyncio.to_thread(self._find, client)  # boto3 blocks: never on the event loop
                if key:
                    yield TriggerEvent({"status": "success", "key": key})
                    return
                self.log.info("no image under s3://%s/%s/ newer than %s; next look in %ss", self.bucket,
                              self.prefix, self.since or "ever", self.poke_interval)
        except Exception as exc:  # noqa: BLE001 - the task fails with the message (and is retried)
            yield TriggerEvent({"status": "error", "message": f"{type(exc).__name__}: {exc}"})


class NewImagesSensor(BaseSensorOperator):
    """Succeeds once an image newer than the last successful run listed is under `raw_prefix` (any image, for a
    manual run). Deferrable: while it waits, it holds no worker slot."""

    template_fields = ("raw_prefix",)
    ui_color = "#e9f5db"

    def __init__(self, *, bucket: str, raw_prefix: str, aws_conn_id: str = AWS_CONN_ID, deferrable: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bucket, self.raw_prefix, self.aws_conn_id, self.deferrable = bucket, raw_prefix, aws_conn_id, deferrable

    def since(self, context) -> dt.datetime | None:
        """None for a manual run (any image will do); else the raw prefix's watermark, the newest object
        its last successful run listed (`listing`). A late upload below it is listed by the next run."""
        from fruitflow_airflow.listing import read_state
        from spark_jobs.common.config import Config

        run_type = context["dag_run"].run_type
        if getattr(run_type, "value", run_type) == "manual":
            return None
        return read_state(_s3_client(self.aws_conn_id), Config.from_env(), self.raw_prefix).watermark

    def poke(self, context) -> bool:
        key = first_new_image(_s3_client(self.aws_conn_id), self.bucket, self.raw_prefix, self.since(context))
        if key:
            self.log.info("new photo: s3://%s/%s", self.bucket, key)
        return key is not None

    def execute(self, context) -> None:
        if not self.deferrable:
            super().execute(context)
        elif not self.poke(context):
            since = self.since(context)
            self.log.info("waiting (deferred) for an image newer than %s under s3://%s/%s/", since or "ever",
                          self.bucket, self.raw_prefix)
            self.defer(trigger=NewImagesTrigger(self.bucket, self.raw_prefix, since.isoformat() if since else None,
                                                self.aws_conn_id, self.poke_interval),
                       method_name="execute_complete", timeout=dt.timedelta(seconds=self.timeout))

    def execute_complete(self, context, event: dict[str, Any]) -> None:
        if event.get("status") != "success":
            raise AirflowException(f"listing s3://{self.bucket}/{self.raw_prefix}/ failed: {event.get('message')}")
        self.log.info("new photo: s3://%s/%s", self.bucket, event["key"])
