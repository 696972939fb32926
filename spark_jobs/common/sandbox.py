"""Runs a function over untrusted inputs in a forked child process with its own memory cap and time
limit, so that one input that crashes the native code (a decoder's segfault, an abort), exhausts memory
or never finishes costs its own result, never the Python worker, the Spark task or the run.

`map_isolated(fn, items)` forks one child for the batch (cheap), which sends one result per item as it
goes. Each item has its own deadline, counted once the child has confined itself (a slow fork on a
loaded host is no item's fault). When the child dies or overruns, the item it was on gets the
reason instead of a result and a new child goes on from the next item: a batch costs one fork plus one
per bad item. Exceptions `fn` raises come back as their type's name and message.

Nothing the child sends is unpickled: a result is bytes, or plain data as JSON (numbers, strings, lists,
dicts; a tuple comes back as a list); anything else is that item's error. The child writes no file
(RLIMIT_FSIZE 0), starts no process (RLIMIT_NPROC 0; root is exempt), and its os.environ holds none of the
parent's secrets; its stdin and stdout are /dev/null. Last, where the kernel has Landlock, it makes,
changes, removes or runs no file, reaches no TCP port and signals no process outside itself, root or not. A
fork's memory is still the parent's: where the caller holds keys (the Airflow host: the api-server, the
publish task, a driver), `fresh=True` forks the children from a new interpreter started with the kept
environment only (~0.15 s more per call), in a user and a network namespace of its own where the kernel
allows (no reach into the caller's /proc files, no network), and makes the caller not dumpable. The memory
cap is on the address space: a child reaches at most what it inherited plus its budget (free heap memory it
inherited is reused without being counted, up to that bound).
POSIX only (fork, setrlimit, prctl); the pipeline's executors are Linux.
"""

from __future__ import annotations

import ctypes
import faulthandler
import functools
import gc
import importlib
import json
import math
import os
import resource
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

MEMORY_ERROR = "out of memory"
# What the child keeps of the environment (names, or prefixes ending in '_'): locale, paths and the
# decoders' own settings; not PySpark's worker secrets (PYTHON_WORKER_FACTORY_SECRET) nor any key.
KEPT_ENVIRONMENT = ("PATH", "LANG", "LC_", "HOME", "TMPDIR", "OPENCV_", "OMP_", "OPENBLAS_", "MKL_")
_HEADER = struct.Struct("!Q")
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_NO_NEW_PRIVS = 1, 4, 38
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000
# Landlock (linux/landlock.h; Linux >= 5.13): the same syscall numbers on every architecture.
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_RESTRICT_SELF = 444, 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
# What a child may not do anywhere, by the Landlock ABI that can refuse it. Files: run one, write,
# truncate or ioctl one it opens, remove, rename (REFER) or make anything; reading stays (a library may
# still load). TCP: bind or connect (ABI 4). Scopes (ABI 6): signal a process outside the child, connect
# to an abstract Unix socket outside it.
_LANDLOCK_FS = {1: 0b1_1111_1111_0011, 2: 1 << 13, 3: 1 << 14, 5: 1 << 15}  # 1: ABI 1's but READ_FILE, READ_DIR
_LANDLOCK_NET = {4: 0b11}
_LANDLOCK_SCOPED = {6: 0b11}
# How long a new child may take to confine itself before its first item: a fork on a loaded host is
# not the item's cost, so the per-item deadline starts once the child says it is ready.
STARTUP_S = 60.0


@dataclass(frozen=True)
class Outcome:
    value: Any = None
    error_type: str | None = None  # the name of the exception fn raised
    error: str | None = None  # its message
    died: str | None = None  # why the child ended without a result (crash, memory, time)

    @property
    def ok(self) -> bool:
        return self.error_type is None and self.died is None


