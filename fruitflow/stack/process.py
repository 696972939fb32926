"""Starting, watching and stopping the stack's processes (PID files, health polling, process groups), and its private files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def log(msg: str) -> None:
    print(f"[stack] {msg}", file=sys.stderr, flush=True)


def http_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body = resp.read()
    return json.loads(body) if body.strip().startswith((b"{", b"[")) else body


def port_open(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat, field 22): with the PID it
    names one process, where a PID alone may have been reused by an unrelated one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def write_pid(pidfile: Path, pid: int) -> None:
    pidfile.write_text(f"{pid} {start_time(pid) or ''}".strip())


def read_pid(pidfile: Path, command: str | None = None) -> int | None:
    """The PID in `pidfile` when that very process still runs, else None: the start time recorded with
    it must match (PID files the project writes), or its command line must contain `command` (PID files
    that spark-daemon.sh writes). A stale file then never names an unrelated process to signal."""
    try:
        fields = pidfile.read_text().split()
        pid = int(fields[0])
    except (OSError, ValueError, IndexError):
        return None
    if len(fields) > 1:
        return pid if start_time(pid) == fields[1] else None
    if command is not None:
        try:
            return pid if command in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") else None
        except OSError:
            return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def wait_until(check, timeout: float, what: str, logfile: Path | None = None):
    """The first true value `check()` returns within `timeout` seconds (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - any failure means "not healthy yet"
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    hint = f"; see {logfile}" if logfile else ""
    raise RuntimeError(f"{what} not healthy after {timeout:.0f}s ({last_error or 'check returned false'}){hint}")


def _exited(pid: int) -> bool:
    """True once the process is gone. A child of this process (a service this command started) stays a
    zombie, which signal 0 still reaches, until it is reaped: reap it here."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass  # not our child: its parent reaps it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def stop_pid(pid: int, name: str, grace: float = 15.0) -> None:
    """SIGTERM the process group (or the process), then SIGKILL whatever is left after `grace`."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    own_group = pgid == pid
    sender = (lambda sig: os.killpg(pgid, sig)) if own_group else (lambda sig: os.kill(pid, sig))
    try:
        sender(signal.SIGCONT)  # a paused (SIGSTOP) process cannot act on SIGTERM
        sender(signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if _exited(pid):
            return
        time.sleep(0.2)
    log(f"{name} (pid {pid}) ignored SIGTERM for {grace:.0f}s; killing it")
    try:
        sender(signal.SIGKILL)
    except ProcessLookupError:
        pass


def write_private(path: Path, text: str) -> None:
    """Written with mode 0600 from creation (never readable by others, even for a moment), through a
    temporary file of its own: processes that write the same file at once (the test workers each
    prepare the stack's settings) each replace it whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600, O_EXCL
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def spawn(argv: list[str], env: dict[str, str], logfile: Path, pidfile: Path, cwd: Path) -> subprocess.Popen:
    """Start argv in its own session (so that its whole process group can be stopped), logging to file."""
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=cwd)
    write_pid(pidfile, proc.pid)
    return proc
