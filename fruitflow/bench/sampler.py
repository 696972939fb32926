"""What the benchmarks measure beside time: processes' memory, and the CPU they ran on."""

from __future__ import annotations

import threading


class ProcessSampler:
    """Polls the process table in a thread until the `with` block ends; `sample(processes)` gets
    (pid, command line, RSS in MB) of every process, `interval` seconds apart."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self.psutil = psutil
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self, processes: list[tuple[int, str, float]]) -> None:
        raise NotImplementedError

    def _run(self):
        while not self._stop.is_set():
            processes = []
            for proc in self.psutil.process_iter(["pid", "cmdline", "memory_info"]):
                try:
                    processes.append((proc.pid, " ".join(proc.info["cmdline"] or []),
                                      proc.info["memory_info"].rss / 2**20))
                except (self.psutil.NoSuchProcess, self.psutil.AccessDenied, TypeError, AttributeError):
                    continue
            self.sample(processes)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def cpu_flags(path: str = "/proc/cpuinfo") -> list[str]:
    """The CPU's vector and matrix extensions that decide ONNX Runtime's kernels (FP32 and INT8)."""
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")
    try:
        with open(path, encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in wanted if flag in present]
    except OSError:
        pass
    return []