def _address_space_bytes() -> int:
    """The process's current virtual size: the child's cap is this plus its budget (a fork shares the
    parent's mappings, so a cap below them would fail the first allocation)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _confine(memory_bytes: int, cpu_s: int, keep_fd: int) -> None:
    """In the child: die with the parent, close what it inherited (the worker's socket to the JVM among
    them), cap memory (never above a limit already set, e.g. by spark.executor.pyspark.memory) and CPU."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    # A crash ends the child at once: no handler of the worker's (a Python-level one would let it go on)
    faulthandler.disable()
    for number in (signal.SIGTERM, signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGFPE, signal.SIGILL):
        signal.signal(number, signal.SIG_DFL)
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, 65536)
    # Nothing to read on stdin and nowhere to write on stdout: in a fresh interpreter stdout is the stream
    # of results (stderr stays, for a crash's last words in the worker's or the interpreter's log)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        if fd != null:
            os.dup2(null, fd)
    if null > 1:
        os.close(null)
    # No secret in os.environ for the decoding code to pass on. A fork still holds the parent's memory
    # (and /proc/self/environ): against a decoder turned into running code, only a fresh process helps.
    for name in [n for n in os.environ if not _kept(n)]:
        del os.environ[name]
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # no file written (the results go through the pipe)
    # No process or thread started (decoding needs none: test_sandbox). It binds every user but root, whom
    # the kernel exempts: the executors and Airflow's tasks run as users of their own outside this machine.
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    if memory_bytes:
        # The parent's objects stay out of the child's collections: what the child freed of them would
        # be room for its items beyond the budget (reusing free heap it inherited is not counted either:
        # the bound is what it inherited plus the budget, test_sandbox).
        gc.freeze()
        cap = _address_space_bytes() + memory_bytes
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s if hard == resource.RLIM_INFINITY else min(cpu_s, hard), hard))
    _restrict_with_landlock()


