"""smtpgate itself as a subprocess: ``smtpgate serve --config <tmp>/smtpgate.toml``.

``SmtpgateProcess`` writes the TOML of SPEC.md section 5 from a Python dict (or
takes the text as is), fills in what every test needs (a loopback port for each
policy without ``listen``, held until smtpgate listens on it; ``state_dir`` and a
JSON log file in the test's directory), starts the proxy, waits (bounded) until
a ``"listening"`` record appeared for every policy, and reads the JSON log
records back. It is stopped with SIGTERM by PID (SIGKILL after a bound), as
SPEC.md section 6 describes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from smtpgate.config import toml_writer

from . import PeerMissing, ReservedPort, tail, wait_until

__all__ = ["SmtpgateProcess", "smtpgate_binary"]

Record = dict[str, Any]


def smtpgate_binary() -> str:
    """The ``smtpgate`` console script of the running virtualenv."""
    candidate = Path(sys.executable).parent / "smtpgate"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("smtpgate")
    if found is None:
        raise PeerMissing("the smtpgate console script is not installed: run `make venv`")
    return found


# -- the process --------------------------------------------------------------


class SmtpgateProcess:
    """``smtpgate serve`` under ``workdir``; use as a context manager.

    ``config`` is a dict in the shape of SPEC.md section 5 (``[gateway]``,
    ``[logging]``, ``[[policies]]``, ...) or TOML text. For a dict, policies
    without ``listen`` get ``127.0.0.1:<a reserved port>`` (:class:`ReservedPort`),
    ``gateway.state_dir`` and
    ``logging`` default to ``workdir/state`` and ``workdir/smtpgate.log.jsonl``.
    """

    def __init__(
        self, workdir: Path, config: Mapping[str, Any] | str, *, wrapper: Sequence[str] = ()
    ) -> None:
        """``wrapper``: a command prefix that runs smtpgate (``ip netns exec NS``)."""
        self.wrapper = list(wrapper)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_file = self.workdir / "smtpgate.toml"
        self.state_dir = self.workdir / "state"
        self.log_file = self.workdir / "smtpgate.log.jsonl"
        self.stdout_file = self.workdir / "smtpgate.stdout"
        self.stderr_file = self.workdir / "smtpgate.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        #: Ports picked for policies without ``listen``, held until smtpgate listens.
        self._reserved = contextlib.ExitStack()
        if isinstance(config, str):
            self.config: dict[str, Any] = tomllib.loads(config)
            self.text = config
        else:
            self.config = self._complete(config)
            self.text = toml_writer.dumps(self.config)
        log_cfg = self.config.get("logging", {})
        if log_cfg.get("file"):
            self.log_file = self.config_file.parent / log_cfg["file"]
        gw = self.config.get("gateway", {})
        if gw.get("state_dir"):
            self.state_dir = self.config_file.parent / gw["state_dir"]

    def _complete(self, config: Mapping[str, Any]) -> dict[str, Any]:
        cfg = json.loads(json.dumps(config, default=str))  # deep copy, Paths as str
        gw = cfg.setdefault("gateway", {})
        gw.setdefault("hostname", "mx.example.test")
        gw.setdefault("state_dir", str(self.state_dir))
        log = cfg.setdefault("logging", {})
        log.setdefault("format", "json")
        log.setdefault("file", str(self.log_file))
        for pol in cfg.get("policies", []):
            if "listen" not in pol:
                reserved = self._reserved.enter_context(ReservedPort())
                pol["listen"] = f"127.0.0.1:{reserved.port}"
        return cfg

    def state_file(self, name: str) -> Path:
        """A generated file (``ca.pem``, ``server.pem``) in ``state_dir`` or ``state_dir/tls``."""
        for candidate in (self.state_dir / name, self.state_dir / "tls" / name):
            if candidate.exists():
                return candidate
        found = sorted(p.relative_to(self.state_dir) for p in self.state_dir.rglob("*"))
        raise AssertionError(f"no {name} under {self.state_dir}; it holds {found}")

    # -- ports ---------------------------------------------------------------

    def policy(self, name: str) -> dict[str, Any]:
        for pol in self.config.get("policies", []):
            if pol.get("name") == name:
                return dict(pol)
        raise KeyError(f"no policy {name!r} in {self.config_file}")

    def port(self, policy: str | None = None) -> int:
        """The listening port of ``policy`` (default: the only/first policy)."""
        pols = self.config.get("policies", [])
        pol = self.policy(policy) if policy else pols[0]
        return int(str(pol["listen"]).rsplit(":", 1)[1])

    # -- lifecycle -------------------------------------------------------------

    def start(self, timeout: float = 20) -> SmtpgateProcess:
        self.config_file.write_text(self.text)
        binary = smtpgate_binary()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with self.stdout_file.open("wb") as out, self.stderr_file.open("wb") as err:
            self.proc = subprocess.Popen(
                [*self.wrapper, binary, "serve", "--config", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.workdir,
                env=env,
                start_new_session=True,
            )
        wanted = {p["name"] for p in self.config.get("policies", [])}
        deadline = time.monotonic() + timeout
        try:
            while True:
                seen = {r.get("policy") for r in self.records("listening")}
                if wanted <= seen:
                    self._reserved.close()
                    return self
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"smtpgate exited with {self.proc.returncode} before listening on "
                        f"{sorted(wanted - seen)}\n{self.diagnostics()}"
                    )
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"smtpgate: no 'listening' record for {sorted(wanted - seen)} "
                        f"after {timeout}s\n{self.diagnostics()}"
                    )
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM by PID, wait (bounded), then SIGKILL; returns the exit code."""
        self._reserved.close()
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.returncode = proc.returncode
        return proc.returncode

    def __enter__(self) -> SmtpgateProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serving_pids(self) -> list[int]:
        """The processes that take connections: the workers now running (the latest
        ``worker_started`` of each slot) with ``[gateway] workers`` above 1, else serve's."""
        latest = {r["worker"]: int(r["pid"]) for r in self.records("worker_started")}
        if latest:
            return [latest[slot] for slot in sorted(latest)]
        assert self.proc is not None
        return [self.proc.pid]

    # -- output ----------------------------------------------------------------

    def stdout(self) -> str:
        return self.stdout_file.read_text(errors="replace") if self.stdout_file.exists() else ""

    def stderr(self) -> str:
        return self.stderr_file.read_text(errors="replace") if self.stderr_file.exists() else ""

    def records(self, event: str | None = None) -> list[Record]:
        """JSON log records so far (a partial last line is ignored)."""
        try:
            raw = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            if self.config.get("logging", {}).get("file"):
                return []
            raw = self.stderr()  # logging to standard error
        out: list[Record] = []
        for line in raw.splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and (event is None or rec.get("event") == event):
                out.append(rec)
        return out

    def wait_record(
        self,
        event: str,
        where: Callable[[Record], bool] | None = None,
        timeout: float = 20,
        count: int = 1,
    ) -> list[Record]:
        """Wait until ``count`` records of ``event`` (matching ``where``) exist."""

        def matching() -> list[Record]:
            return [r for r in self.records(event) if where is None or where(r)]

        return wait_until(
            lambda: found if len(found := matching()) >= count else None,
            lambda: (
                f"smtpgate: {len(matching())} of {count} {event!r} record(s)\n{self.diagnostics()}"
            ),
            timeout=timeout,
        )

    def transactions(self, timeout: float = 20, count: int = 1, **match: Any) -> list[Record]:
        """Transaction summary records whose fields equal ``match``."""

        def where(r: Record) -> bool:
            return all(r.get(k) == v for k, v in match.items())

        return self.wait_record("transaction", where, timeout=timeout, count=count)

    def ca_export(self) -> str:
        """``smtpgate ca export --config F``: the proxy CA PEM."""
        proc = subprocess.run(
            [smtpgate_binary(), "ca", "export", "--config", str(self.config_file)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(f"smtpgate ca export exited {proc.returncode}:\n{proc.stderr}")
        return proc.stdout

    def diagnostics(self) -> str:
        records = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return (
            f"config {self.config_file}:\n{self.text}\n"
            f"stderr tail:\n{tail(self.stderr())}\n"
            f"log tail:\n{tail(records, 30)}"
        )
