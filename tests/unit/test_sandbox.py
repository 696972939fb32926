"""The decoder sandbox (spark_jobs.common.sandbox): one input that crashes, exhausts memory or hangs
costs its own outcome; the batch's other items keep theirs, and the calling process lives on."""

import json
import os
import resource
import signal
import struct
import time

import pytest

from spark_jobs.common import sandbox
from spark_jobs.common.sandbox import MEMORY_ERROR, map_isolated

MB = 1024 * 1024
BUDGET = 256 * MB


def _mapped_bytes():
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))


def _work(item):
    if item == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)  # what a decoder's invalid read ends in
    if item == "huge":  # more than all the child has mapped (free heap it inherited included) plus a budget
        return len(bytearray(_mapped_bytes() + 2 * BUDGET))
    if item == "gib":
        return len(bytearray(1024 * MB))
    if item == "room":  # what the cap leaves beyond what is mapped now
        return resource.getrlimit(resource.RLIMIT_AS)[0] - _mapped_bytes()
    if item == "slow":
        time.sleep(30)
    if item == "bad":
        raise ValueError("not an image")
    return item * 2


def test_a_crashing_item_costs_only_its_own_result():
    # a Python-level SIGSEGV handler in the worker (the full suite had one) must not keep the child going
    previous = signal.signal(signal.SIGSEGV, lambda *_: None)
    try:
        _check_crash()
    finally:
        signal.signal(signal.SIGSEGV, previous)


def _check_crash():
    outcomes = map_isolated(_work, ["a", "segfault", "b"], memory_bytes=256 * MB, timeout_s=20)
    assert [o.value for o in outcomes] == ["aa", None, "bb"]
    assert outcomes[1].died == "crashed (signal SIGSEGV)" and not outcomes[1].ok
    assert outcomes[0].ok and outcomes[2].ok


def test_memory_beyond_the_budget_is_a_reason_not_a_failure():
    # no short deadline here: what is checked is the cap, whatever the host's load
    outcomes = map_isolated(_work, ["a", "room", "huge", "bad"], memory_bytes=BUDGET, timeout_s=60)
    assert outcomes[0].value == "aa"
    # the cap is on the address space: what the fork inherited plus the budget
    assert 0 < outcomes[1].value <= BUDGET
    assert outcomes[2].died == MEMORY_ERROR
    assert (outcomes[3].error_type, outcomes[3].error) == ("ValueError", "not an image")
    # a large allocation is fine with no cap
    assert map_isolated(_work, ["gib"], memory_bytes=0, timeout_s=60)[0].value == 1024 * MB


def test_beyond_what_the_fork_inherited_plus_the_budget_fails_even_where_the_parent_left_free_heap():
    # A long-lived worker's heap holds freed memory; its child reuses it without a new mapping, so the
    # cap cannot count it (a 1 GiB item passed a 256 MB budget in the suite this way): the bound is what
    # the child inherited plus its budget, and an item asking beyond it fails with free heap around.
    held = [bytes(100_000) for _ in range(12_000)]  # ~1.2 GB of the parent's heap, then freed
    last = bytes(100_000)  # keeps the freed block inside the heap rather than given back at its top
    del held[:]
    outcomes = map_isolated(_work, ["huge", "a"], memory_bytes=BUDGET, timeout_s=60)
    assert outcomes[0].died == MEMORY_ERROR and outcomes[1].value == "aa"
    del last


def test_time_beyond_the_limit_is_a_reason_and_the_next_item_goes_on():
    started = time.monotonic()
    outcomes = map_isolated(_work, ["a", "slow", "b"], memory_bytes=0, timeout_s=2)
    assert [o.value for o in outcomes] == ["aa", None, "bb"]
    assert outcomes[1].died == "timed out after 2 s"
    # the slow item sleeps 30 s: the child was stopped at its deadline, not waited for
    assert time.monotonic() - started < 25


class _TwoArguments(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a} {b}")


def _raise_odd(item):
    if item == "odd":
        raise _TwoArguments("does not", "unpickle")  # pickles, but would not load in the parent
    if item == "rt":
        os.kill(os.getpid(), signal.SIGRTMIN + 3)  # a signal without a name in signal.Signals
    return item


def test_odd_exceptions_and_signals_are_reasons_too():
    outcomes = map_isolated(_raise_odd, ["a", "odd", "rt", "b"], memory_bytes=0, timeout_s=20)
    assert [o.value for o in outcomes] == ["a", None, None, "b"]
    assert (outcomes[1].error_type, outcomes[1].error) == ("_TwoArguments", "does not unpickle")
    assert outcomes[2].died.startswith("crashed (signal")


