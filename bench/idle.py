"""Resident memory per TLS session: 10,000 idle clients, then 1,000 in the middle of DATA.

Idle: past STARTTLS and EHLO, then silent. Active: past STARTTLS, MAIL, RCPT
and DATA, 8 KB of body sent, the final dot not yet: each holds its upstream
connection (TLS too) and a body chunk in flight. smtpgate's proportional set
size (``bench/procs.py``) is read before each group opens and once it stands;
the difference divided by the group's size is what one session costs (issue
12's target for idle ones: at most 64 KB). The open-files limit is raised for
the benchmark and the smtpgate it starts.
"""

from __future__ import annotations

import asyncio
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.peers.mailsender import OpenSession, open_session

from .load import HOST, body, client_context
from .procs import tree_pss_kib
from .relays import certificates, start_sink, start_smtpgate

SESSIONS = 10_000
ACTIVE = 1_000
#: Sessions opened at once: enough to be quick, few enough not to time out handshakes.
OPENING = 100


def _raise_open_files(needed: int) -> None:
    """Each process (this one, smtpgate) holds one descriptor per session; children
    inherit the limit. Up to the hard limit; above it only with CAP_SYS_RESOURCE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(hard, needed)))
    except (ValueError, OSError):
        if hard < needed:
            raise SystemExit(
                f"idle benchmark: needs {needed} open files per process, the hard limit is "
                f"{hard} and cannot be raised here (no CAP_SYS_RESOURCE)"
            ) from None
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def _open_all(port: int, count: int, ca: str, *, active: bool = False) -> list[OpenSession]:
    context = client_context(ca, resuming=False)
    sessions: list[OpenSession] = []
    gate = asyncio.Semaphore(OPENING)
    chunk = body(8 * 1024)

    async def one() -> None:
        async with gate:
            session = await open_session(
                HOST, port, starttls=context, require_starttls=True, timeout=120
            )
            sessions.append(session)
            if active:
                client = session.session.client
                client.send_mail(b"<bench@sender.bench>", b"")
                client.send_rcpt(b"<rcpt@rcpt.bench>")
                client.send_data()
                replies = await session.session.replies(3)  # PIPELINING: one batch
                assert replies[-1].code == 354, replies
                client.send_body(chunk)
                session.session.flush()

    await asyncio.gather(*(one() for _ in range(count)))
    return sessions


def run(quick: bool = False) -> dict[str, object]:
    import uvloop

    count = 1000 if quick else SESSIONS
    active = 100 if quick else ACTIVE
    # Each active session holds two descriptors in smtpgate (client and upstream legs).
    _raise_open_files(count + 2 * active + 1024)
    tmp = Path(tempfile.mkdtemp(prefix="smtpgate-bench-idle-"))
    stops = []
    try:
        store, ca = certificates(tmp)
        sink = start_sink(store, "starttls")
        stops.append(sink.stop)
        gate = start_smtpgate(tmp, ca, sink)
        stops.append(gate.stop)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            # One session first, so what is loaded once (contexts, leaf) is not counted.
            warm = runner.run(_open_all(gate.port, 1, str(ca)))
            time.sleep(0.5)
            before = tree_pss_kib(gate.pid)
            started = time.perf_counter()
            sessions = runner.run(_open_all(gate.port, count, str(ca)))
            opened_in = time.perf_counter() - started
            time.sleep(1.0)
            after = tree_pss_kib(gate.pid)
            busy = runner.run(_open_all(gate.port, active, str(ca), active=True))
            time.sleep(1.0)
            with_active = tree_pss_kib(gate.pid)
            for session in sessions + warm + busy:
                session.close()
    finally:
        for stop in reversed(stops):
            stop()
        shutil.rmtree(tmp, ignore_errors=True)
    per_session = (after - before) * 1024 / count
    per_active = (with_active - after) * 1024 / active
    print(
        f"\nidle TLS sessions: {count} opened in {opened_in:.1f} s; smtpgate PSS "
        f"{before / 1024:.1f} MiB before, {after / 1024:.1f} MiB with them: "
        f"{per_session / 1024:.1f} KiB per idle TLS session (target <= 64 KB) "
        f"{'met' if per_session <= 64_000 else 'MISSED'}\n"
        f"active TLS sessions (mid-DATA, TLS upstream leg each): {active} more: "
        f"{with_active / 1024:.1f} MiB, {per_active / 1024:.1f} KiB per active session"
    )
    return {
        "sessions": count,
        "pss_before_kib": before,
        "pss_after_kib": after,
        "bytes_per_idle_session": per_session,
    }


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
