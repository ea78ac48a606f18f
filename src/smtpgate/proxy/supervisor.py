"""``serve`` with ``[gateway] workers`` above 1: the main process supervises workers.

The main process reads and checks the configuration, makes what
``state_dir`` lacks (the proxy CA, the server certificate: once, before any
worker starts, so no two race), holds every listening address with a bound
socket that does not listen (the port stays taken while workers restart,
and no other program can listen there), then starts the workers
(:mod:`smtpgate.proxy.worker`). Each worker binds its own listening sockets
on those addresses with ``SO_REUSEPORT``; the kernel spreads new connections
over them. The main process runs what there is once of: the log (the workers
send their records, :mod:`smtpgate.proxy.channel`), the metrics and the
traffic store that observe it, the console.

- A worker that dies is restarted (``worker_exited``, ``worker_started``); one
  that keeps dying soon after its start waits longer each time (up to 30 s).
  The others serve meanwhile; the connections the dead one had are cut.
- ``SIGHUP`` (or the console's apply): the main process reads and checks the
  file once, then hands every worker the configuration; one ``reloaded``
  record once all of them run it.
- ``SIGTERM``, ``SIGINT``: every worker stops accepting and drains (bounded);
  the main process writes their last records, then ``stopped``, and exits.
- ``SIGUSR1``: the main process reopens the log (workers have none).

The lifecycle records (``listening``, ``reloaded``, ``config_warning``,
``stopping``, ``stopped``) are written once for all workers, not once per
worker: what a worker says of them comes to the supervisor, which writes one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from smtpgate.config.errors import ConfigError
from smtpgate.config.schema import Config
from smtpgate.logs import EventLog, describe_error
from smtpgate.logtargets import open_error
from smtpgate.proxy.channel import (
    APPLIED,
    STATUS_KEY,
    Lines,
    config_frame,
    event_of,
    message_of,
    status_frame,
)
from smtpgate.proxy.gateway import (
    Address,
    compile_runtimes,
    configure_log,
    handle_signals,
    hold,
    listen_error,
)
from smtpgate.tls.certificates import CertificateError
from smtpgate.tls.contexts import TLSContextCache

#: Seconds a worker that died waits before it is started again, by how many times in a
#: row it died within :data:`STEADY_SECONDS` of its start.
RESTART_DELAYS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: A worker that ran this long before it died is restarted at once.
STEADY_SECONDS = 10.0
#: How long a worker may take to start listening.
START_SECONDS = 60.0
#: Past the drain, how long the main process waits for a worker before SIGKILL.
EXIT_GRACE_SECONDS = 10.0
#: What a scrape waits for a worker's gauges.
STATUS_SECONDS = 2.0
#: What a reload waits for a worker's answer (a worker that takes longer is wedged:
#: it counts as one that died, and keeps what it ran).
RELOAD_SECONDS = 60.0

#: Records of a worker's start or reload the supervisor writes once, for all workers.
_ANNOUNCED = frozenset({"listening", "reloaded", "config_warning"})
#: Records of a worker's stop the supervisor sums up (``stopping``) or writes itself.
_STOPPING, _STOPPED = "stopping", "stopped"


def cores() -> int:
    """The cores this process may run on (``workers = "auto"``)."""
    counted: Callable[[], int | None] | None = getattr(os, "process_cpu_count", None)
    if counted is not None:  # Python 3.13
        return counted() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def worker_count(config: Config) -> int:
    """How many processes ``[gateway] workers`` asks for."""
    wanted = config.gateway.workers
    return cores() if wanted == "auto" else wanted


class _Parked:
    """Idle upstream legs of one policy, all workers together (what ``len`` counts)."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count


@dataclass(eq=False)
class _Worker:
    """One worker slot: the process now in it, and what it said."""

    index: int
    process: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    reading: asyncio.Task[None] | None = None
    started: float = 0.0
    #: Answers still owed, oldest first (a frame is answered in order).
    waiting: deque[asyncio.Future[dict[str, Any] | None]] = field(default_factory=deque)
    #: The records of its start or latest reload that the supervisor writes once.
    announced: list[str] = field(default_factory=list)
    #: Its ``stopping`` record, once it stopped accepting.
    stopping: dict[str, Any] | None = None
    stopping_seen: asyncio.Event = field(default_factory=asyncio.Event)
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


