"""The benchmark's process-tree accounting: what a relay's children spent is counted,
also once they have exited (Postfix's smtpd processes come and go)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from bench.procs import tree, tree_cpu_seconds, tree_pss_kib

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"


def test_cpu_of_a_child_that_exited_is_counted_through_its_parent() -> None:
    # The parent starts a child that burns 0.3 s of CPU and exits; the parent reaps it
    # and lives on, as Postfix's master does.
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys, time\nsubprocess.run([sys.executable, '-c', {BURN!r}])\n"
            "print('reaped', flush=True)\ntime.sleep(30)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        before = tree_cpu_seconds(parent.pid)
        assert parent.stdout is not None and parent.stdout.readline() == "reaped\n"
        assert len(tree(parent.pid)) == 1  # the child is gone
        assert tree_cpu_seconds(parent.pid) - before >= 0.25
    finally:
        parent.kill()
        parent.wait()


def test_tree_includes_live_children_and_their_memory() -> None:
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys\nc = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(30)'])\nprint(c.pid, flush=True)\nc.wait()\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 5
        while child not in tree(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(tree(parent.pid)) == {parent.pid, child}
        assert tree_pss_kib(parent.pid) > tree_pss_kib(child) > 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        parent.kill()
        parent.wait()