def test_a_memory_limit_already_set_on_the_worker_is_kept(tmp_path):
    """Under spark.executor.pyspark.memory the Python worker has a hard RLIMIT_AS of its own: the
    child's cap stays below it instead of failing every item."""
    import resource
    import subprocess
    import sys

    code = (
        "import resource\n"
        "from spark_jobs.common.sandbox import map_isolated\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_AS)\n"
        "import os\n"
        "size = int([l for l in open('/proc/self/status') if l.startswith('VmSize')][0].split()[1]) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + 512 * 2**20, size + 512 * 2**20))\n"
        "out = map_isolated(lambda x: x * 2, [1, 2], memory_bytes=2**30, timeout_s=20)\n"
        "print([o.value for o in out], [o.died for o in out])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[2, 4] [None, None]", (done.stdout, done.stderr)
    assert resource  # the parent's own limits are untouched


NO_PROCESS_CHECK = """
import encodings.ascii, encodings.latin_1, encodings.utf_8, json, os, sys
from PIL import Image
Image.init()  # the plugins loaded before the switch of user (the interpreter's files may be root's only)
from spark_jobs.common import images
from spark_jobs.common.sandbox import map_isolated
photo = sys.stdin.buffer.read()
if os.getuid() == 0:  # root is exempt from RLIMIT_NPROC: the check runs as nobody
    os.setgid(65534)
    os.setuid(65534)

def start_a_process(_):
    if os.fork() == 0:
        os._exit(0)
    return "started"

def decode(data):
    return list(images.preprocess(images.decode(data, 10**8)).shape)

started = map_isolated(start_a_process, [1], memory_bytes=2**30, timeout_s=20)[0]
decoded = map_isolated(decode, [photo], memory_bytes=2**30, timeout_s=20)[0]
print(json.dumps([started.value, started.error_type, decoded.value, decoded.error]))
"""


def test_a_child_starts_no_process_and_still_decodes(real_jpeg):
    """A decoder turned into running code cannot start processes (RLIMIT_NPROC 0, which binds any user but
    root), and decoding needs none."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", NO_PROCESS_CHECK], input=real_jpeg, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert json.loads(done.stdout) == [None, "BlockingIOError", [224, 224, 3], None], done.stdout


def holds(halves: list[str]) -> bool:
    """In the child: whether its memory holds the two halves side by side, searched for without making the
    whole (which would then be in memory because of the search)."""
    first, second = (half.encode() for half in halves)
    with open("/proc/self/maps", encoding="ascii") as maps:
        regions = [line.split() for line in maps]
    with open("/proc/self/mem", "rb", buffering=0) as mem:
        for region in regions:
            start, end = (int(x, 16) for x in region[0].split("-"))
            if not region[1].startswith("rw") or end - start > 1 << 30:
                continue
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except OSError:
                continue
            at = data.find(first)
            while at >= 0:
                if data[at + len(first):at + len(first) + len(second)] == second:
                    return True
                at = data.find(first, at + 1)
    return False


def test_a_fresh_child_holds_nothing_of_its_callers_memory(monkeypatch):
    """The api-server and the publish task hold the control key: a child forked from them holds it too
    (in memory, whatever its os.environ says); one forked from a fresh interpreter does not."""
    import secrets

    key = secrets.token_hex(24)
    monkeypatch.setenv("FRUITFLOW_CONTROL_KEY", key)
    halves = [key[:24], key[24:]]
    forked = map_isolated(holds, [halves], memory_bytes=0, timeout_s=60)
    fresh = map_isolated(holds, [halves], memory_bytes=0, timeout_s=60, fresh=True)
    assert [forked[0].value, fresh[0].value] == [True, False], (forked, fresh)


def reach(caller: list) -> dict:
    """In the child: what it gets of its caller's /proc environ (the control key is there) and of a port
    the caller listens on."""
    import socket

    pid, port = caller
    found = {}
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            found["environ"] = "read" if environ.read() else "empty"
    except OSError as exc:
        found["environ"] = type(exc).__name__
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        found["network"] = "connected"
    except OSError as exc:
        found["network"] = type(exc).__name__
    return found


def test_a_fresh_child_reads_none_of_its_callers_proc_files_and_reaches_no_port():
    """The child of a fresh interpreter runs as its caller's user (root on the local stack): without a
    user namespace of its own it read the api-server's /proc/<pid>/environ, and it could connect to
    any local service (the metadata DB, the store's internal ports)."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        caller = [os.getpid(), server.getsockname()[1]]
        unconfined = reach(caller)
        (forked,) = map_isolated(reach, [caller], memory_bytes=0, timeout_s=60)
        (fresh,) = map_isolated(reach, [caller], memory_bytes=0, timeout_s=60, fresh=True)
    assert unconfined == {"environ": "read", "network": "connected"}  # the probe can tell
    assert forked.value["environ"] == "read", forked  # a fork's /proc files are its parent's anyway
    assert fresh.value["environ"] == "PermissionError" and fresh.value["network"] != "connected", fresh


def tamper(target: str) -> dict:
    """In the child: what it manages to do to a file it can reach, to its parent, and with a program."""
    moved = target + ".moved"
    attempts = {"create": lambda: os.close(os.open(target + ".new", os.O_CREAT | os.O_WRONLY)),
                "link": lambda: os.symlink(target, target + ".ln"), "make a folder": lambda: os.mkdir(target + ".d"),
                "rename": lambda: os.rename(target, moved),
                "delete": lambda: os.unlink(moved if os.path.exists(moved) else target),
                "signal the parent": lambda: os.kill(os.getppid(), 0)}
    done = {}
    for what, attempt in attempts.items():
        try:
            attempt()
            done[what] = "done"
        except OSError as exc:
            done[what] = type(exc).__name__
    try:
        pid = os.fork()  # root may (RLIMIT_NPROC binds other users only)
    except OSError as exc:
        done["run a program"] = type(exc).__name__
        return done
    if pid == 0:
        try:
            os.execv("/bin/true", ["true"])
        finally:
            os._exit(77)
    done["run a program"] = "ran" if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0 else "refused"
    return done


@pytest.mark.skipif(sandbox.landlock_abi() < 6, reason="the kernel's Landlock cannot refuse all of it (Linux >= 6.12)")
@pytest.mark.parametrize("fresh", [False, True], ids=["forked", "fresh"])
def test_a_child_changes_no_file_signals_no_process_and_runs_no_program(tmp_path, fresh):
    """RLIMIT_FSIZE stops writes, not renames, deletes or new empty files; RLIMIT_NPROC does not bind root
    (the local stack's executors and api-server). A decoder turned into running code, on an executor or
    on the Airflow host, did all of the probe's attempts before the children restricted themselves with
    Landlock."""
    outside, beside = tmp_path / "outside", tmp_path / "beside-the-decoder"
    outside.mkdir(), beside.mkdir()
    (outside / "probe").write_bytes(b"x")
    assert set(tamper(str(outside / "probe")).values()) == {"done", "ran"}  # the probe can tell
    photo = beside / "a-photo.jpg"
    photo.write_bytes(b"\xff\xd8 photo")
    (outcome,) = map_isolated(tamper, [str(photo)], memory_bytes=0, timeout_s=60, fresh=fresh)
    assert outcome.ok, outcome
    assert set(outcome.value.values()) <= {"PermissionError", "BlockingIOError", "refused"}, outcome.value
    assert outcome.value["run a program"] != "ran"
    assert [p.name for p in beside.iterdir()] == [photo.name] and photo.read_bytes() == b"\xff\xd8 photo"


def write_a_record_to_stdout(item: int) -> int:
    """In the child: a well-formed record of its own making, written where a fresh interpreter's results go."""
    payload = b"V" + json.dumps(item * 1000).encode()
    os.write(1, struct.pack("!Q", len(payload)) + payload)
    return item


def test_what_a_child_writes_to_stdout_is_no_result():
    outcomes = map_isolated(write_a_record_to_stdout, [1, 2, 3], memory_bytes=0, timeout_s=60, fresh=True)
    assert [o.value for o in outcomes] == [1, 2, 3], outcomes


def test_a_fresh_childs_outcomes_are_a_forked_ones():
    items = [3, "bad", "segfault", 5]
    forked = map_isolated(_work, items, memory_bytes=BUDGET, timeout_s=20)
    fresh = map_isolated(_work, items, memory_bytes=BUDGET, timeout_s=20, fresh=True)
    assert fresh == forked and [o.value for o in fresh] == [6, None, None, 10]
    assert map_isolated(_work, [], memory_bytes=MB, timeout_s=1, fresh=True) == []


def test_an_empty_batch_forks_nothing():
    assert map_isolated(_work, [], memory_bytes=MB, timeout_s=1) == []



def test_children_of_a_process_whose_opencv_threads_ran_decode_without_deadlock(real_jpeg):
    """fork copies no threads: a child must not touch OpenCV's thread pool state (cv2.setNumThreads in the
    child waited for ever on a lock held by the parent's pool threads, once the parent had decoded)."""
    from spark_jobs.common import images

    def decode(data):
        return images.preprocess(images.decode(data, 10**7)).shape

    import cv2
    import numpy as np

    # The parent's pool threads have just run, on large pixels: a 100x100 photo stays under OpenCV's
    # threshold for going parallel, and a child calling cv2.setNumThreads never hung after it. After
    # large ones it hangs when the fork catches the pool's lock held (a race: 1 to 4 forks in 10, tried),
    # so ten forks, each right after the pool ran.
    pixels = np.random.default_rng(0).integers(0, 255, (3000, 3000, 3), np.uint8)
    big = cv2.imencode(".jpg", pixels)[1].tobytes()
    for _ in range(10):
        images.decode(big, 10**8)
        images.preprocess(pixels)
        (outcome,) = map_isolated(decode, [real_jpeg], memory_bytes=1024 * MB, timeout_s=5)
        assert outcome.value == [224, 224, 3], outcome.died  # plain data: a list


class _RunsWhenUnpickled:
    """A result whose unpickling would run code in the parent (it creates the marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_the_parent_never_unpickles_what_a_child_sends(tmp_path):
    marker = str(tmp_path / "ran-in-the-parent")
    outcomes = map_isolated(lambda item: _RunsWhenUnpickled(marker) if item == "evil" else item,
                            ["evil", b"raw", {"n": [1, 2.5, None]}], memory_bytes=0, timeout_s=20)
    assert not (tmp_path / "ran-in-the-parent").exists()
    assert outcomes[0].error_type == "TypeError" and "not plain data" in outcomes[0].error
    assert [o.value for o in outcomes[1:]] == [b"raw", {"n": [1, 2.5, None]}]


def test_a_child_writes_no_file_and_sees_no_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the-pipelines-secret")
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", "aws://key:secret@")
    monkeypatch.setenv("PYTHON_WORKER_FACTORY_SECRET", "pysparks-worker-secret")
    monkeypatch.setenv("FRUITFLOW_CONTROL_KEY", "the-airflow-hosts-signing-key")  # the Recognise page's decoder
    target = tmp_path / "written-by-the-child"

    def write(_):
        with open(target, "w") as out:
            out.write("x" * 100)
            out.flush()
        return "wrote"

    def secrets(_):
        import os

        return [os.environ.get("AWS_SECRET_ACCESS_KEY"), os.environ.get("AIRFLOW_CONN_AWS_DEFAULT"),
                os.environ.get("PYTHON_WORKER_FACTORY_SECRET"), os.environ.get("FRUITFLOW_CONTROL_KEY"),
                bool(os.environ.get("PATH"))]

    wrote, seen = map_isolated(write, [1], memory_bytes=0, timeout_s=20) + map_isolated(
        secrets, [1], memory_bytes=0, timeout_s=20)
    assert not wrote.ok and (not target.exists() or target.stat().st_size == 0), wrote
    assert seen.value == [None, None, None, None, True]


def _failing_first_start(sandbox, monkeypatch, how):
    """sandbox._confine, failing (`how`) in the first child only: the marker the parent left tells it."""
    confine, marker = sandbox._confine, f"/tmp/fruitflow-sandbox-first-{os.getpid()}"
    open(marker, "w").close()

    def first_fails(*args):
        if os.path.exists(marker):
            os.unlink(marker)
            how()
        confine(*args)

    monkeypatch.setattr(sandbox, "_confine", first_fails)


def test_a_child_that_dies_before_it_is_ready_costs_the_first_item_and_the_next_child_goes_on(monkeypatch):
    from spark_jobs.common import sandbox

    _failing_first_start(sandbox, monkeypatch, lambda: os._exit(7))
    outcomes = map_isolated(_work, ["a", "b"], memory_bytes=0, timeout_s=60)
    assert [o.died for o in outcomes] == ["crashed (exit status 7)", None] and outcomes[1].value == "bb"


def test_a_child_that_stalls_before_it_is_ready_is_given_the_startup_time_not_the_items(monkeypatch):
    """The per-item deadline starts once the child is ready; before that it has STARTUP_S (here 1 s)."""
    from spark_jobs.common import sandbox

    _failing_first_start(sandbox, monkeypatch, lambda: time.sleep(60))
    monkeypatch.setattr(sandbox, "STARTUP_S", 1.0)
    started = time.monotonic()
    outcomes = map_isolated(_work, ["a"], memory_bytes=0, timeout_s=0.5)
    assert outcomes[0].died == "timed out starting after 1 s"
    assert time.monotonic() - started < 30  # the stalled child was stopped, not waited for
