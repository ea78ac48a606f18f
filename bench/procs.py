"""The benchmark's participants as processes: start, stop, and what a process tree costs.

A relay is measured as its whole process tree (Postfix is a dozen processes,
smtpgate with workers several): CPU is user + system time of every process in
the tree plus what its members have reaped from children that already exited
(``cutime``/``cstime``), read from ``/proc`` before and after a run; memory is
the proportional set size (PSS: shared pages split among their sharers) summed
over the tree, sampled while the load runs.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections import defaultdict
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


class Process:
    """A benchmark participant; ``output``: a file for its stdout and stderr."""

    def __init__(
        self,
        args: list[str],
        ready: str | None = None,
        output: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        #: The line that said the process is ready (``ready`` given), else "".
        self.ready_line = ""
        sink = open(output, "w") if output else subprocess.PIPE  # noqa: SIM115
        self.proc = subprocess.Popen(
            args, stdout=sink, stderr=sink if output else subprocess.PIPE, text=True, cwd=cwd
        )
        if ready is not None:
            assert self.proc.stdout is not None and self.proc.stderr is not None
            line = self.ready_line = self.proc.stdout.readline()
            if ready not in line:
                self.stop()
                raise RuntimeError(f"{args[0]} did not start: {self.proc.stderr.read()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None  # exited meanwhile
    # Fields after the command name, which may contain spaces and parentheses.
    return text.rsplit(")", 1)[1].split()


def tree(root: int) -> list[int]:
    """``root`` and every process descending from it, alive now."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children[int(fields[1])].append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def tree_cpu_seconds(root: int) -> float:
    """CPU the tree has used so far, including reaped children (see the module doc)."""
    total = 0
    for pid in tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            # utime, stime, cutime, cstime: fields 14-17 of proc(5), 11-14 here.
            total += sum(int(value) for value in fields[11:15])
    return total / TICKS


def tree_pss_kib(root: int) -> int:
    """Proportional set size of the tree now, KiB."""
    total = 0
    for pid in tree(root):
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
                break
    return total


class PeakPss:
    """The highest PSS of a tree while a run goes on, sampled in a thread every 0.2 s."""

    def __init__(self, root: int | None) -> None:
        self.root = root
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakPss:
        if self.root is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.root is not None:
            self._thread.join()

    def _sample(self) -> None:
        assert self.root is not None
        while True:
            self.peak = max(self.peak, tree_pss_kib(self.root))
            if self._stop.wait(0.2):
                return