class Supervisor:
    """What :class:`~smtpgate.proxy.gateway.Gateway` is to ``serve`` in one process, for
    ``workers`` processes: the same start, reload, stop and signals, and the same
    state for the console and the metrics (``config``, ``pools``, ``open_connections``)."""

    def __init__(
        self,
        config: Config,
        log: EventLog,
        *,
        workers: int,
        reload_config: Callable[[], Config] | None = None,
        drain_seconds: float = 30.0,
    ) -> None:
        self.config = config
        self.log = log
        log.addresses = config.logging.addresses
        self._reload_config = reload_config
        self._drain_seconds = drain_seconds
        # Checked once here, as a worker will build it; what state_dir lacks is made now.
        compile_runtimes(config, TLSContextCache())
        #: Every listening address, held (see :func:`~smtpgate.proxy.gateway.hold`).
        self._held: dict[Address, list[socket.socket]] = self._hold_new(config, {})
        self._workers = [_Worker(i) for i in range(workers)]
        self._keeping: set[asyncio.Task[None]] = set()
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[bool]] = set()
        self._stop_requested = asyncio.Event()
        self._stopping = False

    # -- what the console and the metrics read -------------------------------------------

    @property
    def pools(self) -> Mapping[str, _Parked]:
        """Idle upstream legs per policy, as of the last :meth:`refresh`."""
        total: dict[str, int] = {}
        for worker in self._workers:
            for name, count in worker.status.get("pools", {}).items():
                total[name] = total.get(name, 0) + int(count)
        return {name: _Parked(count) for name, count in total.items()}

    @property
    def open_connections(self) -> int:
        """Client connections of all workers, as of the last :meth:`refresh`."""
        return sum(int(w.status.get("connections", 0)) for w in self._workers)

    async def refresh(self) -> None:
        """Ask every worker for its gauges; its records before the answer are written
        (and counted) by then."""
        live = [w for w in self._workers if w.alive]
        answers = await asyncio.gather(
            *(self._ask(w, status_frame(), STATUS_SECONDS) for w in live)
        )
        for worker, found in zip(live, answers, strict=True):
            worker.status = dict(found.get(STATUS_KEY, {})) if found else {}
        for worker in self._workers:
            if not worker.alive:
                worker.status = {}

    # -- start ------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        handle_signals(reload=self.reload_soon, reopen=self.log.reopen, stop=self.request_stop)

    async def start(self) -> None:
        """Start every worker and return once each listens on every address; a
        ConfigError when one could not (it said why on standard error)."""
        async with self._reload_lock:
            started = [await self._spawn(worker) for worker in self._workers]
            for worker, answered in zip(self._workers, started, strict=True):
                try:
                    found = await asyncio.wait_for(answered, START_SECONDS)
                except TimeoutError:
                    found = None
                if not found or not found.get(APPLIED):
                    raise ConfigError.at(
                        [(("gateway", "workers"), f"worker {worker.pid} did not start")]
                    )
            self._announce(self._workers[0])
            for worker in self._workers:
                task = asyncio.get_running_loop().create_task(self._keep(worker))
                self._keeping.add(task)
                task.add_done_callback(self._keeping.discard)

    def _hold_new(
        self, config: Config, held: Mapping[Address, list[socket.socket]]
    ) -> dict[Address, list[socket.socket]]:
        """``held`` and sockets for the addresses of ``config`` it lacks; those no
        policy listens on any more are left out (for the caller to close). A
        ConfigError names ``policies[N].listen`` (nothing new stays held)."""
        kept: dict[Address, list[socket.socket]] = {}
        opened: list[list[socket.socket]] = []
        for index, policy in enumerate(config.policies):
            address = (policy.listen.host, policy.listen.port)
            if address in held:
                kept[address] = held[address]
                continue
            try:
                kept[address] = hold(*address, transparent=policy.tproxy)
            except OSError as exc:
                for socks in opened:
                    _close(socks)
                raise listen_error(index, address, exc) from exc
            opened.append(kept[address])
        return kept

    async def _spawn(self, worker: _Worker) -> asyncio.Future[dict[str, Any] | None]:
        """Start a process in ``worker``'s slot with the configuration in force; the
        future is its first answer (it listens) or None (it died first)."""
        ours, theirs = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "smtpgate.proxy.worker",
                str(theirs.fileno()),
                str(os.getpid()),
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        worker.process, worker.writer = process, writer
        worker.started = time.monotonic()
        worker.waiting.clear()
        worker.announced.clear()
        worker.stopping, worker.stopping_seen, worker.gone = None, asyncio.Event(), asyncio.Event()
        worker.status = {}
        answered = self._send(worker, config_frame(self.config, len(self._workers)))
        worker.reading = asyncio.get_running_loop().create_task(self._read(worker, reader))
        self.log.emit("worker_started", worker=worker.index, pid=process.pid)
        return answered

    def _send(self, worker: _Worker, frame: bytes) -> asyncio.Future[dict[str, Any] | None]:
        """Send ``frame``; the future is its answer, None if the worker dies first."""
        answered: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        if worker.writer is None or worker.gone.is_set():
            answered.set_result(None)
            return answered
        worker.waiting.append(answered)
        worker.writer.write(frame)
        return answered

    async def _ask(self, worker: _Worker, frame: bytes, seconds: float) -> dict[str, Any] | None:
        """:meth:`_send`, and its answer within ``seconds`` (else None)."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._send(worker, frame)), seconds)
        except TimeoutError:
            return None

    async def _read(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        """What ``worker`` sends, until it is gone: records go to the log (those the
        supervisor writes once are kept aside), answers to whoever waits for them."""
        lines = Lines()
        try:
            while data := await reader.read(1 << 16):
                records: list[str] = []  # written together, in order
                for line in lines.feed(data):
                    event = event_of(line)
                    if event is None:
                        if worker.waiting:
                            _resolve(worker.waiting.popleft(), message_of(line))
                    elif event in _ANNOUNCED:
                        worker.announced.append(line)
                    elif event == _STOPPING:
                        worker.stopping = message_of(line)
                        worker.stopping_seen.set()
                    elif event != _STOPPED:
                        records.append(line)
                with contextlib.suppress(ValueError):  # not JSON: a worker's bug, not ours
                    self.log.forward(records)
        except OSError:
            pass
        finally:
            worker.gone.set()
            worker.stopping_seen.set()
            while worker.waiting:
                _resolve(worker.waiting.popleft(), None)
            if worker.writer is not None:
                worker.writer.close()
                worker.writer = None

    def _announce(self, worker: _Worker) -> None:
        """Write what ``worker`` said of its start or reload, once for all workers."""
        self.log.forward(worker.announced)
        for each in self._workers:
            each.announced.clear()

    async def _keep(self, worker: _Worker) -> None:
        """Restart ``worker`` whenever it dies, until serve stops."""
        quick_deaths = 0
        while True:
            assert worker.process is not None and worker.reading is not None
            code = await worker.process.wait()
            await worker.reading
            if self._stopping:
                return
            ran = time.monotonic() - worker.started
            quick_deaths = quick_deaths + 1 if ran < STEADY_SECONDS else 0
            delay = RESTART_DELAYS[min(quick_deaths, len(RESTART_DELAYS) - 1)]
            self.log.emit(
                "worker_exited",
                worker=worker.index,
                pid=worker.pid,
                status=_exit_status(code),
                restart_in=delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), delay)
            async with self._reload_lock:  # it starts with the configuration in force
                if self._stopping:
                    return
                await self._spawn(worker)

    # -- reload -----------------------------------------------------------------------

    def reload_soon(self) -> None:
        """SIGHUP: :meth:`reload` as a task of its own (a signal handler cannot wait)."""
        task = asyncio.get_running_loop().create_task(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> bool:
        """Read and check the file once, then every worker runs it; True when all do.

        As one process reloads (:meth:`~smtpgate.proxy.gateway.Gateway.reload`): the
        log is reopened first; an address that cannot be had refuses the whole
        reload. A worker that refuses what the supervisor accepted (it says why
        in its ``reload_failed``) keeps the previous configuration; the others,
        and every worker started from then on, run the new one.
        """
        async with self._reload_lock:
            self.log.reopen()
            if self._reload_config is None or self._stopping:
                return False
            try:
                config = self._reload_config()
                compile_runtimes(config, TLSContextCache())
                held = self._hold_new(config, self._held)
            except (ConfigError, CertificateError, OSError) as exc:
                self.log.emit("reload_failed", reason=describe_error(exc))
                return False
            opened = [socks for address, socks in held.items() if address not in self._held]
            try:
                configure_log(self.log, config)
            except OSError as exc:
                for socks in opened:
                    _close(socks)
                self.log.emit("reload_failed", reason=open_error(config.logging, exc))
                return False
            dropped = [socks for address, socks in self._held.items() if address not in held]
            previous, previous_held = self.config, self._held
            self.config, self._held = config, held
            live = [w for w in self._workers if w.alive]
            for worker in live:
                worker.announced.clear()
            frame = config_frame(config, len(self._workers))
            answers = await asyncio.gather(*(self._ask(w, frame, RELOAD_SECONDS) for w in live))
            # A worker that died meanwhile (None) starts again with the new configuration.
            said = [(w, found[APPLIED]) for w, found in zip(live, answers, strict=True) if found]
            applied = [w for w, yes in said if yes]
            refused = len(said) - len(applied)
            if refused and not applied:
                # Nobody runs it: back to the configuration that runs.
                self.config, self._held = previous, previous_held
                for socks in opened:
                    _close(socks)
                with contextlib.suppress(OSError):
                    configure_log(self.log, previous)
                return False
            for socks in dropped:
                _close(socks)
            if applied:
                self._announce(applied[0])
            else:  # no worker runs now (all are being restarted): they start with it
                self.log.emit(
                    "reloaded",
                    policies=sorted(p.name for p in config.policies),
                    opened=_listeners(config, without=previous_held),
                    closed=_listeners(previous, without=held),
                )
            if refused:
                self.log.emit(
                    "reload_failed",
                    reason=f"{refused} of {len(said)} workers kept the previous configuration "
                    "(their reload_failed says why)",
                )
                return False
            return True

    # -- stop -------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def serve_until_stopped(self) -> None:
        await self._stop_requested.wait()
        await self.stop()

    async def stop(self) -> None:
        """Every worker stops accepting and drains; their records are written, then
        ``stopped``. A worker still there past the drain is killed."""
        self._stopping = True
        self._stop_requested.set()
        async with self._reload_lock:
            live = [w for w in self._workers if w.alive]
            for worker in live:
                assert worker.process is not None
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGTERM)
        bound = self._drain_seconds + EXIT_GRACE_SECONDS
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(w.stopping_seen.wait() for w in live)), EXIT_GRACE_SECONDS
            )
        sessions = sum(int((w.stopping or {}).get("sessions", 0)) for w in live)
        self.log.emit(_STOPPING, sessions=sessions, workers=len(live))
        exits = [w.process.wait() for w in live if w.process is not None]
        try:
            await asyncio.wait_for(asyncio.gather(*exits), bound)
        except TimeoutError:
            for worker in live:
                if worker.alive:
                    assert worker.process is not None
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.kill()
            await asyncio.gather(*(w.process.wait() for w in live if w.process is not None))
        for worker in self._workers:
            if worker.reading is not None:
                await worker.reading  # every record of theirs is written
        for task in list(self._keeping):
            await task
        for socks in self._held.values():
            _close(socks)
        self._held = {}
        self.log.emit(_STOPPED)


def _listeners(config: Config, *, without: Mapping[Address, object]) -> list[str]:
    """``policy host:port`` of the listeners of ``config`` not in ``without``, sorted,
    as ``reloaded`` names them."""
    return sorted(
        f"{p.name} {p.listen.host}:{p.listen.port}"
        for p in config.policies
        if (p.listen.host, p.listen.port) not in without
    )


def _resolve(
    answered: asyncio.Future[dict[str, Any] | None], message: dict[str, Any] | None
) -> None:
    """Hand a worker's answer to whoever waits for it (nobody, once they gave up)."""
    if not answered.done():
        answered.set_result(message)


def _exit_status(code: int) -> str:
    """How a process ended, as ``worker_exited`` says it."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


def _close(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()