class _LandlockRuleset(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where there is none (an old kernel, an LSM left out at boot)."""
    try:
        version = ctypes.CDLL(None, use_errno=True).syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0,
                                                            _LANDLOCK_CREATE_RULESET_VERSION)
    except (OSError, AttributeError):
        return 0
    return max(version, 0)


def _restrict_with_landlock() -> bool:
    """In the child, last: a Landlock domain that handles the rights above and grants none, so that code a
    hostile image runs cannot change, run or make a file, reach a TCP port or signal its parent, whoever
    the user (root is bound too, unlike by RLIMIT_NPROC; in a user namespace or not). Files and pipes
    already open stay usable. Where the kernel has no Landlock, the rlimits alone hold (False)."""
    abi = landlock_abi()
    if not abi:
        return False
    ruleset = _LandlockRuleset(*(sum(bits for since, bits in rights.items() if abi >= since)
                                 for rights in (_LANDLOCK_FS, _LANDLOCK_NET, _LANDLOCK_SCOPED)))
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(ruleset), ctypes.sizeof(ruleset), 0)
    if fd < 0:
        return False
    try:  # no new privileges: what Landlock asks of a process without CAP_SYS_ADMIN
        return _libc_call("prctl", _PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) and libc.syscall(
            _SYS_LANDLOCK_RESTRICT_SELF, fd, 0) == 0
    finally:
        os.close(fd)


def _encode(record: tuple) -> bytes:
    """A record as plain data: its kind, then raw bytes (a value of bytes) or JSON (anything else)."""
    kind, *fields = record
    if kind == "value" and isinstance(fields[0], (bytes, bytearray, memoryview)):
        return b"B" + bytes(fields[0])
    try:
        return {"value": b"V", "error": b"E", "died": b"D", "ready": b"R"}[kind] + json.dumps(
            fields[0] if kind == "value" else fields, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:  # a value that is not plain data: this item's error
        return b"E" + json.dumps(["TypeError", f"not plain data: {exc}"[:500]]).encode()


def _decode(payload: bytes) -> tuple:
    kind, body = payload[:1], payload[1:]
    if kind == b"B":
        return ("value", body)
    fields = json.loads(body)
    if kind == b"V":
        return ("value", fields)
    if kind == b"E":
        return ("error", str(fields[0]), str(fields[1]))
    if kind == b"D":
        return ("died", str(fields[0]))
    if kind == b"R":
        return ("ready",)
    raise ValueError("unknown record")


def _kept(name: str) -> bool:
    return any(name.startswith(k) if k.endswith("_") else name == k for k in KEPT_ENVIRONMENT)


def _send(fd: int, record: tuple) -> None:
    payload = _encode(record)
    view = memoryview(_HEADER.pack(len(payload)) + payload)
    while view:
        view = view[os.write(fd, view):]


def _child(fn: Callable, items: Sequence, memory_bytes: int, timeout_s: float, write_fd: int) -> None:
    status = 1
    try:
        # CPU: a backstop for a child the parent cannot stop; the parent's deadline is per item, wall time
        _confine(memory_bytes, math.ceil(timeout_s) * (len(items) + 1), write_fd)
        _send(write_fd, ("ready",))
        for item in items:
            try:
                record = ("value", fn(item))
            except MemoryError:
                record = ("died", MEMORY_ERROR)
            except Exception as exc:  # noqa: BLE001 - the caller gets it as this item's outcome
                record = ("error", type(exc).__name__, str(exc)[:500])
            try:
                _send(write_fd, record)
            except MemoryError:
                _send(write_fd, ("died", MEMORY_ERROR))
        status = 0
    except MemoryError:
        status = 3
    except BaseException:  # noqa: BLE001 - nothing may return into the worker's code
        status = 1
    finally:
        os._exit(status)  # no atexit, no flushing of the parent's buffers, no return into the worker


class _Reader:
    """The parent's end: length-prefixed records, each awaited until a deadline."""

    def __init__(self, fd: int):
        self.fd, self.buffer = fd, b""
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN | select.POLLHUP)

    def _fill(self, n: int, deadline: float) -> bool:
        while len(self.buffer) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not self.poller.poll(left * 1000):
                return False
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                return False
            self.buffer += chunk
        return True

    def record(self, deadline: float) -> tuple | None | str:
        """The next record, None when the child ended or died first, "late" past the deadline."""
        if not self._fill(_HEADER.size, deadline):
            return "late" if time.monotonic() >= deadline else None
        (size,) = _HEADER.unpack(self.buffer[:_HEADER.size])
        if not self._fill(_HEADER.size + size, deadline):
            return "late" if time.monotonic() >= deadline else None
        payload = self.buffer[_HEADER.size:_HEADER.size + size]
        self.buffer = self.buffer[_HEADER.size + size:]
        return _decode(payload)  # plain data only: a misbehaving child cannot run code here


def _death_reason(wait_status: int) -> str:
    if os.WIFSIGNALED(wait_status):
        number = os.WTERMSIG(wait_status)
        if number == signal.SIGXCPU:
            return "timed out (CPU limit)"
        try:
            return f"crashed (signal {signal.Signals(number).name})"
        except ValueError:
            return f"crashed (signal {number})"
    if os.WEXITSTATUS(wait_status) == 3:
        return MEMORY_ERROR
    return f"crashed (exit status {os.WEXITSTATUS(wait_status)})"


def _outcome(record: tuple) -> Outcome:
    kind = record[0]
    if kind == "value":
        return Outcome(value=record[1])
    if kind == "error":
        return Outcome(error_type=record[1], error=record[2])
    return Outcome(died=record[1])


def _not_started(record, pid: int, startup_s: float) -> str:
    """Why a child sent something other than "ready" first: it died, stalled, or misbehaved."""
    if record is None:
        return _death_reason(os.waitpid(pid, 0)[1])
    return f"timed out starting after {startup_s:g} s" if record == "late" else "crashed (no ready record)"


