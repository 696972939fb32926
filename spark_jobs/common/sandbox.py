"""Runs a function over untrusted inputs in a forked child process with its own memory cap and time
limit, so that one input that crashes the native code (a decoder's segfault, an abort), exhausts memory
or never finishes costs its own result, never the Python worker, the Spark task or the run.

`map_isolated(fn, items)` first runs the whole batch in one child (one fork per batch: cheap); if that
child dies or overruns, each item gets a child of its own, and the items whose child dies carry the
reason instead of a result. Exceptions `fn` raises are per-item results too (the caller decides what
they mean). POSIX only (fork, setrlimit); the pipeline's executors are Linux.
"""

from __future__ import annotations

import os
import pickle
import resource
import select
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

MEMORY_ERROR = "out of memory"


@dataclass(frozen=True)
class Outcome:
    value: Any = None
    error: BaseException | None = None  # what fn raised
    died: str | None = None  # why its child ended without a result (crash, memory, time)

    @property
    def ok(self) -> bool:
        return self.error is None and self.died is None


def _address_space_bytes() -> int:
    """The process's current virtual size: the child's cap is this plus its budget (a fork shares the
    parent's mappings, so a cap below them would fail the first allocation)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _child(fn: Callable, items: Sequence, memory_bytes: int, write_fd: int) -> None:
    status = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if memory_bytes:
            cap = _address_space_bytes() + memory_bytes
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        results = []
        for item in items:
            try:
                results.append(("value", fn(item)))
            except MemoryError:
                results.append(("died", MEMORY_ERROR))
            except Exception as exc:  # noqa: BLE001 - the caller gets it as this item's outcome
                results.append(("error", exc))
        try:
            payload = pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError):  # an exception that does not pickle
            results = [(kind, RuntimeError(f"{type(v).__name__}: {v}") if kind == "error" else v)
                       for kind, v in results]
            payload = pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(payload)
        while view:
            view = view[os.write(write_fd, view):]
        status = 0
    except MemoryError:
        status = 3
    finally:
        os._exit(status)  # no atexit, no flushing of the parent's buffers, no return into the worker


def _read_all(fd: int, pid: int, deadline: float) -> bytes | None:
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _death_reason(wait_status: int, timed_out: bool, timeout_s: float) -> str:
    if timed_out:
        return f"timed out after {timeout_s:g} s"
    if os.WIFSIGNALED(wait_status):
        return f"crashed (signal {signal.Signals(os.WTERMSIG(wait_status)).name})"
    if os.WEXITSTATUS(wait_status) == 3:
        return MEMORY_ERROR
    return f"crashed (exit status {os.WEXITSTATUS(wait_status)})"


def run_in_child(fn: Callable, items: Sequence, *, memory_bytes: int, timeout_s: float) -> list[Outcome] | str:
    """fn over `items` in one child: their outcomes, or why the child gave none."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(fn, items, memory_bytes, write_fd)
    os.close(write_fd)
    try:
        payload = _read_all(read_fd, pid, time.monotonic() + timeout_s)
    finally:
        os.close(read_fd)
    _, wait_status = os.waitpid(pid, 0)
    if payload is None or not (os.WIFEXITED(wait_status) and os.WEXITSTATUS(wait_status) == 0):
        return _death_reason(wait_status, payload is None, timeout_s)
    outcomes = []
    for kind, value in pickle.loads(payload):  # written by our own child, from our own code
        outcomes.append(Outcome(value=value) if kind == "value" else
                        Outcome(error=value) if kind == "error" else Outcome(died=value))
    return outcomes


def map_isolated(fn: Callable, items: Sequence, *, memory_bytes: int, timeout_s: float) -> list[Outcome]:
    """fn over every item, each outcome in order. `memory_bytes`: what a child may allocate beyond what
    it inherits (0: no cap); `timeout_s`: per item (a batch's child gets that times its size)."""
    if not items:
        return []
    together = run_in_child(fn, items, memory_bytes=memory_bytes, timeout_s=timeout_s * len(items))
    if not isinstance(together, str):
        return together
    if len(items) == 1:
        return [Outcome(died=together)]
    alone = [run_in_child(fn, [item], memory_bytes=memory_bytes, timeout_s=timeout_s) for item in items]
    return [Outcome(died=one) if isinstance(one, str) else one[0] for one in alone]
