"""The stack's PID files: a stale one (its process gone, the PID reused by another program) never names
a process to signal."""

import subprocess
import sys

from fruitflow.stack.process import read_pid, start_time, write_pid


def test_a_pid_file_names_its_own_process_only(tmp_path):
    pidfile = tmp_path / "service.pid"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        write_pid(pidfile, proc.pid)
        assert read_pid(pidfile) == proc.pid
        # The same PID with another start time: what a reused PID looks like after a reboot or wrap-around.
        pidfile.write_text(f"{proc.pid} {int(start_time(proc.pid)) + 1}")
        assert read_pid(pidfile) is None
    finally:
        proc.kill()
        proc.wait()
    write_pid(pidfile, proc.pid)
    assert read_pid(pidfile) is None  # gone


def test_a_pid_file_without_start_time_is_checked_by_command_line(tmp_path):
    pidfile = tmp_path / "spark-daemon.pid"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "org.example.Master"])
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pidfile.write_text(str(proc.pid))
        assert read_pid(pidfile, command="org.example.Master") == proc.pid
        pidfile.write_text(str(unrelated.pid))  # the PID now belongs to another program
        assert read_pid(pidfile, command="org.example.Master") is None
    finally:
        for p in (proc, unrelated):
            p.kill()
            p.wait()


def test_stack_env_prints_settings_but_no_secret():
    import json

    from fruitflow import stack
    from fruitflow.stack.environment import state_dir
    from tests.helpers import ROOT

    result = subprocess.run([sys.executable, "-m", "fruitflow.cli", "stack", "env"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "export FRUITFLOW_S3_ENDPOINT=" in result.stdout
    for identity in ("pipeline", "spark-node", "admin", "control"):
        path = state_dir(stack.settings()) / "credentials" / f"{identity}.json"
        assert json.loads(path.read_text())["secret"] not in result.stdout


def test_stopping_a_service_this_process_started_does_not_wait_on_its_zombie(tmp_path, capsys):
    """A service started by the same command (`classify`, `demo` start the store themselves) exits on
    SIGTERM but stays a zombie until reaped: stop_pid waited its whole grace and 'killed' it."""
    import subprocess
    import sys

    from fruitflow.stack.process import spawn, stop_pid

    proc = spawn([sys.executable, "-c", "import time; time.sleep(60)"], {}, tmp_path / "log", tmp_path / "pid",
                 tmp_path)
    stop_pid(proc.pid, "sleeper", grace=10)
    assert "ignored SIGTERM" not in capsys.readouterr().err
    assert proc.poll() is not None or subprocess.run(["ps", "-p", str(proc.pid)]).returncode != 0


def test_a_private_file_written_by_several_processes_at_once_is_whole_and_private(tmp_path):
    # the test workers each prepare the stack's settings at start: the same files, at the same moment
    from concurrent.futures import ThreadPoolExecutor

    from fruitflow.stack.process import write_private

    path = tmp_path / "spark-defaults.conf"

    def write(i: int) -> None:
        for _ in range(200):
            write_private(path, f"writer {i}\n" * 100)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(4)))
    lines = set(path.read_text().splitlines())
    assert len(lines) == 1 and oct(path.stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spark-defaults.conf"]  # no temporary file left