def _run_from(fn: Callable, items: Sequence, memory_bytes: int, timeout_s: float) -> tuple[list[Outcome], str | None]:
    """One child over `items`: the outcomes it sent, and why it stopped early (None: it did not)."""
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:
        os.close(read_fd)
        _child(fn, items, memory_bytes, timeout_s, write_fd)
    os.close(write_fd)
    outcomes: list[Outcome] = []
    stopped, reaped = None, False
    try:
        reader = _Reader(read_fd)
        startup_s = max(STARTUP_S, timeout_s)
        record = reader.record(time.monotonic() + startup_s)
        if record != ("ready",):
            stopped = _not_started(record, pid, startup_s)
            reaped = record is None
        while stopped is None and len(outcomes) < len(items):
            record = reader.record(time.monotonic() + timeout_s)
            if record == "late":
                os.kill(pid, signal.SIGKILL)
                stopped = f"timed out after {timeout_s:g} s"
                break
            if record is None:
                _, wait_status = os.waitpid(pid, 0)
                reaped, stopped = True, _death_reason(wait_status)
                break
            outcomes.append(_outcome(record))
    except Exception as exc:  # noqa: BLE001 - a record that does not load: the child misbehaved
        stopped = f"crashed ({type(exc).__name__})"
    finally:
        os.close(read_fd)
        if not reaped:
            if stopped is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            os.waitpid(pid, 0)
    return outcomes, stopped


def map_isolated(fn: Callable, items: Sequence, *, memory_bytes: int, timeout_s: float,
                 fresh: bool = False) -> list[Outcome]:
    """fn over every item, each outcome in order. `memory_bytes`: what a child may map beyond what it
    inherits (0: no cap); `timeout_s`: per item. `fresh`: the children are forked from a new interpreter
    started with the kept environment only, not from this process, so that none of this process's memory
    (a key it holds, its connections' secrets) is theirs; `fn` is then loaded there by name (a module-level
    function, or a partial of one with plain-data arguments) and each item must be bytes or plain data."""
    if fresh:
        return _map_in_fresh_process(fn, items, memory_bytes, timeout_s)
    outcomes: list[Outcome] = []
    while len(outcomes) < len(items):
        done, stopped = _run_from(fn, items[len(outcomes):], memory_bytes, timeout_s)
        outcomes.extend(done)
        if stopped is not None and len(outcomes) < len(items):
            outcomes.append(Outcome(died=stopped))  # the item the child was on
    return outcomes


# ---------------------------------------------------------------------- children of a fresh interpreter

_SERVE = ("import json, sys\n"
          "sys.path[:0] = json.loads(sys.argv[1])\n"
          "from spark_jobs.common.sandbox import serve\n"
          "serve()\n")


def _function_spec(fn: Callable) -> dict:
    """`fn` by name, as a fresh interpreter loads it (`_load_function`)."""
    args, kwargs = (), {}
    if isinstance(fn, functools.partial):
        fn, args, kwargs = fn.func, fn.args, fn.keywords
    if fn.__module__ == "__main__" or "<" in fn.__qualname__:
        raise ValueError(f"{fn!r} cannot be loaded by name in a fresh interpreter: use a module-level function")
    return {"module": fn.__module__, "name": fn.__qualname__, "args": list(args), "kwargs": dict(kwargs)}


def _load_function(spec: dict) -> Callable:
    found = importlib.import_module(spec["module"])
    for part in spec["name"].split("."):
        found = getattr(found, part)
    return functools.partial(found, *spec["args"], **spec["kwargs"])


def _read_exact(stream, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError("the request ended early")
    return data


def _read_record(stream) -> tuple:
    (size,) = _HEADER.unpack(_read_exact(stream, _HEADER.size))
    return _decode(_read_exact(stream, size))


def _libc_call(name: str, *args: int) -> bool:
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), name)(*args) == 0
    except (OSError, AttributeError):
        return False


