"""The incremental listing's state (plugins/fruitflow_airflow/listing.py): what is new to a raw prefix,
and the state a listing leaves, by LastModified and ETag."""

import datetime as dt

import pytest

from fruitflow_airflow.listing import ListingState, NextState, state_uri
from spark_jobs.common.config import Config

W = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)
HOUR = dt.timedelta(hours=1)


def test_new_means_above_the_watermark_or_unseen_within_the_overlap():
    state = ListingState("raw", W, {"Apple/seen.jpg": "e1"})
    assert state.is_new("Apple/x.jpg", "e9", W + dt.timedelta(seconds=1), HOUR)
    assert not state.is_new("Apple/seen.jpg", "e1", W - dt.timedelta(minutes=5), HOUR)
    # an upload that finished after the last listing with an earlier LastModified (multipart: its start)
    assert state.is_new("Apple/late.jpg", "e2", W - dt.timedelta(minutes=5), HOUR)
    # the same key replaced by another photo within the window
    assert state.is_new("Apple/seen.jpg", "e3", W - dt.timedelta(minutes=5), HOUR)
    assert not state.is_new("Apple/old.jpg", "e4", W - 2 * HOUR, HOUR)
    assert ListingState("raw").is_new("Apple/old.jpg", "e4", W - 100 * HOUR, HOUR)  # never listed: all
    # a key the last run could not read (AccessDenied, not found yet) is listed again, however old
    retry = ListingState("raw", W, {}, {"Apple/old.jpg": 1})
    assert retry.is_new("Apple/old.jpg", "e4", W - 100 * HOUR, HOUR)
    assert ListingState.from_json(retry.to_json(), "raw") == retry
    assert NextState(retry, HOUR).state().retry == {}  # the next run's own rejects decide again


def test_the_next_state_keeps_the_newest_time_and_only_the_windows_etags():
    following = NextState(ListingState("raw", W - 3 * HOUR), HOUR)
    for minutes, key in ((0, "a"), (130, "b"), (170, "c"), (240, "d")):
        following.add(f"Apple/{key}.jpg", key, W - 3 * HOUR + dt.timedelta(minutes=minutes))
    state = following.state()
    assert state.watermark == W + dt.timedelta(hours=1)
    assert state.seen == {"Apple/d.jpg": "d"}  # c is 70 minutes below the newest
    again = ListingState.from_json(state.to_json(), "raw/")
    assert again == state
    with pytest.raises(ValueError):
        ListingState.from_json(state.to_json(), "other")  # never another prefix's state


def test_the_window_stays_bounded_while_the_listing_grows():
    following = NextState(ListingState("raw"), dt.timedelta(seconds=10))
    for i in range(5000):
        following.add(f"Apple/{i}.jpg", str(i), W + dt.timedelta(seconds=i))
        assert len(following.window) <= 2048
    assert set(following.state().seen) == {f"Apple/{i}.jpg" for i in range(4990, 5000)}


def test_each_raw_prefix_has_its_own_state_under_the_runs_prefix():
    cfg = Config(runs_prefix="runs")
    assert state_uri(cfg, "raw/a") != state_uri(cfg, "raw/b")
    assert state_uri(cfg, "raw/a/") == state_uri(cfg, "raw/a")
    assert state_uri(cfg, "raw/a").startswith(f"s3a://{cfg.features_bucket}/runs/_listing/")



def test_a_key_unreadable_run_after_run_is_given_up_after_max_retries():
    from fruitflow_airflow.listing import MAX_RETRIES, retries

    retry: dict[str, int] = {}
    for run in range(1, MAX_RETRIES + 2):
        retry = retries(retry, {"Apple/denied.jpg", f"Apple/once-{run}.jpg"})
        assert retry.get(f"Apple/once-{run}.jpg") == 1 and f"Apple/once-{run - 1}.jpg" not in retry
        assert retry.get("Apple/denied.jpg") == (run if run <= MAX_RETRIES else None), (run, retry)
