"""The decoder sandbox (spark_jobs.common.sandbox): one input that crashes, exhausts memory or hangs
costs its own outcome; the batch's other items keep theirs, and the calling process lives on."""

import os
import signal
import time

from spark_jobs.common.sandbox import MEMORY_ERROR, map_isolated

MB = 1024 * 1024


def _work(item):
    if item == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)  # what a decoder's invalid read ends in
    if item == "huge":
        return len(bytearray(1024 * MB))
    if item == "slow":
        time.sleep(30)
    if item == "bad":
        raise ValueError("not an image")
    return item * 2


def test_a_crashing_item_costs_only_its_own_result():
    outcomes = map_isolated(_work, ["a", "segfault", "b"], memory_bytes=256 * MB, timeout_s=20)
    assert [o.value for o in outcomes] == ["aa", None, "bb"]
    assert outcomes[1].died == "crashed (signal SIGSEGV)" and not outcomes[1].ok
    assert outcomes[0].ok and outcomes[2].ok


def test_memory_beyond_the_budget_and_time_beyond_the_limit_are_reasons_not_failures():
    started = time.monotonic()
    outcomes = map_isolated(_work, ["a", "huge", "slow", "bad"], memory_bytes=256 * MB, timeout_s=1)
    assert outcomes[0].value == "aa"
    assert outcomes[1].died == MEMORY_ERROR
    assert outcomes[2].died == "timed out after 1 s"
    assert isinstance(outcomes[3].error, ValueError) and str(outcomes[3].error) == "not an image"
    assert time.monotonic() - started < 15  # the batch's deadline (4 s), then one second per item
    # the same allocation is fine with no cap
    assert map_isolated(_work, ["huge"], memory_bytes=0, timeout_s=20)[0].value == 1024 * MB


def test_an_empty_batch_forks_nothing():
    assert map_isolated(_work, [], memory_bytes=MB, timeout_s=1) == []