def _leave_the_callers_namespaces() -> None:
    """The fresh interpreter's first act (a new user namespace needs a process of one thread): a user
    namespace of its own, where it holds no capability over its caller, who may run as the same user or
    as root (the caller's /proc files, its environ among them, are closed to it), and a network namespace
    whose only interface is down (no connection to anything, local services included). Where the kernel
    or a container's seccomp profile refuses user namespaces, the network alone (root), or neither: the
    caller, made not dumpable, still keeps its /proc files from a user other than root."""
    if not _libc_call("unshare", _CLONE_NEWUSER | _CLONE_NEWNET) and not _libc_call("unshare", _CLONE_NEWNET):
        print("sandbox: the decoder's interpreter shares its caller's user and network namespaces: "
              "unshare was refused", file=sys.stderr)


def serve() -> None:
    """The fresh interpreter's side: one request on stdin (the function, the limits, the items), each
    outcome on stdout as it comes, then exit. Its children are forked from it."""
    _leave_the_callers_namespaces()
    stdin, out = sys.stdin.buffer, sys.stdout.fileno()
    _, request = _read_record(stdin)
    items = [_read_record(stdin)[1] for _ in range(request["n"])]
    fn = _load_function(request["function"])
    # the decoders (OpenCV, Pillow) loaded before the children fork: a child's budget is for its items
    importlib.import_module("spark_jobs.common.images")
    for outcome in map_isolated(fn, items, memory_bytes=request["memory_bytes"], timeout_s=request["timeout_s"]):
        if outcome.died is not None:
            _send(out, ("died", outcome.died))
        elif outcome.error_type is not None:
            _send(out, ("error", outcome.error_type, outcome.error))
        else:
            _send(out, ("value", outcome.value))


def _map_in_fresh_process(fn: Callable, items: Sequence, memory_bytes: int, timeout_s: float) -> list[Outcome]:
    if not items:
        return []
    # A child that runs as this process's user cannot read a process that is not dumpable (its environ,
    # its memory): the keys this process holds, where the child could not leave its user namespace
    _libc_call("prctl", _PR_SET_DUMPABLE, 0)
    request = {"function": _function_spec(fn), "memory_bytes": memory_bytes, "timeout_s": timeout_s, "n": len(items)}
    payload = b"".join(_HEADER.pack(len(p)) + p for p in map(_encode, [("value", request)] +
                                                            [("value", item) for item in items]))
    env = {name: value for name, value in os.environ.items() if _kept(name)}
    with tempfile.TemporaryFile() as errors:
        server = subprocess.Popen([sys.executable, "-c", _SERVE, json.dumps(sys.path)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=errors, env=env, close_fds=True)
        try:
            outcomes = _outcomes_of(server, payload, len(items), STARTUP_S + timeout_s)
        finally:
            server.kill()
            server.wait()
            server.stdout.close()
        if len(outcomes) < len(items):
            errors.seek(0)
            last = (errors.read()[-2000:].decode(errors="replace").strip().splitlines() or ["no message"])[-1]
            outcomes += [Outcome(died=f"crashed (the decoder's interpreter ended: {last[:300]})")] * \
                (len(items) - len(outcomes))
    return outcomes


def _outcomes_of(server: subprocess.Popen, payload: bytes, n: int, deadline_s: float) -> list[Outcome]:
    """What the fresh interpreter sends back: its own children keep each item's deadline, `deadline_s`
    only bounds an interpreter gone wrong."""
    outcomes: list[Outcome] = []
    try:
        server.stdin.write(payload)
        server.stdin.close()
    except BrokenPipeError:
        return outcomes
    reader = _Reader(server.stdout.fileno())
    try:
        while len(outcomes) < n:
            record = reader.record(time.monotonic() + deadline_s)
            if record is None or record == "late":
                break
            outcomes.append(_outcome(record) if record[0] != "ready" else
                            Outcome(error_type="TypeError", error="malformed record"))
    except Exception:  # noqa: BLE001 - a record that does not load: the interpreter misbehaved
        pass
    return outcomes
